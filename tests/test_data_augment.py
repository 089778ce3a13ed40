"""Support-view augmentations (METHOD.md) and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from jaxfsl.data import augment


def _image(seed=0, size=(48, 48)) -> Image.Image:
  rng = np.random.default_rng(seed)
  return Image.fromarray(
      rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _rotate_reference(pixels: np.ndarray, angle: float) -> np.ndarray:
  """Nearest-neighbour counter-clockwise rotation about the image centre,
  same size, black fill (independent of PIL)."""
  h, w = pixels.shape[:2]
  t = np.deg2rad(angle)
  y, x = np.mgrid[0:h, 0:w] + 0.5
  dx, dy = x - w / 2, y - h / 2
  # Output pixel p takes the input at R(-angle) p (y axis pointing down).
  sx = w / 2 + dx * np.cos(t) - dy * np.sin(t)
  sy = h / 2 + dx * np.sin(t) + dy * np.cos(t)
  ix, iy = np.floor(sx).astype(int), np.floor(sy).astype(int)
  inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
  out = np.zeros_like(pixels)
  out[inside] = pixels[iy[inside], ix[inside]]
  return out


def test_resize_is_bilinear_without_crop():
  image = _image(size=(60, 40))
  out = augment.resize(image, 32)
  assert out.size == (32, 32)
  np.testing.assert_array_equal(
      np.asarray(out), np.asarray(image.resize((32, 32), Image.BILINEAR)))


def test_identity_view_equals_resized_input():
  resized = augment.resize(_image(1, (50, 70)), 40)
  params = augment.sample_view_params(np.random.default_rng(0), 1)
  views = augment.support_views(resized, params.angles[0], params.jitter[0],
                                params.flips[0])
  assert len(views) == augment.NUM_VIEWS
  np.testing.assert_array_equal(augment.to_array(views[0]),
                                np.asarray(resized))


@pytest.mark.parametrize("angle", [30.0, -17.5, 44.0])
def test_rotation_matches_nearest_neighbour_rotation(angle):
  image = _image(2)
  out = augment.to_array(augment.rotate(image, angle))
  ref = _rotate_reference(np.asarray(image), angle)
  assert out.shape == ref.shape
  # Equal up to pixels whose source coordinate rounds the other way.
  mismatch = np.any(out != ref, axis=-1).mean()
  assert mismatch < 0.02, mismatch
  # Identical to PIL's rotate semantics (what torchvision's RandomRotation
  # calls) and black outside.
  want = image.rotate(angle, resample=Image.NEAREST, expand=False,
                      fillcolor=(0, 0, 0))
  np.testing.assert_array_equal(out, np.asarray(want))
  assert (out[0, 0] == 0).all()


def test_rotation_is_counter_clockwise():
  pixels = np.asarray(_image(3))
  np.testing.assert_array_equal(
      augment.to_array(augment.rotate(Image.fromarray(pixels), 90)),
      np.rot90(pixels, k=1))


def test_view_parameters_stay_in_range():
  p = augment.sample_view_params(np.random.default_rng(7), 5000)
  assert p.angles.shape == (5000, 2) and p.jitter.shape == (5000, 2, 3)
  assert p.flips.shape == (5000, 2) and p.flips.dtype == bool
  assert p.angles.min() >= -45 and p.angles.max() <= 45
  assert p.angles.min() < -44 and p.angles.max() > 44
  assert p.jitter.min() >= 0.6 and p.jitter.max() <= 1.4
  assert p.jitter.min() < 0.61 and p.jitter.max() > 1.39
  assert 0.45 < p.flips.mean() < 0.55


def test_jitter_is_brightness_contrast_colour():
  image = _image(4)
  factors = (0.7, 1.3, 0.9)
  want = image
  for enhancer, f in zip((ImageEnhance.Brightness, ImageEnhance.Contrast,
                          ImageEnhance.Color), factors, strict=True):
    want = enhancer(want).enhance(f)
  np.testing.assert_array_equal(np.asarray(augment.jitter(image, factors)),
                                np.asarray(want))
  np.testing.assert_array_equal(
      np.asarray(augment.jitter(image, (1.0, 1.0, 1.0))), np.asarray(image))
  darker = np.asarray(augment.jitter(image, (0.6, 1.0, 1.0))).astype(int)
  assert np.abs(darker - 0.6 * np.asarray(image)).max() <= 1


def test_flips_flip():
  image = _image(5)
  pixels = np.asarray(image)
  zero = np.zeros(2)
  ones = np.ones((2, 3))
  flipped = augment.support_views(image, zero, ones, [True, True])
  same = augment.support_views(image, zero, ones, [False, False])
  np.testing.assert_array_equal(augment.to_array(flipped[4]),
                                pixels[:, ::-1])
  np.testing.assert_array_equal(augment.to_array(flipped[1]),
                                pixels[:, ::-1])
  for k in range(5):  # Angle 0 and factors 1 leave the rest unchanged.
    np.testing.assert_array_equal(augment.to_array(same[k]), pixels)


def test_view_composition():
  image = _image(6)
  angles, jit, flips = [12.0, -30.0], np.array([[0.7, 1.2, 1.1],
                                                [1.3, 0.8, 0.6]]), [True, False]
  views = augment.support_views(image, angles, jit, flips)
  v1 = augment.hflip(augment.jitter(augment.rotate(image, 12.0), jit[0]))
  np.testing.assert_array_equal(np.asarray(views[1]), np.asarray(v1))
  np.testing.assert_array_equal(np.asarray(views[2]),
                                np.asarray(augment.rotate(image, -30.0)))
  np.testing.assert_array_equal(np.asarray(views[3]),
                                np.asarray(augment.jitter(image, jit[1])))
  np.testing.assert_array_equal(np.asarray(views[4]), np.asarray(image))


def test_normalize():
  pixels = np.array([[[0, 128, 255]]], np.uint8)
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
  out = augment.normalize(pixels, mean, std)
  assert out.dtype == np.float32 and out.shape == pixels.shape
  want = (pixels / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
  with pytest.raises(TypeError, match="uint8"):
    augment.normalize(pixels.astype(np.float32), mean, std)
  with pytest.raises(ValueError, match="mean"):
    augment.normalize(pixels, (0.5, 0.5), std)
