"""SigLIP and fixed-resolution SigLIP2 (big_vision ``.npz``; Hugging Face
``SiglipModel``).

Architecture (big_vision ``models/vit.py`` + ``text_transformer``;
transformers ``modeling_siglip.py``): ViT without class token or ``ln_pre``,
patch conv with bias, tanh-approximated GELU, LayerNorm epsilon 1e-6,
``encoder_norm`` on all tokens, then multihead attention pooling (MAP) with
a learned probe; no image projection (big_vision's optional ``img/head`` is
read when present). Text: bidirectional, pooled at the last position after
the final norm, then a linear head with bias. A learned logit bias.

Preprocessing: inputs scaled to [-1, 1] (mean = std = 0.5); resize S x S
without crop, bilinear (big_vision's ``resize`` and transformers'
``SiglipImageProcessor`` are bilinear). Tokenizer: SentencePiece
(``spiece.model``), or SigLIP2's Gemma ``tokenizer.json``.
"""

from __future__ import annotations

from jaxfsl.models.config import ModelConfig
from jaxfsl.models.families.base import Family

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

VISION = dict(act="gelu_tanh", pool="map", pre_norm=False, patch_bias=True,
              proj=False, proj_bias=False, norm_eps=1e-6)
TEXT = dict(act="gelu_tanh", causal=False, pool="last", eot_token_id=None,
            proj_bias=True, norm_eps=1e-6)


# The family without its presets (which ``siglip_config`` builds from it).
_SIGLIP = Family(name="siglip", vision=VISION, text=TEXT,
                 # SigLIP's init: t = log(10), b = -10.
                 logit_scale_init=2.302585, logit_bias_init=-10.0,
                 mean=MEAN, std=STD, resample="bilinear", tokenizer="siglip")


def siglip_config(
    width: int = 768,
    depth: int = 12,
    heads: int = 12,
    mlp_dim: int = 3072,
    patch_size: int = 16,
    image_size: int = 224,
    vocab_size: int = 32000,
    context_length: int = 64,
) -> ModelConfig:
  """A SigLIP config with both towers alike; defaults are B/16 at 224."""
  return _SIGLIP.config(
      vision=dict(image_size=image_size, patch_size=patch_size, width=width,
                  depth=depth, heads=heads, mlp_dim=mlp_dim, embed_dim=width),
      text=dict(vocab_size=vocab_size, context_length=context_length,
                width=width, depth=depth, heads=heads, mlp_dim=mlp_dim,
                embed_dim=width))


FAMILY = _SIGLIP.with_presets({"siglip-b16": siglip_config()})
