"""PE-Core checkpoints in their three released layouts -> ``Model``.

Layouts (W vision width, Wt text width, E embedding width, g grid side):

* **official** ``facebook/PE-Core-*`` ``PE-Core-*.pt`` (perception_models
  ``pe.CLIP.state_dict()``; also wrapped in ``state_dict`` / ``weights`` and
  with a ``module.`` prefix, as its ``load_ckpt`` accepts). Text at the top
  level, vision under ``visual.``::

    visual.conv1.weight [W, 3, p, p]      visual.class_embedding [W] (not G)
    visual.positional_embedding [T, W]    visual.ln_pre.*
    visual.transformer.resblocks.{i}.{ln_1, ln_2, attn.in_proj_weight [3W, W],
      attn.in_proj_bias, attn.out_proj, mlp.c_fc, mlp.c_proj}
    visual.ln_post.*                      visual.attn_pool.probe [1, 1, W]
    visual.attn_pool.attn.{in_proj_weight [3W, W], in_proj_bias, out_proj}
    visual.attn_pool.{layernorm, mlp.c_fc, mlp.c_proj}
    visual.proj [W, E]                    (x @ proj)
    token_embedding.weight [V, Wt]        positional_embedding [L, Wt]
    transformer.resblocks.{i}.*           ln_final.*
    text_projection [Wt, E]               logit_scale []

* **open_clip** hub folder ``timm/PE-Core-*``: ``open_clip_config.json`` +
  ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``, read
  with ``weights_only``). Text under ``text.`` with the official names,
  vision under ``visual.trunk.`` in timm's Eva names::

    patch_embed.proj.weight, cls_token [1, 1, W], pos_embed [1, T, W],
    norm_pre, blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
    mlp.fc2}, norm, attn_pool.{latent [1, 1, W], q [W, W], kv [2W, W],
    proj, norm, mlp.fc1, mlp.fc2}, head.weight [E, W], head.bias [E]

* **timm** vision-only ``timm/vit_pe_core_*.fb`` (a folder with timm's
  ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, or the
  weights file itself): the trunk keys above without a prefix. It loads as an
  image encoder; its text side raises an error naming the files to get.

(Mapping official <-> timm: timm 1.0.31 ``models/eva.py`` ``_convert_pe``.)
Registered in ``jaxfsl.checkpoints`` twice: as a ``PathLoader`` (``detect`` /
``load``: folders, ``.safetensors`` and zip torch files, with the head
overrides below as ``load_model`` options) and as the "pe_core" torch
``Layout`` (``matches`` / ``convert``) before OpenAI's, which shares
``visual.conv1``, for torch files the path loader does not recognise.

No layout stores head counts. PE-Core's rule: head width 64 in every tower
except the G vision tower (96; recognised as width 1536 without a class
token), 8 heads in the attention pool; ``vision_heads`` / ``text_heads`` /
``pool_heads`` override it for other sizes. The open_clip config's text
``heads`` is used when present. Everything else is inferred from the tensor
shapes (and checked against the config file where there is one), never from
a file name.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import safetensors

from jaxfsl.checkpoints import readers
from jaxfsl.checkpoints import tensors as T
from jaxfsl.checkpoints.errors import CheckpointError, listing
from jaxfsl.checkpoints.openai import resblocks
from jaxfsl.checkpoints.tensors import Tensors
from jaxfsl.models.config import ModelConfig
from jaxfsl.models.families.pe_core import (
    LOGIT_SCALE_INIT,
    vision_head_width,
    without_text,
)
from jaxfsl.models.model import Model

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors",
                     "open_clip_pytorch_model.bin")
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_GET_INSTEAD = (
    "for the text tower download the official facebook/PE-Core-<size> file "
    "PE-Core-<size>.pt or the open_clip folder timm/PE-Core-<size> "
    "(open_clip_config.json + open_clip_model.safetensors / "
    "open_clip_pytorch_model.bin)")


# --------------------------------------------------------------- detection


def _safetensors_keys(path: Path) -> set[str]:
  try:
    with safetensors.safe_open(str(path), framework="numpy") as f:
      return set(f.keys())
  except (safetensors.SafetensorError, OSError, ValueError):
    return set()


def _zip_pickle_mentions(path: Path, needle: bytes) -> bool:
  """Whether a torch.save zip's ``data.pkl`` contains ``needle`` (the key
  names are plain strings there): a look at the names without unpickling."""
  try:
    names = readers.zip_names(path) or []
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pickles or any(n.endswith("constants.pkl") for n in names):
      return False  # not torch.save's zip (or a TorchScript archive)
    with zipfile.ZipFile(path) as z:
      return needle in z.read(pickles[0])
  except (CheckpointError, OSError, zipfile.BadZipFile):
    return False


def detect(path: Path) -> str | None:
  """"open_clip", "timm", a weights layout or "torch" when ``path`` looks
  like a PE-Core checkpoint (cheap: file names, JSON and key names, no
  tensor data), else None (for the other loaders)."""
  path = Path(path)
  if path.is_dir():
    if (path / OPEN_CLIP_CONFIG).is_file():
      return "open_clip"
    if (path / "config.json").is_file():
      try:
        arch = readers.read_json(path / "config.json").get("architecture")
      except (CheckpointError, OSError):
        return None
      if isinstance(arch, str) and arch.startswith("vit_pe_"):
        return "timm"
    return None
  if not path.is_file():
    return None
  if path.suffix.lower() == ".safetensors":
    return _layout_of_keys(_safetensors_keys(path))
  if _zip_pickle_mentions(path, b"attn_pool."):
    return "torch"  # official / open_clip / timm: decided on the keys
  return None


def _layout_of_keys(keys: Collection[str]) -> str | None:
  if "visual.attn_pool.probe" in keys or "attn_pool.probe" in keys:
    return "official"
  if "visual.trunk.attn_pool.latent" in keys:
    return "open_clip"
  if "attn_pool.latent" in keys:
    return "timm"
  return None


def matches(keys: Collection[str]) -> bool:
  """Whether tensor names are PE-Core's (any of the three layouts)."""
  return _layout_of_keys(keys) is not None


