"""OpenAI CLIP ``.pt`` checkpoints (ViT models): the "openai" layout.

Layout of OpenAI's ``clip/model.py`` state dict (W vision width, Wt text
width, E embedding width):

  visual.conv1.weight                  [W, 3, p, p]   (no bias)
  visual.class_embedding               [W]
  visual.positional_embedding          [g*g + 1, W]
  visual.ln_pre.{weight,bias}
  visual.transformer.resblocks.{i}.
    ln_1, ln_2                         {weight, bias}
    attn.in_proj_weight [3W, W], attn.in_proj_bias [3W]   rows q | k | v
    attn.out_proj.{weight [W, W], bias}
    mlp.c_fc.{weight [4W, W], bias}, mlp.c_proj.{weight [W, 4W], bias}
  visual.ln_post.{weight,bias}
  visual.proj                          [W, E]         (x @ proj)
  token_embedding.weight [V, Wt], positional_embedding [L, Wt]
  transformer.resblocks.{i}....        as above
  ln_final.{weight,bias}, text_projection [Wt, E], logit_scale []

As OpenAI's ``build_model``: heads = width // 64 for both towers, image size =
patch * sqrt(#positions - 1); the rest (QuickGELU, LayerNorm epsilon 1e-5,
text pooled at the argmax of the ids) is the CLIP family's
(``jaxfsl.models.families.clip``). The files are read by
``readers.read_torch`` (TorchScript archives as OpenAI ships them, or
``torch.save`` state dicts with ``weights_only=True``). ResNet CLIPs are not
supported.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np

from jaxfsl.checkpoints import tensors as T
from jaxfsl.checkpoints.errors import CheckpointError, listing
from jaxfsl.checkpoints.tensors import Tensors
from jaxfsl.models.config import ModelConfig

_HEAD_WIDTH = 64  # OpenAI: heads = width // 64
# Integer metadata OpenAI's TorchScript models keep beside the weights
# (build_model deletes them); checked against the shapes when present.
_METADATA = ("input_resolution", "context_length", "vocab_size")


def matches(keys: Collection[str]) -> bool:
  """Whether tensor names look like OpenAI CLIP's ``model.py`` (ViT)."""
  return "visual.conv1.weight" in keys and "token_embedding.weight" in keys


def _heads(width: int, field: str, path: str) -> int:
  if width % _HEAD_WIDTH:
    raise CheckpointError(
        f"{path}: {field} width {width} is not a multiple of 64; OpenAI CLIP "
        "uses heads = width // 64, so this is not an OpenAI-layout model")
  return width // _HEAD_WIDTH


def resblocks(t: Tensors, prefix: str, depth: int, width: int, mlp_dim: int
              ) -> dict:
  """``{prefix}.{i}`` OpenAI residual blocks (ln_1, attn with packed
  in_proj, ln_2, mlp c_fc / c_proj; PE-Core uses the same names) -> our
  ``blocks_{i}`` dicts."""
  blocks = {}
  for i in range(depth):
    p = f"{prefix}.{i}"
    blocks[f"blocks_{i}"] = {
        "ln1": T.torch_layer_norm(t, f"{p}.ln_1", width),
        "attn": {
            # in_proj_weight rows are q | k | v: its transpose is our fused
            # [W, 3W] kernel with columns q | k | v.
            "qkv": T.dense(
                t.get(f"{p}.attn.in_proj_weight", (3 * width, width)).T,
                t.get(f"{p}.attn.in_proj_bias", (3 * width,))),
            "out": T.torch_linear(t, f"{p}.attn.out_proj", width, width),
        },
        "ln2": T.torch_layer_norm(t, f"{p}.ln_2", width),
        "mlp": {
            "fc1": T.torch_linear(t, f"{p}.mlp.c_fc", width, mlp_dim),
            "fc2": T.torch_linear(t, f"{p}.mlp.c_proj", mlp_dim, width),
        },
    }
  return blocks


