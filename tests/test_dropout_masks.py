"""LoRA-dropout keep masks: the default and the opt-in "packed" draws.

* "packed" masks keep exactly the rate asked for (every 8-bit / 16-bit
  draw value enumerated: no sampling error), refuse rates they cannot keep
  exactly, are deterministic per key and differ across keys;
* the default ("bernoulli") draws with ``jax.random.bernoulli`` as before,
  so every existing result is bit-identical;
* ``lora.dropout_masks`` reaches the attention layers from ``LoraConfig``
  (``module_kwargs``, ``Model.module``) and from a job config.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfsl.models import TwoTowers, build, layers
from jaxfsl.models.layers import (
  dropout_keep_mask,
  keep_mask_from_words,
  packed_draw_bits,
)
from jaxfsl.trainables import LoraConfig, init_lora
from jaxfsl.trainables.lora import LoraTrainable


@functools.cache
def _tiny():
  return build("tiny-clip")


# (dropout rate p, bits per draw): multiples of 1/256 take 8-bit draws,
# other multiples of 1/65536 16-bit draws.
EXACT_RATES = [(0.25, 8), (0.5, 8), (1 / 256, 8), (255 / 256, 8),
               (1 / 1024, 16), (12345 / 65536, 16)]


@pytest.mark.parametrize("p,bits", EXACT_RATES)
def test_packed_rate_is_exact_over_every_draw_value(p, bits):
  """Words holding every b-bit value once per lane: exactly (1 - p) of them
  are kept, in every lane of the word, and element i is kept iff its
  little-endian b-bit draw is below (1 - p) * 2^b."""
  keep = 1.0 - p
  assert packed_draw_bits(keep) == bits
  per_word = 32 // bits
  values = np.arange(2**bits, dtype=np.uint64)
  # Lane j of word i holds value (i + j) mod 2^b: each lane sees every value.
  lanes = [(values + j) % 2**bits for j in range(per_word)]
  words = sum(lane << (bits * j) for j, lane in enumerate(lanes))
  words = words.astype(np.uint32)
  size = words.size * per_word
  mask = np.asarray(keep_mask_from_words(jnp.asarray(words), keep, (size,)))
  threshold = round(keep * 2**bits)
  assert mask.sum() == threshold * per_word  # rate exactly 1 - p
  by_lane = mask.reshape(-1, per_word).sum(axis=0)
  np.testing.assert_array_equal(by_lane, threshold)
  draws = words.view(np.uint8 if bits == 8 else np.uint16)  # little-endian
  np.testing.assert_array_equal(mask, draws < threshold)


def test_packed_masks_from_a_key():
  key = jax.random.PRNGKey(0)
  shape = (30, 197, 64)  # not a multiple of 4 words' worth: slicing path
  mask = dropout_keep_mask(key, 0.75, shape, "packed")
  assert mask.shape == shape and mask.dtype == jnp.bool_
  np.testing.assert_array_equal(
      mask, dropout_keep_mask(key, 0.75, shape, "packed"))  # deterministic
  other = dropout_keep_mask(jax.random.PRNGKey(1), 0.75, shape, "packed")
  assert 0.3 < float(np.mean(np.asarray(mask) != np.asarray(other))) < 0.45
  # 2 * 0.75 * 0.25 = 0.375 of the elements differ between independent masks.
  big = np.asarray(dropout_keep_mask(key, 0.75, (1 << 20,), "packed"))
  # Binomial sd sqrt(0.75 * 0.25 / 2^20) = 4.2e-4 (per lane: 8.5e-4).
  assert abs(big.mean() - 0.75) < 5 * 4.2e-4
  np.testing.assert_allclose(big.reshape(-1, 4).mean(axis=0), 0.75,
                             atol=5 * 8.5e-4)
  # Neighbours (same word) independent: P(both kept) = 0.5625.
  assert abs(np.mean(big[:-1] & big[1:]) - 0.5625) < 0.003
  # A different stream from the default masks of the same key.
  assert not np.array_equal(
      mask, dropout_keep_mask(key, 0.75, shape, "bernoulli"))


def test_default_masks_are_jax_random_bernoulli():
  key = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(
      dropout_keep_mask(key, 0.75, (5, 7, 9)),
      jax.random.bernoulli(key, 0.75, (5, 7, 9)))


def test_rates_packed_cannot_keep_are_refused():
  key = jax.random.PRNGKey(0)
  for keep in (0.7, 0.9, 1.0 / 3):
    assert packed_draw_bits(keep) is None
    with pytest.raises(ValueError, match=f"keep probability {keep!r}"):
      dropout_keep_mask(key, keep, (4, 4), "packed")
  with pytest.raises(ValueError, match="dropout masks 'philox'"):
    dropout_keep_mask(key, 0.75, (4, 4), "philox")
  with pytest.raises(ValueError, match=r"lora.dropout 0.1 with "
                     r"lora.dropout_masks 'packed'.*multiple of 1/256"):
    LoraConfig(dropout=0.1, dropout_masks="packed")
  with pytest.raises(ValueError, match="lora.dropout_masks 'fast'"):
    LoraConfig(dropout_masks="fast")
  # Every bad key of one config is listed.
  with pytest.raises(ValueError, match="lora.rank.*lora.dropout_masks"):
    LoraConfig(rank=0, dropout_masks="fast")
  LoraConfig(dropout=0.25, dropout_masks="packed")
  LoraConfig(dropout=0.0, dropout_masks="packed")  # no masks drawn
  LoraConfig(dropout=0.1)  # bernoulli takes any rate


def _train_features(module, model, adapters, pixels, seed=5):
  return np.asarray(module.apply(
      {"params": model.params, "lora": adapters}, pixels, False,
      method="encode_image", rngs={"dropout": jax.random.PRNGKey(seed)}))


@functools.cache
def _inputs():
  model = _tiny()
  adapters = jax.tree_util.tree_map(
      lambda a: a + 0.05,
      init_lora(jax.random.PRNGKey(1), model.params, LoraConfig()).params)
  s = model.config.vision.image_size
  pixels = jax.random.normal(jax.random.PRNGKey(3), (3, s, s, 3))
  return model, adapters, pixels


def test_default_path_draws_what_it_drew_before(monkeypatch):
  """Default train-mode features are those of the code before the option:
  one ``jax.random.bernoulli(make_rng("dropout"), 0.75, shape)`` per
  target."""
  model, adapters, pixels = _inputs()
  module = TwoTowers(model.config, **LoraTrainable().module_kwargs())
  assert "lora_dropout_masks" not in LoraTrainable().module_kwargs()
  default = _train_features(module, model, adapters, pixels)
  calls = []

  def before(key, keep, shape, masks="bernoulli"):
    calls.append((keep, tuple(shape), masks))
    return jax.random.bernoulli(key, keep, shape)

  monkeypatch.setattr(layers, "dropout_keep_mask", before)
  np.testing.assert_array_equal(
      _train_features(module, model, adapters, pixels), default)
  depth = model.config.vision.depth
  assert len(calls) == 3 * depth  # q, k, v of every block
  assert {c[0] for c in calls} == {0.75}
  assert {c[2] for c in calls} == {"bernoulli"}


def test_packed_option_reaches_the_attention_layers():
  model, adapters, pixels = _inputs()
  config = LoraConfig(dropout_masks="packed")
  kwargs = LoraTrainable(config).module_kwargs()
  assert kwargs["lora_dropout_masks"] == "packed"
  packed = TwoTowers(model.config, **kwargs)
  default = TwoTowers(model.config, **LoraTrainable().module_kwargs())
  a = _train_features(packed, model, adapters, pixels)
  np.testing.assert_array_equal(
      a, _train_features(packed, model, adapters, pixels))
  assert not np.allclose(a, _train_features(default, model, adapters,
                                            pixels), atol=1e-4)
  assert not np.allclose(a, _train_features(packed, model, adapters, pixels,
                                            seed=6), atol=1e-4)
  # Eval mode draws no masks: identical to the default.
  variables = {"params": model.params, "lora": adapters}
  np.testing.assert_array_equal(
      packed.apply(variables, pixels, method="encode_image"),
      default.apply(variables, pixels, method="encode_image"))
  # Model.module honours the adapters' setting.
  adapters_obj = init_lora(jax.random.PRNGKey(1), model.params, config)
  assert model.module(adapters_obj).lora_dropout_masks == "packed"


def test_job_config_key():
  from jaxfsl.configs.base import get_config
  from jaxfsl.protocols.episodic.config import engine_config

  config = get_config()
  assert config.lora.dropout_masks == "bernoulli"
  assert engine_config(config).lora.dropout_masks == "bernoulli"
  config.lora.dropout_masks = "packed"
  assert engine_config(config).lora.dropout_masks == "packed"


def test_benchmark_option_reaches_the_engine():
  """tools/benchmark.py / profile_step.py --option lora.dropout_masks=packed
  -> the engine's TwoTowers draws packed masks."""
  from jaxfsl import benchmarking
  from jaxfsl.protocols.episodic.engine import EpisodeEngine

  config = benchmarking.default_engine_config(
      1, "svl_ra", **{"lora.dropout_masks": "packed"})
  assert config.lora.dropout_masks == "packed"
  assert config.lora.dropout == 0.25  # the rest of the block unchanged
  engine = EpisodeEngine(_tiny(), config)
  assert engine.module.lora_dropout_masks == "packed"
  assert benchmarking.default_engine_config(1).lora.dropout_masks == (
      "bernoulli")
