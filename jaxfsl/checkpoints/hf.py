"""Hugging Face ``CLIPModel`` / ``SiglipModel`` folders -> ``Model``.

A folder as written by ``save_pretrained``: ``config.json`` (model_type
"clip" or "siglip"; fixed-resolution SigLIP2 checkpoints are "siglip" with a
Gemma ``tokenizer.json``), weights in ``model.safetensors``, sharded
``*.safetensors`` with ``model.safetensors.index.json``, or (torch installed)
``pytorch_model.bin`` read with ``weights_only=True``; optionally
``preprocessor_config.json`` and tokenizer files.

The architecture comes from config.json, read as plain JSON with the defaults
of transformers' config classes (transformers is not needed at run time), and
every tensor shape is checked against it; the flags a config.json does not
state come from the family (``jaxfsl.models.families``). Another HF
architecture is one ``MODEL_TYPES`` entry. Behaviour matched (transformers 5.x,
``models/clip/modeling_clip.py``, ``models/siglip/modeling_siglip.py``):

* CLIP text pooling: first position of ``eos_token_id``, except the legacy
  ``eos_token_id == 2`` configs, which take the argmax of the ids
  (``TextConfig.eot_token_id = None``).
* SigLIP text pooling: the last position (after ``final_layer_norm``), then
  ``head`` (Linear with bias); no attention mask, as trained (pad to length).
* SigLIP vision: ``post_layernorm`` on all tokens, then the attention-pooling
  ``head`` (``vision_use_head`` must be true: without it transformers has no
  pooled image feature either).
* ``get_image_features`` / ``get_text_features`` return an output object in
  5.x; its ``pooler_output`` is what ``encode_image`` / ``encode_text`` equal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxfsl.checkpoints import readers
from jaxfsl.checkpoints import tensors as T
from jaxfsl.checkpoints.errors import CheckpointError
from jaxfsl.checkpoints.tensors import Tensors
from jaxfsl.models import families
from jaxfsl.models.config import ModelConfig, TextConfig
from jaxfsl.models.model import Model
from jaxfsl.paths import user_path
from jaxfsl.preprocess import Preprocessing

# Defaults of transformers' config classes, for keys a config.json omits
# (save_pretrained writes only non-default values in some versions).
_CLIP_TEXT = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048,
    num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
    hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
_CLIP_VISION = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
    hidden_act="quick_gelu", layer_norm_eps=1e-5)
_CLIP_TOP = dict(projection_dim=512, logit_scale_init_value=2.6592)
_SIGLIP_TEXT = dict(
    vocab_size=32000, hidden_size=768, intermediate_size=3072,
    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=64,
    hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, projection_size=None)
_SIGLIP_VISION = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, num_channels=3, image_size=224, patch_size=16,
    hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=True)

# transformers' ACT2FN names -> ours. gelu_new and gelu_pytorch_tanh are both
# the tanh approximation; "gelu" is the exact erf form.
_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
}


def _harmless(key: str) -> bool:
  # Older transformers saved the position_ids buffers; they are arange(L).
  return key.endswith("embeddings.position_ids")


# ------------------------------------------------------------------ config


def _sub_config(cfg: dict, name: str, defaults: dict, path: str) -> dict:
  """config[name] merged over defaults, with the legacy ``{name}_dict``."""
  sub = cfg.get(name) or {}
  legacy = cfg.get(f"{name}_dict") or {}
  if not isinstance(sub, dict) or not isinstance(legacy, dict):
    raise CheckpointError(f"{path}: {name!r} must be a JSON object")
  # transformers lets text_config_dict override text_config.
  return {**defaults, **sub, **legacy}


def _square(value: Any, field: str, path: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise CheckpointError(
          f"{path}: {field}={value!r}: only square sizes are supported")
    value = value[0]
  return int(value)


def _act(name: Any, field: str, path: str) -> str:
  if name not in _ACTIVATIONS:
    raise CheckpointError(
        f"{path}: {field}={name!r} is not supported; expected one of "
        f"{sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


def _tower(c: dict, name: str, path: str, embed: int) -> dict:
  """Sizes (and the activation / epsilon a config.json states) of one tower
  from its ``{name}`` sub-config; the family supplies the rest."""
  out = dict(width=int(c["hidden_size"]), depth=int(c["num_hidden_layers"]),
             heads=int(c["num_attention_heads"]),
             mlp_dim=int(c["intermediate_size"]), embed_dim=embed,
             act=_act(c["hidden_act"], f"{name}.hidden_act", path))
  if c["layer_norm_eps"] is not None:  # None keeps the family's epsilon
    out["norm_eps"] = float(c["layer_norm_eps"])
  if name == "vision_config":
    if int(c["num_channels"]) != 3:
      raise CheckpointError(
          f"{path}: vision_config.num_channels={c['num_channels']}; only RGB "
          "(3) is supported")
    out.update(image_size=_square(c["image_size"], f"{name}.image_size", path),
               patch_size=_square(c["patch_size"], f"{name}.patch_size", path))
  else:
    out.update(vocab_size=int(c["vocab_size"]),
               context_length=int(c["max_position_embeddings"]))
  return out


def clip_config_from_hf(cfg: dict, path: str = "config.json") -> ModelConfig:
  """A ``ModelConfig`` from a ``CLIPModel`` config.json dict."""
  tc = _sub_config(cfg, "text_config", _CLIP_TEXT, path)
  vc = _sub_config(cfg, "vision_config", _CLIP_VISION, path)
  top = {**_CLIP_TOP, **cfg}
  eos = tc["eos_token_id"]
  if isinstance(eos, list) and len(eos) == 1:
    eos = eos[0]
  if not isinstance(eos, int):
    raise CheckpointError(
        f"{path}: text_config.eos_token_id={eos!r}; CLIP pools the text at "
        "the end-of-text token and needs a single integer id")
  # transformers' legacy rule: configs from before PR #24773 say 2, and those
  # models pool at the highest token id (OpenAI's argmax).
  eot = None if eos == 2 else eos
  embed = int(top["projection_dim"])
  return T.make_config(
      path, "clip", vision=_tower(vc, "vision_config", path, embed),
      text={**_tower(tc, "text_config", path, embed), "eot_token_id": eot},
      logit_scale_init=float(top["logit_scale_init_value"]))


def siglip_config_from_hf(cfg: dict, path: str = "config.json"
                          ) -> ModelConfig:
  """A ``ModelConfig`` from a ``SiglipModel`` config.json dict."""
  tc = _sub_config(cfg, "text_config", _SIGLIP_TEXT, path)
  vc = _sub_config(cfg, "vision_config", _SIGLIP_VISION, path)
  if not vc["vision_use_head"]:
    raise CheckpointError(
        f"{path}: vision_config.vision_use_head is false: the image tower has "
        "no attention-pooling head, so there is no pooled image feature to "
        "match (transformers returns pooler_output=None)")
  width = int(vc["hidden_size"])
  text_width = int(tc["hidden_size"])
  proj = tc["projection_size"]
  proj = text_width if proj is None else int(proj)
  if proj != width:
    raise CheckpointError(
        f"{path}: text_config.projection_size={proj} differs from "
        f"vision_config.hidden_size={width}; SigLIP compares the text head "
        "output with the pooled image tokens, so they must match")

  return T.make_config(
      path, "siglip", vision=_tower(vc, "vision_config", path, width),
      text=_tower(tc, "text_config", path, proj))


# ----------------------------------------------------------------- weights


def read_hf_weights(folder: str | os.PathLike) -> Tensors:
  """All weight tensors of a HF folder, each remembered with its file
  (``readers.read_hf_folder``)."""
  return Tensors(*readers.read_hf_folder(folder))


# -------------------------------------------------------------- conversion


def _encoder(t: Tensors, prefix: str, width: int, depth: int,
             mlp_dim: int) -> dict:
  """``{prefix}.layers.{i}`` (CLIPEncoderLayer / SiglipEncoderLayer)."""
  blocks = {}
  for i in range(depth):
    p = f"{prefix}.layers.{i}"
    q, k, v = (T.torch_linear(t, f"{p}.self_attn.{n}_proj", width, width)
               for n in "qkv")
    blocks[f"blocks_{i}"] = {
        "ln1": T.torch_layer_norm(t, f"{p}.layer_norm1", width),
        "attn": {
            "qkv": T.fused_qkv(q, k, v),
            "out": T.torch_linear(t, f"{p}.self_attn.out_proj", width, width),
        },
        "ln2": T.torch_layer_norm(t, f"{p}.layer_norm2", width),
        "mlp": {
            "fc1": T.torch_linear(t, f"{p}.mlp.fc1", width, mlp_dim),
            "fc2": T.torch_linear(t, f"{p}.mlp.fc2", mlp_dim, width),
        },
    }
  return blocks


def _patch_kernel(t: Tensors, key: str, width: int, p: int) -> np.ndarray:
  # Conv2d weight [W, 3, p, p] (OIHW) -> [p, p, 3, W] (HWIO).
  return t.get(key, (width, 3, p, p)).transpose(2, 3, 1, 0)


def _text_common(t: Tensors, c: TextConfig) -> dict:
  return {
      "token_embed": t.get("text_model.embeddings.token_embedding.weight",
                           (c.vocab_size, c.width)),
      "pos_embed": t.get("text_model.embeddings.position_embedding.weight",
                         (c.context_length, c.width)),
      **_encoder(t, "text_model.encoder", c.width, c.depth, c.mlp_dim),
      "ln_final": T.torch_layer_norm(t, "text_model.final_layer_norm", c.width),
  }


def clip_params_from_hf(t: Tensors, config: ModelConfig) -> dict:
  """CLIPModel state dict -> our param tree (numpy leaves)."""
  v, x = config.vision, config.text
  img = {
      "patch_embed": {"kernel": _patch_kernel(
          t, "vision_model.embeddings.patch_embedding.weight", v.width,
          v.patch_size)},
      "cls_token": t.get("vision_model.embeddings.class_embedding",
                         (v.width,)),
      "pos_embed": t.get("vision_model.embeddings.position_embedding.weight",
                         (v.num_tokens, v.width)),
      "ln_pre": T.torch_layer_norm(t, "vision_model.pre_layrnorm", v.width),
      **_encoder(t, "vision_model.encoder", v.width, v.depth, v.mlp_dim),
      "ln_post": T.torch_layer_norm(t, "vision_model.post_layernorm", v.width),
      "proj": T.torch_linear(t, "visual_projection", v.width, v.embed_dim,
                             bias=False),
  }
  txt = {
      **_text_common(t, x),
      "proj": T.torch_linear(t, "text_projection", x.width, x.embed_dim,
                             bias=False),
  }
  return {"img": img, "txt": txt, "logit_scale": t.scalar("logit_scale")}


def siglip_params_from_hf(t: Tensors, config: ModelConfig) -> dict:
  """SiglipModel state dict -> our param tree (numpy leaves)."""
  v, x = config.vision, config.text
  w = v.width
  head = "vision_model.head"
  in_w = t.get(f"{head}.attention.in_proj_weight", (3 * w, w))
  in_b = t.get(f"{head}.attention.in_proj_bias", (3 * w,))
  img = {
      "patch_embed": {
          "kernel": _patch_kernel(
              t, "vision_model.embeddings.patch_embedding.weight", w,
              v.patch_size),
          "bias": t.get("vision_model.embeddings.patch_embedding.bias", (w,)),
      },
      "pos_embed": t.get("vision_model.embeddings.position_embedding.weight",
                         (v.num_tokens, w)),
      **_encoder(t, "vision_model.encoder", w, v.depth, v.mlp_dim),
      "ln_post": T.torch_layer_norm(t, "vision_model.post_layernorm", w),
      "map_head": {
          "probe": t.get(f"{head}.probe", (1, 1, w)).reshape(w),
          "attn": {
              # nn.MultiheadAttention packs q|k|v as rows of [3W, W]: the
              # transpose is our fused [W, 3W] with columns q|k|v.
              "qkv": T.dense(in_w.T, in_b),
              "out": T.torch_linear(t, f"{head}.attention.out_proj", w, w),
          },
          "ln": T.torch_layer_norm(t, f"{head}.layernorm", w),
          "mlp": {
              "fc1": T.torch_linear(t, f"{head}.mlp.fc1", w, v.mlp_dim),
              "fc2": T.torch_linear(t, f"{head}.mlp.fc2", v.mlp_dim, w),
          },
      },
  }
  txt = {
      **_text_common(t, x),
      "proj": T.torch_linear(t, "text_model.head", x.width, x.embed_dim),
  }
  return {"img": img, "txt": txt, "logit_scale": t.scalar("logit_scale"),
          "logit_bias": t.scalar("logit_bias")}


# --------------------------------------------------------- preprocessing


def preprocessing_from_hf(folder: str | os.PathLike, config: ModelConfig
                          ) -> Preprocessing:
  """Mean/std from ``preprocessor_config.json`` (or the image processor
  inside transformers 5's ``processor_config.json``), else the family's.

  The image size is always the model's and the resize rule the family's
  (jaxfsl resizes to S x S without crop, as in the episodes; the centre crop
  and, for CLIP, the bicubic filter of HF's processors are not used).
  """
  folder = Path(folder)
  default = families.get(config.family).preprocessing(
      config.vision.image_size)
  pre, source = None, None
  if (folder / "preprocessor_config.json").is_file():
    source = folder / "preprocessor_config.json"
    pre = readers.read_json(source)
  elif (folder / "processor_config.json").is_file():
    source = folder / "processor_config.json"
    pre = readers.read_json(source).get("image_processor")
  if not isinstance(pre, dict):
    return default

  def triple(name, fallback):
    value = pre.get(name)
    if value is None:
      return fallback
    if isinstance(value, (int, float)):
      value = [value] * 3
    if not isinstance(value, list) or len(value) != 3:
      raise CheckpointError(
          f"{source}: {name}={value!r}; expected 3 per-channel values")
    return tuple(float(x) for x in value)

  return Preprocessing(config.vision.image_size,
                       triple("image_mean", default.mean),
                       triple("image_std", default.std), default.resample)


def _tokenizer_files_present(folder: Path) -> bool:
  return any((folder / n).is_file() for n in (
      "tokenizer.json", "vocab.json", "spiece.model"))


# -------------------------------------------------------------------- load

# config.json model_type -> (config reader, tensor mapping). Another HF
# architecture is one entry here.
MODEL_TYPES = {
    "clip": (clip_config_from_hf, clip_params_from_hf),
    "siglip": (siglip_config_from_hf, siglip_params_from_hf),
}


def load_hf(path: str | os.PathLike, tokenizer: T.TokenizerArg = None,
            dtype: Any = jnp.float32) -> Model:
  """Loads a Hugging Face CLIPModel / SiglipModel folder.

  Args:
    path: the folder (with config.json); ``~`` is expanded.
    tokenizer: None to use the folder's own tokenizer files when present
      (none -> ``Model.tokenizer`` is None; feed token ids), or a callable /
      path that overrides them.
    dtype: compute dtype of the model; parameters stay float32.

  Returns:
    The Model; ``encode_image``/``encode_text`` equal transformers'
    ``get_image_features(...).pooler_output`` /
    ``get_text_features(...).pooler_output`` on the same inputs.

  Raises:
    CheckpointError: unsupported model_type, inconsistent config, missing /
      mis-shaped / unexpected tensors, unreadable files.
  """
  folder = user_path(path)
  cfg_file = folder / "config.json"
  if not cfg_file.is_file():
    raise CheckpointError(f"{folder}: not a Hugging Face model folder (no "
                          "config.json)")
  cfg = readers.read_json(cfg_file)
  model_type = cfg.get("model_type")
  if model_type not in MODEL_TYPES:
    raise CheckpointError(
        f"{cfg_file}: model_type={model_type!r} is not supported; expected "
        "'clip' (CLIPModel) or 'siglip' (SiglipModel, including "
        "fixed-resolution SigLIP2)")
  read_config, convert = MODEL_TYPES[model_type]
  config = read_config(cfg, str(cfg_file))
  tensors = read_hf_weights(folder)
  params = convert(tensors, config)
  tensors.finish(_harmless, what=f"a Hugging Face {model_type} model")
  if tokenizer is None and _tokenizer_files_present(folder):
    tokenizer = folder
  return T.finalize(config, params, folder, tokenizer=tokenizer, dtype=dtype,
                    preprocessing=preprocessing_from_hf(folder, config))
