"""A synthetic, learnable image-classification dataset for demos and tests.

Class ``c`` is a coloured shape on a dark textured background: its shape is
``SHAPES[c % 8]`` and its colour ``COLOURS[(c + c // 8) % 8]``, so the first 64
classes are distinct (shape, colour) pairs; classes 64 and up add a background
tint per block of 64 (and a number in the name). Within a class the position,
size, colour shade, background and pixel noise vary, so the task is learnable
but not trivial. Every image is a pure function of (seed, class, index).
"""

from __future__ import annotations

import numpy as np

SHAPES = (
    "circle", "square", "triangle", "ring", "cross", "striped square",
    "checkerboard", "diamond",
)
COLOURS = (
    ("red", (220, 40, 40)),
    ("green", (40, 180, 60)),
    ("blue", (40, 80, 230)),
    ("yellow", (230, 210, 40)),
    ("purple", (150, 60, 190)),
    ("orange", (240, 140, 30)),
    ("cyan", (40, 200, 210)),
    ("white", (235, 235, 235)),
)
_TINTS = np.array(
    [(0, 0, 0), (40, 0, 0), (0, 40, 0), (0, 0, 40), (30, 30, 0), (0, 30, 30)],
    np.float32)


def _parts(c: int) -> tuple[int, int, int]:
  block, k = divmod(c, len(SHAPES) * len(COLOURS))
  shape = k % len(SHAPES)
  colour = (k + k // len(SHAPES)) % len(COLOURS)
  return shape, colour, block


def class_names(num_classes: int) -> list[str]:
  """Prompt-ready class names, e.g. ``["red circle", "green square", ...]``."""
  names = []
  for c in range(num_classes):
    shape, colour, block = _parts(c)
    name = f"{COLOURS[colour][0]} {SHAPES[shape]}"
    names.append(name if block == 0 else f"{name} {block + 1}")
  return names


def _mask(shape: int, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
  ax, ay = np.abs(dx), np.abs(dy)
  rad = np.sqrt(dx * dx + dy * dy)
  square = np.maximum(ax, ay) < 0.85 * r
  if shape == 0:
    return rad < r
  if shape == 1:
    return square
  if shape == 2:  # Upward triangle.
    return (dy < 0.8 * r) & (ax < (dy + r) * 0.55)
  if shape == 3:
    return (rad < r) & (rad > 0.55 * r)
  if shape == 4:
    return ((ax < 0.3 * r) & (ay < r)) | ((ay < 0.3 * r) & (ax < r))
  if shape == 5:
    return square & (np.floor((dy + r) / (0.34 * r)) % 2 == 0)
  if shape == 6:
    cell = 0.45 * r
    return square & ((np.floor((dx + r) / cell) + np.floor((dy + r) / cell))
                     % 2 == 0)
  return ax + ay < r


def make_image(seed: int, label: int, index: int, size: int) -> np.ndarray:
  """One synthetic image.

  Args:
    seed: dataset seed.
    label: class index.
    index: image index within the class.
    size: image height and width in pixels.

  Returns:
    uint8 [size, size, 3].
  """
  rng = np.random.default_rng([seed, label, index])
  shape, colour, block = _parts(label)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  cx, cy = size * (0.5 + rng.uniform(-0.15, 0.15, 2))
  r = size * rng.uniform(0.22, 0.34)
  mask = _mask(shape, xx - cx, yy - cy, r)

  background = rng.uniform(25, 75) + _TINTS[block % len(_TINTS)]
  # Low-frequency texture: coarse noise upsampled by pixel repetition.
  coarse = rng.normal(0.0, 12.0, (size // 8 + 1, size // 8 + 1, 3))
  texture = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:size, :size]
  image = background + texture
  fg = np.asarray(COLOURS[colour][1], np.float32) + rng.uniform(-25, 25, 3)
  image = np.where(mask[..., None], fg, image)
  image = image + rng.normal(0.0, 8.0, image.shape)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)
