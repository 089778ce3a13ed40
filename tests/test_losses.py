"""Tests for jaxfsl.method.losses (and the gradient decomposition of
jaxfsl.method.metrics) against float64 numpy references written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfsl.method import losses, metrics

WAY = 5
DIM = 32
VIEWS = 5
# (shot, N augmented rows, M clean rows) for 5-way 1-shot and 5-shot.
EPISODE_SHAPES = [(1, 25, 5), (5, 125, 25)]
RTOL = 1e-5
ATOL = 1e-5


# ----------------------------------------------------------- numpy references


def np_l2n(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  m = logits.max(axis=-1, keepdims=True)
  lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=-1))
  return np.mean(lse - logits[np.arange(len(labels)), labels])


def np_softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def np_relation(f, g, t, y, y0, prev, p, form):
  f, g, t, prev = (np.asarray(a, np.float64) for a in (f, g, t, prev))
  a_v = f @ g.T
  tt = t @ t.T
  a_t = np.empty_like(a_v)
  for i in range(len(y)):
    for j in range(len(y0)):
      a_t[i, j] = tt[y[i], y0[j]]
  target = p * prev + (1 - p) * a_t
  if form == "release":
    return np.mean(np.exp(target) * (target - a_v)), a_v
  pp, qq = np_softmax(a_v), np_softmax(target)
  return np.mean(np.sum(pp * (np.log(pp) - np.log(qq)), axis=-1)), a_v


# ------------------------------------------------------------------- fixtures


def episode(seed, n, m, way=WAY, dim=DIM):
  """Unit features f [n, dim], g [m, dim], t [way, dim] and labels y, y0."""
  rng = np.random.default_rng(seed)
  f = np_l2n(rng.normal(size=(n, dim))).astype(np.float32)
  g = np_l2n(rng.normal(size=(m, dim))).astype(np.float32)
  t = np_l2n(rng.normal(size=(way, dim))).astype(np.float32)
  # Class-major order, as the data pipeline lays out support sets.
  y = np.repeat(np.arange(way), n // way).astype(np.int32)
  y0 = np.repeat(np.arange(way), m // way).astype(np.int32)
  return f, g, t, y, y0


def np_class_means(x, y, way):
  return np.stack([x[y == c].mean(axis=0) for c in range(way)])


# ------------------------------------------------------------------- l2 norm


def test_l2_normalize_matches_numpy_and_torch_eps():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 11)).astype(np.float32) * 3.0
  np.testing.assert_allclose(losses.l2_normalize(x), np_l2n(x), rtol=RTOL,
                             atol=1e-7)
  # The eps bound, not an additive eps: a zero row stays zero and a tiny row
  # is divided by 1e-12 exactly as torch.nn.functional.normalize does.
  tiny = np.array([[0.0, 0.0], [3e-13, 4e-13]], np.float32)
  out = np.asarray(losses.l2_normalize(tiny))
  np.testing.assert_array_equal(out[0], [0.0, 0.0])
  np.testing.assert_allclose(out[1], [0.3, 0.4], rtol=1e-5)
  # Other axis.
  np.testing.assert_allclose(losses.l2_normalize(x, axis=0),
                             np_l2n(x.T).T, rtol=RTOL, atol=1e-7)


# ------------------------------------------------------------ vlm / visual


@pytest.mark.parametrize("shot,n,m", EPISODE_SHAPES)
def test_vlm_loss(shot, n, m):
  f, _, t, y, _ = episode(shot, n, m)
  got = losses.vlm_loss(f, t, y)
  assert got.shape == () and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_ce(100.0 * f @ t.T, y), rtol=RTOL,
                             atol=ATOL)
  np.testing.assert_allclose(losses.vlm_loss(f, t, y, scale=7.0),
                             np_ce(7.0 * f @ t.T, y), rtol=RTOL, atol=ATOL)


def test_vlm_loss_low_precision_inputs_compute_in_float32():
  f, _, t, y, _ = episode(3, 25, 5)
  got = losses.vlm_loss(jnp.asarray(f, jnp.bfloat16), t, y)
  assert got.dtype == jnp.float32
  f16 = np.asarray(jnp.asarray(f, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(got, np_ce(100.0 * f16 @ t.T, y), rtol=1e-4)


@pytest.mark.parametrize("shot,n,m", EPISODE_SHAPES)
def test_visual_loss_normalises_prototypes(shot, n, m):
  f, g, _, y, y0 = episode(10 + shot, n, m)
  protos = np_class_means(g, y0, WAY)  # raw class means: norm < 1
  assert np.all(np.linalg.norm(protos, axis=-1) < 0.99) or shot == 1
  protos = protos * np.arange(1, WAY + 1)[:, None]  # make norms unequal
  want = np_ce(100.0 * f @ np_l2n(protos).T, y)
  np.testing.assert_allclose(losses.visual_loss(f, y, protos), want,
                             rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------- SVL


def np_anti_visual(f, y, idx, scale):
  f = np.asarray(f, np.float64)
  return np_ce(scale * f @ np_l2n(f[idx]).T, y)


@pytest.mark.parametrize("shot,n,m", EPISODE_SHAPES)
def test_anti_visual_loss_repeated_slot(shot, n, m):
  f, _, _, y, _ = episode(20 + shot, n, m)
  idx = np.array([3, 3, 3, 0, 1], np.int32)  # slot drawn three times
  got = losses.anti_visual_loss(f, y, idx)
  np.testing.assert_allclose(got, np_anti_visual(f, y, idx, 100.0),
                             rtol=RTOL, atol=ATOL)
  # Slots with the same row give identical logits columns.
  idx2 = np.array([n - 1, 7, 7, 2, 0], np.int32)
  np.testing.assert_allclose(losses.anti_visual_loss(f, y, idx2, scale=30.0),
                             np_anti_visual(f, y, idx2, 30.0), rtol=RTOL,
                             atol=ATOL)


def test_anti_visual_loss_gradient_flows_through_classifier():
  # Central differences of the float64 numpy reference, whose classifier rows
  # are functions of f: a stop-gradient on w' would halve-or-so the gradient.
  rng = np.random.default_rng(5)
  f = np_l2n(rng.normal(size=(10, 6)))
  y = np.repeat(np.arange(WAY), 2).astype(np.int32)
  idx = np.array([4, 4, 9, 0, 1], np.int32)
  scale = 5.0
  got = jax.jit(jax.grad(losses.anti_visual_loss), static_argnums=3)(
      jnp.asarray(f, jnp.float32), y, idx, scale)
  want = np.zeros_like(f)
  h = 1e-6
  for i in range(f.shape[0]):
    for d in range(f.shape[1]):
      fp, fm = f.copy(), f.copy()
      fp[i, d] += h
      fm[i, d] -= h
      want[i, d] = (np_anti_visual(fp, y, idx, scale)
                    - np_anti_visual(fm, y, idx, scale)) / (2 * h)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_sample_shuffled_slots():
  key = jax.random.key(0)
  s = losses.sample_shuffled_slots(key, 25, WAY)
  assert s.shape == (WAY,) and s.dtype == jnp.int32
  np.testing.assert_array_equal(s, losses.sample_shuffled_slots(key, 25, WAY))
  draws = np.asarray(jax.vmap(
      lambda k: losses.sample_shuffled_slots(k, 25, WAY))(
          jax.random.split(jax.random.key(1), 4000)))
  assert draws.min() >= 0 and draws.max() < 25
  # Different keys give different draws.
  assert len({tuple(d) for d in draws}) > 3900
  # Uniform over all rows: expected 800 per value, sd ~28.
  counts = np.bincount(draws.ravel(), minlength=25)
  assert counts.min() > 650 and counts.max() < 950, counts
  # With replacement: P(a duplicate among 5 of 25) = 0.36.
  has_dup = np.array([len(set(d)) < WAY for d in draws])
  assert 0.3 < has_dup.mean() < 0.42, has_dup.mean()
  # Rows from one class can fill several slots (labels are class-major).
  assert np.any([np.unique(d // 5).size < WAY for d in draws])


# ----------------------------------------------------------- relation align


@pytest.mark.parametrize("form", ["release", "softmax_kl"])
@pytest.mark.parametrize("shot,n,m", EPISODE_SHAPES)
def test_relation_alignment_loss(form, shot, n, m):
  f, g, t, y, y0 = episode(30 + shot, n, m)
  prev = np.random.default_rng(1).uniform(-0.5, 1.0, (n, m)).astype(np.float32)
  for p in (1.0, 0.37, 0.0):
    loss, a_v = losses.relation_alignment_loss(f, g, t, y, y0, prev, p, form)
    want, want_av = np_relation(f, g, t, y, y0, prev, p, form)
    assert a_v.shape == (n, m) and a_v.dtype == jnp.float32
    np.testing.assert_allclose(a_v, want_av, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=1e-6)


# torch warns that reduction='mean' is not a true KL: that is the point here.
@pytest.mark.filterwarnings("ignore:reduction")
def test_relation_alignment_release_form_is_torch_kl_div():
  torch = pytest.importorskip("torch")
  f, g, t, y, y0 = episode(40, 25, 5)
  prev = np.random.default_rng(2).uniform(-1, 1, (25, 5)).astype(np.float32)
  p = 0.6
  loss, _ = losses.relation_alignment_loss(f, g, t, y, y0, prev, p)
  tf, tg, tt = (torch.from_numpy(a) for a in (f, g, t))
  a_v = tf @ tg.T
  a_t = (tt @ tt.T)[torch.from_numpy(y).long()][:, torch.from_numpy(y0).long()]
  target = p * torch.from_numpy(prev) + (1 - p) * a_t
  want = torch.nn.functional.kl_div(a_v, target, log_target=True,
                                    reduction="mean")
  np.testing.assert_allclose(loss, want.item(), rtol=1e-5, atol=1e-6)
  # softmax_kl is torch's batchmean KL(P || Q) with P = softmax(A_v).
  loss_kl, _ = losses.relation_alignment_loss(f, g, t, y, y0, prev, p,
                                              "softmax_kl")
  want_kl = torch.nn.functional.kl_div(
      torch.log_softmax(target, -1), torch.log_softmax(a_v, -1),
      log_target=True, reduction="batchmean")
  np.testing.assert_allclose(loss_kl, want_kl.item(), rtol=1e-5, atol=1e-7)


def test_relation_alignment_zero_when_target_is_current_relation():
  f, g, t, y, y0 = episode(41, 25, 5)
  a_v = f.astype(np.float64) @ g.T.astype(np.float64)
  for form in ("release", "softmax_kl"):
    loss, _ = losses.relation_alignment_loss(f, g, t, y, y0, a_v, 1.0, form)
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)


def test_relation_alignment_gradients():
  f, g, t, y, y0 = episode(42, 25, 5)
  prev = np.random.default_rng(3).uniform(-1, 1, (25, 5)).astype(np.float32)
  fn = lambda *a: losses.relation_alignment_loss(*a)[0]
  gf, gg, gt, gprev = jax.grad(fn, argnums=(0, 1, 2, 5))(
      f, g, t, y, y0, prev, 0.4)
  # The previous relation is a fixed target.
  np.testing.assert_array_equal(gprev, np.zeros_like(prev))
  # release form: dL/dA_v = -exp(F) / (N M), so dL/df = -(exp(F) / NM) g.
  a_t = (t @ t.T)[y][:, y0].astype(np.float64)
  target = 0.4 * prev + 0.6 * a_t
  dav = -np.exp(target) / target.size
  np.testing.assert_allclose(gf, dav @ g, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(gg, dav.T @ f, rtol=1e-4, atol=1e-7)
  # Text gradient is non-zero: A_t is part of the target and not stopped.
  assert np.abs(np.asarray(gt)).max() > 1e-4


def test_relation_alignment_jit_and_bad_form():
  f, g, t, y, y0 = episode(43, 25, 5)
  prev = np.zeros((25, 5), np.float32)
  run = jax.jit(losses.relation_alignment_loss, static_argnames="form")
  loss, _ = run(f, g, t, y, y0, prev, jnp.float32(0.25), form="softmax_kl")
  want, _ = np_relation(f, g, t, y, y0, prev, 0.25, "softmax_kl")
  np.testing.assert_allclose(loss, want, rtol=RTOL, atol=1e-6)
  with pytest.raises(ValueError, match="form"):
    losses.relation_alignment_loss(f, g, t, y, y0, prev, 0.5, "kl")


# ----------------------------------------------------- gradient decomposition


@pytest.mark.parametrize("shot,n,m", EPISODE_SHAPES)
def test_decompose_vlm_gradient(shot, n, m):
  f, g, t, y, y0 = episode(50 + shot, n, m)
  protos = np_class_means(g, y0, WAY)
  scale = 20.0  # keeps softmax away from saturation so both parts matter
  decompose = jax.jit(metrics.decompose_vlm_gradient, static_argnums=4)
  grad = jax.jit(jax.grad(losses.vlm_loss), static_argnums=3)
  parts = decompose(f, t, y, protos, scale)

  f64, t64 = f.astype(np.float64), t.astype(np.float64)
  prob = np_softmax(scale * f64 @ t64.T)
  coeff = (prob - np.eye(WAY)[y]) * scale / n
  mu = np_l2n(protos)
  a = np.sum(t64 * mu, axis=-1)
  want_visual = coeff @ (a[:, None] * mu)
  want_cross = coeff @ (t64 - a[:, None] * mu)
  np.testing.assert_allclose(parts.visual, want_visual, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(parts.cross_modal, want_cross, rtol=1e-4,
                             atol=1e-7)
  np.testing.assert_allclose(parts.visual_norm,
                             np.linalg.norm(want_visual, axis=-1), rtol=1e-4)
  np.testing.assert_allclose(parts.cross_modal_norm,
                             np.linalg.norm(want_cross, axis=-1), rtol=1e-4)
  assert parts.visual.shape == (n, DIM) and parts.visual_norm.shape == (n,)

  full = grad(f, t, y, scale)
  np.testing.assert_allclose(parts.visual + parts.cross_modal, full,
                             rtol=1e-4, atol=1e-7)
  # At the default scale too.
  parts100 = decompose(f, t, y, protos, 100.0)
  np.testing.assert_allclose(parts100.visual + parts100.cross_modal,
                             grad(f, t, y, 100.0), rtol=1e-4, atol=1e-7)


def test_decompose_vlm_gradient_prototypes_equal_text():
  f, _, t, y, _ = episode(60, 25, 5)
  # Prototypes along the text features: everything is "visual".
  parts = metrics.decompose_vlm_gradient(f, t, y, 2.0 * t)
  np.testing.assert_allclose(parts.cross_modal, 0.0, atol=1e-6)
  np.testing.assert_allclose(parts.visual, jax.grad(losses.vlm_loss)(f, t, y),
                             rtol=1e-4, atol=1e-7)
  assert float(parts.visual_norm.max()) > 1.0
