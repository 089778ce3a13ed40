"""The engine's performance paths compute what the plain code computes.

* the ViT's last block computes the class token's row only: the features
  equal the full computation's (train mode too: same dropout masks);
* ``EngineConfig.clean_from_views`` (opt-in) takes g from the views' pass;
* on CPU the engine compiles with ``CPU_COMPILER_OPTIONS``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfsl.models import TwoTowers, build
from jaxfsl.protocols.episodic.engine import (
  CPU_COMPILER_OPTIONS,
  EngineConfig,
  EpisodeEngine,
  MethodConfig,
)
from jaxfsl.trainables import LoraConfig, init_lora


@functools.cache
def _tiny():
  return build("tiny-clip")


def _all_rows(module, tokens, deterministic):
  """encode_tokens with every block computing every row (the plain way)."""
  tower = module.img
  c = tower.config
  cls = jnp.broadcast_to(tower.cls_token, (tokens.shape[0], 1, c.width))
  x = jnp.concatenate([cls, tokens], axis=1) + tower.pos_embed
  x = tower.ln_pre(x)
  for block in tower.blocks:
    x = block(x, None, deterministic)
  return tower.proj(tower.ln_post(x[:, 0]))


@pytest.mark.parametrize("targets", [("q", "k", "v"), ("q", "k", "v", "o")])
@pytest.mark.parametrize("deterministic", [True, False])
def test_class_token_only_last_block(targets, deterministic):
  model = _tiny()
  lora = LoraConfig(targets=targets)
  adapters = init_lora(jax.random.PRNGKey(1), model.params, lora).params
  adapters = jax.tree_util.tree_map(
      lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(2), a.shape),
      adapters)
  module = TwoTowers(model.config, lora_scaling=lora.scaling,
                     lora_dropout=lora.dropout)
  s = model.config.vision.image_size
  pixels = jax.random.normal(jax.random.PRNGKey(3), (3, s, s, 3))
  tokens = module.apply({"params": model.params}, pixels,
                        method="embed_image")
  variables = {"params": model.params, "lora": adapters}
  rngs = {"dropout": jax.random.PRNGKey(5)}
  fast = module.apply(variables, tokens, deterministic,
                      method="encode_image_tokens", rngs=rngs)
  plain = module.apply(variables, tokens, deterministic, method=_all_rows,
                       rngs=rngs)
  np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)


def _episode(model, config):
  rng = np.random.default_rng(0)
  s = model.config.vision.image_size
  m = config.way * config.shot
  length = model.config.text.context_length
  support = rng.integers(0, 256, (m, s, s, 3), dtype=np.uint8)
  views = np.stack([support] + [
      rng.integers(0, 256, (m, s, s, 3), dtype=np.uint8)
      for _ in range(config.num_views - 1)])
  return {
      "support_views": views, "support": support,
      "support_labels": np.arange(m, dtype=np.int32) % config.way,
      "query": rng.integers(0, 256, (config.way * config.query, s, s, 3),
                            dtype=np.uint8),
      "query_labels": np.arange(config.way * config.query,
                                dtype=np.int32) % config.way,
      "text_ids": rng.integers(1, 100, (config.way, length), dtype=np.int32),
  }


def test_clean_from_views_uses_view_zero():
  model = _tiny()
  base = EngineConfig(steps=10, query=2, method=MethodConfig("svl_ra"),
                      lora=LoraConfig(dropout=0.0))
  fast = EngineConfig(steps=10, query=2, method=MethodConfig("svl_ra"),
                      lora=LoraConfig(dropout=0.0), clean_from_views=True)
  episode = _episode(model, base)
  results = []
  for config in (base, fast):
    engine = EpisodeEngine(model, config)
    inputs = engine.prepare(model.params, episode)
    state = engine.init_state(model.params, inputs, jax.random.PRNGKey(0))
    adapters = jax.tree_util.tree_map(
        lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(2),
                                               a.shape), state.adapters)
    results.append(engine.loss_terms(
        adapters, model.params, inputs, jnp.zeros((25, 5)),
        jnp.asarray(3), jax.random.PRNGKey(1), True))
  # Without dropout view 0 is the clean support: the same loss.
  (total_a, aux_a), (total_b, aux_b) = results
  np.testing.assert_allclose(total_a, total_b, rtol=1e-5)
  np.testing.assert_allclose(aux_a["relation_matrix"],
                             aux_b["relation_matrix"], atol=1e-5)


def test_cpu_compiler_options(monkeypatch):
  model = _tiny()
  engine = EpisodeEngine(model, EngineConfig())
  if jax.devices()[0].platform == "cpu":
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert engine.compiler_options == CPU_COMPILER_OPTIONS
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_prefer_vector_width=256")
    assert "xla_cpu_prefer_vector_width" not in engine.compiler_options
  off = EpisodeEngine(model, EngineConfig(cpu_tuning=False))
  assert off.compiler_options is None
