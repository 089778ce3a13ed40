"""Reading the CSV-labelled manual downloads: ChestX-ray14 and ISIC 2018.

Each lister finds the label file in the user's manual folder, checks its
header, and returns a ``sources.SourceListing`` (the examples kept, the bad
rows with their CSV line, the files ignored and the rows left out on
purpose). The one-folder-per-class datasets are in ``jaxfsl.data.sources``.
"""

from __future__ import annotations

import collections
import csv
import os
from collections.abc import Iterator
from pathlib import Path

from jaxfsl.data.classes import CHESTX_ALL_LABELS, CHESTX_CLASSES, ISIC_CLASSES
from jaxfsl.data.errors import ManualDataError
from jaxfsl.data.sources import (
    HIDDEN_REASON,
    Problem,
    SourceItem,
    SourceListing,
    find_dir,
    is_hidden,
    relative_path,
)

CHESTX_CSV = "Data_Entry_2017.csv"
# The label files accepted, in order of preference: the NIH box now serves
# the 2020 revision of the file under this name (same two first columns).
CHESTX_CSVS = (CHESTX_CSV, "Data_Entry_2017_v2020.csv")
ISIC_INPUT_DIR = "ISIC2018_Task3_Training_Input"
ISIC_GT_DIR = "ISIC2018_Task3_Training_GroundTruth"
ISIC_CSV = "ISIC2018_Task3_Training_GroundTruth.csv"


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
          ignored.append(Problem(relative_path(Path(e.path), manual_dir), None,
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
    rel = relative_path(root / "images" / name, manual_dir)
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
                              ", ".join(relative_path(d, manual_dir)
                                        for d in image_dirs)))
      continue
    items.append(SourceItem(path=path, label=CHESTX_CLASSES.index(labels[0]),
                            file=relative_path(path, manual_dir), row=line))
  unlisted = len(by_name.keys() - listed)
  if unlisted:
    excluded["image file not listed in the CSV"] = unlisted
  return SourceListing(root=root, items=items, problems=problems,
                       ignored=ignored,
                       excluded=dict(sorted(excluded.items())),
                       csv_name=relative_path(csv_path, manual_dir))


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
  csv_name = relative_path(csv_path, manual_dir)
  items, problems = [], []
  listed: set[str] = set()
  for line, cells in _read_csv(csv_path):
    name = cells[col["image"]].strip() if len(cells) > col["image"] else ""
    listed.add(f"{name}.jpg")
    rel = relative_path(image_dir / f"{name}.jpg", manual_dir)
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
                            file=relative_path(path, manual_dir), row=line))
  ignored = [
      Problem(relative_path(p, manual_dir), None,
              HIDDEN_REASON if is_hidden(p.name)
              else "ignored: not listed in the ground-truth CSV")
      for p in sorted(image_dir.iterdir())
      if p.is_file() and p.name not in listed]
  return SourceListing(root=root, items=items, problems=problems,
                       ignored=ignored, csv_name=csv_name)
