"""Reading the user's manual downloads: class folders.

This module knows the on-disk layout of the one-folder-per-class datasets
and turns it into a list of ``SourceItem`` (file, label, CSV row) plus the
problems found on the way (bad rows, empty classes) and the files ignored
(hidden, non-image); ``csv_sources`` does the same for the CSV-labelled ones
(ChestX-ray14, ISIC 2018) with this module's types. Neither depends on TFDS
so that they can be tested and reused alone; the TFDS builders in
``jaxfsl.data.builders`` call them. Class names live in
``jaxfsl.data.classes``, image decoding in ``jaxfsl.data.images``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
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
# File kinds.
# ----------------------------------------------------------------------------

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


def relative_path(path: Path, root: Path) -> str:
  """``path`` relative to ``root`` in POSIX form, for reports; ``path`` as
  given when it is not below ``root``."""
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
        ignored.append(Problem(relative_path(Path(dirpath) / name, report_root)
                               + "/", None, HIDDEN_REASON))
      dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
      for name in sorted(filenames):
        rel = relative_path(Path(dirpath) / name, report_root)
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
      problems.append(Problem(
          relative_path(root / class_dir, report_root) + "/", None,
          EMPTY_CLASS_REASON))
  for entry in sorted(root.iterdir()):
    if entry.is_file():
      ignored.append(Problem(
          relative_path(entry, report_root), None,
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
