"""PE-Core (Meta's Perception Encoder, CLIP variant) architecture configs.

No JAX here (as ``config.py``): the configs and named presets only. The Flax
modules are in ``jaxfsl.models.pe``, the checkpoint layouts in
``jaxfsl.checkpoints.pe_core``.

Source: facebookresearch/perception_models ``core/vision_encoder/pe.py`` and
``config.py`` (PEConfig / PETextConfig and the PE-Core-* entries), and the
HF model cards ``facebook/PE-Core-*``; summarised in docs (spec pe_core.md).

Parameter tree of the vision tower (``img/``), beside config.py's:

  img/
    patch_embed/kernel  [p, p, 3, W]     (no bias)
    cls_token           [W]              (``class_token`` only; not G)
    pos_embed           [T, W]           T = g*g (+1 with a class token)
    ln_pre/{scale,bias}
    blocks_{i}/...                       as CLIP's (packed qkv, q | k | v)
    ln_post/{scale,bias}                 applied to every token
    map_head/                            attention pooling, ``pool_heads``
      probe [W], attn/qkv [W, 3W], attn/out, ln, mlp/fc1 [W, Mp], mlp/fc2
    proj/kernel         [W, E]           (bias [E] when ``proj_bias``)

The text tower is config.py's ``TextConfig`` (causal, exact GELU, pooled at
the argmax of the ids, projection without bias).
"""

from __future__ import annotations

import dataclasses
import math

from jaxfsl.models.config import (
    Activation,
    ModelConfig,
    TextConfig,
    VisionConfig,
)

# PE-Core's learned temperature starts at log(1/0.07) (pe.py CLIP.__init__).
LOGIT_SCALE_INIT = math.log(1 / 0.07)
PE_VOCAB_SIZE = 49408


@dataclasses.dataclass(frozen=True)
class PeVisionConfig(VisionConfig):
  """A PE-Core vision tower (a ``VisionConfig`` with PE's extra fields).

  Inherited fields keep their meaning; PE fixes ``pool="map"`` (attention
  pooling over every token, class token included), ``pre_norm=True``,
  ``patch_bias=False``, exact GELU and LayerNorm epsilon 1e-5.

  Attributes:
    class_token: prepend a learned class token (PE-Core T/S/B/L; not G). It
      takes RoPE position (0, 0) unrotated and the patches start at 1;
      without it patches start at 0 (perception_models ``rope.py`` Rope2D).
    pool_heads: heads of the attention pooling (8 in every PE-Core model,
      whatever the tower's own head count).
    pool_mlp_dim: hidden width of the pooling MLP (4 W in PE-Core).
    rope_theta: RoPE base (10000).
  """

  act: Activation = "gelu"
  pool: str = "map"
  patch_bias: bool = False
  class_token: bool = True
  pool_heads: int = 8
  pool_mlp_dim: int = 3072
  rope_theta: float = 10000.0

  def __post_init__(self):
    super().__post_init__()
    problems = []
    if self.pool != "map":
      problems.append(f"pool={self.pool!r} (PE-Core pools with attention: "
                      "'map')")
    head_dim = self.width // self.heads
    if head_dim % 4:
      problems.append(
          f"head_dim={head_dim} (width {self.width} / heads {self.heads}) is "
          "not a multiple of 4, which 2D RoPE needs (two axes of pairs)")
    if self.width % self.pool_heads:
      problems.append(f"width={self.width} is not a multiple of "
                      f"pool_heads={self.pool_heads}")
    if problems:
      raise ValueError("invalid PE-Core vision config: " + "; ".join(problems))

  @property
  def grid(self) -> int:
    """Native patch grid side g = S / p."""
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    return self.num_patches + (1 if self.class_token else 0)


@dataclasses.dataclass(frozen=True)
class AbsentTextConfig(TextConfig):
  """Stands for the text tower of a vision-only checkpoint (timm weights).

  The model builds, and any use of its text side raises ``ValueError`` with
  ``reason`` (which says what to download instead).
  """

  reason: str = "this model has no text tower"


def pe_core_config(
    *,
    image_size: int = 224,
    patch_size: int = 16,
    width: int = 768,
    depth: int = 12,
    heads: int | None = None,
    mlp_dim: int | None = None,
    class_token: bool = True,
    pool_heads: int = 8,
    pool_mlp_dim: int | None = None,
    embed_dim: int = 1024,
    text_width: int = 1024,
    text_depth: int = 24,
    text_heads: int | None = None,
    text_mlp_dim: int | None = None,
    vocab_size: int = PE_VOCAB_SIZE,
    context_length: int = 32,
    proj_bias: bool = False,
) -> ModelConfig:
  """A PE-Core config; defaults are PE-Core-B16-224.

  Head counts default to PE-Core's rule, which no checkpoint stores: a head
  width of 64 in every tower, except 96 in the G vision tower (``width ==
  1536`` without a class token); the pool has 8 heads.
  """
  if heads is None:
    heads = default_vision_heads(width, class_token)
  if text_heads is None:
    text_heads = max(1, text_width // 64)
  return ModelConfig(
      family="pe_core",
      vision=PeVisionConfig(
          image_size=image_size, patch_size=patch_size, width=width,
          depth=depth, heads=heads, mlp_dim=mlp_dim or 4 * width,
          embed_dim=embed_dim, act="gelu", pool="map", pre_norm=True,
          patch_bias=False, proj=True, proj_bias=proj_bias, norm_eps=1e-5,
          class_token=class_token, pool_heads=pool_heads,
          pool_mlp_dim=pool_mlp_dim or 4 * width),
      text=TextConfig(
          vocab_size=vocab_size, context_length=context_length,
          width=text_width, depth=text_depth, heads=text_heads,
          mlp_dim=text_mlp_dim or 4 * text_width, embed_dim=embed_dim,
          act="gelu", causal=True, pool="eot", eot_token_id=None,
          proj_bias=False, norm_eps=1e-5),
      logit_scale_init=LOGIT_SCALE_INIT,
      logit_bias_init=None,
  )


def default_vision_heads(width: int, class_token: bool) -> int:
  """PE-Core's vision head count: width / 64, or width / 96 for G."""
  head_width = 96 if (width == 1536 and not class_token) else 64
  return max(1, width // head_width)


# Sizes from perception_models core/vision_encoder/config.py (PE-Core-*).
_TS_TEXT = dict(text_width=512, text_depth=12, embed_dim=512)
_BL_TEXT = dict(text_width=1024, text_depth=24, embed_dim=1024)
PE_PRESETS: dict[str, ModelConfig] = {
    "pe-core-t16-384": pe_core_config(
        image_size=384, patch_size=16, width=192, depth=12, **_TS_TEXT),
    "pe-core-s16-384": pe_core_config(
        image_size=384, patch_size=16, width=384, depth=12, **_TS_TEXT),
    "pe-core-b16-224": pe_core_config(
        image_size=224, patch_size=16, width=768, depth=12, **_BL_TEXT),
    "pe-core-l14-336": pe_core_config(
        image_size=336, patch_size=14, width=1024, depth=24, **_BL_TEXT),
    "pe-core-g14-448": pe_core_config(
        image_size=448, patch_size=14, width=1536, depth=50, mlp_dim=8960,
        class_token=False, embed_dim=1280, text_width=1280, text_depth=24,
        context_length=72),
    # Small random-init PE-Core for tests and the demo (real vocabulary, so
    # the packaged BPE tokenizer fits).
    "pe-core-tiny": pe_core_config(
        image_size=32, patch_size=16, width=64, depth=2, heads=2,
        embed_dim=32, text_width=64, text_depth=2, text_heads=2),
}
