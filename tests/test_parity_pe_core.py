"""PE-Core: parity with open_clip/timm in the three checkpoint layouts, the
tokenizer, the non-native-resolution rule, LoRA and the episode engine.

References are random-init PE-Core models built with open_clip_torch (its
PE-Core vision tower is a timm ``vit_pe_core_*`` Eva) at small sizes, every
parameter perturbed, written in the official ``PE-Core-*.pt`` layout (the
test's own inverse of timm's ``_convert_pe``, checked against it), the
open_clip hub folder layout and timm's vision-only layout. torchvision is not
installed: ``_torchvision_shim`` stands in for it (see that file for why).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from unittest import mock

import _torchvision_shim

_torchvision_shim.install()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import pytest  # noqa: E402
import safetensors.torch  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from open_clip.model import CustomTextCLIP  # noqa: E402
from timm.models.eva import checkpoint_filter_fn  # noqa: E402

import jaxfsl  # noqa: E402
from jaxfsl.checkpoints import CheckpointError  # noqa: E402
from jaxfsl.models.pe import rope_2d_angles  # noqa: E402
from jaxfsl.tokenizers.pe import (  # noqa: E402
    default_bpe_path,
    pe_core_tokenizer,
)

TEXTS = ["a photo of a dog.", "Hello,   WORLD!!! &amp; friends?",
         "naïve café — “quotes” 東京 😀 ÉCOLE", "it's 4.5 we'll",
         " ".join(["word"] * 40)]

# Small PE-Core models. "cls16": class token, patch 16, head widths 64 (the
# rule). "nocls14": G-like (no class token, positions from 0), patch 14, odd
# widths whose head counts need the explicit override, 3 blocks.
CASES = {
    "cls16": dict(class_token=True, patch=16, grid=2, width=128, depth=2,
                  heads=2, mlp=512, text_width=64, text_depth=1,
                  text_heads=1, embed=48, options={}),
    "nocls14": dict(class_token=False, patch=14, grid=3, width=96, depth=3,
                    heads=2, mlp=200, text_width=96, text_depth=2,
                    text_heads=3, embed=40,
                    options=dict(vision_heads=2, text_heads=3)),
}


def _timm_name(class_token: bool) -> str:
  return ("vit_pe_core_base_patch16_224" if class_token
          else "vit_pe_core_gigantic_patch14_448")


def _trunk_kwargs(c: dict, grid: int) -> dict:
  # ref_feat_shape == the grid: timm's RoPE then uses the integer positions,
  # as perception_models does at any grid.
  return dict(img_size=grid * c["patch"], patch_size=c["patch"],
              embed_dim=c["width"], depth=c["depth"], num_heads=c["heads"],
              mlp_ratio=(c["mlp"] + 0.5) / c["width"],
              ref_feat_shape=(grid, grid))


def _open_clip_cfg(c: dict) -> dict:
  return dict(
      embed_dim=c["embed"],
      vision_cfg=dict(image_size=c["grid"] * c["patch"],
                      timm_model_name=_timm_name(c["class_token"]),
                      timm_model_pretrained=False, timm_pool="map",
                      timm_proj=None),
      text_cfg=dict(context_length=32, vocab_size=49408,
                    width=c["text_width"], heads=c["text_heads"],
                    layers=c["text_depth"]),
      custom_text=True)


def _build_reference(c: dict, seed: int) -> CustomTextCLIP:
  real = timm.create_model

  def create(name, **kw):
    return real(name, **kw, **_trunk_kwargs(c, c["grid"]))

  cfg = _open_clip_cfg(c)
  with mock.patch.object(timm, "create_model", create):
    model = CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"],
                           cfg["text_cfg"])
  assert model.visual.trunk.blocks[0].mlp.fc1.out_features == c["mlp"]
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    # perception_models leaves these torch.empty: give them values first.
    model.text.positional_embedding.normal_(0, 0.02, generator=gen)
    model.text.text_projection.normal_(0, 0.1, generator=gen)
    for _, p in sorted(model.named_parameters()):
      p.add_(torch.randn(p.shape, generator=gen) * 0.1)
  return model.eval()


def to_official(state: dict) -> dict:
  """open_clip PE-Core state dict -> perception_models' CLIP layout."""
  out = {}
  swaps = [("patch_embed.proj", "conv1"), ("norm_pre", "ln_pre"),
           ("blocks.", "transformer.resblocks."), (".norm1", ".ln_1"),
           (".norm2", ".ln_2"), ("attn.qkv.weight", "attn.in_proj_weight"),
           ("attn.qkv.bias", "attn.in_proj_bias"),
           ("attn.proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"),
           ("mlp.fc2", "mlp.c_proj")]
  pool = {}
  for k, v in state.items():
    if k.startswith("text."):
      out[k[len("text."):]] = v
      continue
    if not k.startswith("visual.trunk."):
      out[k] = v
      continue
    k = k[len("visual.trunk."):]
    if k.startswith("attn_pool."):
      pool[k[len("attn_pool."):]] = v
    elif k == "cls_token":
      out["visual.class_embedding"] = v.reshape(-1)
    elif k == "pos_embed":
      out["visual.positional_embedding"] = v[0]
    elif k == "norm.weight" or k == "norm.bias":
      out["visual.ln_post." + k.split(".")[1]] = v
    elif k == "head.weight":
      out["visual.proj"] = v.T.contiguous()
    elif k == "head.bias":
      assert not v.any(), "the official layout has no projection bias"
    else:
      for a, b in swaps:
        k = k.replace(a, b)
      out["visual." + k] = v
  p = "visual.attn_pool."
  out[p + "probe"] = pool["latent"]
  out[p + "attn.in_proj_weight"] = torch.cat([pool["q.weight"],
                                              pool["kv.weight"]])
  out[p + "attn.in_proj_bias"] = torch.cat([pool["q.bias"], pool["kv.bias"]])
  for a, b in (("proj", "attn.out_proj"), ("norm", "layernorm"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
    for s in ("weight", "bias"):
      out[f"{p}{b}.{s}"] = pool[f"{a}.{s}"]
  return {k: v.contiguous() for k, v in out.items()}


def _features(model, pixels, ids):
  with torch.no_grad():
    img = F.normalize(model.encode_image(pixels), dim=-1).numpy()
    txt = F.normalize(model.encode_text(ids), dim=-1).numpy()
  return img, txt


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def ref_tokenizer():
  return open_clip.get_tokenizer("PE-Core-B-16")


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory, ref_tokenizer):
  """One reference model written in every layout, with its features."""
  name = request.param
  c = CASES[name]
  model = _build_reference(c, seed=len(name))
  size = c["grid"] * c["patch"]
  pixels = torch.randn(3, 3, size, size, generator=torch.Generator()
                       .manual_seed(1))
  ids = ref_tokenizer(TEXTS)
  root = tmp_path_factory.mktemp(name)
  state = model.state_dict()
  # A non-zero projection bias (which only the timm/open_clip layouts can
  # hold) in one file; zero for the layouts shared with the official one.
  with_bias = {k: v.clone() for k, v in state.items()}
  with_bias_feats = _features(model, pixels, ids)
  with torch.no_grad():
    model.visual.trunk.head.bias.zero_()
  state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
  feats = _features(model, pixels, ids)

  paths = {}
  # open_clip hub folder, safetensors (zero bias) and .bin (non-zero bias).
  config = {"model_cfg": _open_clip_cfg(c),
            "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3,
                               "interpolation": "bilinear",
                               "resize_mode": "squash"}}
  for sub, weights in (("open_clip", "safetensors"), ("open_clip_bin", "bin")):
    folder = root / sub
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if weights == "safetensors":
      safetensors.torch.save_file(state, folder /
                                  "open_clip_model.safetensors")
    else:
      torch.save({k: v.clone() for k, v in with_bias.items()},
                 folder / "open_clip_pytorch_model.bin")
    paths[sub] = folder
  # Official .pt: plain, and wrapped with a module. prefix (load_ckpt's forms).
  official = to_official(state)
  paths["official"] = root / "PE-Core-test.pt"
  torch.save(official, paths["official"])
  paths["official_wrapped"] = root / "wrapped.pt"
  torch.save({"state_dict": {"module." + k: v for k, v in official.items()}},
             paths["official_wrapped"])
  # timm vision-only folder.
  trunk = {k[len("visual.trunk."):]: v for k, v in state.items()
           if k.startswith("visual.trunk.")}
  folder = root / "timm"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({
      "architecture": _timm_name(c["class_token"]),
      "num_classes": c["embed"],
      "pretrained_cfg": {"input_size": [3, size, size]}}))
  safetensors.torch.save_file(trunk, folder / "model.safetensors")
  paths["timm"] = folder
  return dict(name=name, c=c, model=model, pixels=pixels, ids=ids,
              feats=feats, with_bias_feats=with_bias_feats, paths=paths,
              official=official, trunk=trunk, loaded={})


