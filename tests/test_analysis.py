"""Tests for jaxfsl.method.metrics against float64 numpy references written
here."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfsl.method import metrics

RTOL = 1e-5
ATOL = 1e-6


def np_l2n(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def raw_feats(seed, n, d=16, offset=0.0):
  """Un-normalised features with unequal norms and a shared offset."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) + offset
  return (x * rng.uniform(0.2, 5.0, (n, 1))).astype(np.float32)


def test_modality_gap():
  img = raw_feats(0, 40, offset=1.0)
  txt = raw_feats(1, 5, offset=-1.0)
  want = np.linalg.norm(np_l2n(img).mean(0) - np_l2n(txt).mean(0))
  got = metrics.modality_gap(img, txt)
  assert got.shape == () and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=RTOL)
  assert 0.5 < float(got) < 2.0
  # Rescaling rows changes nothing (features are normalised first) and a set
  # has no gap with itself.
  np.testing.assert_allclose(metrics.modality_gap(img * 7.0, txt), want,
                             rtol=RTOL)
  np.testing.assert_allclose(metrics.modality_gap(txt, txt * 3.0), 0.0,
                             atol=1e-6)


def test_class_prototypes():
  x = raw_feats(2, 30)
  y = np.array([0, 1, 2, 4, 4, 5, -1] * 4 + [0, 7], np.int32)
  got = jax.jit(metrics.class_prototypes, static_argnums=2)(x, y, 6)
  assert got.shape == (6, 16) and got.dtype == jnp.float32
  for c in range(6):
    rows = x[y == c].astype(np.float64)
    want = rows.mean(0) if len(rows) else np.zeros(16)
    np.testing.assert_allclose(got[c], want, rtol=RTOL, atol=ATOL)
  np.testing.assert_array_equal(got[3], 0.0)  # empty class
  assert np.abs(np.asarray(got[0])).sum() > 0


def np_discriminability(x, y, c):
  x = np_l2n(x)
  intra, inter = [], []
  for i, j in itertools.product(range(len(y)), repeat=2):
    if i == j or not (0 <= y[i] < c and 0 <= y[j] < c):
      continue
    (intra if y[i] == y[j] else inter).append(x[i] @ x[j])
  mi = np.mean(intra) if intra else np.nan
  return mi, np.mean(inter)


@pytest.mark.parametrize("shot", [1, 5])
def test_visual_discriminability(shot):
  way = 5
  x = raw_feats(3 + shot, way * shot * 5)
  # Pull each class toward its own direction so intra and inter differ.
  y = np.repeat(np.arange(way), shot * 5).astype(np.int32)
  x = x + 3.0 * np.eye(16, dtype=np.float32)[y] * np.linalg.norm(
      x, axis=-1, keepdims=True)
  fn = jax.jit(metrics.visual_discriminability, static_argnums=2)
  got = fn(x, y, way)
  intra, inter = np_discriminability(x, y, way)
  np.testing.assert_allclose(got["intra"], intra, rtol=RTOL)
  np.testing.assert_allclose(got["inter"], inter, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(got["difference"], intra - inter, rtol=RTOL)
  assert float(got["difference"]) > 0.3


def test_visual_discriminability_edge_cases():
  disc = jax.jit(metrics.visual_discriminability, static_argnums=2)
  # Ideal clusters: intra exactly 1 (self-pairs excluded or not, 1 either way),
  # inter exactly 0.
  e = np.eye(4, dtype=np.float32)
  y = np.array([0, 0, 1, 1, 2, 2], np.int32)
  got = disc(e[y] * 2.0, y, 3)
  np.testing.assert_allclose(got["intra"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(got["inter"], 0.0, atol=1e-7)
  # Self-pairs must be excluded: orthogonal rows within a class score 0.
  y2 = np.array([0, 0, 1, 1], np.int32)
  got = disc(e, y2, 2)
  np.testing.assert_allclose(got["intra"], 0.0, atol=1e-7)
  # 1 sample per class: no intra pair -> NaN, inter still defined.
  x = raw_feats(9, 5)
  y1 = np.arange(5, dtype=np.int32)
  got = disc(x, y1, 5)
  assert np.isnan(got["intra"])
  np.testing.assert_allclose(got["inter"], np_discriminability(x, y1, 5)[1],
                             rtol=RTOL)
  # Padding rows (label -1) take part in no pair.
  x = raw_feats(10, 12)
  yp = np.array([0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2, -1], np.int32)
  got = disc(x, yp, 3)
  intra, inter = np_discriminability(x, yp, 3)
  np.testing.assert_allclose(got["intra"], intra, rtol=RTOL)
  np.testing.assert_allclose(got["inter"], inter, rtol=RTOL, atol=ATOL)


def test_gap_shift():
  img = raw_feats(11, 20, offset=1.0)
  txt = raw_feats(12, 5, offset=-1.0)
  alphas = np.array([-0.5, 0.0, 0.5, 1.0, 2.0], np.float32)
  got = metrics.gap_shift(img, txt, alphas)
  assert got.shape == (5, 20, 16) and got.dtype == jnp.float32
  xi, xt = np_l2n(img), np_l2n(txt)
  delta = xt.mean(0) - xi.mean(0)
  for a, g in zip(alphas, got, strict=True):
    np.testing.assert_allclose(g, np_l2n(xi + a * delta), rtol=RTOL,
                               atol=ATOL)
  np.testing.assert_allclose(got[1], xi, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-5)
  # Shifting toward the text centroid shrinks the gap.
  gaps = [float(metrics.modality_gap(g, txt)) for g in got]
  assert gaps[3] < gaps[2] < gaps[1] < gaps[0]


def test_accuracy():
  txt = raw_feats(13, 5)
  img = raw_feats(14, 50)
  y = np.random.default_rng(0).integers(0, 5, 50).astype(np.int32)
  pred = np.argmax(np_l2n(img) @ np_l2n(txt).T, axis=-1)
  got = metrics.accuracy(img, txt, y)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np.mean(pred == y), rtol=1e-6)
  # Cosine, not dot product: a long text vector must not win by its norm.
  t = np.array([[1.0, 0.0], [100.0, 100.0]], np.float32)
  x = np.array([[1.0, 0.1], [0.1, 1.0]], np.float32)
  np.testing.assert_allclose(metrics.accuracy(x, t, [0, 1]), 1.0)
  # Works on gap-shifted stacks under vmap + jit.
  shifted = metrics.gap_shift(img, txt, jnp.linspace(0, 1, 3))
  acc = jax.jit(jax.vmap(functools.partial(metrics.accuracy,
                                           text_feats=txt, labels=y)))(shifted)
  np.testing.assert_allclose(acc[0], np.mean(pred == y), rtol=1e-6)
