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
No layout stores head counts. PE-Core's rule: head width 64 in every tower
except the G vision tower (96; recognised as width 1536 without a class
token), 8 heads in the attention pool; ``vision_heads`` / ``text_heads`` /
``pool_heads`` override it for other sizes. The open_clip config's text
``heads`` is used when present. Everything else is inferred from the tensor
shapes (and checked against the config file where there is one), never from
a file name.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxfsl.checkpoints import common
from jaxfsl.checkpoints.common import CheckpointError, Tensors
from jaxfsl.models.config import ModelConfig, TextConfig
from jaxfsl.models.model import Model
from jaxfsl.models.pe_config import (
    LOGIT_SCALE_INIT,
    AbsentTextConfig,
    PeVisionConfig,
)
from jaxfsl.preprocess import SIGLIP_MEAN, SIGLIP_STD, Preprocessing

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors",
                     "open_clip_pytorch_model.bin")
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_EPS = 1e-5
_GET_INSTEAD = (
    "for the text tower download the official facebook/PE-Core-<size> file "
    "PE-Core-<size>.pt or the open_clip folder timm/PE-Core-<size> "
    "(open_clip_config.json + open_clip_model.safetensors / "
    "open_clip_pytorch_model.bin)")


@dataclasses.dataclass(frozen=True)
class _Vision:
  """Where a layout keeps each vision tensor (``prefix`` + name)."""

  prefix: str
  timm: bool

  def key(self, name: str) -> str:
    return self.prefix + name


# --------------------------------------------------------------- detection


def _zip_pickle_mentions(path: Path, needle: bytes) -> bool:
  """Whether a torch.save zip's ``data.pkl`` contains ``needle`` (the key
  names are plain strings there): a look at the names without unpickling."""
  try:
    with zipfile.ZipFile(path) as z:
      names = [n for n in z.namelist()
               if n == "data.pkl" or n.endswith("/data.pkl")]
      if not names or common.is_torchscript_zip(z.namelist()):
        return False
      return needle in z.read(names[0])
  except (zipfile.BadZipFile, OSError):
    return False


def detect(path: str | os.PathLike) -> str | None:
  """"official", "open_clip" or "timm" when ``path`` looks like a PE-Core
  checkpoint (cheap: file names, JSON and key names, no tensor data), else
  None (for the other loaders)."""
  path = Path(path)
  if path.is_dir():
    if (path / OPEN_CLIP_CONFIG).is_file():
      return "open_clip"
    config = path / "config.json"
    if config.is_file():
      try:
        arch = common.read_json(config).get("architecture", "")
      except CheckpointError:
        return None
      if isinstance(arch, str) and arch.startswith("vit_pe_"):
        return "timm"
    return None
  if not path.is_file():
    return None
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    try:
      keys = set(common.read_safetensors(path))
    except CheckpointError:
      return None
    return _layout_of_keys(keys)
  if zipfile.is_zipfile(path) and _zip_pickle_mentions(path, b"attn_pool."):
    # Official / open_clip / timm: decided on the keys when loading.
    return "torch"
  return None


def _layout_of_keys(keys: set[str]) -> str | None:
  if any(k.endswith("visual.attn_pool.probe") or k == "attn_pool.probe"
         for k in keys):
    return "official"
  if any(k.endswith("visual.trunk.attn_pool.latent") for k in keys):
    return "open_clip"
  if "attn_pool.latent" in keys:
    return "timm"
  return None


# ----------------------------------------------------------------- reading


