"""big_vision SigLIP ``.npz`` checkpoints: the "big_vision" layout.

big_vision saves a two-tower model as one ``np.savez`` whose keys are the
flattened Flax param paths joined with "/", usually under ``params/`` (or
``opt/target/`` for old Flax-optimizer checkpoints, or bare). For SigLIP
(``models/proj/image_text/two_towers.py`` with ``vit`` and
``text_transformer``):

  img/embedding/{kernel [p,p,3,W], bias [W]}       patch conv (HWIO)
  img/pos_embedding                [1, T, W]        learned, no class token
  img/Transformer/encoderblock_{i}/
    LayerNorm_0, LayerNorm_1       {scale, bias} [W]
    MultiHeadDotProductAttention_0/{query,key,value}/kernel [W, H, D]
                                   .../bias [H, D]
    MultiHeadDotProductAttention_0/out/kernel [H, D, W], bias [W]
    MlpBlock_0/Dense_0 [W, M] (+[M]), Dense_1 [M, W] (+[W])
  img/Transformer/encoder_norm     {scale, bias}    = our ln_post
  img/MAPHead_0/{probe [1,1,W], MultiHeadDotProductAttention_0, LayerNorm_0,
                 MlpBlock_0}
  img/head/{kernel, bias}          optional projection after pooling
  txt/Embed_0/embedding            [V, W]
  txt/pos_embedding                [1, L, W]
  txt/Encoder_0/encoderblock_{i}/... and encoder_norm  as above
  txt/head/{kernel [W, E], bias [E]}
  t [1]  (log temperature), b [1]  (bias)

A scanned encoder (``scan=True``) stores one ``encoderblock`` with a leading
depth axis instead of ``encoderblock_{i}``; both are read. Two old layouts
big_vision's own loaders fix up are handled the same way: the image
``pos_embedding`` under ``Transformer/`` and an extra text
``Encoder_0/pos_embedding`` that is added to the real one. Heads come from
the attention kernels' shapes; activation, epsilon and pooling are the SigLIP
family's (``jaxfsl.models.families.siglip``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection

import numpy as np

from jaxfsl.checkpoints import tensors as T
from jaxfsl.checkpoints.errors import (
    CheckpointError,
    CheckpointWarning,
    listing,
)
from jaxfsl.checkpoints.tensors import Tensors
from jaxfsl.models.config import ModelConfig

_ATT = "MultiHeadDotProductAttention_0"
_PREFIXES = ("params/", "opt/target/")


def matches(keys: Collection[str]) -> bool:
  """Whether array names look like a big_vision two-tower model."""
  return any(k.endswith(("img/embedding/kernel", "txt/Embed_0/embedding"))
             for k in keys)


def _prefix(keys: list[str]) -> str:
  for prefix in _PREFIXES:
    if any(k.startswith(prefix) for k in keys):
      return prefix
  return ""


def _depth(t: Tensors, base: str, path: str) -> tuple[int, bool]:
  """(depth, scanned) of the encoder under ``base``."""
  scanned_key = f"{base}/encoderblock/LayerNorm_0/scale"
  if scanned_key in t:
    return t.shape(scanned_key)[0], True
  return T.count_blocks(t, f"{base}/encoderblock_", "/", path), False


def _encoder(t: Tensors, base: str, depth: int, scanned: bool, width: int,
             heads: int, mlp_dim: int) -> dict:
  """``{base}/encoderblock_{i}`` (or scanned) -> our blocks_{i} dicts."""
  head_dim = width // heads

  def per_layer(name, shape):
    if scanned:
      stacked = t.get(f"{base}/encoderblock/{name}", (depth, *shape))
      return list(stacked)
    return [t.get(f"{base}/encoderblock_{i}/{name}", shape)
            for i in range(depth)]

  ln = {n: (per_layer(f"{n}/scale", (width,)), per_layer(f"{n}/bias", (width,)))
        for n in ("LayerNorm_0", "LayerNorm_1")}
  qkv = {n: (per_layer(f"{_ATT}/{n}/kernel", (width, heads, head_dim)),
             per_layer(f"{_ATT}/{n}/bias", (heads, head_dim)))
         for n in ("query", "key", "value")}
  out_k = per_layer(f"{_ATT}/out/kernel", (heads, head_dim, width))
  out_b = per_layer(f"{_ATT}/out/bias", (width,))
  fc1 = (per_layer("MlpBlock_0/Dense_0/kernel", (width, mlp_dim)),
         per_layer("MlpBlock_0/Dense_0/bias", (mlp_dim,)))
  fc2 = (per_layer("MlpBlock_0/Dense_1/kernel", (mlp_dim, width)),
         per_layer("MlpBlock_0/Dense_1/bias", (width,)))
  blocks = {}
  for i in range(depth):
    q, k, v = (T.dense(qkv[n][0][i].reshape(width, width),
                            qkv[n][1][i].reshape(width))
               for n in ("query", "key", "value"))
    blocks[f"blocks_{i}"] = {
        "ln1": T.ln(ln["LayerNorm_0"][0][i], ln["LayerNorm_0"][1][i]),
        "attn": {
            "qkv": T.fused_qkv(q, k, v),
            "out": T.dense(out_k[i].reshape(width, width), out_b[i]),
        },
        "ln2": T.ln(ln["LayerNorm_1"][0][i], ln["LayerNorm_1"][1][i]),
        "mlp": {
            "fc1": T.dense(fc1[0][i], fc1[1][i]),
            "fc2": T.dense(fc2[0][i], fc2[1][i]),
        },
    }
  return blocks


def _heads(t: Tensors, base: str, scanned: bool, width: int, path: str
           ) -> int:
  name = (f"{base}/encoderblock/{_ATT}/query/kernel" if scanned
          else f"{base}/encoderblock_0/{_ATT}/query/kernel")
  shape = t.shape(name, "the number of heads")
  shape = shape[1:] if scanned else shape
  if len(shape) != 3 or shape[0] != width or shape[1] * shape[2] != width:
    raise CheckpointError(
        f"{path}: {name!r} has shape {list(t.shape(name))}; expected "
        f"[{'depth, ' if scanned else ''}{width}, heads, head_dim] with "
        f"heads * head_dim == {width}")
  return shape[1]


def _mlp_dim(t: Tensors, base: str, scanned: bool, path: str) -> int:
  name = (f"{base}/encoderblock/MlpBlock_0/Dense_0/kernel" if scanned
          else f"{base}/encoderblock_0/MlpBlock_0/Dense_0/kernel")
  return t.shape(name, "the MLP width")[-1]


def _dense(t: Tensors, name: str, n_in: int, n_out: int) -> dict:
  return T.dense(t.get(f"{name}/kernel", (n_in, n_out)),
                      t.get(f"{name}/bias", (n_out,)))


def _ln(t: Tensors, name: str, width: int) -> dict:
  return T.ln(t.get(f"{name}/scale", (width,)),
                   t.get(f"{name}/bias", (width,)))


def _one_of(t: Tensors, *names: str) -> str:
  for name in names:
    if name in t:
      return name
  return names[0]


def convert_big_vision(arrays: dict[str, np.ndarray], path: str
                       ) -> tuple[ModelConfig, dict]:
  """Flat big_vision SigLIP arrays -> (ModelConfig, param tree).

  The architecture is read off the shapes: width and patch from the patch
  kernel, image size from the number of position embeddings, depth from the
  block names, heads and MLP width from the first block, vocabulary and
  context length from the text embeddings.
  """
  keys = list(arrays)
  p = _prefix(keys)
  t = Tensors(arrays, path)
  img, txt = f"{p}img", f"{p}txt"
  if f"{img}/embedding/kernel" not in t or f"{txt}/Embed_0/embedding" not in t:
    raise CheckpointError(
        f"{path}: unknown layout: expected big_vision SigLIP keys such as "
        f"'params/img/embedding/kernel' and 'params/txt/Embed_0/embedding'; "
        f"found {listing(sorted(keys))}")

  # ---- image tower architecture.
  kshape = t.shape(f"{img}/embedding/kernel")
  if len(kshape) != 4 or kshape[0] != kshape[1] or kshape[2] != 3:
    raise CheckpointError(
        f"{path}: {img}/embedding/kernel has shape {list(kshape)}; expected "
        "[p, p, 3, width] (square RGB patches)")
  patch, width = kshape[0], kshape[3]
  pos_key = _one_of(t, f"{img}/pos_embedding",
                    f"{img}/Transformer/pos_embedding")
  pshape = t.shape(pos_key, "the image size")
  tokens = pshape[1] if len(pshape) == 3 else -1
  grid = math.isqrt(max(tokens, 0))
  if len(pshape) != 3 or pshape[0] != 1 or grid * grid != tokens:
    raise CheckpointError(
        f"{path}: {pos_key} has shape {list(pshape)}; expected [1, g*g, "
        f"{width}] for a g x g patch grid without class token")
  depth, scanned = _depth(t, f"{img}/Transformer", path)
  heads = _heads(t, f"{img}/Transformer", scanned, width, path)
  mlp_dim = _mlp_dim(t, f"{img}/Transformer", scanned, path)
  if f"{img}/MAPHead_0/probe" not in t:
    raise CheckpointError(
        f"{path}: no {img}/MAPHead_0: only SigLIP's attention-pooling (MAP) "
        "image head is supported (gap / tok pooling is not)")
  map_heads = t.shape(f"{img}/MAPHead_0/{_ATT}/query/kernel",
                      "the MAP head's heads")
  if len(map_heads) != 3 or map_heads[1] != heads:
    raise CheckpointError(
        f"{path}: {img}/MAPHead_0/{_ATT}/query/kernel has shape "
        f"{list(map_heads)}; expected [{width}, {heads}, {width // heads}] "
        "(the MAP head shares the encoder's heads)")
  img_proj = f"{img}/head/kernel" in t
  embed = t.shape(f"{img}/head/kernel")[-1] if img_proj else width

  # ---- text tower architecture.
  vocab, text_width = t.shape(f"{txt}/Embed_0/embedding")
  tpshape = t.shape(f"{txt}/pos_embedding", "the context length")
  if len(tpshape) != 3 or tpshape[0] != 1:
    raise CheckpointError(
        f"{path}: {txt}/pos_embedding has shape {list(tpshape)}; expected "
        f"[1, context_length, {text_width}]")
  context = tpshape[1]
  tbase = f"{txt}/Encoder_0"
  text_depth, text_scanned = _depth(t, tbase, path)
  text_heads = _heads(t, tbase, text_scanned, text_width, path)
  text_mlp = _mlp_dim(t, tbase, text_scanned, path)
  if f"{txt}/MAPHead_0/probe" in t:
    raise CheckpointError(
        f"{path}: the text tower has a MAPHead_0 (pool_type 'map'); only "
        "SigLIP's last-token text pooling is supported")
  has_bias = f"{p}b" in t

  config = T.make_config(
      path, "siglip",
      vision=dict(image_size=grid * patch, patch_size=patch, width=width,
                  depth=depth, heads=heads, mlp_dim=mlp_dim, embed_dim=embed,
                  proj=img_proj, proj_bias=img_proj),
      text=dict(vocab_size=vocab, context_length=context, width=text_width,
                depth=text_depth, heads=text_heads, mlp_dim=text_mlp,
                embed_dim=embed),
      **({} if has_bias else {"logit_bias_init": None}))

  # ---- conversion.
  map_base = f"{img}/MAPHead_0"
  head_dim = width // heads

  def map_dense(n):
    k = t.get(f"{map_base}/{_ATT}/{n}/kernel", (width, heads, head_dim))
    b = t.get(f"{map_base}/{_ATT}/{n}/bias", (heads, head_dim))
    return T.dense(k.reshape(width, width), b.reshape(width))

  img_params = {
      "patch_embed": {
          "kernel": t.get(f"{img}/embedding/kernel", (patch, patch, 3, width)),
          "bias": t.get(f"{img}/embedding/bias", (width,)),
      },
      "pos_embed": t.get(pos_key, (1, tokens, width))[0],
      **_encoder(t, f"{img}/Transformer", depth, scanned, width, heads,
                 mlp_dim),
      "ln_post": _ln(t, f"{img}/Transformer/encoder_norm", width),
      "map_head": {
          "probe": t.get(f"{map_base}/probe", (1, 1, width)).reshape(width),
          "attn": {
              "qkv": T.fused_qkv(map_dense("query"), map_dense("key"),
                                      map_dense("value")),
              "out": T.dense(
                  t.get(f"{map_base}/{_ATT}/out/kernel",
                        (heads, head_dim, width)).reshape(width, width),
                  t.get(f"{map_base}/{_ATT}/out/bias", (width,))),
          },
          "ln": _ln(t, f"{map_base}/LayerNorm_0", width),
          "mlp": {
              "fc1": _dense(t, f"{map_base}/MlpBlock_0/Dense_0", width,
                            mlp_dim),
              "fc2": _dense(t, f"{map_base}/MlpBlock_0/Dense_1", mlp_dim,
                            width),
          },
      },
  }
  if img_proj:
    img_params["proj"] = _dense(t, f"{img}/head", width, embed)

  text_pos = t.get(f"{txt}/pos_embedding", (1, context, text_width))[0]
  if f"{tbase}/pos_embedding" in t:
    # Some older checkpoints added a second posemb inside the encoder by
    # mistake; big_vision's text loader merges it into the real one.
    text_pos = text_pos + t.get(f"{tbase}/pos_embedding",
                                (1, context, text_width))[0]
  txt_params = {
      "token_embed": t.get(f"{txt}/Embed_0/embedding", (vocab, text_width)),
      "pos_embed": text_pos,
      **_encoder(t, tbase, text_depth, text_scanned, text_width, text_heads,
                 text_mlp),
      "ln_final": _ln(t, f"{tbase}/encoder_norm", text_width),
      "proj": _dense(t, f"{txt}/head", text_width, embed),
  }
  params = {"img": img_params, "txt": txt_params,
            "logit_scale": t.get(f"{p}t", (1,)).reshape(())}
  if has_bias:
    params["logit_bias"] = t.get(f"{p}b", (1,)).reshape(())

  # With a params/ prefix the rest (optimizer state, step) is not ours.
  other = [k for k in keys if p and not k.startswith(p)]
  t.mark_used(*other)
  t.finish(what="a big_vision SigLIP checkpoint")
  if other:
    warnings.warn(
        f"{path}: ignoring {len(other)} non-parameter entries outside "
        f"{p!r}: {listing(sorted(other))}", CheckpointWarning,
        stacklevel=3)
  return config, params

