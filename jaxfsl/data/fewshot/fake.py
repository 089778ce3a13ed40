"""Tiny CoOp-layout folders for tests and demos (learnable synthetic images).

    root = make_coop_folder(tmp, "caltech101", num_classes=4,
                            counts={"train": 6, "val": 3, "test": 4})

writes ``tmp/caltech-101/101_ObjectCategories/<class>/<i>.jpg`` and
``split_zhou_Caltech101.json`` (FGVCAircraft: variants.txt and
images_variant_*.txt; ImageNet: train/<wnid>/ and val/<wnid>/). Images are
``jaxfsl.data.synthetic`` shapes (class = shape and colour).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from jaxfsl.data import synthetic
from jaxfsl.data.fewshot import layouts

DEFAULT_COUNTS = {"train": 6, "val": 3, "test": 4}


def _save(path: Path, seed: int, label: int, index: int, size: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(synthetic.make_image(seed, label, index, size)).save(
      path, quality=95)


def class_names(name: str, num_classes: int) -> list[str]:
  """Names with underscores (as CoOp's jsons have), unique per class."""
  base = synthetic.class_names(num_classes)
  return [f"{name}_{c.replace(' ', '_')}" for c in base]


def make_coop_folder(parent: os.PathLike[str] | str, name: str, *,
                     num_classes: int = 4,
                     counts: dict[str, int] | None = None,
                     image_size: int = 32, seed: int = 0,
                     folder: str | None = None) -> Path:
  """Writes a small dataset folder in the CoOp layout; returns it.

  Args:
    parent: where the dataset folder goes.
    name: one of ``layouts.NAMES``.
    num_classes: classes (ImageNet: the first wnids, CLIP's names).
    counts: images per class per split (ImageNet: "train" and "test").
    image_size: square image side.
    seed: image seed.
    folder: dataset folder name (default: the layout's first).
  """
  spec = layouts.SPECS[name]
  counts = dict(DEFAULT_COUNTS if counts is None else counts)
  root = Path(parent) / (folder or spec.folders[0])
  names = class_names(name, num_classes)
  image_root = root / spec.image_dir if spec.image_dir else root
  index = 0
  if spec.kind == "imagenet":
    wnids = sorted(layouts.imagenet_class_names())[:num_classes]
    for split, sub in (("train", "train"), ("test", "val")):
      for c in range(num_classes):
        for i in range(counts[split]):
          _save(root / sub / wnids[c] / f"img_{i:03d}.JPEG", seed, c,
                index, image_size)
          index += 1
    return root
  rows: dict[str, list[list]] = {s: [] for s in layouts.SPLITS}
  for split in layouts.SPLITS:
    # Interleave classes so that "first appearance" order differs from
    # label order (label 1 first), as in real split files.
    order = [1, 0, *range(2, num_classes)] if num_classes > 1 else [0]
    for i in range(counts[split]):
      for c in order:
        rel = f"{names[c]}/{split}_{i:03d}.jpg"
        _save(image_root / rel, seed, c, index, image_size)
        index += 1
        rows[split].append([rel, c, names[c]])
  if spec.kind == "json":
    root.mkdir(parents=True, exist_ok=True)
    (root / spec.split_file).write_text(json.dumps(rows))
  else:  # fgvc: ids in images/, variant names with spaces.
    variants = [n.replace("_", " ") for n in names]
    (root / "variants.txt").write_text("\n".join(variants) + "\n")
    for split in layouts.SPLITS:
      lines = []
      for rel, c, _ in rows[split]:
        ident = rel.replace("/", "_")[:-4]
        os.replace(image_root / rel, image_root / f"{ident}.jpg")
        lines.append(f"{ident} {variants[c]}")
      (root / f"images_variant_{split}.txt").write_text("\n".join(lines) +
                                                        "\n")
    for d in sorted(image_root.iterdir()):
      if d.is_dir():
        d.rmdir()
  return root
