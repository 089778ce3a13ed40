"""LoRA adapters (jaxfsl.models.lora) and the Model API around them.

Small random-init models only: ``build("tiny-clip")`` and a tiny SigLIP. Most
comparisons run the Flax module eagerly (``_eager``: one op at a time, so
"bit-identical" means the frozen path really is untouched, and many adapter
layouts cost no compilations); the Model API (jitted) is exercised where it
matters: zero-init identity, merging, dropout and the vmapped episode batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfsl.models import build, siglip_config
from jaxfsl.trainables import (
    BLOCK_PRESETS,
    Adapters,
    LoraConfig,
    block_indices,
    init_lora,
    merge_lora,
)

ALL_TARGETS = ("q", "k", "v", "o")
# Tiny SigLIP: both towers alike, MAP head, no projection.
TINY_SIGLIP = siglip_config(width=32, depth=2, heads=2, mlp_dim=64,
                            image_size=32, patch_size=16, vocab_size=300,
                            context_length=8)


@functools.cache
def _setup(family: str):
  """(model, float32 pixels [2, S, S, 3], int32 token ids [3, L]), built once
  per session: initialising even a tiny model costs a compilation."""
  model = build("tiny-clip" if family == "clip" else TINY_SIGLIP)
  s = model.config.vision.image_size
  pixels = np.random.RandomState(0).randn(2, s, s, 3).astype(np.float32)
  ids = model.tokenize(["a photo of a cat", "dog", ""])
  return model, pixels, ids


@pytest.fixture(params=["clip", "siglip"])
def setup(request):
  return _setup(request.param)


@pytest.fixture
def clip_setup():
  return _setup("clip")


def _eager(model, adapters, inputs, method, train=False, rng=None):
  """Un-jitted forward: float32 [N, E] features as numpy."""
  rngs = {"dropout": rng} if train else {}
  out = model.module(adapters).apply(model.variables(adapters),
                                     jnp.asarray(inputs), not train,
                                     method=method, rngs=rngs)
  return np.asarray(out)


def _with_random_b(adapters: Adapters, seed: int, scale: float = 0.2
                   ) -> Adapters:
  """Adapters with every ``b`` set to N(0, scale^2) (a trained-like state)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(adapters.params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  new = []
  for (path, leaf), key in zip(leaves, keys, strict=True):
    if path[-1].key == "b":
      leaf = scale * jax.random.normal(key, leaf.shape, leaf.dtype)
    new.append(leaf)
  return Adapters(jax.tree_util.tree_unflatten(treedef, new), adapters.config)


def _encode_both(model, adapters, pixels, ids):
  return (np.asarray(model.encode_image(pixels, adapters)),
          np.asarray(model.encode_text(ids, adapters)))


# ------------------------------------------------------------- zero init


def test_zero_init_bit_identical_model_api(setup):
  """B = 0 adapters on q/k/v/o of both towers change nothing, bit for bit,
  through the jitted Model API."""
  model, pixels, ids = setup
  config = LoraConfig(targets=ALL_TARGETS, towers="both")
  adapters = init_lora(jax.random.PRNGKey(0), model.params, config)
  base_img, base_txt = _encode_both(model, None, pixels, ids)
  img, txt = _encode_both(model, adapters, pixels, ids)
  assert np.array_equal(img, base_img)
  assert np.array_equal(txt, base_txt)
  assert img.dtype == np.float32
  assert img.shape == (2, model.config.vision.embed_dim)


@pytest.mark.parametrize("towers", ["vision", "text", "both"])
def test_zero_init_bit_identical_per_tower(setup, towers):
  model, pixels, ids = setup
  config = LoraConfig(targets=ALL_TARGETS, towers=towers)
  adapters = init_lora(jax.random.PRNGKey(1), model.params, config)
  for inputs, method in ((pixels, "encode_image"), (ids, "encode_text")):
    assert np.array_equal(_eager(model, adapters, inputs, method),
                          _eager(model, None, inputs, method)), method


# ------------------------------------------------------ tower isolation


@pytest.mark.parametrize("towers", ["vision", "text"])
def test_nonzero_adapters_change_only_their_tower(setup, towers):
  model, pixels, ids = setup
  config = LoraConfig(targets=ALL_TARGETS, towers=towers)
  adapters = _with_random_b(
      init_lora(jax.random.PRNGKey(2), model.params, config), seed=3)
  assert set(adapters.params) == {"vision": {"img"}, "text": {"txt"}}[towers]
  img = _eager(model, adapters, pixels, "encode_image")
  txt = _eager(model, adapters, ids, "encode_text")
  base_img = _eager(model, None, pixels, "encode_image")
  base_txt = _eager(model, None, ids, "encode_text")
  if towers == "vision":
    assert not np.allclose(img, base_img, atol=1e-4)
    assert np.array_equal(txt, base_txt)
  else:
    assert not np.allclose(txt, base_txt, atol=1e-4)
    assert np.array_equal(img, base_img)


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_each_target_changes_output(clip_setup, target):
  model, pixels, _ = clip_setup
  config = LoraConfig(targets=(target,), towers="vision")
  adapters = _with_random_b(
      init_lora(jax.random.PRNGKey(4), model.params, config), seed=5)
  attn = adapters.params["img"]["blocks_0"]["attn"]
  assert set(attn) == {target}
  out = _eager(model, adapters, pixels, "encode_image")
  assert not np.allclose(out, _eager(model, None, pixels, "encode_image"),
                         atol=1e-4)


# ---------------------------------------------------------------- blocks


def test_block_presets_match_clip_lora_positions():
  # CLIP-LoRA's positions for a 12-block tower.
  expected = {
      "all": list(range(12)),
      "bottom": [0, 1, 2, 3],
      "mid": [4, 5, 6, 7],
      "up": [8, 9, 10, 11],
      "half-up": [6, 7, 8, 9, 10, 11],
      "half-bottom": [0, 1, 2, 3, 4, 5],
  }
  assert set(expected) == set(BLOCK_PRESETS)
  for preset, blocks in expected.items():
    assert list(block_indices(preset, 12)) == blocks, preset


def test_block_presets_on_other_depths():
  assert block_indices("bottom", 24) == tuple(range(8))
  assert block_indices("up", 24) == tuple(range(16, 24))
  assert block_indices("half-up", 2) == (1,)
  assert block_indices("all", 2) == (0, 1)


def test_explicit_block_lists():
  assert block_indices([0, 5, 11], 12) == (0, 5, 11)
  assert block_indices((3,), 12) == (3,)
  assert block_indices(np.array([1, 2]), 12) == (1, 2)
  for bad in ([12], [-1], [0, 13]):
    with pytest.raises(ValueError, match="out of range"):
      block_indices(bad, 12)
  with pytest.raises(ValueError, match="preset"):
    block_indices("middle", 12)


def _fake_backbone(depth: int, width: int = 8) -> dict:
  """Just the shapes init_lora reads, for a depth-12 tower without a model."""
  block = {"attn": {"qkv": {"kernel": jnp.zeros((width, 3 * width))},
                    "out": {"kernel": jnp.zeros((width, width))}}}
  tower = {f"blocks_{i}": block for i in range(depth)}
  return {"img": tower, "txt": tower}


@pytest.mark.parametrize("blocks", list(BLOCK_PRESETS) + [(0, 5, 11), [2, 7]])
def test_adapters_only_on_selected_blocks(blocks):
  config = LoraConfig(towers="both", blocks=blocks)
  adapters = init_lora(jax.random.PRNGKey(0), _fake_backbone(12), config)
  expected = {f"blocks_{i}" for i in block_indices(blocks, 12)}
  for tower in ("img", "txt"):
    assert set(adapters.params[tower]) == expected
    for block in adapters.params[tower].values():
      assert set(block) == {"attn"}
      assert set(block["attn"]) == {"q", "k", "v"}  # release default


def test_out_of_range_blocks_rejected_at_init():
  config = LoraConfig(blocks=(0, 12))
  with pytest.raises(ValueError, match="out of range"):
    init_lora(jax.random.PRNGKey(0), _fake_backbone(12), config)


@pytest.mark.parametrize("kwargs,match", [
    ({"rank": 0}, "rank"), ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"), ({"targets": ("q", "x")}, "targets"),
    ({"targets": ()}, "targets"), ({"towers": "audio"}, "towers"),
    ({"blocks": "middle"}, "blocks")])
def test_lora_config_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    LoraConfig(**kwargs)


def test_lora_config_lists_are_normalised():
  """Lists become tuples: the config stays hashable (it is static pytree
  metadata of Adapters) and equal to its tuple spelling."""
  config = LoraConfig(targets=["q", "v"], blocks=[0, 1])
  assert config == LoraConfig(targets=("q", "v"), blocks=(0, 1))
  assert hash(config) == hash(LoraConfig(targets=("q", "v"), blocks=(0, 1)))


def test_block_adapter_matters_only_when_in_tree(clip_setup):
  """Perturbing block i's adapter changes the output; dropping block i from
  the tree (the others still present, B = 0) restores the backbone exactly."""
  model, pixels, _ = clip_setup
  depth = model.config.vision.depth
  base = _eager(model, None, pixels, "encode_image")
  zero = init_lora(jax.random.PRNGKey(6), model.params,
                   LoraConfig(targets=ALL_TARGETS, towers="vision"))
  for i in range(depth):
    name = f"blocks_{i}"
    only_i = _with_random_b(
        Adapters({"img": {name: zero.params["img"][name]}}, zero.config), 7)
    perturbed = {"img": {**zero.params["img"], **only_i.params["img"]}}
    out = _eager(model, Adapters(perturbed, zero.config), pixels,
                 "encode_image")
    assert not np.allclose(out, base, atol=1e-4), name
    dropped = {"img": {k: v for k, v in perturbed["img"].items()
                       if k != name}}
    out = _eager(model, Adapters(dropped, zero.config), pixels,
                 "encode_image")
    assert np.array_equal(out, base), name
    # A subset tree built by init_lora for block i alone behaves the same.
    sub = init_lora(jax.random.PRNGKey(8), model.params,
                    LoraConfig(targets=ALL_TARGETS, blocks=(i,)))
    assert set(sub.params["img"]) == {name}


# ------------------------------------------------------------------ init


def test_init_distribution_and_scaling(clip_setup):
  model, _, _ = clip_setup
  config = LoraConfig(targets=ALL_TARGETS, towers="both")
  assert (config.rank, config.alpha) == (16, 8.0)
  assert config.scaling == 2.0  # alpha / sqrt(rank) = 8 / 4
  assert LoraConfig(rank=4, alpha=8.0).scaling == 4.0
  adapters = init_lora(jax.random.PRNGKey(9), model.params, config)
  a_all = []
  for tower, prefix in (("img", "vision"), ("txt", "text")):
    width = getattr(model.config, prefix).width
    bound = 1.0 / math.sqrt(width)
    for block in adapters.params[tower].values():
      for ab in block["attn"].values():
        a, b = np.asarray(ab["a"]), np.asarray(ab["b"])
        assert a.shape == (width, 16) and a.dtype == np.float32
        assert b.shape == (16, width) and b.dtype == np.float32
        assert np.all(b == 0)
        assert np.all(np.abs(a) <= bound)
        a_all.append(a.ravel() / bound)
  u = np.concatenate(a_all)  # should be U(-1, 1)
  assert abs(u.mean()) < 0.02
  assert abs(u.var() - 1.0 / 3.0) < 0.01
  assert u.min() < -0.99 and u.max() > 0.99
  hist, _ = np.histogram(u, bins=10, range=(-1, 1))
  assert hist.min() > 0.85 * len(u) / 10
  # Every matrix gets its own key.
  assert len({x.tobytes() for x in a_all}) == len(a_all)


# ----------------------------------------------------------------- merge


def test_merge_lora_matches_unmerged(setup):
  model, pixels, ids = setup
  config = LoraConfig(targets=ALL_TARGETS, towers="both")
  adapters = _with_random_b(
      init_lora(jax.random.PRNGKey(10), model.params, config), seed=11)
  before = jax.tree_util.tree_map(np.array, model.params)
  merged = merge_lora(model.params, adapters)
  # The original backbone is untouched (values and structure).
  jax.tree_util.tree_map(np.testing.assert_array_equal, model.params, before)
  assert (jax.tree_util.tree_structure(merged)
          == jax.tree_util.tree_structure(model.params))
  merged_model = dataclasses.replace(model, params=merged)
  img, txt = _encode_both(model, adapters, pixels, ids)  # dropout off (eval)
  m_img, m_txt = _encode_both(merged_model, None, pixels, ids)
  np.testing.assert_allclose(m_img, img, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m_txt, txt, rtol=1e-5, atol=1e-5)
  # The adapters did change the model (the check above is not vacuous).
  base_img, base_txt = _encode_both(model, None, pixels, ids)
  assert not np.allclose(img, base_img, atol=1e-3)
  assert not np.allclose(txt, base_txt, atol=1e-3)


def test_merge_lora_changes_only_targeted_weights(clip_setup):
  model, _, _ = clip_setup
  config = LoraConfig(targets=("k", "o"), towers="vision", blocks=(1,))
  adapters = _with_random_b(
      init_lora(jax.random.PRNGKey(12), model.params, config), seed=13)
  merged = merge_lora(model.params, adapters)
  flat = dict(jax.tree_util.tree_flatten_with_path(model.params)[0])
  changed = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(merged)[0]:
    if not np.array_equal(leaf, flat[path]):
      changed.add(jax.tree_util.keystr(path))
  assert changed == {"['img']['blocks_1']['attn']['qkv']['kernel']",
                     "['img']['blocks_1']['attn']['out']['kernel']"}
  # Only k's column slice of the fused qkv kernel moves.
  w = model.config.vision.width
  qkv = np.asarray(merged["img"]["blocks_1"]["attn"]["qkv"]["kernel"])
  orig = np.asarray(model.params["img"]["blocks_1"]["attn"]["qkv"]["kernel"])
  np.testing.assert_array_equal(qkv[:, :w], orig[:, :w])
  np.testing.assert_array_equal(qkv[:, 2 * w:], orig[:, 2 * w:])
  ab = adapters.params["img"]["blocks_1"]["attn"]["k"]
  np.testing.assert_allclose(qkv[:, w:2 * w] - orig[:, w:2 * w],
                             2.0 * np.asarray(ab["a"] @ ab["b"]), atol=1e-6)


# --------------------------------------------------------------- dropout


def test_lora_dropout(clip_setup):
  model, pixels, ids = clip_setup
  config = LoraConfig(targets=ALL_TARGETS, towers="both")
  assert config.dropout == 0.25  # release default
  adapters = _with_random_b(
      init_lora(jax.random.PRNGKey(14), model.params, config), seed=15)
  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  eval1 = np.asarray(model.encode_image(pixels, adapters))
  eval2 = np.asarray(model.encode_image(pixels, adapters, train=False,
                                        rng=k1))
  assert np.array_equal(eval1, eval2)  # eval ignores the rng: deterministic
  train1 = np.asarray(model.encode_image(pixels, adapters, train=True,
                                         rng=k1))
  train1b = np.asarray(model.encode_image(pixels, adapters, train=True,
                                          rng=k1))
  train2 = np.asarray(model.encode_image(pixels, adapters, train=True,
                                         rng=k2))
  assert not np.allclose(train1, eval1, atol=1e-4)
  assert np.array_equal(train1, train1b)  # same rng, same masks
  assert not np.allclose(train1, train2, atol=1e-4)
  with pytest.raises(ValueError, match="rng"):
    model.encode_image(pixels, adapters, train=True)
  with pytest.raises(ValueError, match="rng"):
    model.encode_text(ids, adapters, train=True)
  # Dropout acts on the LoRA branch only: with B = 0 train mode is the
  # backbone.
  zero = init_lora(jax.random.PRNGKey(14), model.params, config)
  assert np.array_equal(
      _eager(model, zero, pixels, "encode_image", train=True, rng=k1),
      _eager(model, None, pixels, "encode_image"))


# ------------------------------------------------------------------ vmap


def test_vmap_over_episodes_matches_loop(clip_setup):
  """A leading episode axis E on every adapter leaf, the backbone shared."""
  model, pixels, _ = clip_setup
  config = LoraConfig(targets=ALL_TARGETS, towers="both")
  episodes = [
      _with_random_b(init_lora(jax.random.PRNGKey(20 + e), model.params,
                               config), seed=30 + e)
      for e in range(3)]
  stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x),
                                   *[ad.params for ad in episodes])
  module = model.module(episodes[0])
  backbone = model.params

  @jax.jit
  def batched(lora, x):
    return jax.vmap(
        lambda p, x: module.apply({"params": backbone, "lora": p}, x,
                                  method="encode_image"),
        in_axes=(0, None))(lora, x)

  out = np.asarray(batched(stacked, jnp.asarray(pixels)))
  assert out.shape == (3, 2, model.config.vision.embed_dim)
  for e, adapters in enumerate(episodes):
    np.testing.assert_allclose(
        out[e], np.asarray(model.encode_image(pixels, adapters)),
        rtol=1e-5, atol=1e-5)
  # Episodes really differ, so the comparison is not vacuous.
  assert not np.allclose(out[0], out[1], atol=1e-4)
