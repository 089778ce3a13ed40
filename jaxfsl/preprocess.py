"""Image preprocessing: resize to S x S (no crop) and normalise.

The statistics and the resize filter of each model family live in
``jaxfsl.models.families`` (``Family.preprocessing``); a checkpoint may
override the statistics (e.g. a Hugging Face ``preprocessor_config.json``).
``resize_image`` is the one resize used both here and by the episode pipeline
(``jaxfsl.data``), so a single image and an episode's images are prepared
alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image

RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def resize_image(image: Image.Image, size: int,
                 resample: str = "bilinear") -> Image.Image:
  """``image`` resized to ``size`` x ``size`` pixels, aspect not kept, no crop.

  The method resizes every image this way (METHOD.md, "Episodes"); bilinear
  is Pillow's antialiased filter, which is what torchvision's
  ``Resize((S, S))`` on a PIL image (the method's release) calls.

  Raises:
    ValueError: unknown ``resample`` (expected a key of ``RESAMPLE``).
  """
  if resample not in RESAMPLE:
    raise ValueError(f"resample {resample!r}: expected one of "
                     f"{tuple(RESAMPLE)}")
  if image.size == (size, size):
    return image
  return image.resize((size, size), RESAMPLE[resample])


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a checkpoint expects its pixels.

  The method resizes every image to S x S without cropping (METHOD.md), so
  this differs on purpose from Hugging Face's resize-shortest-side + centre
  crop.

  Attributes:
    image_size: S.
    mean, std: per-channel statistics on the [0, 1] scale.
    resample: resize filter, a key of ``RESAMPLE``.
  """

  image_size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  resample: str = "bilinear"

  def __post_init__(self):
    if self.resample not in RESAMPLE:
      raise ValueError(f"resample {self.resample!r}: expected one of "
                       f"{tuple(RESAMPLE)}")

  def resize(self, image: Image.Image) -> np.ndarray:
    """PIL image (any size/mode) -> uint8 [S, S, 3]."""
    image = resize_image(image.convert("RGB"), self.image_size, self.resample)
    return np.asarray(image, dtype=np.uint8)

  def normalize(self, pixels: np.ndarray) -> np.ndarray:
    """uint8 [..., S, S, 3] -> float32 normalised pixels, same shape."""
    mean = np.asarray(self.mean, np.float32) * 255.0
    std = np.asarray(self.std, np.float32) * 255.0
    return (np.asarray(pixels, np.float32) - mean) / std

  def __call__(self, images: np.ndarray | Sequence[Image.Image]) -> np.ndarray:
    """uint8 [N, H, W, 3] array or PIL images -> float32 [N, S, S, 3].

    Raises:
      ValueError: an array that is not uint8 [N, H, W, 3].
    """
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
