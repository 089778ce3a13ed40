"""Support-set augmentations of the release (METHOD.md), on PIL images.

Every image is first resized to the model's size S x S without cropping
(bilinear, as torchvision's ``Resize((S, S))`` on a PIL image). Each support
image then gets 5 views, drawn once per episode:

  view 0  identity (the resized image)
  view 1  rotation, then colour jitter, then horizontal flip (p = 0.5)
  view 2  rotation
  view 3  colour jitter
  view 4  horizontal flip (p = 0.5)

Rotation: angle uniform in [-45, 45] degrees, counter-clockwise for positive
angles (PIL ``Image.rotate``, which torchvision's RandomRotation calls),
nearest neighbour, same size, black fill. Jitter: PIL ImageEnhance
Brightness, then Contrast, then Color (saturation), each by a factor uniform
in [0.6, 1.4]. Queries get view 0 only.

Pixels stay uint8 on the host; ``normalize`` gives the float32 model input
(the engine does the same on device).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance

from jaxfsl.preprocess import resize_image

NUM_VIEWS = 5
MAX_ROTATION = 45.0
JITTER_RANGE = (0.6, 1.4)
FLIP_PROB = 0.5
_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast,
              ImageEnhance.Color)


@dataclasses.dataclass(frozen=True)
class ViewParams:
  """Random parameters of the support views of one episode.

  Attributes:
    angles: float64 [n, 2] rotation angles (degrees) of views 1 and 2.
    jitter: float64 [n, 2, 3] (brightness, contrast, saturation) factors of
      views 1 and 3.
    flips: bool [n, 2] whether views 1 and 4 are flipped.
  """
  angles: np.ndarray
  jitter: np.ndarray
  flips: np.ndarray


def sample_view_params(rng: np.random.Generator, n: int) -> ViewParams:
  """Draws the view parameters of ``n`` support images.

  Only ``rng.random`` is used (affine maps of uniform [0, 1) floats), the
  most stable part of NumPy's Generator API, so that episodes stay the same
  across NumPy versions.
  """
  low, high = JITTER_RANGE
  angles = MAX_ROTATION * (2.0 * rng.random((n, 2)) - 1.0)
  jitter = low + (high - low) * rng.random((n, 2, 3))
  flips = rng.random((n, 2)) < FLIP_PROB
  return ViewParams(angles=angles, jitter=jitter, flips=flips)


def resize(image: Image.Image, size: int) -> Image.Image:
  """Resizes to size x size, no crop: the one resize rule of jaxfsl
  (``jaxfsl.preprocess.resize_image``, bilinear as torchvision's
  ``Resize((S, S))`` on PIL images), shared with ``Model.preprocess``."""
  return resize_image(image, size)


def rotate(image: Image.Image, angle: float) -> Image.Image:
  """Rotates counter-clockwise by ``angle`` degrees: nearest neighbour, same
  size, black fill."""
  return image.rotate(float(angle), resample=Image.Resampling.NEAREST,
                      expand=False, fillcolor=0)


def jitter(image: Image.Image, factors: Sequence[float]) -> Image.Image:
  """Brightness, then contrast, then colour (saturation), each by its factor
  (1 = unchanged), with PIL ImageEnhance."""
  for enhancer, factor in zip(_ENHANCERS, factors, strict=True):
    image = enhancer(image).enhance(float(factor))
  return image if image.mode == "RGB" else image.convert("RGB")


def hflip(image: Image.Image) -> Image.Image:
  """Mirrors left <-> right."""
  return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def to_array(image: Image.Image) -> np.ndarray:
  """uint8 [H, W, 3] pixels of an RGB image."""
  if image.mode != "RGB":
    image = image.convert("RGB")
  return np.asarray(image, dtype=np.uint8)


def support_views(image: Image.Image, angles: Sequence[float],
                  jitter_factors: np.ndarray,
                  flips: Sequence[bool]) -> list[Image.Image]:
  """The 5 views of one (already resized) support image.

  Args:
    image: RGB image, already resized to S x S.
    angles: [2] rotation angles of views 1 and 2.
    jitter_factors: [2, 3] jitter factors of views 1 and 3.
    flips: [2] flip flags of views 1 and 4.

  Returns:
    5 RGB images of size S x S, in view order.
  """
  view1 = jitter(rotate(image, angles[0]), jitter_factors[0])
  if flips[0]:
    view1 = hflip(view1)
  view4 = hflip(image) if flips[1] else image
  return [image, view1, rotate(image, angles[1]),
          jitter(image, jitter_factors[1]), view4]


def normalize(pixels: np.ndarray, mean: Sequence[float],
              std: Sequence[float]) -> np.ndarray:
  """uint8 pixels -> float32 model input, ``(pixels / 255 - mean) / std``.

  Args:
    pixels: uint8 [..., 3].
    mean: [3] per-channel mean on the [0, 1] scale (e.g. CLIP's
      (0.48145466, 0.4578275, 0.40821073)).
    std: [3] per-channel std on the [0, 1] scale.

  Returns:
    float32 [..., 3], as torchvision ``ToTensor`` + ``Normalize`` (but NHWC).
  """
  if pixels.dtype != np.uint8:
    raise TypeError(f"normalize expects uint8 pixels, got {pixels.dtype}.")
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if mean.shape != (pixels.shape[-1],) or std.shape != mean.shape:
    raise ValueError(f"mean {mean.shape} / std {std.shape} must be "
                     f"[{pixels.shape[-1]}] for pixels {pixels.shape}.")
  return (pixels.astype(np.float32) / np.float32(255.0) - mean) / std