# ----------------------------------------------------------------- reading


def _read_weights(path: Path) -> dict[str, np.ndarray]:
  if path.suffix.lower() == ".safetensors":
    return readers.read_safetensors(path)
  return readers.read_torch(path)


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict, Path]:
  """(arrays, config-file dict or {}, weights file)."""
  if path.is_dir():
    if (path / OPEN_CLIP_CONFIG).is_file():
      names, config_file = OPEN_CLIP_WEIGHTS, path / OPEN_CLIP_CONFIG
    else:
      names, config_file = TIMM_WEIGHTS, path / "config.json"
    found = [path / n for n in names if (path / n).is_file()]
    if not found:
      raise CheckpointError(
          f"{path}: no weights file: expected one of {list(names)} beside "
          f"{config_file.name}")
    weights = found[0]
    config = readers.read_json(config_file)
  else:
    weights, config = path, {}
    # A weights file named as in a hub folder: use the config beside it.
    sibling = {**dict.fromkeys(OPEN_CLIP_WEIGHTS, OPEN_CLIP_CONFIG),
               **dict.fromkeys(TIMM_WEIGHTS, "config.json")}.get(path.name)
    if sibling and (path.parent / sibling).is_file():
      config = readers.read_json(path.parent / sibling)
  return _read_weights(weights), config, weights


# ------------------------------------------------------------- conversion


def _timm_blocks(t: Tensors, prefix: str, depth: int, width: int,
                 mlp: int) -> dict:
  """timm Eva blocks ``{prefix}{i}.{norm1, attn.qkv, attn.proj, norm2,
  mlp.fc1, mlp.fc2}`` -> our ``blocks_{i}`` (qkv columns q | k | v)."""
  out = {}
  for i in range(depth):
    p = f"{prefix}{i}"
    out[f"blocks_{i}"] = {
        "ln1": T.torch_layer_norm(t, f"{p}.norm1", width),
        "attn": {"qkv": T.torch_linear(t, f"{p}.attn.qkv", width, 3 * width),
                 "out": T.torch_linear(t, f"{p}.attn.proj", width, width)},
        "ln2": T.torch_layer_norm(t, f"{p}.norm2", width),
        "mlp": {"fc1": T.torch_linear(t, f"{p}.mlp.fc1", width, mlp),
                "fc2": T.torch_linear(t, f"{p}.mlp.fc2", mlp, width)},
    }
  return out


def _rule_heads(width: int, head_width: int, tower: str, option: str,
                path: str) -> int:
  """PE-Core's head count rule (no checkpoint stores it), checked."""
  if width % head_width:
    raise CheckpointError(
        f"{path}: {tower} width {width} is not a multiple of PE-Core's head "
        f"width {head_width}, so the head count cannot be inferred; pass "
        f"{option}=N (load_model(path, {option}=N))")
  return width // head_width


