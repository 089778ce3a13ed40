"""Architecture descriptions of the two-tower models jaxfsl supports.

These frozen dataclasses are the single source of truth for shapes: the Flax
modules are built from them. They are generic; what is fixed per model family
(flags, presets) lives in ``jaxfsl.models.families``, whose ``Family.config``
the checkpoint loaders call with the sizes read from a checkpoint.

Parameter tree produced by ``jaxfsl.models.two_towers.TwoTowers`` (float32):

  img/                                   (VisionTower)
    patch_embed/kernel  [p, p, 3, W]     (bias [W] when ``patch_bias``)
    cls_token           [W]              (``pool == "cls"`` only)
    pos_embed           [T, W]           T = (S/p)^2 (+1 with a class token)
    ln_pre/{scale,bias} [W]              (``pre_norm`` only)
    blocks_{i}/
      ln1/{scale,bias}  [W]
      attn/qkv/kernel   [W, 3W]  bias [3W]     columns: q | k | v, heads major
      attn/out/kernel   [W, W]   bias [W]
      ln2/{scale,bias}  [W]
      mlp/fc1/kernel    [W, M]   bias [M]
      mlp/fc2/kernel    [M, W]   bias [W]
    ln_post/{scale,bias} [W]
    map_head/                             (``pool == "map"`` only)
      probe             [W]
      attn/qkv, attn/out                 as in a block (q from the probe)
      ln/{scale,bias}, mlp/fc1, mlp/fc2
    proj/kernel         [W, E]           (bias [E] when ``proj_bias``;
                                          absent when ``proj`` is False)
  txt/                                   (TextTower)
    token_embed         [V, W]
    pos_embed           [L, W]
    blocks_{i}/...                       as above
    ln_final/{scale,bias} [W]
    proj/kernel         [W, E]           (bias [E] when ``proj_bias``)
  logit_scale           []               log of the temperature
  logit_bias            []               (SigLIP only)

Dense kernels are stored [in, out] (Flax convention); the loaders transpose
PyTorch's [out, in].
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Activation = Literal["quick_gelu", "gelu", "gelu_tanh"]


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """A ViT image tower.

  Attributes:
    image_size: input side S in pixels (square inputs).
    patch_size: patch side p; S must be a multiple of p.
    width: residual width W.
    depth: number of transformer blocks.
    heads: attention heads; W must be a multiple of heads.
    mlp_dim: hidden width M of the MLP.
    embed_dim: output width E after the projection (== W when ``proj`` is
      False).
    act: MLP activation.
    pool: "cls" (CLIP: class token, ln_post on it) or "map" (SigLIP:
      multihead attention pooling with a learned probe).
    pre_norm: CLIP's ln_pre after the embeddings.
    patch_bias: whether the patch convolution has a bias (SigLIP).
    proj: whether a final linear projection exists.
    proj_bias: whether that projection has a bias.
    norm_eps: LayerNorm epsilon.
  """

  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  embed_dim: int = 512
  act: Activation = "quick_gelu"
  pool: Literal["cls", "map"] = "cls"
  pre_norm: bool = True
  patch_bias: bool = False
  proj: bool = True
  proj_bias: bool = False
  norm_eps: float = 1e-5

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ValueError(
          f"image_size={self.image_size} is not a multiple of "
          f"patch_size={self.patch_size}")
    if self.width % self.heads:
      raise ValueError(
          f"vision width={self.width} is not a multiple of heads={self.heads}")
    if not self.proj and self.embed_dim != self.width:
      raise ValueError(
          f"vision tower without projection must have embed_dim == width, got "
          f"embed_dim={self.embed_dim}, width={self.width}")

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_tokens(self) -> int:
    return self.num_patches + (1 if self.pool == "cls" else 0)


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """A transformer text tower.

  Attributes:
    vocab_size: V.
    context_length: L, the fixed token length the model was trained with
      (77 for CLIP, 64 for SigLIP).
    width, depth, heads, mlp_dim, embed_dim, act, norm_eps: as VisionConfig.
    causal: causal self-attention mask (CLIP).
    pool: "eot" (CLIP: the first end-of-text token; the highest id when
      ``eot_token_id`` is None, as OpenAI's argmax) or "last" (SigLIP: the
      last position).
    eot_token_id: id of the end-of-text token for ``pool == "eot"``.
    proj_bias: whether the output projection has a bias (SigLIP's head).
  """

  vocab_size: int = 49408
  context_length: int = 77
  width: int = 512
  depth: int = 12
  heads: int = 8
  mlp_dim: int = 2048
  embed_dim: int = 512
  act: Activation = "quick_gelu"
  causal: bool = True
  pool: Literal["eot", "last"] = "eot"
  eot_token_id: int | None = None
  proj_bias: bool = False
  norm_eps: float = 1e-5

  def __post_init__(self):
    if self.width % self.heads:
      raise ValueError(
          f"text width={self.width} is not a multiple of heads={self.heads}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A two-tower vision-language model.

  Attributes:
    family: a registered family name (``jaxfsl.models.families``: "clip",
      "siglip" for SigLIP and fixed-resolution SigLIP2, ...); the family
      supplies preprocessing and the tokenizer kind.
    vision: the image tower.
    text: the text tower.
    logit_scale_init: initial log temperature of a random-init model.
    logit_bias_init: initial logit bias; None for models without one.
  """

  family: str
  vision: VisionConfig
  text: TextConfig
  logit_scale_init: float = 2.6592
  logit_bias_init: float | None = None

  def __post_init__(self):
    if self.vision.embed_dim != self.text.embed_dim:
      raise ValueError(
          f"vision embed_dim={self.vision.embed_dim} != text "
          f"embed_dim={self.text.embed_dim}: the towers must share a space")


def __getattr__(name: str):
  # The named configs live with their families; these names stay importable
  # from here (lazily: the families import this module).
  if name in ("PRESETS", "clip_config", "siglip_config"):
    from jaxfsl.models import families
    return getattr(families, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
