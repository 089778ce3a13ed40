"""Image preprocessing per checkpoint: resize (no crop) and normalise."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

_RESAMPLE = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "nearest": Image.NEAREST,
}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a checkpoint expects its pixels.

  The method resizes every image to S x S without cropping (METHOD.md), so
  this differs on purpose from Hugging Face's resize-shortest-side + centre
  crop.

  Attributes:
    image_size: S.
    mean, std: per-channel statistics on the [0, 1] scale.
    resample: PIL filter used when resizing.
  """

  image_size: int
  mean: tuple[float, float, float] = CLIP_MEAN
  std: tuple[float, float, float] = CLIP_STD
  resample: str = "bicubic"

  def __post_init__(self):
    if self.resample not in _RESAMPLE:
      raise ValueError(f"resample {self.resample!r}: expected one of "
                       f"{tuple(_RESAMPLE)}")

  def resize(self, image: Image.Image) -> np.ndarray:
    """PIL image (any size/mode) -> uint8 [S, S, 3]."""
    image = image.convert("RGB")
    if image.size != (self.image_size, self.image_size):
      image = image.resize((self.image_size, self.image_size),
                           _RESAMPLE[self.resample])
    return np.asarray(image, dtype=np.uint8)

  def normalize(self, pixels: np.ndarray) -> np.ndarray:
    """uint8 [..., S, S, 3] -> float32 normalised pixels, same shape."""
    mean = np.asarray(self.mean, np.float32) * 255.0
    std = np.asarray(self.std, np.float32) * 255.0
    return (np.asarray(pixels, np.float32) - mean) / std

  def __call__(self, images: np.ndarray | Sequence[Image.Image]) -> np.ndarray:
    """uint8 [N, H, W, 3] array or PIL images -> float32 [N, S, S, 3]."""
    if isinstance(images, np.ndarray):
      if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 images [N, H, W, 3], got shape {images.shape}")
      if images.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 images, got {images.dtype}; pass raw pixels in "
            "[0, 255], not already-normalised floats")
      if images.shape[1:3] != (self.image_size, self.image_size):
        images = [Image.fromarray(x) for x in images]
      else:
        return self.normalize(images)
    return self.normalize(np.stack([self.resize(im) for im in images]))