def _pool(t: Tensors, k, timm: bool, width: int, mlp: int) -> dict:
  """The attention pool (``map_head``): one probe, packed q | k | v."""
  if timm:
    q = T.torch_linear(t, k("attn_pool.q"), width, width)
    kv = T.torch_linear(t, k("attn_pool.kv"), width, 2 * width)
    return {
        "probe": t.get(k("attn_pool.latent"), (1, 1, width)).reshape(width),
        "attn": {"qkv": {
            "kernel": np.concatenate([q["kernel"], kv["kernel"]], 1),
            "bias": np.concatenate([q["bias"], kv["bias"]], 0)},
            "out": T.torch_linear(t, k("attn_pool.proj"), width, width)},
        "ln": T.torch_layer_norm(t, k("attn_pool.norm"), width),
        "mlp": {"fc1": T.torch_linear(t, k("attn_pool.mlp.fc1"), width, mlp),
                "fc2": T.torch_linear(t, k("attn_pool.mlp.fc2"), mlp, width)},
    }
  return {
      "probe": t.get(k("attn_pool.probe"), (1, 1, width)).reshape(width),
      "attn": {"qkv": T.dense(
          t.get(k("attn_pool.attn.in_proj_weight"), (3 * width, width)).T,
          t.get(k("attn_pool.attn.in_proj_bias"), (3 * width,))),
          "out": T.torch_linear(t, k("attn_pool.attn.out_proj"), width,
                                width)},
      "ln": T.torch_layer_norm(t, k("attn_pool.layernorm"), width),
      "mlp": {"fc1": T.torch_linear(t, k("attn_pool.mlp.c_fc"), width, mlp),
              "fc2": T.torch_linear(t, k("attn_pool.mlp.c_proj"), mlp,
                                    width)},
  }


def _vision(t: Tensors, prefix: str, timm: bool, path: str,
            heads: int | None, pool_heads: int | None
            ) -> tuple[dict, dict]:
  """Vision sizes (for ``PeVisionConfig``, from shapes) and the ``img``
  param tree; ``prefix`` is "visual." / "visual.trunk." / ""."""
  def k(name: str) -> str:
    return prefix + name

  patch_key = k("patch_embed.proj.weight" if timm else "conv1.weight")
  cshape = t.shape(patch_key, "the vision width and patch size")
  if len(cshape) != 4 or cshape[1] != 3 or cshape[2] != cshape[3]:
    raise CheckpointError(f"{path}: {patch_key} has shape {list(cshape)}; "
                          "expected [width, 3, p, p]")
  width, patch = cshape[0], cshape[2]
  cls_key = k("cls_token" if timm else "class_embedding")
  class_token = cls_key in t
  pos_key = k("pos_embed" if timm else "positional_embedding")
  pshape = t.shape(pos_key, "the image size")
  rows = pshape[-2] if len(pshape) >= 2 else -1
  num = rows - (1 if class_token else 0)
  grid = int(np.sqrt(max(num, 0)) + 0.5)
  want_pos = (1, rows, width) if timm else (rows, width)
  if tuple(pshape) != want_pos or grid * grid != num or grid == 0:
    raise CheckpointError(
        f"{path}: {pos_key} has shape {list(pshape)}; expected "
        f"{'[1, ' if timm else '['}g*g{' + 1' if class_token else ''}, "
        f"{width}] (patch grid{' plus class token' if class_token else ''})")
  blocks = k("blocks." if timm else "transformer.resblocks.")
  depth = T.count_blocks(t, blocks, ".", path)
  fc1 = "mlp.fc1.weight" if timm else "mlp.c_fc.weight"
  mlp = t.shape(f"{blocks}0.{fc1}", "the MLP width")[0]
  pool_mlp = t.shape(k("attn_pool." + fc1), "the pooling MLP width")[0]
  if timm:
    embed = t.shape(k("head.weight"), "the embedding width (projection)")[0]
    head_bias = t.arrays.get(k("head.bias"))
    # timm synthesises a zero bias for the official bias-free projection;
    # a non-zero one is real and kept.
    proj_bias = head_bias is not None and bool(np.any(np.asarray(
        head_bias, np.float32) != 0))
  else:
    embed = t.shape(k("proj"), "the embedding width")[-1]
    proj_bias = False
  sizes = dict(
      image_size=grid * patch, patch_size=patch, width=width, depth=depth,
      heads=heads or _rule_heads(
          width, vision_head_width(width, class_token),
          "vision", "vision_heads", path),
      mlp_dim=mlp, embed_dim=embed, proj_bias=proj_bias,
      class_token=class_token, pool_heads=pool_heads or 8,
      pool_mlp_dim=pool_mlp)

  img: dict[str, Any] = {
      # OIHW -> HWIO.
      "patch_embed": {"kernel": t.get(patch_key, (width, 3, patch, patch)
                                      ).transpose(2, 3, 1, 0)},
      "pos_embed": t.get(pos_key, want_pos).reshape(rows, width),
      "map_head": _pool(t, k, timm, width, pool_mlp),
  }
  if class_token:
    img["cls_token"] = t.get(cls_key, (1, 1, width) if timm else (width,)
                             ).reshape(width)
  if timm:
    img["ln_pre"] = T.torch_layer_norm(t, k("norm_pre"), width)
    img.update(_timm_blocks(t, blocks, depth, width, mlp))
    img["ln_post"] = T.torch_layer_norm(t, k("norm"), width)
    img["proj"] = T.torch_linear(t, k("head"), width, embed, bias=proj_bias)
    t.mark_used(k("head.bias"))
  else:
    img["ln_pre"] = T.torch_layer_norm(t, k("ln_pre"), width)
    img.update(resblocks(t, blocks[:-1], depth, width, mlp))
    img["ln_post"] = T.torch_layer_norm(t, k("ln_post"), width)
    img["proj"] = {"kernel": t.get(k("proj"), (width, embed))}  # x @ proj
  return sizes, img