def _unwrap(state: Any) -> Any:
  """perception_models' load_ckpt: a ``state_dict`` / ``weights`` wrapper
  and a uniform ``module.`` prefix are removed."""
  for wrapper in ("state_dict", "weights"):
    if (isinstance(state, Mapping) and wrapper in state
        and isinstance(state[wrapper], Mapping)):
      state = state[wrapper]
      break
  if isinstance(state, Mapping) and state and all(
      isinstance(k, str) and k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state


def _read_weights(path: Path) -> dict[str, np.ndarray]:
  if path.suffix.lower() == ".safetensors":
    return common.read_safetensors(path)
  state = _unwrap(common.torch_load_weights(path))
  return common.torch_to_numpy(state, path)


def _read(path: Path) -> tuple[str, dict[str, np.ndarray], dict, Path]:
  """(layout, arrays, config-file dict or {}, weights file)."""
  if path.is_dir():
    if (path / OPEN_CLIP_CONFIG).is_file():
      names, config_file = OPEN_CLIP_WEIGHTS, path / OPEN_CLIP_CONFIG
    elif (path / "config.json").is_file():
      names, config_file = TIMM_WEIGHTS, path / "config.json"
    else:
      raise CheckpointError(
          f"{path}: a folder without {OPEN_CLIP_CONFIG} or timm's "
          "config.json; expected a PE-Core open_clip hub folder "
          "(timm/PE-Core-*) or timm vision weights (timm/vit_pe_core_*)")
    found = [path / n for n in names if (path / n).is_file()]
    if not found:
      raise CheckpointError(
          f"{path}: no weights file: expected one of {list(names)} beside "
          f"{config_file.name}")
    weights = found[0]
    config = common.read_json(config_file)
  else:
    weights, config = path, {}
    # A weights file named as in a hub folder: use the config beside it.
    sibling = {**{n: OPEN_CLIP_CONFIG for n in OPEN_CLIP_WEIGHTS},
               **{n: "config.json" for n in TIMM_WEIGHTS}}.get(path.name)
    if sibling and (path.parent / sibling).is_file():
      config = common.read_json(path.parent / sibling)
  arrays = _read_weights(weights)
  layout = _layout_of_keys(set(arrays))
  if layout is None:
    raise CheckpointError(
        f"{weights}: not a PE-Core checkpoint: expected 'visual.attn_pool."
        "probe' (official .pt), 'visual.trunk.attn_pool.latent' (open_clip) "
        "or 'attn_pool.latent' (timm); found "
        f"{common.listing(sorted(arrays))}")
  return layout, arrays, config, weights


# ------------------------------------------------------------- conversion


def _count_blocks(t: Tensors, prefix: str, path: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  found = {int(m.group(1)) for k in t.keys() if (m := pattern.match(k))}
  if not found:
    raise CheckpointError(f"{path}: no transformer blocks under {prefix!r}")
  depth = max(found) + 1
  if found != set(range(depth)):
    missing = sorted(set(range(depth)) - found)
    raise CheckpointError(
        f"{path}: blocks under {prefix!r} are not contiguous: missing "
        f"{prefix}{missing[0]}")
  return depth


def _linear(t: Tensors, prefix: str, n_in: int, n_out: int,
            bias: bool = True) -> dict:
  kernel = t.get(f"{prefix}.weight", (n_out, n_in)).T
  return common.dense(kernel, t.get(f"{prefix}.bias", (n_out,))
                      if bias else None)


def _ln(t: Tensors, prefix: str, width: int) -> dict:
  return common.ln(t.get(f"{prefix}.weight", (width,)),
                   t.get(f"{prefix}.bias", (width,)))


def _packed_qkv(t: Tensors, prefix: str, width: int) -> dict:
  """PyTorch ``in_proj_weight`` [3W, W] rows q | k | v -> [W, 3W]."""
  return common.dense(t.get(f"{prefix}.in_proj_weight", (3 * width, width)).T,
                      t.get(f"{prefix}.in_proj_bias", (3 * width,)))


def _official_blocks(t: Tensors, prefix: str, depth: int, width: int,
                     mlp: int) -> dict:
  out = {}
  for i in range(depth):
    p = f"{prefix}{i}"
    out[f"blocks_{i}"] = {
        "ln1": _ln(t, f"{p}.ln_1", width),
        "attn": {"qkv": _packed_qkv(t, f"{p}.attn", width),
                 "out": _linear(t, f"{p}.attn.out_proj", width, width)},
        "ln2": _ln(t, f"{p}.ln_2", width),
        "mlp": {"fc1": _linear(t, f"{p}.mlp.c_fc", width, mlp),
                "fc2": _linear(t, f"{p}.mlp.c_proj", mlp, width)},
    }
  return out


def _timm_blocks(t: Tensors, prefix: str, depth: int, width: int,
                 mlp: int) -> dict:
  out = {}
  for i in range(depth):
    p = f"{prefix}{i}"
    out[f"blocks_{i}"] = {
        "ln1": _ln(t, f"{p}.norm1", width),
        "attn": {"qkv": _linear(t, f"{p}.attn.qkv", width, 3 * width),
                 "out": _linear(t, f"{p}.attn.proj", width, width)},
        "ln2": _ln(t, f"{p}.norm2", width),
        "mlp": {"fc1": _linear(t, f"{p}.mlp.fc1", width, mlp),
                "fc2": _linear(t, f"{p}.mlp.fc2", mlp, width)},
    }
  return out


def _rule_heads(width: int, head_width: int, tower: str, option: str,
                path: str) -> int:
  """PE-Core's head count rule (no checkpoint stores it)."""
  if width % head_width:
    raise CheckpointError(
        f"{path}: {tower} width {width} is not a multiple of PE-Core's head "
        f"width {head_width}, so the head count cannot be inferred; pass "
        f"{option}=N (load_model(path, {option}=N))")
  return width // head_width


def _vision(t: Tensors, v: _Vision, path: str, heads: int | None,
            pool_heads: int | None) -> tuple[PeVisionConfig, dict]:
  """Vision config (from shapes) and the ``img`` param tree."""
  k = v.key
  patch_key = k("patch_embed.proj.weight" if v.timm else "conv1.weight")
  cshape = t.shape(patch_key, "the vision width and patch size")
  if len(cshape) != 4 or cshape[1] != 3 or cshape[2] != cshape[3]:
    raise CheckpointError(f"{path}: {patch_key} has shape {list(cshape)}; "
                          "expected [width, 3, p, p]")
  width, patch = cshape[0], cshape[2]
  cls_key = k("cls_token" if v.timm else "class_embedding")
  class_token = cls_key in t
  pos_key = k("pos_embed" if v.timm else "positional_embedding")
  pshape = t.shape(pos_key, "the image size")
  rows = pshape[-2] if len(pshape) >= 2 else -1
  num = rows - (1 if class_token else 0)
  grid = int(np.sqrt(max(num, 0)) + 0.5)
  want_pos = ((1, rows, width) if v.timm else (rows, width))
  if (tuple(pshape) != want_pos or grid * grid != num or grid == 0):
    raise CheckpointError(
        f"{path}: {pos_key} has shape {list(pshape)}; expected "
        f"{'[1, ' if v.timm else '['}g*g{' + 1' if class_token else ''}, "
        f"{width}] (patch grid{' plus class token' if class_token else ''})")
  blocks = k("blocks." if v.timm else "transformer.resblocks.")
  depth = _count_blocks(t, blocks, path)
  fc1 = "mlp.fc1.weight" if v.timm else "mlp.c_fc.weight"
  mlp = t.shape(f"{blocks}0.{fc1}", "the MLP width")[0]
  pool_fc1 = k("attn_pool." + fc1)
  pool_mlp = t.shape(pool_fc1, "the pooling MLP width")[0]
  if v.timm:
    head_key = k("head.weight")
    embed = t.shape(head_key, "the embedding width (the CLIP projection)")[0]
    head_bias = t.arrays.get(k("head.bias"))
    # timm synthesises a zero bias for the official bias-free projection;
    # a non-zero one is real and kept.
    proj_bias = head_bias is not None and bool(np.any(np.asarray(
        head_bias, np.float32) != 0))
  else:
    embed = t.shape(k("proj"), "the embedding width")[-1]
    proj_bias = False
  if heads is None:
    heads = _rule_heads(width, 96 if (width == 1536 and not class_token)
                        else 64, "vision", "vision_heads", path)
  config = common.make_config(path, lambda: PeVisionConfig(
      image_size=grid * patch, patch_size=patch, width=width, depth=depth,
      heads=heads, mlp_dim=mlp, embed_dim=embed, act="gelu", pool="map",
      pre_norm=True, patch_bias=False, proj=True, proj_bias=proj_bias,
      norm_eps=_EPS, class_token=class_token, pool_heads=pool_heads or 8,
      pool_mlp_dim=pool_mlp))

  img: dict[str, Any] = {
      # OIHW -> HWIO.
      "patch_embed": {"kernel": t.get(patch_key, (width, 3, patch, patch)
                                      ).transpose(2, 3, 1, 0)},
      "pos_embed": t.get(pos_key, want_pos).reshape(rows, width),
  }
  if class_token:
    img["cls_token"] = t.get(cls_key, (1, 1, width) if v.timm else (width,)
                             ).reshape(width)
  if v.timm:
    img["ln_pre"] = _ln(t, k("norm_pre"), width)
    img.update(_timm_blocks(t, blocks, depth, width, mlp))
    img["ln_post"] = _ln(t, k("norm"), width)
    q = _linear(t, k("attn_pool.q"), width, width)
    kv = _linear(t, k("attn_pool.kv"), width, 2 * width)
    pool = {
        "probe": t.get(k("attn_pool.latent"), (1, 1, width)).reshape(width),
        "attn": {"qkv": {
            "kernel": np.concatenate([q["kernel"], kv["kernel"]], 1),
            "bias": np.concatenate([q["bias"], kv["bias"]], 0)},
            "out": _linear(t, k("attn_pool.proj"), width, width)},
        "ln": _ln(t, k("attn_pool.norm"), width),
        "mlp": {"fc1": _linear(t, k("attn_pool.mlp.fc1"), width, pool_mlp),
                "fc2": _linear(t, k("attn_pool.mlp.fc2"), pool_mlp, width)},
    }
    img["proj"] = _linear(t, k("head"), width, embed, bias=proj_bias)
    if not proj_bias:
      t.mark_used(k("head.bias"))
  else:
    img["ln_pre"] = _ln(t, k("ln_pre"), width)
    img.update(_official_blocks(t, blocks, depth, width, mlp))
    img["ln_post"] = _ln(t, k("ln_post"), width)
    pool = {
        "probe": t.get(k("attn_pool.probe"), (1, 1, width)).reshape(width),
        "attn": {"qkv": _packed_qkv(t, k("attn_pool.attn"), width),
                 "out": _linear(t, k("attn_pool.attn.out_proj"), width,
                                width)},
        "ln": _ln(t, k("attn_pool.layernorm"), width),
        "mlp": {"fc1": _linear(t, k("attn_pool.mlp.c_fc"), width, pool_mlp),
                "fc2": _linear(t, k("attn_pool.mlp.c_proj"), pool_mlp,
                               width)},
    }
    img["proj"] = {"kernel": t.get(k("proj"), (width, embed))}
  img["map_head"] = pool
  return config, img


def _text(t: Tensors, prefix: str, path: str, embed: int, heads: int | None
          ) -> tuple[TextConfig, dict]:
  vocab_key = prefix + "token_embedding.weight"
  vshape = t.shape(vocab_key, "the vocabulary and text width")
  if len(vshape) != 2:
    raise CheckpointError(f"{path}: {vocab_key} has shape {list(vshape)}; "
                          "expected [vocab, width]")
  vocab, width = vshape
  context = t.shape(prefix + "positional_embedding",
                    "the context length")[0]
  blocks = prefix + "transformer.resblocks."
  depth = _count_blocks(t, blocks, path)
  mlp = t.shape(f"{blocks}0.mlp.c_fc.weight", "the text MLP width")[0]
  config = common.make_config(path, lambda: TextConfig(
      vocab_size=vocab, context_length=context, width=width, depth=depth,
      heads=heads or _rule_heads(width, 64, "text", "text_heads", path),
      mlp_dim=mlp, embed_dim=embed,
      act="gelu", causal=True, pool="eot", eot_token_id=None,
      proj_bias=False, norm_eps=_EPS))
  txt = {
      "token_embed": t.get(vocab_key, (vocab, width)),
      "pos_embed": t.get(prefix + "positional_embedding", (context, width)),
      **_official_blocks(t, blocks, depth, width, mlp),
      "ln_final": _ln(t, prefix + "ln_final", width),
      # x @ text_projection: already [in, out].
      "proj": {"kernel": t.get(prefix + "text_projection", (width, embed))},
  }
  return config, txt


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
                    layout: str | None = None, config_file: dict | None = None,
                    *, vision_heads: int | None = None,
                    text_heads: int | None = None,
                    pool_heads: int | None = None
                    ) -> tuple[ModelConfig, dict, str]:
  """PE-Core arrays in any of the three layouts -> (config, params, layout).

  Args:
    arrays: the flat state dict (wrappers / ``module.`` already removed).
    path: for messages.
    layout: "official", "open_clip" or "timm"; None: from the keys.
    config_file: ``open_clip_config.json`` / timm ``config.json`` contents,
      checked against the shapes.
    vision_heads, text_heads, pool_heads: override PE-Core's head rule.

  Raises:
    CheckpointError: unknown layout, missing / mis-shaped / unexpected
      tensors (all listed), or a config file that disagrees with them.
  """
  layout = layout or _layout_of_keys(set(arrays))
  if layout not in ("official", "open_clip", "timm"):
    raise CheckpointError(f"{path}: not a PE-Core checkpoint (layout "
                          f"{layout!r})")
  config_file = config_file or {}
  t = Tensors(arrays, path)
  if layout == "official":
    vprefix = "visual." if "visual.attn_pool.probe" in t else ""
    v = _Vision(vprefix, timm=False)
  elif layout == "open_clip":
    v = _Vision("visual.trunk.", timm=True)
  else:
    v = _Vision("", timm=True)
  vision, img = _vision(t, v, path, vision_heads, pool_heads)
  has_text = "token_embedding.weight" in t or "text.token_embedding.weight" in t
  if layout == "open_clip" and text_heads is None:
    cfg = config_file.get("model_cfg", config_file)
    text_heads = cfg.get("text_cfg", {}).get("heads")
  if has_text:
    tprefix = "text." if layout == "open_clip" else ""
    text, txt = _text(t, tprefix, path, vision.embed_dim, text_heads)
  else:
    what = ("timm vision-only weights" if layout == "timm"
            else "a vision-only PE state dict")
    text = AbsentTextConfig(
        embed_dim=vision.embed_dim, context_length=32,
        reason=(f"{path} holds {what}: this model has no text tower; "
                + _GET_INSTEAD))
    txt = None
  if "logit_scale" in t:
    shape = t.shape("logit_scale")
    scale = t.get("logit_scale", shape if shape in ((), (1,)) else ())
    scale = scale.reshape(())
  else:
    scale = np.asarray(LOGIT_SCALE_INIT, np.float32)
  config = common.make_config(path, lambda: ModelConfig(
      family="pe_core", vision=vision, text=text,
      logit_scale_init=LOGIT_SCALE_INIT, logit_bias_init=None))
  if config_file and layout in ("open_clip", "timm"):
    _check_config_file(config, layout, config_file, path)
  t.finish(what=f"a PE-Core checkpoint ({layout} layout)")
  params = {"img": img, "logit_scale": scale}
  if txt is not None:
    params["txt"] = txt
  return config, params, layout


class _NoText:
  """The tokenizer of a vision-only model: raises with the reason."""

  def __init__(self, reason: str, context_length: int):
    self.reason = reason
    self.context_length = context_length

  def __call__(self, texts):
    raise ValueError(self.reason)


def load_pe_core(path: str | os.PathLike,
                 tokenizer: common.TokenizerArg = None,
                 dtype: Any = jnp.float32, *,
                 vision_heads: int | None = None,
                 text_heads: int | None = None,
                 pool_heads: int | None = None) -> Model:
  """Loads a PE-Core checkpoint in any of its three layouts.

  Args:
    path: an official ``PE-Core-*.pt``, an open_clip hub folder (or its
      weights file), or timm vision weights (folder or file).
    tokenizer: None: the packaged OpenAI CLIP BPE (``jaxfsl.pe_tokenizer``,
      zero padding) when the vocabulary is CLIP's 49408; a path to another
      ``bpe_simple_vocab_16e6.txt.gz``; or a callable.
    dtype: compute dtype; parameters stay float32.
    vision_heads, text_heads, pool_heads: override PE-Core's head rule (head
      width 64; 96 for G's vision tower; pool 8 heads) for other sizes.

  Returns:
    The Model: squash resize to S x S, bilinear, mean = std = 0.5
    (perception_models ``transforms.py``).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    CheckpointError: as ``convert_pe_core``, plus unreadable files.
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
  layout, arrays, config_file, weights = _read(path)
  config, params, layout = convert_pe_core(
      arrays, str(weights), layout, config_file, vision_heads=vision_heads,
      text_heads=text_heads, pool_heads=pool_heads)
  # A vision-only model's absent text tower has no parameters.
  params = common.finalize_params(params, config, weights)
  if "txt" not in params:
    tok = _NoText(config.text.reason, config.text.context_length)
  else:
    tok = _tokenizer(tokenizer, config)
  pre = Preprocessing(config.vision.image_size, SIGLIP_MEAN, SIGLIP_STD,
                      "bilinear")
  return Model(config=config, params=params, tokenizer=tok,
               preprocessing=pre, dtype=dtype, name=str(path))


def _tokenizer(tokenizer: common.TokenizerArg, config: ModelConfig):
  from jaxfsl.pe_tokenizer import OpenClipBpeTokenizer, pe_core_tokenizer
  if callable(tokenizer):
    return tokenizer
  context = config.text.context_length
  if tokenizer is not None:
    path = Path(tokenizer)
    if not path.is_file():
      raise FileNotFoundError(
          f"tokenizer {str(path)!r}: expected CLIP's "
          "bpe_simple_vocab_16e6.txt.gz (PE-Core ships no tokenizer files)")
    return OpenClipBpeTokenizer(context, str(path))
  if config.text.vocab_size != 49408:
    return None  # not CLIP's vocabulary: feed token ids
  return pe_core_tokenizer(context)
