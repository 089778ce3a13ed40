"""Hugging Face ``CLIPModel`` / ``SiglipModel`` folders -> ``Model``.

A folder as written by ``save_pretrained``: ``config.json`` (model_type
"clip" or "siglip"; fixed-resolution SigLIP2 checkpoints are "siglip" with a
Gemma ``tokenizer.json``), weights in ``model.safetensors``, sharded
``*.safetensors`` with ``model.safetensors.index.json``, or (torch installed)
``pytorch_model.bin`` read with ``weights_only=True``; optionally
``preprocessor_config.json`` and tokenizer files.

The architecture comes from config.json, read as plain JSON with the defaults
of transformers' config classes (transformers is not needed at run time), and
every tensor shape is checked against it. Behaviour matched (transformers 5.x,
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
from jaxfsl.checkpoints.errors import CheckpointError, listing
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

_WEIGHTS = "model.safetensors"
_WEIGHTS_INDEX = "model.safetensors.index.json"
_TORCH_WEIGHTS = "pytorch_model.bin"
_TORCH_WEIGHTS_INDEX = "pytorch_model.bin.index.json"


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


def _eps(value: Any) -> dict:
  # None (or absent) keeps the family's epsilon.
  return {} if value is None else {"norm_eps": float(value)}


def _check_channels(vc: dict, path: str) -> None:
  if int(vc["num_channels"]) != 3:
    raise CheckpointError(
        f"{path}: vision_config.num_channels={vc['num_channels']}; only RGB "
        "(3) is supported")


def clip_config_from_hf(cfg: dict, path: str = "config.json") -> ModelConfig:
  """A ``ModelConfig`` from a ``CLIPModel`` config.json dict."""
  tc = _sub_config(cfg, "text_config", _CLIP_TEXT, path)
  vc = _sub_config(cfg, "vision_config", _CLIP_VISION, path)
  top = {**_CLIP_TOP, **cfg}
  _check_channels(vc, path)
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
      path, "clip",
      vision=dict(
          image_size=_square(vc["image_size"], "vision_config.image_size",
                             path),
          patch_size=_square(vc["patch_size"], "vision_config.patch_size",
                             path),
          width=int(vc["hidden_size"]), depth=int(vc["num_hidden_layers"]),
          heads=int(vc["num_attention_heads"]),
          mlp_dim=int(vc["intermediate_size"]), embed_dim=embed,
          act=_act(vc["hidden_act"], "vision_config.hidden_act", path),
          **_eps(vc["layer_norm_eps"])),
      text=dict(
          vocab_size=int(tc["vocab_size"]),
          context_length=int(tc["max_position_embeddings"]),
          width=int(tc["hidden_size"]), depth=int(tc["num_hidden_layers"]),
          heads=int(tc["num_attention_heads"]),
          mlp_dim=int(tc["intermediate_size"]), embed_dim=embed,
          act=_act(tc["hidden_act"], "text_config.hidden_act", path),
          eot_token_id=eot, **_eps(tc["layer_norm_eps"])),
      logit_scale_init=float(top["logit_scale_init_value"]))


def siglip_config_from_hf(cfg: dict, path: str = "config.json"
                          ) -> ModelConfig:
  """A ``ModelConfig`` from a ``SiglipModel`` config.json dict."""
  tc = _sub_config(cfg, "text_config", _SIGLIP_TEXT, path)
  vc = _sub_config(cfg, "vision_config", _SIGLIP_VISION, path)
  _check_channels(vc, path)
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
      path, "siglip",
      vision=dict(
          image_size=_square(vc["image_size"], "vision_config.image_size",
                             path),
          patch_size=_square(vc["patch_size"], "vision_config.patch_size",
                             path),
          width=width, depth=int(vc["num_hidden_layers"]),
          heads=int(vc["num_attention_heads"]),
          mlp_dim=int(vc["intermediate_size"]), embed_dim=width,
          act=_act(vc["hidden_act"], "vision_config.hidden_act", path),
          **_eps(vc["layer_norm_eps"])),
      text=dict(
          vocab_size=int(tc["vocab_size"]),
          context_length=int(tc["max_position_embeddings"]),
          width=text_width, depth=int(tc["num_hidden_layers"]),
          heads=int(tc["num_attention_heads"]),
          mlp_dim=int(tc["intermediate_size"]), embed_dim=proj,
          act=_act(tc["hidden_act"], "text_config.hidden_act", path),
          **_eps(tc["layer_norm_eps"])))


# ----------------------------------------------------------------- weights


def read_hf_weights(folder: str | os.PathLike) -> Tensors:
  """All weight tensors of a HF folder, each remembered with its file.

  Order of preference, as transformers: model.safetensors, the safetensors
  index, pytorch_model.bin, its index. Other ``*.safetensors`` files in the
  folder (e.g. ``open_clip_model.safetensors``) are never read.
  """
  folder = Path(folder)
  if (folder / _WEIGHTS).is_file():
    f = folder / _WEIGHTS
    return Tensors(readers.read_safetensors(f), str(f))
  if (folder / _WEIGHTS_INDEX).is_file():
    return _read_sharded(folder, folder / _WEIGHTS_INDEX,
                         readers.read_safetensors)
  if (folder / _TORCH_WEIGHTS).is_file():
    f = folder / _TORCH_WEIGHTS
    return Tensors(readers.torch_to_numpy(readers.torch_load_weights(f), f),
                   str(f))
  if (folder / _TORCH_WEIGHTS_INDEX).is_file():
    return _read_sharded(
        folder, folder / _TORCH_WEIGHTS_INDEX,
        lambda f: readers.torch_to_numpy(readers.torch_load_weights(f), f))
  present = sorted(p.name for p in folder.iterdir())
  raise CheckpointError(
      f"{folder}: no weights found; expected {_WEIGHTS}, {_WEIGHTS_INDEX}, "
      f"{_TORCH_WEIGHTS} or {_TORCH_WEIGHTS_INDEX}; the folder has: "
      f"{listing(present)}")


def _read_sharded(folder: Path, index_file: Path, read) -> Tensors:
  index = readers.read_json(index_file)
  weight_map = index.get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise CheckpointError(f"{index_file}: no 'weight_map' in the index")
  arrays, files = {}, {}
  for shard in sorted(set(weight_map.values())):
    shard_path = folder / shard
    if Path(shard).name != shard or not shard_path.is_file():
      raise CheckpointError(
          f"{index_file}: shard {shard!r} listed in the index is not a file "
          f"in {folder}")
    for key, array in read(shard_path).items():
      if key in arrays:
        raise CheckpointError(
            f"{shard_path}: tensor {key!r} also appears in {files[key]}")
      arrays[key], files[key] = array, str(shard_path)
  for key, shard in weight_map.items():
    if files.get(key) != str(folder / shard):
      raise CheckpointError(
          f"{index_file}: tensor {key!r} is listed in shard {shard!r} but is "
          "not in that file")
  return Tensors(arrays, files)


# -------------------------------------------------------------- conversion


def _linear(t: Tensors, prefix: str, n_in: int, n_out: int,
            bias: bool = True) -> dict:
  """torch Linear weight [out, in] -> Dense kernel [in, out]."""
  kernel = t.get(f"{prefix}.weight", (n_out, n_in)).T
  return T.dense(kernel, t.get(f"{prefix}.bias", (n_out,))
                      if bias else None)


def _layer_norm(t: Tensors, prefix: str, width: int) -> dict:
  return T.ln(t.get(f"{prefix}.weight", (width,)),
                   t.get(f"{prefix}.bias", (width,)))


def _encoder(t: Tensors, prefix: str, width: int, depth: int,
             mlp_dim: int) -> dict:
  """``{prefix}.layers.{i}`` (CLIPEncoderLayer / SiglipEncoderLayer)."""
  blocks = {}
  for i in range(depth):
    p = f"{prefix}.layers.{i}"
    q, k, v = (_linear(t, f"{p}.self_attn.{n}_proj", width, width)
               for n in "qkv")
    blocks[f"blocks_{i}"] = {
        "ln1": _layer_norm(t, f"{p}.layer_norm1", width),
        "attn": {
            "qkv": T.fused_qkv(q, k, v),
            "out": _linear(t, f"{p}.self_attn.out_proj", width, width),
        },
        "ln2": _layer_norm(t, f"{p}.layer_norm2", width),
        "mlp": {
            "fc1": _linear(t, f"{p}.mlp.fc1", width, mlp_dim),
            "fc2": _linear(t, f"{p}.mlp.fc2", mlp_dim, width),
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
      "ln_final": _layer_norm(t, "text_model.final_layer_norm", c.width),
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
      "ln_pre": _layer_norm(t, "vision_model.pre_layrnorm", v.width),
      **_encoder(t, "vision_model.encoder", v.width, v.depth, v.mlp_dim),
      "ln_post": _layer_norm(t, "vision_model.post_layernorm", v.width),
      "proj": _linear(t, "visual_projection", v.width, v.embed_dim,
                      bias=False),
  }
  txt = {
      **_text_common(t, x),
      "proj": _linear(t, "text_projection", x.width, x.embed_dim, bias=False),
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
      "ln_post": _layer_norm(t, "vision_model.post_layernorm", w),
      "map_head": {
          "probe": t.get(f"{head}.probe", (1, 1, w)).reshape(w),
          "attn": {
              # nn.MultiheadAttention packs q|k|v as rows of [3W, W]: the
              # transpose is our fused [W, 3W] with columns q|k|v.
              "qkv": T.dense(in_w.T, in_b),
              "out": _linear(t, f"{head}.attention.out_proj", w, w),
          },
          "ln": _layer_norm(t, f"{head}.layernorm", w),
          "mlp": {
              "fc1": _linear(t, f"{head}.mlp.fc1", w, v.mlp_dim),
              "fc2": _linear(t, f"{head}.mlp.fc2", v.mlp_dim, w),
          },
      },
  }
  txt = {
      **_text_common(t, x),
      "proj": _linear(t, "text_model.head", x.width, x.embed_dim),
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
