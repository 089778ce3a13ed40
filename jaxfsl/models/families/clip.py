"""CLIP (OpenAI layout; Hugging Face ``CLIPModel``; OpenAI ``.pt``).

Architecture (OpenAI ``clip/model.py``): pre-LN ViT with a class token,
``ln_pre`` after the embeddings, no patch bias, QuickGELU, LayerNorm epsilon
1e-5, image feature = ``ln_post``(class token) @ ``proj`` (no bias); causal
text transformer pooled at the end-of-text token, @ ``text_projection``.
The pooling position is the first ``eot_token_id`` when a checkpoint names
it, else the highest id (OpenAI's argmax; ``eot_token_id=None``).

Preprocessing: OpenAI's mean/std. Resize: S x S without crop, *bilinear*,
as the method's release (torchvision ``Resize((S, S))``, whose default is
bilinear) does for the episodes; OpenAI's own ``preprocess`` is bicubic +
centre crop, which the method does not use. ``Model.preprocess`` follows the
same rule so that features of a single image equal those in an episode.
"""

from __future__ import annotations

from jaxfsl.models.config import Activation, ModelConfig
from jaxfsl.models.families.base import Family

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
# log(1 / 0.07) as transformers' CLIPConfig.logit_scale_init_value writes it.
LOGIT_SCALE_INIT = 2.6592

VISION = dict(act="quick_gelu", pool="cls", pre_norm=True, patch_bias=False,
              proj=True, proj_bias=False, norm_eps=1e-5)
TEXT = dict(act="quick_gelu", causal=True, pool="eot", eot_token_id=None,
            proj_bias=False, norm_eps=1e-5)


# The family without its presets (which ``clip_config`` builds from it).
_CLIP = Family(name="clip", vision=VISION, text=TEXT,
               logit_scale_init=LOGIT_SCALE_INIT, logit_bias_init=None,
               mean=MEAN, std=STD, resample="bilinear", tokenizer="clip")


def clip_config(
    vision_width: int = 768,
    vision_depth: int = 12,
    vision_heads: int = 12,
    patch_size: int = 16,
    image_size: int = 224,
    text_width: int = 512,
    text_depth: int = 12,
    text_heads: int = 8,
    embed_dim: int = 512,
    vocab_size: int = 49408,
    context_length: int = 77,
    eot_token_id: int | None = None,
    act: Activation = "quick_gelu",
) -> ModelConfig:
  """A CLIP config with MLP width 4W; defaults are ViT-B/16."""
  return _CLIP.config(
      vision=dict(image_size=image_size, patch_size=patch_size,
                  width=vision_width, depth=vision_depth, heads=vision_heads,
                  mlp_dim=4 * vision_width, embed_dim=embed_dim, act=act),
      text=dict(vocab_size=vocab_size, context_length=context_length,
                width=text_width, depth=text_depth, heads=text_heads,
                mlp_dim=4 * text_width, embed_dim=embed_dim, act=act,
                eot_token_id=eot_token_id))


FAMILY = _CLIP.with_presets({
    "clip-vit-b16": clip_config(),
    "clip-vit-b32": clip_config(patch_size=32),
    "clip-vit-l14": clip_config(
        vision_width=1024, vision_depth=24, vision_heads=16, patch_size=14,
        text_width=768, text_heads=12, embed_dim=768),
    # Small random-init model for tests and the demo.
    "tiny-clip": clip_config(
        vision_width=64, vision_depth=2, vision_heads=4, patch_size=16,
        image_size=64, text_width=64, text_depth=2, text_heads=4,
        embed_dim=32, vocab_size=1000, context_length=48),
})
