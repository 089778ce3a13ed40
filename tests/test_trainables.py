"""jaxfsl.trainables: the Trainable interface, its registry, and the engine
training whatever a registered Trainable creates."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxfsl import trainables
from jaxfsl.trainables import (
  LoraConfig,
  LoraTrainable,
  Trainable,
  get_trainable,
  register,
)


@register("test_both_towers_lora")
class BothTowersLora(LoraTrainable):
  """LoRA that claims both towers whatever its config: the engine then
  encodes the images every step instead of once (the plain path)."""

  name = "test_both_towers_lora"

  @property
  def towers(self):
    return frozenset({"vision", "text"})


def test_registry():
  assert "lora" in trainables.available()
  lora = get_trainable("lora")
  assert isinstance(lora, Trainable) and lora.collection == "lora"
  assert lora.towers == frozenset({"vision"}) and lora.stochastic
  assert lora.module_kwargs() == {"lora_scaling": 2.0, "lora_dropout": 0.25}
  text = get_trainable("lora", {"rank": 2, "towers": "text",
                                "blocks": "0,1", "dropout": 0.0})
  assert text.config == LoraConfig(rank=2, towers="text", blocks=(0, 1),
                                   dropout=0.0)
  assert text.towers == frozenset({"text"}) and not text.stochastic
  assert get_trainable("lora", LoraConfig(towers="both")).towers == frozenset(
      {"vision", "text"})
  with pytest.raises(ValueError, match=r"trainable 'prefix_tuning'.*lora"):
    get_trainable("prefix_tuning")
  with pytest.raises(ValueError, match="unknown lora keys"):
    get_trainable("lora", {"rnak": 4})


def test_lora_config_names_every_bad_key():
  with pytest.raises(ValueError) as info:
    LoraConfig(rank=0, dropout=1.5, towers="audio")
  for key in ("lora.rank", "lora.dropout", "lora.towers"):
    assert key in str(info.value)


def test_init_is_the_adapter_tree():
  from jaxfsl.models import build

  model = build("tiny-clip")
  lora = get_trainable("lora", LoraConfig(rank=3))
  tree = lora.init(jax.random.PRNGKey(0), model.params, model.config)
  want = trainables.init_lora(jax.random.PRNGKey(0), model.params,
                              LoraConfig(rank=3)).params
  for a, b in zip(jax.tree_util.tree_leaves(tree),
                  jax.tree_util.tree_leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)


def test_engine_trains_a_registered_trainable_and_caches_frozen_towers():
  """A Trainable registered outside the package runs with no engine change;
  and text-only LoRA (image features encoded once per episode) equals the
  same adapters run through the every-step image path."""
  import test_finetune as tf

  from jaxfsl.protocols.episodic.engine import (
    EpisodeEngine,
    MethodConfig,
    episode_keys,
  )

  model = tf.tiny_model()
  batch = {k: v[:1] for k, v in tf.make_batch(model, 1).items()}
  lora = LoraConfig(rank=4, towers="text")
  base = tf.config(steps=5, lora=lora, method=MethodConfig("svl_ra"))
  cached = EpisodeEngine(model, base)
  plain = EpisodeEngine(model, dataclasses.replace(
      base, trainable="test_both_towers_lora", trainable_config=lora))
  assert not cached.tune_vision and plain.tune_vision
  keys = episode_keys(0, [0])
  a = cached.run_batch(batch, keys, return_adapters=True)
  b = plain.run_batch(batch, keys, return_adapters=True)
  assert set(a["adapters"]) == set(b["adapters"]) == {"txt"}
  # The image features are fixed when only the text tower is tuned: the SVL
  # term has no gradient and the cached engine skips it (adds 0).
  assert not np.any(a["losses"]["anti_visual"])
  np.testing.assert_allclose(
      a["losses"]["total"],
      b["losses"]["total"] - b["losses"]["anti_visual"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a["stages"]["accuracy"], b["stages"]["accuracy"])
