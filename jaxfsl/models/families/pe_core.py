"""PE-Core (Meta's Perception Encoder, CLIP variant): official
``facebook/PE-Core-*`` ``.pt``, open_clip ``timm/PE-Core-*`` folders, timm's
vision-only ``vit_pe_core_*`` weights (``jaxfsl.checkpoints.pe_core``).

Architecture (facebookresearch/perception_models ``core/vision_encoder/pe.py``
and ``config.py``; spec pe_core.md): a pre-LN ViT with exact GELU, no patch
bias, a class token (not for G), an absolute position embedding on every
token, **2D RoPE** on q and k in every block (``jaxfsl.models.pe``),
``ln_post`` on all tokens, attention pooling with one probe and 8 heads, a
projection without bias. Text: CLIP's causal transformer with exact GELU,
pooled at the argmax of the ids (the end-of-text id is the largest),
context 32 (72 for G), projection without bias. Learned log temperature,
no bias.

Preprocessing: squash resize to S x S, bilinear, mean = std = 0.5
(perception_models ``transforms.py``). Tokenizer: OpenAI CLIP's BPE with
ftfy cleaning and zero padding (``jaxfsl.tokenizers.pe``), packaged, since
no PE-Core layout ships tokenizer files.

No JAX here (as ``config.py``): the Flax towers are named by the config
classes' ``TOWER`` and imported when a model is built.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from jaxfsl.models.config import ModelConfig, TextConfig, VisionConfig
from jaxfsl.models.families.base import Family

# PE-Core's learned temperature starts at log(1/0.07) (pe.py CLIP.__init__).
LOGIT_SCALE_INIT = math.log(1 / 0.07)
PE_VOCAB_SIZE = 49408
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

VISION = dict(act="gelu", pool="map", pre_norm=True, patch_bias=False,
              proj=True, proj_bias=False, norm_eps=1e-5)
TEXT = dict(act="gelu", causal=True, pool="eot", eot_token_id=None,
            proj_bias=False, norm_eps=1e-5)


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

  ``PROMPT_HOOKS``: the tower takes MaPLe's vision prompts (``pe.py``), so
  prompt learners accept it although it is the family's own module.
  """

  TOWER: ClassVar[str] = "jaxfsl.models.pe:PeVisionTower"
  PROMPT_HOOKS: ClassVar[bool] = True

  act: str = "gelu"
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

  TOWER: ClassVar[str] = "jaxfsl.models.pe:AbsentTextTower"

  reason: str = "this model has no text tower"


def without_text(config: ModelConfig, reason: str) -> ModelConfig:
  """``config`` with its text tower replaced by an ``AbsentTextConfig``."""
  fields = dataclasses.asdict(config.text)
  return dataclasses.replace(config, text=AbsentTextConfig(**fields,
                                                           reason=reason))


class NoText:
  """The tokenizer of a vision-only model: raises ``ValueError(reason)``."""

  def __init__(self, text: AbsentTextConfig):
    self.reason = text.reason
    self.context_length = text.context_length

  def __call__(self, texts):
    raise ValueError(self.reason)


def default_tokenizer(text: TextConfig):
  """The packaged PE tokenizer when the vocabulary is CLIP's (else None);
  a raising stand-in for a vision-only model."""
  if isinstance(text, AbsentTextConfig):
    return NoText(text)
  if text.vocab_size != PE_VOCAB_SIZE:
    return None
  from jaxfsl.tokenizers.pe import pe_core_tokenizer
  return pe_core_tokenizer(text.context_length)


def vision_head_width(width: int, class_token: bool) -> int:
  """PE-Core's vision head width: 64, or 96 for G (width 1536 without a
  class token). No checkpoint stores head counts."""
  return 96 if (width == 1536 and not class_token) else 64


def default_vision_heads(width: int, class_token: bool) -> int:
  """PE-Core's vision head count, width / ``vision_head_width``."""
  return max(1, width // vision_head_width(width, class_token))


# The family without its presets (which ``pe_core_config`` builds from it).
_PE_CORE = Family(name="pe_core", vision=VISION, text=TEXT,
                  logit_scale_init=LOGIT_SCALE_INIT, logit_bias_init=None,
                  mean=MEAN, std=STD, resample="bilinear",
                  tokenizer="pe_core", vision_config=PeVisionConfig,
                  default_tokenizer=default_tokenizer)


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
) -> ModelConfig:
  """A PE-Core config; defaults are PE-Core-B16-224.

  Head counts default to PE-Core's rule (``default_vision_heads``; text
  width / 64); MLP widths to 4 W.

  Raises:
    ValueError: inconsistent sizes (from the config dataclasses).
  """
  return _PE_CORE.config(
      vision=dict(image_size=image_size, patch_size=patch_size, width=width,
                  depth=depth,
                  heads=heads or default_vision_heads(width, class_token),
                  mlp_dim=mlp_dim or 4 * width, embed_dim=embed_dim,
                  class_token=class_token, pool_heads=pool_heads,
                  pool_mlp_dim=pool_mlp_dim or 4 * width),
      text=dict(vocab_size=vocab_size, context_length=context_length,
                width=text_width, depth=text_depth,
                heads=text_heads or max(1, text_width // 64),
                mlp_dim=text_mlp_dim or 4 * text_width, embed_dim=embed_dim))


# Sizes from perception_models core/vision_encoder/config.py (PE-Core-*).
_TS_TEXT = dict(text_width=512, text_depth=12, embed_dim=512)
_BL_TEXT = dict(text_width=1024, text_depth=24, embed_dim=1024)

FAMILY = _PE_CORE.with_presets({
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
})
