"""CLIP-LoRA's image transforms, on PIL images, deterministic per rng.

* train (CLIP-LoRA ``main.py:38-43``): torchvision
  ``RandomResizedCrop(S, scale=(0.08, 1), ratio=(3/4, 4/3), BICUBIC)`` then
  ``RandomHorizontalFlip(0.5)``; the crop box follows torchvision's
  ``RandomResizedCrop.get_params`` (10 tries, then a central crop), drawn
  from a numpy Generator instead of torch's RNG.
* eval (CLIP's ``preprocess``): ``Resize(S, BICUBIC)`` of the shorter side,
  then ``CenterCrop(S)`` (torchvision's rounding).

Outputs are uint8 [S, S, 3]; normalisation happens on the device.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def crop_box(rng: np.random.Generator, width: int, height: int,
             scale: tuple[float, float] = SCALE,
             ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
  """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def train_view(image: Image.Image, size: int, rng: np.random.Generator,
               resample: str = "bicubic") -> np.ndarray:
  """RandomResizedCrop(size) + horizontal flip -> uint8 [size, size, 3]."""
  image = image.convert("RGB")
  top, left, h, w = crop_box(rng, image.width, image.height)
  out = image.resize((size, size), _RESAMPLE[resample],
                     box=(left, top, left + w, top + h))
  if rng.uniform() < 0.5:
    out = out.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(out, np.uint8)


def eval_view(image: Image.Image, size: int, resample: str = "bicubic",
              center_crop: bool = True) -> np.ndarray:
  """Shorter side to ``size`` + centre crop (CLIP's test preprocessing),
  or, with ``center_crop=False``, a plain resize to size x size (SigLIP's).
  Returns uint8 [size, size, 3]."""
  image = image.convert("RGB")
  if not center_crop:
    return np.asarray(image.resize((size, size), _RESAMPLE[resample]),
                      np.uint8)
  w, h = image.size
  if w <= h:
    nw, nh = size, int(size * h / w)
  else:
    nw, nh = int(size * w / h), size
  if (nw, nh) != (w, h):
    image = image.resize((nw, nh), _RESAMPLE[resample])
  top = int(round((nh - size) / 2.0))
  left = int(round((nw - size) / 2.0))
  return np.asarray(image.crop((left, top, left + size, top + size)),
                    np.uint8)
