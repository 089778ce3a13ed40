"""jaxfsl.preprocess: resize without crop, per-checkpoint normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxfsl import preprocess as pp
from jaxfsl.models import families

CLIP = families.get("clip")
SIGLIP = families.get("siglip")


def _formula(pixels: np.ndarray, mean, std) -> np.ndarray:
  """The textbook normalisation: (x / 255 - mean) / std, in float64."""
  x = np.asarray(pixels, np.float64) / 255.0
  return (x - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)


def _random_uint8(shape, seed=0) -> np.ndarray:
  return np.random.RandomState(seed).randint(0, 256, shape).astype(np.uint8)


@pytest.mark.parametrize("mean,std", [(CLIP.mean, CLIP.std),
                                      (SIGLIP.mean, SIGLIP.std)])
def test_normalize_matches_formula(mean, std):
  pre = pp.Preprocessing(16, mean, std)
  pixels = _random_uint8((2, 16, 16, 3))
  out = pre.normalize(pixels)
  assert out.dtype == np.float32 and out.shape == pixels.shape
  np.testing.assert_allclose(out, _formula(pixels, mean, std), rtol=0,
                             atol=1e-5)


def test_siglip_range_is_minus_one_to_one():
  pre = SIGLIP.preprocessing(4)
  black = np.zeros((1, 4, 4, 3), np.uint8)
  white = np.full((1, 4, 4, 3), 255, np.uint8)
  np.testing.assert_array_equal(pre(black), -1.0)
  np.testing.assert_array_equal(pre(white), 1.0)


def test_call_on_right_size_array_only_normalises():
  pre = CLIP.preprocessing(16)
  pixels = _random_uint8((3, 16, 16, 3))
  out = pre(pixels)
  assert out.dtype == np.float32 and out.shape == (3, 16, 16, 3)
  np.testing.assert_array_equal(out, pre.normalize(pixels))


@pytest.mark.parametrize("hw", [(20, 60), (60, 20), (7, 9), (64, 64)])
def test_resize_without_crop(hw):
  """Any H x W becomes S x S by a plain resize: nothing is cropped away."""
  h, w = hw
  s = 32
  image = np.zeros((h, w, 3), np.uint8)
  image[:, : max(1, w // 3)] = (255, 0, 0)  # red left band
  image[:, w - max(1, w // 3):] = (0, 0, 255)  # blue right band
  image[: max(1, h // 3), w // 3: w - w // 3] = (0, 255, 0)  # green top
  pre = pp.Preprocessing(s, CLIP.mean, CLIP.std, resample="nearest")
  resized = pre.resize(Image.fromarray(image))
  assert resized.dtype == np.uint8 and resized.shape == (s, s, 3)
  # A centre crop of the long side would lose the outer bands.
  assert tuple(resized[s // 2, 0]) == (255, 0, 0)
  assert tuple(resized[s // 2, -1]) == (0, 0, 255)
  if h >= 3 and w >= 3:
    assert tuple(resized[0, s // 2]) == (0, 255, 0)


def test_call_resizes_non_square_arrays_and_pil_images():
  s = 24
  pixels = _random_uint8((2, 30, 50, 3))
  pre = pp.Preprocessing(s, CLIP.mean, CLIP.std, "bicubic")
  out = pre(pixels)
  assert out.dtype == np.float32 and out.shape == (2, s, s, 3)
  expected = np.stack([
      np.asarray(Image.fromarray(x).resize((s, s), Image.BICUBIC), np.uint8)
      for x in pixels])
  np.testing.assert_array_equal(out, pre.normalize(expected))
  # PIL images of different sizes and modes go the same way.
  images = [Image.fromarray(pixels[0]), Image.fromarray(pixels[1][:, :, 0]),
            Image.fromarray(np.dstack([pixels[1], pixels[1][:, :, :1]]))]
  out = pre(images)
  assert out.shape == (3, s, s, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out[0], pre.normalize(expected[0]))
  gray = np.asarray(images[1].convert("RGB").resize((s, s), Image.BICUBIC))
  np.testing.assert_array_equal(out[1], pre.normalize(gray))


def test_resize_returns_uint8_for_any_mode():
  pre = CLIP.preprocessing(8)
  for mode in ("L", "RGBA", "P", "RGB", "I;16"):
    image = Image.new(mode, (5, 11))
    out = pre.resize(image)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_non_uint8_arrays_rejected(dtype):
  pre = CLIP.preprocessing(8)
  with pytest.raises(ValueError, match="uint8") as e:
    pre(np.zeros((1, 8, 8, 3), dtype))
  assert np.dtype(dtype).name in str(e.value)
  if dtype != np.int32:
    assert "normalised" in str(e.value)


@pytest.mark.parametrize("shape", [(8, 8, 3), (1, 8, 8), (1, 8, 8, 4),
                                   (1, 8, 8, 1), (2, 1, 8, 8, 3)])
def test_wrong_shape_rejected(shape):
  pre = CLIP.preprocessing(8)
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\]") as e:
    pre(np.zeros(shape, np.uint8))
  assert str(shape) in str(e.value)


def test_bad_resample_rejected():
  with pytest.raises(ValueError, match="resample"):
    pp.Preprocessing(8, CLIP.mean, CLIP.std, resample="lanczos9")


def test_family_defaults():
  clip, siglip = CLIP.preprocessing(224), SIGLIP.preprocessing(224)
  assert clip.mean == (0.48145466, 0.4578275, 0.40821073)
  assert clip.std == (0.26862954, 0.26130258, 0.27577711)
  assert siglip.mean == siglip.std == (0.5, 0.5, 0.5)
  # One resize rule per family, the method's (bilinear, no crop).
  assert clip.resample == siglip.resample == "bilinear"


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_model_preprocess_resizes_as_the_episode_pipeline(name):
  """Model.preprocess and the episode pipeline (jaxfsl.data) give the same
  pixels for one image, for every registered family."""
  from jaxfsl.data import augment
  image = Image.fromarray(_random_uint8((37, 53, 3), seed=3))
  pre = families.get(name).preprocessing(24)
  episode = np.asarray(augment.resize(image, 24), np.uint8)
  np.testing.assert_array_equal(pre.resize(image), episode)