def convert_openai(arrays: dict[str, np.ndarray], path: str
                   ) -> tuple[ModelConfig, dict]:
  """OpenAI-layout arrays -> (ModelConfig, param tree), shapes inferred."""
  t = Tensors(arrays, path)
  if any(k.startswith(("visual.layer1.", "visual.attnpool."))
         for k in t.keys()):
    raise CheckpointError(
        f"{path}: a ResNet CLIP (visual.layer1 / visual.attnpool); only ViT "
        "CLIP models are supported")
  if any(k.startswith(("text_model.", "vision_model.")) for k in t.keys()):
    raise CheckpointError(
        f"{path}: a Hugging Face state dict (text_model.* / vision_model.*); "
        "load the model folder that holds it together with config.json")
  if "visual.conv1.weight" not in t or "token_embedding.weight" not in t:
    raise CheckpointError(
        f"{path}: unknown layout: expected OpenAI CLIP keys such as "
        "'visual.conv1.weight' and 'token_embedding.weight'; found "
        f"{listing(sorted(t.keys()))}")

  cshape = t.shape("visual.conv1.weight")
  if len(cshape) != 4 or cshape[1] != 3 or cshape[2] != cshape[3]:
    raise CheckpointError(
        f"{path}: visual.conv1.weight has shape {list(cshape)}; expected "
        "[width, 3, p, p]")
  width, patch = cshape[0], cshape[2]
  pshape = t.shape("visual.positional_embedding", "the image size")
  grid = math.isqrt(max(pshape[0] - 1, 0)) if len(pshape) == 2 else -1
  if len(pshape) != 2 or grid * grid + 1 != pshape[0] or pshape[1] != width:
    raise CheckpointError(
        f"{path}: visual.positional_embedding has shape {list(pshape)}; "
        f"expected [g*g + 1, {width}] (patch grid plus class token)")
  depth = T.count_blocks(t, "visual.transformer.resblocks.", ".", path)
  mlp_dim = t.shape("visual.transformer.resblocks.0.mlp.c_fc.weight",
                    "the MLP width")[0]
  embed = t.shape("visual.proj", "the embedding width")[-1]

  vocab, text_width = t.shape("token_embedding.weight")
  context = t.shape("positional_embedding", "the context length")[0]
  text_depth = T.count_blocks(t, "transformer.resblocks.", ".", path)
  text_mlp = t.shape("transformer.resblocks.0.mlp.c_fc.weight",
                     "the MLP width")[0]

  image_size = grid * patch
  inferred = {"input_resolution": image_size, "context_length": context,
              "vocab_size": vocab}
  for name in _METADATA:
    if name in t:
      value = np.asarray(t.arrays[name])
      if value.size != 1 or int(value.reshape(())) != inferred[name]:
        raise CheckpointError(
            f"{path}: {name}={value.tolist()} disagrees with the weights, "
            f"which imply {inferred[name]}")
      t.mark_used(name)

  config = T.make_config(
      path, "clip",
      vision=dict(image_size=image_size, patch_size=patch, width=width,
                  depth=depth, heads=_heads(width, "vision", path),
                  mlp_dim=mlp_dim, embed_dim=embed),
      text=dict(vocab_size=vocab, context_length=context, width=text_width,
                depth=text_depth, heads=_heads(text_width, "text", path),
                mlp_dim=text_mlp, embed_dim=embed))

  img = {
      # Conv weight [W, 3, p, p] (OIHW) -> [p, p, 3, W] (HWIO).
      "patch_embed": {"kernel": t.get(
          "visual.conv1.weight", (width, 3, patch, patch)).transpose(
              2, 3, 1, 0)},
      "cls_token": t.get("visual.class_embedding", (width,)),
      "pos_embed": t.get("visual.positional_embedding",
                         (grid * grid + 1, width)),
      "ln_pre": T.torch_layer_norm(t, "visual.ln_pre", width),
      **resblocks(t, "visual.transformer.resblocks", depth, width, mlp_dim),
      "ln_post": T.torch_layer_norm(t, "visual.ln_post", width),
      # OpenAI multiplies x @ proj: already [in, out].
      "proj": {"kernel": t.get("visual.proj", (width, embed))},
  }
  txt = {
      "token_embed": t.get("token_embedding.weight", (vocab, text_width)),
      "pos_embed": t.get("positional_embedding", (context, text_width)),
      **resblocks(t, "transformer.resblocks", text_depth, text_width, text_mlp),
      "ln_final": T.torch_layer_norm(t, "ln_final", text_width),
      "proj": {"kernel": t.get("text_projection", (text_width, embed))},
  }
  logit_scale = t.scalar("logit_scale")
  t.finish(what="an OpenAI CLIP (ViT) checkpoint")
  return config, {"img": img, "txt": txt, "logit_scale": logit_scale}

