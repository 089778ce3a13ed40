"""Mixed precision: bfloat16 (and float16 with dynamic loss scaling) compute
with float32 parameters, LayerNorm, softmax, losses and optimiser state
gives the accuracies float32 gives, within the method's own noise."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from test_finetune import QUERY, WAY, config, make_batch, tiny_model

from jaxfsl.protocols.episodic.engine import (
  EpisodeEngine,
  OptimConfig,
  episode_keys,
)
from jaxfsl.protocols.episodic.engine_config import (
  LOSS_SCALE_GROWTH_STEPS,
  EngineConfig,
)
from jaxfsl.protocols.episodic.loss_scaling import dynamic_scale_update

EPISODES = 8


def _learning_config(**kw):
  # The demo's setting in small: SVL + RA, a learnable task (class colours)
  # and enough steps for the model to move well above chance.
  return config(steps=30, optim=OptimConfig(lr=5e-3), **kw)


def test_reduced_precision_accuracy_drift_is_within_seed_noise():
  """Per-episode final accuracies of bf16 (and fp16 + dynamic loss scaling)
  vs float32 differ on average by at most the seed-to-seed variation of
  float32 itself plus one query (1/Q = 0.05), and by at most 0.15.

  Why this bound: bf16 rounds every matmul input to 8 significant bits
  (relative 2**-8); at logit scale 100 that moves logits by ~0.1-0.4, so
  queries whose top-two margin is that small may flip, and the flips then
  change the whole optimisation path, as another seed (LoRA init, dropout
  masks, SVL slots) does. A precision bug (bf16 softmax/LayerNorm
  saturating, float32 state lost) drives the accuracies to chance, i.e.
  a mean difference of ~0.2 here, above both bounds. Measured on this
  machine: bf16 0.094, fp16 0.050, another seed 0.119.
  """
  model = tiny_model()
  batch = make_batch(model, EPISODES, seed=3)
  keys = episode_keys(0, np.arange(EPISODES))
  engine = EpisodeEngine(model, _learning_config())
  f32 = engine.run_batch(batch, keys)
  final32 = f32["stages"]["accuracy"][:, -1]
  # The comparison means something only if float32 learned.
  assert final32.mean() > f32["zero_shot"]["accuracy"].mean() + 0.1, final32
  other_seed = engine.run_batch(batch, episode_keys(1, np.arange(EPISODES)))
  seed_noise = np.abs(other_seed["stages"]["accuracy"][:, -1] - final32)
  bound = min(seed_noise.mean() + 1.0 / (WAY * QUERY), 0.15)
  for dtype, options in ((jnp.bfloat16, {}),
                         (jnp.float16, {"loss_scaling": "dynamic"})):
    low = EpisodeEngine(dataclasses.replace(model, dtype=dtype),
                        _learning_config(**options)).run_batch(batch, keys)
    drift = np.abs(low["stages"]["accuracy"][:, -1] - final32)
    assert drift.mean() <= bound, (
        jnp.dtype(dtype).name, drift, seed_noise)
    assert low["stages"]["accuracy"].dtype == np.float32


def test_dynamic_loss_scale_skips_overflow_and_grows():
  new = {"w": jnp.ones(3)}
  old = {"w": jnp.zeros(3)}
  scale = jnp.asarray(2.0 ** 16, jnp.float32)
  bad = {"w": jnp.asarray([1.0, jnp.inf, 0.0])}
  params, _, s, n = dynamic_scale_update(
      bad, (new, new), (old, old), scale, jnp.asarray(5, jnp.int32))
  # Overflow: the previous parameters are kept and the scale halves.
  np.testing.assert_array_equal(params["w"], old["w"])
  assert float(s) == 2.0 ** 15 and int(n) == 0
  good = {"w": jnp.ones(3)}
  params, _, s, n = dynamic_scale_update(
      good, (new, new), (old, old), scale, jnp.asarray(5, jnp.int32))
  np.testing.assert_array_equal(params["w"], new["w"])
  assert float(s) == 2.0 ** 16 and int(n) == 6
  _, _, s, n = dynamic_scale_update(
      good, (new, new), (old, old), scale,
      jnp.asarray(LOSS_SCALE_GROWTH_STEPS - 1, jnp.int32))
  assert float(s) == 2.0 ** 17 and int(n) == 0
  _, _, s, _ = dynamic_scale_update(
      bad, (new, new), (old, old), jnp.asarray(1.0), jnp.asarray(0))
  assert float(s) == 1.0  # never below 1


def test_loss_scaling_setting_is_checked():
  with pytest.raises(ValueError, match="loss_scaling 'static'.*dynamic"):
    EngineConfig(loss_scaling="static")
