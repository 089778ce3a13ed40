"""Reading the user's manual downloads: class folders and CSV files.

This module knows the on-disk layout of each raw dataset and turns it into a
list of ``SourceItem`` (file, label, CSV row) plus the problems found on the
way (bad rows, empty classes) and the files ignored (hidden, non-image). It
does not depend on TFDS so that it can be tested and reused alone; the TFDS
builders in ``jaxfsl.data.builders`` call it. Class names live in
``jaxfsl.data.classes``, image decoding in ``jaxfsl.data.images``.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jaxfsl.data.classes import (  # noqa: F401 - re-exported.
    CHESTX_ALL_LABELS,
    CHESTX_CLASSES,
    CROP_DISEASE_CLASSES,
    EUROSAT_CLASSES,
    EUROSAT_PROMPTS,
    ISIC_CLASSES,
    ISIC_PROMPTS,
    prompt_name,
)
from jaxfsl.data.errors import CorruptInputError, ManualDataError
from jaxfsl.data.images import (  # noqa: F401 - re-exported.
    CHESTX_IMAGE_SIZE,
    encode_png,
    read_image_file,
)
from jaxfsl.paths import user_path

# ----------------------------------------------------------------------------
# File names and kinds.
# ----------------------------------------------------------------------------

CHESTX_CSV = "Data_Entry_2017.csv"
# The label files accepted, in order of preference: the NIH box now serves
# the 2020 revision of the file under this name (same two first columns).
CHESTX_CSVS = (CHESTX_CSV, "Data_Entry_2017_v2020.csv")
ISIC_INPUT_DIR = "ISIC2018_Task3_Training_Input"
ISIC_GT_DIR = "ISIC2018_Task3_Training_GroundTruth"
ISIC_CSV = "ISIC2018_Task3_Training_GroundTruth.csv"

# torchvision's ImageFolder extensions: the release only sees these files.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
HIDDEN_REASON = ("ignored: hidden file (a dotfile, or a macOS AppleDouble "
                 "'._*' file)")  # Hidden folders at the top are skipped.
EMPTY_CLASS_REASON = "empty class folder: no image file in it"


def is_hidden(name: str) -> bool:
  """Dotfiles and folders, including macOS AppleDouble ``._*`` files (which
  carry image extensions but hold no image), and the ``__MACOSX`` folder of
  zip files made on a Mac (a mirror of the tree holding such files)."""
  return name.startswith(".") or name == "__MACOSX"


# ----------------------------------------------------------------------------
# Listing results.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceItem:
  """One raw example.

  Attributes:
    path: absolute path of the image file.
    label: class index (into the dataset's class list).
    file: path relative to the manual folder (used in reports and metadata).
    row: 1-based line of the CSV file that lists it (header = line 1), or None.
  """
  path: Path
  label: int
  file: str
  row: int | None = None


@dataclasses.dataclass(frozen=True)
class Problem:
  """A raw input that was skipped (bad) or ignored (not an image file).

  Attributes:
    file: path relative to the manual folder.
    row: 1-based CSV line (header = line 1), or None.
    reason: what is wrong with it.
  """
  file: str
  row: int | None
  reason: str

  def describe(self, csv_name: str | None = None) -> str:
    where = self.file
    if self.row is not None:
      where = f"{csv_name or 'CSV'} line {self.row}: {self.file}"
    return f"{where}: {self.reason}"

  def to_json(self) -> dict[str, Any]:
    return {"file": self.file, "row": self.row, "reason": self.reason}

  def to_error(self, csv_name: str | None = None,
               hint: str = "") -> CorruptInputError:
    return CorruptInputError(self.describe(csv_name) + hint, file=self.file,
                             row=self.row, reason=self.reason)


@dataclasses.dataclass
class SourceListing:
  """What was found in a manual folder, before any image is decoded.

  Attributes:
    root: the folder the data was found in (the manual folder or below it).
    items: the examples, in their final record order.
    problems: bad rows found while listing (missing file, unknown label):
      an error unless ``skip_corrupt``.
    ignored: files that are not part of the dataset by construction
      (non-image files in a class folder), listed in the report.
    excluded: rows left out on purpose by the benchmark protocol, counted by
      reason (ChestX multi-label rows, "No Finding", ...).
    csv_name: the CSV file the rows refer to, for messages.
  """
  root: Path
  items: list[SourceItem]
  problems: list[Problem] = dataclasses.field(default_factory=list)
  ignored: list[Problem] = dataclasses.field(default_factory=list)
  excluded: dict[str, int] = dataclasses.field(default_factory=dict)
  csv_name: str | None = None


# ----------------------------------------------------------------------------
# Finding the data inside the manual folder.
# ----------------------------------------------------------------------------


def check_manual_dir(manual_dir: os.PathLike[str] | str | None,
                     instructions: str) -> Path:
  """Returns ``manual_dir`` as a Path; raises when it is unset/missing/empty."""
  if manual_dir is None or not str(manual_dir):
    raise ManualDataError(
        f"No manual folder given (--manual_dir).\n\n{instructions}")
  path = user_path(manual_dir).resolve()
  if not path.is_dir():
    raise ManualDataError(
        f"Manual folder {path} does not exist or is not a folder.\n\n"
        f"{instructions}")
  if not any(path.iterdir()):
    raise ManualDataError(f"Manual folder {path} is empty.\n\n{instructions}")
  return path


def _subdirs(path: Path) -> list[Path]:
  try:
    with os.scandir(path) as it:
      return sorted(
          Path(e.path) for e in it
          if e.is_dir() and not is_hidden(e.name))
  except OSError:
    return []


def find_dir(manual_dir: Path, predicate: Callable[[Path], bool], what: str,
             instructions: str, max_depth: int = 2) -> Path:
  """Finds the folder holding the data: ``manual_dir`` or up to two below.

  The shallowest matching level wins. When several folders match at that
  level (e.g. PlantVillage's ``dataset/train`` and ``dataset/test``), the one
  named ``train`` is used; otherwise the ambiguity is an error.

  Args:
    manual_dir: the user's manual folder.
    predicate: tells whether a folder is the one looked for.
    what: description of the folder, for the error message.
    instructions: download instructions appended to errors.
    max_depth: how many levels below ``manual_dir`` to look.

  Returns:
    The folder.
  """
  level = [manual_dir]
  for _ in range(max_depth + 1):
    found = [d for d in level if predicate(d)]
    if len(found) == 1:
      return found[0]
    if len(found) > 1:
      train = [d for d in found if d.name.lower() == "train"]
      if len(train) == 1:
        return train[0]
      listing = "\n".join(f"  {d}" for d in found)
      raise ManualDataError(
          f"Found several folders that look like {what}:\n{listing}\n"
          "Pass the one to use as --manual_dir.")
    level = [s for d in level for s in _subdirs(d)]
  raise ManualDataError(
      f"Could not find {what} in {manual_dir} or up to {max_depth} levels "
      f"below it.\n\n{instructions}")


def _relative(path: Path, root: Path) -> str:
  try:
    return path.relative_to(root).as_posix()
  except ValueError:
    return str(path)


# ----------------------------------------------------------------------------
# One-folder-per-class datasets (CropDisease, EuroSAT, user image folders).
# ----------------------------------------------------------------------------


def is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def list_class_folders(root: Path, class_dirs: Sequence[str],
                       report_root: Path) -> SourceListing:
  """Lists ``root/<class_dir>/**/<image>`` like torchvision's ImageFolder.

  Files are walked recursively in sorted order. Not part of the dataset, and
  reported in ``ignored`` rather than dropped silently: files without an
  image extension (as in ImageFolder), hidden files and folders (dotfiles,
  macOS ``._*`` AppleDouble files, which carry image extensions but are no
  images) and files outside the class folders. A class folder without any
  image is a problem (an error unless ``skip_corrupt``).

  Args:
    root: the folder holding one subfolder per class.
    class_dirs: the class subfolder names; label i is ``class_dirs[i]``.
    report_root: paths in the listing are given relative to this folder.

  Returns:
    The listing (its ``problems`` are the empty class folders: nothing is
    decoded here).
  """
  items, ignored, problems = [], [], []
  for label, class_dir in enumerate(class_dirs):
    count = 0
    for dirpath, dirnames, filenames in os.walk(root / class_dir,
                                                followlinks=True):
      for name in sorted(d for d in dirnames if is_hidden(d)):
        ignored.append(Problem(_relative(Path(dirpath) / name, report_root)
                               + "/", None, HIDDEN_REASON))
      dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
      for name in sorted(filenames):
        rel = _relative(Path(dirpath) / name, report_root)
        if is_hidden(name):
          ignored.append(Problem(rel, None, HIDDEN_REASON))
        elif is_image_file(name):
          items.append(SourceItem(path=Path(dirpath) / name, label=label,
                                  file=rel))
          count += 1
        else:
          ignored.append(Problem(rel, None, "ignored: not an image file "
                                 f"(extensions {', '.join(IMAGE_EXTENSIONS)})"))
    if not count:
      problems.append(Problem(_relative(root / class_dir, report_root) + "/",
                              None, EMPTY_CLASS_REASON))
  for entry in sorted(root.iterdir()):
    if entry.is_file():
      ignored.append(Problem(
          _relative(entry, report_root), None,
          HIDDEN_REASON if is_hidden(entry.name)
          else "ignored: file outside the class folders"))
  return SourceListing(root=root, items=items, problems=problems,
                       ignored=ignored)


def has_images(folder: Path) -> bool:
  """Whether ``folder`` holds an image file (recursively, hidden ones not
  counted), as ``list_class_folders`` would list it."""
  for _, dirnames, filenames in os.walk(folder, followlinks=True):
    dirnames[:] = [d for d in dirnames if not is_hidden(d)]
    if any(is_image_file(n) and not is_hidden(n) for n in filenames):
      return True
  return False


def _check_class_set(root: Path, expected: Sequence[str], dataset: str,
                     instructions: str) -> None:
  found = {d.name for d in _subdirs(root)}
  missing = [c for c in expected if c not in found]
  extra = sorted(found - set(expected))
  if missing or extra:
    lines = [f"{root} does not hold exactly the {len(expected)} {dataset} "
             "class folders."]
    if missing:
      lines.append(f"Missing class folders: {missing}")
    if extra:
      lines.append(f"Unexpected folders: {extra} (use --dataset image_folder "
                   "for a custom class list)")
    raise ManualDataError("\n".join(lines) + f"\n\n{instructions}")


def list_fixed_classes(manual_dir: Path, classes: Sequence[str], dataset: str,
                       instructions: str) -> SourceListing:
  """Finds and lists a dataset with a known class-folder list (CropDisease,
  EuroSAT) at ``manual_dir`` or one/two levels below it."""
  wanted = set(classes)

  def looks_like_root(d: Path) -> bool:
    names = {s.name for s in _subdirs(d)}
    # Half the class folders locate the root; the exact check below then says
    # precisely what is missing or extra instead of "not found".
    return len(names & wanted) * 2 >= len(wanted)

  root = find_dir(manual_dir, looks_like_root,
                  f"the {dataset} class folders ({classes[0]}, ...)",
                  instructions)
  _check_class_set(root, classes, dataset, instructions)
  return list_class_folders(root, classes, manual_dir)


def scan_image_folder(
    manual_dir: Path,
    class_names_json: os.PathLike[str] | str | None = None,
) -> tuple[list[str], list[str]]:
  """Class folders and prompt names of a user's one-folder-per-class dataset.

  Args:
    manual_dir: the folder holding one subfolder per class (not searched
      deeper: the user points at it).
    class_names_json: optional JSON file mapping folder name -> prompt name;
      folders it does not name use their name with ``_`` replaced by a space.

  Returns:
    (class_dirs sorted, prompt_names in the same order).
  """
  class_dirs = [d.name for d in _subdirs(manual_dir)]
  if not class_dirs:
    raise ManualDataError(
        f"{manual_dir} has no class subfolders; an image folder dataset needs "
        "one subfolder per class (e.g. DIR/cat/*.jpg, DIR/dog/*.jpg).")
  prompts = [prompt_name(c) for c in class_dirs]
  if class_names_json is not None:
    path = user_path(class_names_json)
    try:
      mapping = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise ManualDataError(
          f"Cannot read class-name JSON {path}: {e}. Expected a JSON object "
          '{"folder_name": "prompt name", ...}.') from e
    if not isinstance(mapping, dict):
      raise ManualDataError(
          f"Class-name JSON {path} holds a {type(mapping).__name__}; expected "
          'a JSON object {"folder_name": "prompt name", ...}.')
    for key, value in mapping.items():
      if key not in class_dirs:
        raise ManualDataError(
            f"Class-name JSON {path}: key {key!r} is not a class folder of "
            f"{manual_dir}; the folders are {class_dirs}.")
      if not isinstance(value, str) or not value.strip():
        raise ManualDataError(
            f"Class-name JSON {path}: value for {key!r} is {value!r}; "
            "expected a non-empty string.")
      prompts[class_dirs.index(key)] = value
  return class_dirs, prompts


# ----------------------------------------------------------------------------
# CSV datasets.
# ----------------------------------------------------------------------------


def _read_csv(path: Path) -> Iterator[tuple[int, list[str]]]:
  """Yields (line number, cells) for every non-empty row after the header."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    for line, cells in enumerate(csv.reader(f), start=1):
      if line == 1 or not any(c.strip() for c in cells):
        continue
      yield line, cells


def _csv_header(path: Path) -> list[str]:
  with open(path, newline="", encoding="utf-8-sig") as f:
    return [c.strip() for c in next(csv.reader(f), [])]


def list_chestx(manual_dir: Path, instructions: str) -> SourceListing:
  """Lists ChestX-ray14 as the CDFSL benchmark does.

  The label file, ``Data_Entry_2017.csv`` or the NIH box's current
  ``Data_Entry_2017_v2020.csv`` (the first when both exist; found at the
  manual folder or up to two levels below; ``csv_name`` of the listing says
  which), gives the image name (column 0) and ``|``-separated labels
  (column 1). Kept: rows with exactly one label among ``CHESTX_CLASSES``
  (so "No Finding", "Pneumonia", the other six findings and multi-label rows
  are excluded, and counted, as are image files no CSV row names). Images
  are looked up in ``images/`` beside the CSV, or in the NIH archive's
  ``images_NNN/images/`` folders; hidden files there (macOS ``._*``) are
  ignored and reported.
  """
  root = find_dir(manual_dir,
                  lambda d: any((d / c).is_file() for c in CHESTX_CSVS),
                  " or ".join(CHESTX_CSVS), instructions)
  csv_path = next(root / c for c in CHESTX_CSVS if (root / c).is_file())
  header = _csv_header(csv_path)
  if len(header) < 2 or header[:2] != ["Image Index", "Finding Labels"]:
    raise ManualDataError(
        f"{csv_path} line 1: header starts with {header[:2]}; expected "
        f"['Image Index', 'Finding Labels'] (the NIH {csv_path.name}).")
  image_dirs = [root / "images"] + sorted(root.glob("images_*/images")) + [
      d for d in sorted(root.glob("images_*")) if d.is_dir()]
  image_dirs = [d for d in image_dirs if d.is_dir()]
  if not image_dirs:
    raise ManualDataError(
        f"No images/ folder beside {csv_path}.\n\n{instructions}")
  by_name: dict[str, Path] = {}
  ignored: list[Problem] = []
  for d in image_dirs:
    with os.scandir(d) as it:
      for e in sorted(it, key=lambda e: e.name):
        if is_hidden(e.name):
          ignored.append(Problem(_relative(Path(e.path), manual_dir), None,
                                 HIDDEN_REASON))
        elif e.is_file():
          by_name.setdefault(e.name, Path(e.path))

  items, problems = [], []
  excluded: collections.Counter[str] = collections.Counter()
  listed: set[str] = set()
  for line, cells in _read_csv(csv_path):
    if cells:
      listed.add(cells[0].strip())
    if len(cells) < 2:
      problems.append(Problem(cells[0] if cells else "", line,
                              f"expected at least 2 columns, got {cells}"))
      continue
    name, labels = cells[0].strip(), [x.strip() for x in cells[1].split("|")]
    rel = _relative(root / "images" / name, manual_dir)
    unknown = [x for x in labels if x not in CHESTX_ALL_LABELS]
    if unknown:
      problems.append(Problem(
          rel, line,
          f"unknown label {unknown[0]!r}; expected one of "
          f"{sorted(CHESTX_ALL_LABELS)}"))
      continue
    if len(labels) != 1:
      excluded["multi-label row"] += 1
      continue
    if labels[0] not in CHESTX_CLASSES:
      excluded[f"single label {labels[0]!r} not used"] += 1
      continue
    path = by_name.get(name)
    if path is None:
      problems.append(Problem(rel, line, "image file not found in " +
                              ", ".join(_relative(d, manual_dir)
                                        for d in image_dirs)))
      continue
    items.append(SourceItem(path=path, label=CHESTX_CLASSES.index(labels[0]),
                            file=_relative(path, manual_dir), row=line))
  unlisted = len(by_name.keys() - listed)
  if unlisted:
    excluded["image file not listed in the CSV"] = unlisted
  return SourceListing(root=root, items=items, problems=problems,
                       ignored=ignored,
                       excluded=dict(sorted(excluded.items())),
                       csv_name=_relative(csv_path, manual_dir))


def list_isic(manual_dir: Path, instructions: str) -> SourceListing:
  """Lists ISIC 2018 Task 3 (training set).

  The ground-truth CSV has a column ``image`` and one-hot float columns MEL,
  NV, BCC, AKIEC, BKL, DF, VASC; the label is the column holding 1. A row that
  is not exactly one-hot is an unknown label.
  """
  root = find_dir(
      manual_dir, lambda d: (d / ISIC_GT_DIR / ISIC_CSV).is_file(),
      f"{ISIC_GT_DIR}/{ISIC_CSV}", instructions)
  csv_path = root / ISIC_GT_DIR / ISIC_CSV
  image_dir = root / ISIC_INPUT_DIR
  if not image_dir.is_dir():
    raise ManualDataError(
        f"No {ISIC_INPUT_DIR}/ folder beside {ISIC_GT_DIR}/ in {root}.\n\n"
        f"{instructions}")
  header = _csv_header(csv_path)
  missing = [c for c in ("image",) + ISIC_CLASSES if c not in header]
  if missing:
    raise ManualDataError(
        f"{csv_path} line 1: columns {missing} missing; expected image, "
        f"{', '.join(ISIC_CLASSES)}.")
  col = {c: header.index(c) for c in ("image",) + ISIC_CLASSES}
  csv_name = _relative(csv_path, manual_dir)
  items, problems = [], []
  listed: set[str] = set()
  for line, cells in _read_csv(csv_path):
    name = cells[col["image"]].strip() if len(cells) > col["image"] else ""
    listed.add(f"{name}.jpg")
    rel = _relative(image_dir / f"{name}.jpg", manual_dir)
    try:
      values = [float(cells[col[c]]) for c in ISIC_CLASSES]
    except (IndexError, ValueError):
      problems.append(Problem(
          rel, line, f"unknown label: cells {cells[1:]} are not "
          f"{len(ISIC_CLASSES)} numbers (one-hot {', '.join(ISIC_CLASSES)})"))
      continue
    if sorted(values) != [0.0] * (len(values) - 1) + [1.0]:
      onehot = dict(zip(ISIC_CLASSES, values, strict=True))
      problems.append(Problem(
          rel, line, f"unknown label: {onehot} is not one-hot over "
          f"{', '.join(ISIC_CLASSES)}"))
      continue
    path = image_dir / f"{name}.jpg"
    if not path.is_file():
      problems.append(Problem(rel, line, "image file not found"))
      continue
    items.append(SourceItem(path=path, label=values.index(1.0),
                            file=_relative(path, manual_dir), row=line))
  ignored = [
      Problem(_relative(p, manual_dir), None,
              HIDDEN_REASON if is_hidden(p.name)
              else "ignored: not listed in the ground-truth CSV")
      for p in sorted(image_dir.iterdir())
      if p.is_file() and p.name not in listed]
  return SourceListing(root=root, items=items, problems=problems,
                       ignored=ignored, csv_name=csv_name)
