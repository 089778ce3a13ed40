"""jaxfsl.method.objective: the release's integer rules for every T, the
fuse weight, the weighted objective, and MethodConfig's validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfsl.method import objective
from jaxfsl.method.objective import MethodConfig


def release_rules(t):
  """The release's integers, written out: f = int(T/5); window 3f;
  fuse denominator int(0.6 T); evaluations after f, 2f, 3f, 4f, T."""
  f = int(t / 5)
  return 3 * f, int(0.6 * t), (f, 2 * f, 3 * f, 4 * f, t)


@pytest.mark.parametrize("t", [12, 22, 125, 250])
def test_release_integer_rules(t):
  end, denominator, evaluations = release_rules(t)
  assert objective.active_window(t, MethodConfig()) == (0, end)
  assert objective.window_length(t) == end
  assert objective.fuse_denominator(t) == denominator
  assert objective.evaluation_steps(t) == evaluations
  steps = np.arange(end)
  got = jax.jit(jax.vmap(lambda k: objective.fuse_weight(k, t)))(steps)
  np.testing.assert_allclose(got, 1.0 - steps / denominator, rtol=1e-6,
                             atol=1e-7)
  assert np.all(got > 0)  # the window ends no later than int(0.6 T)
  last = objective.active_window(t, MethodConfig(timing="last"))
  assert last == (t - end, t)


def test_release_integer_rules_t22():
  """The issue's pinned case: window end 12, evaluations (4, 8, 12, 16, 22),
  p_11 = 1 - 11/13."""
  assert objective.active_window(22, MethodConfig()) == (0, 12)
  assert objective.evaluation_steps(22) == (4, 8, 12, 16, 22)
  np.testing.assert_allclose(objective.fuse_weight(11, 22), 1 - 11 / 13,
                             rtol=1e-6)


def test_multiples_of_five_unchanged():
  # The old rules (floor(0.6 T), round(k T / 5)) agree there: the demo
  # (T = 100) and the benchmark's T = 250 * shot are unaffected.
  for t in (5, 10, 100, 250, 1250):
    assert objective.window_length(t) == int(np.floor(0.6 * t))
    assert objective.evaluation_steps(t) == tuple(
        round(k * t / 5) for k in range(1, 6))


def test_other_fractions_and_short_runs():
  assert objective.window_length(22, 1.0) == 22  # the 5th evaluation is T
  assert objective.window_length(22, 0.4) == 8   # 2 * int(22 / 5)
  assert objective.window_length(22, 0.5) == 11  # int(0.5 * 22)
  assert objective.fuse_denominator(22, 0.5) == 11
  assert objective.evaluation_steps(3) == (0, 0, 0, 0, 3)
  assert objective.window_length(3) == 0
  with pytest.raises(ValueError, match="steps"):
    objective.evaluation_steps(0)


def test_fuse_weight_clamps_and_traces():
  t = 250
  np.testing.assert_allclose(objective.fuse_weight(0, t), 1.0)
  np.testing.assert_allclose(objective.fuse_weight(75, t), 0.5, rtol=1e-6)
  np.testing.assert_allclose(objective.fuse_weight(150, t), 0.0)
  np.testing.assert_allclose(objective.fuse_weight(249, t), 0.0)
  # 0.6 * 7 = 4.2 -> denominator 4.
  np.testing.assert_allclose(objective.fuse_weight(2, 7), 0.5)
  np.testing.assert_allclose(objective.fuse_weight(74, 125), 1 / 75,
                             rtol=1e-5)
  np.testing.assert_allclose(objective.fuse_weight(25, 100, 0.5), 0.5)
  # Empty denominator: weight 0 rather than a division by zero.
  np.testing.assert_allclose(objective.fuse_weight(0, 1), 0.0)
  traced = jax.jit(objective.fuse_weight, static_argnums=2)
  np.testing.assert_allclose(traced(2, 7, 0.6), 0.5)
  np.testing.assert_allclose(traced(11, 22, 0.6), 1 - 11 / 13, rtol=1e-6)
  np.testing.assert_allclose(traced(0, 1, 0.6), 0.0)
  assert objective.fuse_weight(3, 22).dtype == jnp.float32


@pytest.mark.parametrize("variant,terms", [
    ("none", ("vlm",)), ("svl", ("vlm", "anti_visual")),
    ("ra", ("vlm", "relation")),
    ("svl_ra", ("vlm", "anti_visual", "relation")),
    ("visual", ("vlm", "visual"))])
def test_terms_per_variant(variant, terms):
  assert MethodConfig(variant=variant).terms == terms


def test_weighted_objective_parts_sum_to_total():
  method = MethodConfig(variant="svl_ra")
  raw = {"vlm": jnp.float32(1.5), "anti_visual": jnp.float32(2.0),
         "relation": jnp.float32(-0.25)}
  window = (0, 12)
  for step, relation_on in ((0, 0.0), (5, 1.0)):
    activity = objective.term_activity(step, window, method)
    total, parts = objective.weighted_objective(raw, activity, method)
    assert set(parts) == {"vlm", "anti_visual", "relation"}
    np.testing.assert_allclose(parts["anti_visual"], 0.2, rtol=1e-6)
    np.testing.assert_allclose(parts["relation"], -0.75 * relation_on)
    np.testing.assert_allclose(total, sum(float(v) for v in parts.values()),
                               rtol=1e-6)
  # Outside the window only L_vlm enters; absent terms enter as zero.
  activity = objective.term_activity(12, window, method)
  total, parts = objective.weighted_objective(raw, activity, method)
  np.testing.assert_allclose(total, 1.5)
  total, parts = objective.weighted_objective({"vlm": raw["vlm"]}, {},
                                              method)
  assert float(parts["relation"]) == 0.0 and float(total) == 1.5


def test_method_config_names_every_bad_key():
  with pytest.raises(ValueError) as info:
    MethodConfig(variant="bogus", timing="middle", window_fraction=0.0,
                 relation_weight=-1.0, relation_form="kl")
  message = str(info.value)
  for key in ("method.variant", "method.timing", "method.window_fraction",
              "method.relation_weight", "method.relation_form"):
    assert key in message, message
