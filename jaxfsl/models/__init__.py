"""Flax two-tower models (CLIP, SigLIP) and the Model API.

Adapters (LoRA, prompt learners) live in ``jaxfsl.trainables``."""

from jaxfsl.models.config import (
    PRESETS,
    ModelConfig,
    TextConfig,
    VisionConfig,
    clip_config,
    siglip_config,
)
from jaxfsl.models.model import Model, build
from jaxfsl.models.two_towers import TwoTowers, init_params

__all__ = [
    "PRESETS", "ModelConfig", "TextConfig", "VisionConfig", "clip_config",
    "siglip_config", "Model", "build", "TwoTowers", "init_params",
]