def _text(t: Tensors, prefix: str, path: str, embed: int, heads: int | None
          ) -> tuple[dict, dict]:
  """Text sizes and the ``txt`` tree (the official names, under
  ``prefix``: "" or open_clip's "text.")."""
  vocab_key = prefix + "token_embedding.weight"
  vshape = t.shape(vocab_key, "the vocabulary and text width")
  if len(vshape) != 2:
    raise CheckpointError(f"{path}: {vocab_key} has shape {list(vshape)}; "
                          "expected [vocab, width]")
  vocab, width = vshape
  context = t.shape(prefix + "positional_embedding", "the context length")[0]
  blocks = prefix + "transformer.resblocks"
  depth = T.count_blocks(t, blocks + ".", ".", path)
  mlp = t.shape(f"{blocks}.0.mlp.c_fc.weight", "the text MLP width")[0]
  sizes = dict(vocab_size=vocab, context_length=context, width=width,
               depth=depth, mlp_dim=mlp, embed_dim=embed,
               heads=heads or _rule_heads(width, 64, "text", "text_heads",
                                          path))
  txt = {
      "token_embed": t.get(vocab_key, (vocab, width)),
      "pos_embed": t.get(prefix + "positional_embedding", (context, width)),
      **resblocks(t, blocks, depth, width, mlp),
      "ln_final": T.torch_layer_norm(t, prefix + "ln_final", width),
      # x @ text_projection: already [in, out].
      "proj": {"kernel": t.get(prefix + "text_projection", (width, embed))},
  }
  return sizes, txt


def _check_config_file(config: ModelConfig, layout: str, data: dict,
                       path: str) -> None:
  """Every disagreement between the config file and the tensors, listed."""
  found: dict[str, tuple[Any, Any]] = {}
  if layout == "open_clip":
    cfg = data.get("model_cfg", data)
    vis, txt = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    size = vis.get("image_size")
    if isinstance(size, (list, tuple)):
      size = size[0] if len(set(size)) == 1 else size
    checks = {
        "model_cfg.embed_dim": (cfg.get("embed_dim"),
                                config.vision.embed_dim),
        "vision_cfg.image_size": (size, config.vision.image_size),
        "text_cfg.context_length": (txt.get("context_length"),
                                    config.text.context_length),
        "text_cfg.vocab_size": (txt.get("vocab_size"),
                                config.text.vocab_size),
        "text_cfg.width": (txt.get("width"), config.text.width),
        "text_cfg.layers": (txt.get("layers"), config.text.depth),
    }
  else:  # timm
    size = data.get("pretrained_cfg", {}).get("input_size")
    checks = {
        "num_classes": (data.get("num_classes"), config.vision.embed_dim),
        "pretrained_cfg.input_size": (
            size[-1] if isinstance(size, (list, tuple)) and size else None,
            config.vision.image_size),
    }
  for name, (stated, inferred) in checks.items():
    if stated is not None and stated != inferred:
      found[name] = (stated, inferred)
  if found:
    raise CheckpointError(
        f"{path}: the config file disagrees with the weights: "
        + "; ".join(f"{k}={a!r} but the tensors imply {b!r}"
                    for k, (a, b) in found.items()))


