"""CLIP-LoRA's K-shot split: the same images for the same (K, seed).

CLIP-LoRA (MaxZanella/CLIP-LoRA) seeds Python's ``random`` with the run's
seed (``main.py:17``, ``run_utils.py:11-15``) and, while building the
dataset, draws:

  * every dataset but ImageNet (``datasets/caltech101.py:21-24`` and the
    like): first the val set with ``min(K, 4)`` shots, then the train set with
    K shots, each by ``generate_fewshot_dataset`` (``datasets/utils.py``):
    per label in order of first appearance, ``random.sample(items, k)``, or
    ``random.choices(items, k=k)`` when the class has fewer than k items;
  * ImageNet (``datasets/imagenet.py``): per label in label order,
    ``random.sample(items, K + min(4, K))``; the first K are train, the rest
    val.

Nothing else draws from ``random`` in between, so replaying these calls on
the same item lists gives the same images. ``fewshot_split`` does exactly
that with a private ``random.Random(seed)`` (the same generator as the
seeded global one, without touching global state).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import logging

from jaxfsl.data.fewshot.layouts import Item


def _by_label(items: Sequence[Item]) -> dict[int, list[Item]]:
  groups: dict[int, list[Item]] = {}
  for item in items:
    groups.setdefault(item[1], []).append(item)
  return groups


def sample_per_class(rng: random.Random, items: Sequence[Item],
                     shots: int, split: str = "train",
                     short: list[dict[str, Any]] | None = None
                     ) -> list[Item]:
  """Dassl/CLIP-LoRA ``generate_fewshot_dataset`` with ``repeat=True``.

  ``shots < 1`` returns ``items`` unchanged, as the original. A class with
  fewer than ``shots`` items is sampled with replacement, as the original
  does silently; here a warning names the class, its image count and the
  shots, and, given ``short``, a record ``{"split", "label", "class",
  "images", "shots", "unique"}`` (``unique``: distinct images drawn) is
  appended to it.

  Args:
    rng: the split's generator (drawn from exactly as the original does).
    items: (relpath, label, classname) items in file order.
    shots: images per class.
    split: the split's name, for the warning and the record.
    short: collects the records of the classes sampled with replacement.
  """
  if shots < 1:
    return list(items)
  out: list[Item] = []
  for group in _by_label(items).values():
    if len(group) >= shots:
      out.extend(rng.sample(group, shots))
      continue
    # rng.choices over indices draws what rng.choices(group, k=shots) does.
    drawn = rng.choices(range(len(group)), k=shots)
    out.extend(group[i] for i in drawn)
    unique = len(set(drawn))
    _, label, classname = group[0]
    logging.warning(
        "Few-shot %s split: class %r (label %d) has %d images, fewer than "
        "shot=%d; sampled with replacement (%d distinct images).", split,
        classname, label, len(group), shots, unique)
    if short is not None:
      short.append({"split": split, "label": int(label), "class": classname,
                    "images": len(group), "shots": int(shots),
                    "unique": unique})
  return out


def fewshot_split(splits: dict[str, Sequence[Item]], shots: int, seed: int,
                  imagenet: bool = False,
                  short: list[dict[str, Any]] | None = None
                  ) -> dict[str, list[Item]]:
  """The K-shot train and val sets CLIP-LoRA uses.

  Args:
    splits: the dataset's "train" and "val" item lists in file order (items
      are (relpath, label, classname); ImageNet: "train" only, in
      ImageFolder order).
    shots: K >= 1.
    seed: CLIP-LoRA's ``--seed``.
    imagenet: use ImageNet's procedure.
    short: collects a record per class sampled with replacement (fewer
      images than its split's shots; ``sample_per_class``), each also
      logged as a warning.

  Returns:
    {"train": [...], "val": [...]} items.

  Raises:
    ValueError: K < 1, or (ImageNet) a class with fewer than K + min(4, K)
      images (CLIP-LoRA's ``random.sample`` raises there too).
  """
  if shots < 1:
    raise ValueError(f"shots must be >= 1, got {shots}")
  rng = random.Random(seed)
  if not imagenet:
    val = sample_per_class(rng, splits["val"], min(shots, 4), "val", short)
    train = sample_per_class(rng, splits["train"], shots, "train", short)
    return {"train": train, "val": val}
  n_val = min(4, shots)
  train, val = [], []
  groups = _by_label(splits["train"])
  for label in sorted(groups):
    group = groups[label]
    if len(group) < shots + n_val:
      raise ValueError(f"ImageNet class {label} has {len(group)} train "
                       f"images; {shots} + {n_val} shots need more.")
    drawn = rng.sample(group, shots + n_val)
    train += drawn[:shots]
    val += drawn[shots:]
  return {"train": train, "val": val}


def write_split(path: os.PathLike[str] | str,
                split: dict[str, list[Item]]) -> Path:
  """Writes ``{"train": [[relpath, label, classname], ...], "val": [...]}``
  (atomically)."""
  path = Path(path)
  data = {k: [[r, int(y), c] for r, y, c in split[k]] for k in ("train", "val")}
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(data, indent=1) + "\n")
  os.replace(tmp, path)
  return path


def read_split(path: os.PathLike[str] | str) -> dict[str, list[Item]]:
  data = json.loads(Path(path).read_text())
  return {k: [(r, int(y), c) for r, y, c in data[k]] for k in ("train", "val")}