def _load(case, layout):
  """The loaded model, once per case and layout (tests only read it)."""
  if layout not in case["loaded"]:
    options = dict(case["c"]["options"])
    if layout.startswith("open_clip"):
      options.pop("text_heads", None)  # the config file states it
    case["loaded"][layout] = jaxfsl.load_model(case["paths"][layout],
                                               **options)
  return case["loaded"][layout]


def _jax_pixels(pixels):
  return pixels.numpy().transpose(0, 2, 3, 1)


def test_official_layout_is_what_timm_converts(case):
  # timm's own official -> timm conversion must give back the trunk.
  converted = checkpoint_filter_fn(case["official"], case["model"].visual.trunk)
  assert sorted(converted) == sorted(case["trunk"])
  for k, v in case["trunk"].items():
    torch.testing.assert_close(converted[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["official", "official_wrapped",
                                    "open_clip", "open_clip_bin"])
def test_features_match_open_clip(case, layout):
  model = _load(case, layout)
  img_ref, txt_ref = (case["with_bias_feats"] if layout == "open_clip_bin"
                      else case["feats"])
  assert model.config.family == "pe_core"
  assert model.config.vision.class_token == case["c"]["class_token"]
  assert model.config.vision.proj_bias == (layout == "open_clip_bin")
  img = _unit(model.encode_image(_jax_pixels(case["pixels"])))
  txt = _unit(model.encode_text(TEXTS))
  np.testing.assert_array_equal(model.tokenize(TEXTS), case["ids"].numpy())
  assert np.abs(img - img_ref).max() <= 1e-4
  assert np.abs(txt - txt_ref).max() <= 1e-4
  if layout != "open_clip_bin":
    np.testing.assert_allclose(model.logit_scale,
                               case["model"].logit_scale.exp().item(),
                               rtol=1e-6)
  assert model.preprocessing.mean == (0.5, 0.5, 0.5)
  assert model.preprocessing.resample == "bilinear"


def test_legacy_torch_file_through_the_layout_registry(case, tmp_path):
  """A non-zip (legacy pickle) official .pt is not recognised by the path
  loader's cheap look at the zip; the "pe_core" Layout, tried before
  OpenAI's, claims it from its keys (head rule only: no options)."""
  path = tmp_path / "legacy.pt"
  torch.save(case["official"], path, _use_new_zipfile_serialization=False)
  if case["c"]["options"]:
    with pytest.raises(TypeError, match="not understood"):
      jaxfsl.load_model(path, **case["c"]["options"])
    return
  # The tokenizer from a folder holding CLIP's merges (the packaged one's).
  folder = os.path.dirname(default_bpe_path())
  model = jaxfsl.load_model(path, tokenizer=folder)
  assert model.config.family == "pe_core"
  img = _unit(model.encode_image(_jax_pixels(case["pixels"])))
  assert np.abs(img - case["feats"][0]).max() <= 1e-4
  np.testing.assert_array_equal(model.tokenize(TEXTS), case["ids"].numpy())


def test_timm_vision_weights_load_as_image_encoder(case):
  model = _load(case, "timm")
  img = _unit(model.encode_image(_jax_pixels(case["pixels"])))
  assert np.abs(img - case["feats"][0]).max() <= 1e-4
  for use in (lambda: model.encode_text(case["ids"].numpy()),
              lambda: model.tokenize(["a dog"])):
    with pytest.raises(ValueError, match=r"no text tower.*PE-Core-<size>\.pt"
                       r".*open_clip"):
      use()


def test_non_native_grid_follows_the_official_rule(case):
  """jaxfsl at a grid g' vs a timm trunk built at g' whose position
  embedding is torch's bilinear (no antialias) resampling of the native one
  and whose RoPE uses the integer positions of g'."""
  c = case["c"]
  model = _load(case, "official")
  for new_grid in (c["grid"] + 1, c["grid"] - 1):
    trunk = timm.create_model(_timm_name(c["class_token"]),
                              num_classes=c["embed"], global_pool="map",
                              **_trunk_kwargs(c, new_grid))
    state = dict(case["trunk"])
    pos = state["pos_embed"]
    cls, grid_pos = ((pos[:, :1], pos[:, 1:]) if c["class_token"]
                     else (pos[:, :0], pos))
    g, w = c["grid"], c["width"]
    grid_pos = F.interpolate(
        grid_pos.reshape(1, g, g, w).permute(0, 3, 1, 2),
        size=(new_grid, new_grid), mode="bilinear", align_corners=False,
        antialias=False).permute(0, 2, 3, 1).reshape(1, -1, w)
    state["pos_embed"] = torch.cat([cls, grid_pos], dim=1)
    trunk.load_state_dict(state)
    size = new_grid * c["patch"]
    pixels = torch.randn(2, 3, size, size,
                         generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
      ref = F.normalize(trunk.eval()(pixels), dim=-1).numpy()
    ours = _unit(model.encode_image(_jax_pixels(pixels)))
    assert np.abs(ours - ref).max() <= 1e-4, new_grid


def test_rope_angles_on_a_3x3_grid():
  """An independent NumPy re-derivation of perception_models' Rope2D."""
  head_dim, theta = 8, 10000.0
  for class_token in (True, False):
    angles = rope_2d_angles(3, head_dim, class_token, theta)
    offset = 1 if class_token else 0
    want = np.zeros((9 + offset, head_dim))
    for y in range(3):
      for x in range(3):
        for ch in range(head_dim):
          half = head_dim // 2
          coord = x if ch < half else y  # first half: column, second: row
          j = (ch % half) // 2  # interleaved pairs share a frequency
          want[offset + y * 3 + x, ch] = (coord + offset) * theta ** (
              -2 * j / half)
    np.testing.assert_allclose(angles, want, rtol=1e-6)
  # Pinned: class token, token (y=2, x=1) = row 1 + 2*3 + 1; channel 6 is the
  # row half's second frequency 10000^(-1/2): (2 + 1) * 0.01.
  angles = rope_2d_angles(3, 8, True)
  assert angles[8, 6] == pytest.approx(0.03, rel=1e-6)
  assert angles[8, 1] == pytest.approx(2.0)  # column half, f0 = 1, x = 1+1
  assert not angles[0].any()  # the class token is not rotated


@pytest.mark.parametrize("context", [32, 72])
def test_tokenizer_matches_open_clip(ref_tokenizer, context):
  texts = TEXTS + ["", "<end_of_text> x <START_OF_TEXT>", "tab\tnew\nline",
                   "mojibake: Ã©", "İstanbul ß ﬁ", "a" * 300, "1,234.5%!?",
                   " ".join(["word"] * 100)]
  ours = pe_core_tokenizer(context)(texts)  # cached: built once a session
  ref = ref_tokenizer(texts, context_length=context).numpy()
  np.testing.assert_array_equal(ours, ref)
  assert ours.dtype == np.int32
  # Over-long rows end in <end_of_text>; short ones are zero padded.
  assert ours[-1, -1] == 49407 and ours[-1, -2] != 49407
  assert ours[0, -1] == 0


def test_errors_name_file_key_and_shape(case, tmp_path):
  bad = dict(case["official"])
  w = case["c"]["width"]
  bad["visual.transformer.resblocks.0.attn.in_proj_bias"] = torch.zeros(5)
  del bad["visual.ln_post.weight"]
  path = tmp_path / "bad.pt"
  torch.save(bad, path)
  with pytest.raises(CheckpointError) as e:
    jaxfsl.load_model(path, **case["c"]["options"])
  msg = str(e.value)
  assert str(path) in msg
  assert f"visual.ln_post.weight (expected shape [{w}])" in msg
  assert f"in_proj_bias: expected shape [{3 * w}], found [5]" in msg
  if case["c"]["options"]:  # odd widths: PE-Core's head rule cannot apply
    with pytest.raises(CheckpointError, match="vision_heads=N"):
      jaxfsl.load_model(case["paths"]["official"])
  # A config file that disagrees with the tensors.
  folder = case["paths"]["open_clip"]
  cfg = json.loads((folder / "open_clip_config.json").read_text())
  cfg["model_cfg"]["embed_dim"] += 1
  other = tmp_path / "oc"
  other.mkdir()
  (other / "open_clip_config.json").write_text(json.dumps(cfg))
  (other / "open_clip_model.safetensors").symlink_to(
      folder / "open_clip_model.safetensors")
  with pytest.raises(CheckpointError, match="embed_dim"):
    jaxfsl.load_model(other, vision_heads=case["c"]["heads"])


# ------------------------------------------------------------ LoRA, engine


def test_lora_on_pe_blocks_matches_merged_weights():
  from jaxfsl.models import build
  from jaxfsl.models.families.pe_core import pe_core_config
  from jaxfsl.trainables.lora import LoraConfig, init_lora, merge_lora

  config = pe_core_config(image_size=32, patch_size=16, width=64, depth=2,
                          heads=2, embed_dim=32, text_width=64, text_depth=5,
                          text_heads=2)
  model = build(config)
  lora = init_lora(jax.random.PRNGKey(0), model.params,
                   LoraConfig(rank=2, towers="both", blocks="half-up",
                              dropout=0.0))
  # Blocks by index over each tower's real depth (upper halves of 2 and 5).
  assert sorted(lora.params["img"]) == ["blocks_1"]
  assert sorted(lora.params["txt"]) == ["blocks_2", "blocks_3", "blocks_4"]
  rng = np.random.RandomState(0)
  params = jax.tree_util.tree_map(
      lambda a: np.asarray(rng.randn(*a.shape) * 0.1, np.float32),
      lora.params)
  lora = type(lora)(params=params, config=lora.config)
  pixels = rng.randn(2, 32, 32, 3).astype(np.float32)
  merged = dataclasses.replace(model, params=merge_lora(model.params, lora))
  adapted = model.encode_image(pixels, lora)
  assert np.abs(adapted - model.encode_image(pixels)).max() > 1e-3
  np.testing.assert_allclose(adapted, merged.encode_image(pixels),
                             atol=1e-5)
  np.testing.assert_allclose(model.encode_text(["a dog"], lora),
                             merged.encode_text(["a dog"]), atol=1e-5)


def test_episode_engine_on_pe_core_batch_one_equals_four():
  from jaxfsl.method.objective import MethodConfig
  from jaxfsl.models import build
  from jaxfsl.optim import OptimConfig
  from jaxfsl.protocols.episodic.engine import (
    EngineConfig,
    EpisodeEngine,
    episode_keys,
  )
  from jaxfsl.trainables import LoraConfig

  model = build("pe-core-tiny")
  way, shot, query, views, size = 2, 1, 2, 2, model.config.vision.image_size
  rng = np.random.RandomState(0)
  e = 4

  def images(*shape):
    return rng.randint(0, 255, shape + (size, size, 3)).astype(np.uint8)

  batch = {
      "support_views": images(e, views, way * shot),
      "support": images(e, way * shot),
      "support_labels": np.tile(np.arange(way, dtype=np.int32), (e, shot)),
      "query": images(e, way * query),
      "query_labels": np.tile(np.repeat(np.arange(way, dtype=np.int32),
                                        query), (e, 1)),
      "text_ids": np.stack([model.tokenize([f"a photo of a class {i}."
                                            for i in range(way)])] * e),
  }
  # The engine embeds the frozen patches once (embed_image) and runs
  # encode_image_tokens every step; stage 2 skips the clean support pass
  # (the default; test_finetune checks that it is exact, model-agnostic).
  engine = EpisodeEngine(model, EngineConfig(
      way=way, shot=shot, query=query, steps=5, num_views=views,
      method=MethodConfig(variant="svl_ra"), optim=OptimConfig(lr=1e-3),
      lora=LoraConfig(rank=2)))
  keys = episode_keys(0, np.arange(e))
  together = engine.run_batch(batch, keys)
  assert np.isfinite(together["losses"]["total"]).all()
  for i in (0, 3):
    alone = engine.run_batch({k: v[i:i + 1] for k, v in batch.items()},
                             keys[i:i + 1])
    np.testing.assert_allclose(alone["losses"]["total"][0],
                               together["losses"]["total"][i], rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(alone["stages"]["accuracy"][0],
                               together["stages"]["accuracy"][i], atol=1e-5)
  assert math.isfinite(float(together["zero_shot"]["accuracy"][0]))


@pytest.mark.parametrize("preset, millions", [
    ("pe-core-b16-224", 447.66), ("pe-core-l14-336", 671.14),
    ("pe-core-g14-448", 2419.27)])
def test_preset_sizes_match_the_released_models(preset, millions):
  """Parameter counts of perception_models' pe.CLIP.from_config(...) state
  dicts (abstract shapes only: nothing is allocated)."""
  from jaxfsl.checkpoints.tensors import expected_shapes
  from jaxfsl.models import PRESETS

  shapes = expected_shapes(PRESETS[preset])
  assert sum(math.prod(s) for s in shapes.values()) / 1e6 == pytest.approx(
      millions, abs=0.005)