def convert_pe_core(arrays: Mapping[str, np.ndarray], path: str,
                    config_file: Mapping[str, Any] | None = None, *,
                    vision_heads: int | None = None,
                    text_heads: int | None = None,
                    pool_heads: int | None = None
                    ) -> tuple[ModelConfig, dict]:
  """PE-Core arrays in any of the three layouts -> (config, params).

  Args:
    arrays: the flat state dict (wrappers / ``module.`` already removed).
    path: for messages.
    config_file: ``open_clip_config.json`` / timm ``config.json`` contents,
      checked against the shapes.
    vision_heads, text_heads, pool_heads: override PE-Core's head rule.

  Raises:
    CheckpointError: not PE-Core keys, missing / mis-shaped / unexpected
      tensors (all listed), or a config file that disagrees with them.
  """
  layout = _layout_of_keys(arrays.keys())
  if layout is None:
    raise CheckpointError(
        f"{path}: not a PE-Core checkpoint: expected 'visual.attn_pool.probe'"
        " (official .pt), 'visual.trunk.attn_pool.latent' (open_clip) or "
        f"'attn_pool.latent' (timm); found {listing(sorted(arrays))}")
  config_file = config_file or {}
  t = Tensors(arrays, path)
  prefix = {"official": "visual." if "visual.attn_pool.probe" in t else "",
            "open_clip": "visual.trunk.", "timm": ""}[layout]
  vision, img = _vision(t, prefix, layout != "official", path, vision_heads,
                        pool_heads)
  if layout == "open_clip" and text_heads is None:
    cfg = config_file.get("model_cfg", config_file)
    text_heads = cfg.get("text_cfg", {}).get("heads")
  tprefix = "text." if layout == "open_clip" else ""
  params = {"img": img, "logit_scale": (
      t.scalar("logit_scale") if "logit_scale" in t
      else np.asarray(LOGIT_SCALE_INIT, np.float32))}
  if tprefix + "token_embedding.weight" in t:
    text, params["txt"] = _text(t, tprefix, path, vision["embed_dim"],
                                text_heads)
    config = T.make_config(path, "pe_core", vision, text)
  else:
    config = T.make_config(path, "pe_core", vision,
                           dict(embed_dim=vision["embed_dim"]))
    what = ("timm vision-only weights" if layout == "timm"
            else "a vision-only PE state dict")
    config = without_text(config, f"{path} holds {what}: this model has no "
                          f"text tower; {_GET_INSTEAD}")
  if config_file and layout != "official":
    _check_config_file(config, layout, config_file, path)
  t.finish(what=f"a PE-Core checkpoint ({layout} layout)")
  return config, params


def convert(arrays: Mapping[str, np.ndarray], path: str
            ) -> tuple[ModelConfig, dict]:
  """The ``Layout`` entry: PE-Core keys in a torch file, head rule only."""
  return convert_pe_core(arrays, path)


def load(path: str | os.PathLike, tokenizer: T.TokenizerArg = None,
         dtype: Any = jnp.float32, *, vision_heads: int | None = None,
         text_heads: int | None = None, pool_heads: int | None = None
         ) -> Model:
  """Loads a PE-Core checkpoint in any of its three layouts (the
  ``PathLoader`` entry).

  Args:
    path: an official ``PE-Core-*.pt``, an open_clip hub folder (or its
      weights file), or timm vision weights (folder or file).
    tokenizer: None: the packaged OpenAI CLIP BPE (zero padding; the
      family's ``default_tokenizer``) when the vocabulary is CLIP's 49408;
      a path to another ``bpe_simple_vocab_16e6.txt.gz`` (or its folder); or
      a callable.
    dtype: compute dtype; parameters stay float32.
    vision_heads, text_heads, pool_heads: override PE-Core's head rule (head
      width 64; 96 for G's vision tower; pool 8 heads) for other sizes.

  Returns:
    The Model: squash resize to S x S, bilinear, mean = std = 0.5 (the
    family's preprocessing).

  Raises:
    CheckpointError: as ``convert_pe_core``, plus unreadable files.
  """
  path = Path(path)
  arrays, config_file, weights = _read(path)
  config, params = convert_pe_core(
      arrays, str(weights), config_file, vision_heads=vision_heads,
      text_heads=text_heads, pool_heads=pool_heads)
  return T.finalize(config, params, weights, tokenizer=tokenizer,
                    dtype=dtype)
