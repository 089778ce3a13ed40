"""Feature parity of loaded checkpoints with transformers' CLIP / SigLIP.

Each case builds a small random transformers model (every parameter
perturbed), saves it with ``save_pretrained``, loads it with
``jaxfsl.checkpoints.load_model`` and compares ``encode_image`` /
``encode_text`` with ``get_image_features`` / ``get_text_features`` after L2
normalisation. Odd widths and head counts, patch 14 and 16, depths 1-3, both
GELUs, and both CLIP pooling rules are covered.
"""

import _reference as ref
import numpy as np
import pytest
import torch

from jaxfsl.checkpoints import load_model

TOL = 1e-4
N_IMAGES = 3
N_TEXTS = 5

# (id, hf_clip kwargs, token-id recipe). "eos" pads with the EOS id as HF's
# CLIP tokenizers do; "zero" pads with 0 as OpenAI's tokenizer does.
CLIP_CASES = [
    # eos_token_id 7 is not the largest id: only first-EOS pooling is right.
    ("w72h6-p16-d2-quick_gelu-eos7",
     dict(vision_width=72, vision_heads=6, vision_depth=2, patch=16, image=32,
          text_width=48, text_heads=3, text_depth=2, act="quick_gelu",
          eos_token_id=7),
     dict(eos=7, pad="eos", bos=98, max_id=None)),
    # Legacy config (eos_token_id == 2): transformers pools at the argmax.
    ("w72h3-p14-d3-gelu-legacy-argmax",
     dict(vision_width=72, vision_heads=3, vision_depth=3, patch=14,
          image=28, text_width=64, text_heads=4, text_depth=1, act="gelu",
          eos_token_id=2),
     dict(eos=99, pad="zero", bos=98, max_id=98)),
    # Towers with different activations (a swap would show); EOS = max id.
    ("w96h6-p16-d1-vision_quick_gelu-text_gelu-eos99",
     dict(vision_width=96, vision_heads=6, vision_depth=1, patch=16, image=48,
          text_width=72, text_heads=6, text_depth=3, act="quick_gelu",
          text_act="gelu", eos_token_id=99),
     dict(eos=99, pad="eos", bos=98, max_id=None)),
]

SIGLIP_CASES = [
    ("w72h6-p16-d2",
     dict(width=72, heads=6, depth=2, patch=16, image=32, text_width=48,
          text_heads=3, text_depth=2), None),
    # Sharded safetensors with an index.
    ("w96h3-p14-d1-text_d3-sharded",
     dict(width=96, heads=3, depth=1, patch=14, image=28, text_width=72,
          text_heads=6, text_depth=3), "40KB"),
]


def _clip_ids(recipe, context=16, vocab=100):
  pad = recipe["eos"] if recipe["pad"] == "eos" else 0
  return ref.clip_ids(N_TEXTS, context, vocab, eos=recipe["eos"], pad=pad,
                      bos=recipe["bos"], seed=1, max_id=recipe["max_id"])


@pytest.mark.parametrize("name,kw,recipe", CLIP_CASES,
                         ids=[c[0] for c in CLIP_CASES])
def test_clip_parity(tmp_path, name, kw, recipe):
  hf = ref.hf_clip(**kw, seed=len(name))
  ref.write_hf(hf, tmp_path / "clip")
  model = load_model(tmp_path / "clip")

  assert model.config.family == "clip"
  assert model.config.vision.heads == kw["vision_heads"]
  assert model.config.text.eot_token_id == (
      None if kw["eos_token_id"] == 2 else kw["eos_token_id"])
  pixels = ref.random_pixels(N_IMAGES, kw["image"], seed=0)
  ids = _clip_ids(recipe)
  img, txt = ref.parity(model, hf, pixels, ids)
  print(f"\nCLIP {name}: image {img:.2e} text {txt:.2e}")
  assert img <= TOL and txt <= TOL

  # The learned temperature comes through as well.
  np.testing.assert_allclose(model.logit_scale,
                             hf.logit_scale.exp().item(), rtol=1e-6)


def test_clip_pooling_rule_matters(tmp_path):
  # Guards the parity test above: with eos 7 not the max id, argmax pooling
  # must disagree with transformers, so the test can tell the rules apart.
  name, kw, recipe = CLIP_CASES[0]
  hf = ref.hf_clip(**kw, seed=len(name))
  ref.write_hf(hf, tmp_path / "clip")
  model = load_model(tmp_path / "clip")
  ids = _clip_ids(recipe)
  import dataclasses
  wrong = dataclasses.replace(
      model, config=dataclasses.replace(
          model.config, text=dataclasses.replace(model.config.text,
                                                 eot_token_id=None)))
  diff = ref.max_normalized_diff(wrong.encode_text(ids),
                                 ref.hf_text_features(hf, ids))
  assert diff > 1e-2


@pytest.mark.parametrize("name,kw,shard", SIGLIP_CASES,
                         ids=[c[0] for c in SIGLIP_CASES])
def test_siglip_parity(tmp_path, name, kw, shard):
  hf = ref.hf_siglip(**kw, seed=len(name))
  ref.write_hf(hf, tmp_path / "siglip", max_shard_size=shard)
  if shard:
    assert (tmp_path / "siglip" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "siglip").glob("*.safetensors"))) > 1
  model = load_model(tmp_path / "siglip")

  assert model.config.family == "siglip"
  assert model.config.vision.pool == "map"
  pixels = ref.random_pixels(N_IMAGES, kw["image"], seed=0)
  ids = ref.siglip_ids(N_TEXTS, 16, 100, seed=1)
  img, txt = ref.parity(model, hf, pixels, ids)
  print(f"\nSigLIP {name}: image {img:.2e} text {txt:.2e}")
  assert img <= TOL and txt <= TOL
  np.testing.assert_allclose(model.logit_scale, hf.logit_scale.exp().item(),
                             rtol=1e-6)
  np.testing.assert_allclose(model.logit_bias, hf.logit_bias.item(),
                             rtol=1e-6)


def test_pytorch_model_bin_matches_safetensors(tmp_path):
  # The same weights as pytorch_model.bin (weights_only torch.load) give the
  # same parameters as the safetensors folder.
  name, kw, _ = SIGLIP_CASES[0]
  hf = ref.hf_siglip(**kw, seed=3)
  ref.write_hf(hf, tmp_path / "st")
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "config.json").write_bytes(
      (tmp_path / "st" / "config.json").read_bytes())
  torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  a = load_model(tmp_path / "st")
  b = load_model(tmp_path / "bin")
  import jax
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
