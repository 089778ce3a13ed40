"""Flax two-tower models (CLIP, SigLIP) and the Model API.

Family knowledge (flags, preprocessing, tokenizer kind, presets) lives in
``jaxfsl.models.families``; adapters (LoRA, prompt learners) in
``jaxfsl.trainables``."""

from jaxfsl.models import families
from jaxfsl.models.config import ModelConfig, TextConfig, VisionConfig
from jaxfsl.models.families import PRESETS, Family, clip_config, siglip_config
from jaxfsl.models.model import Model, build
from jaxfsl.models.two_towers import TwoTowers, init_params

__all__ = [
    "PRESETS", "Family", "ModelConfig", "TextConfig", "VisionConfig",
    "clip_config", "families", "siglip_config", "Model", "build", "TwoTowers",
    "init_params",
]
