"""Flax two-tower models (CLIP, SigLIP), LoRA adapters and the Model API."""

from jaxfsl.models.config import (
    PRESETS,
    ModelConfig,
    TextConfig,
    VisionConfig,
    clip_config,
    siglip_config,
)
from jaxfsl.models.lora import (
    Adapters,
    LoraConfig,
    block_indices,
    count_params,
    init_lora,
    merge_lora,
)
from jaxfsl.models.model import Model, build
from jaxfsl.models.two_towers import TwoTowers, init_params

__all__ = [
    "PRESETS", "ModelConfig", "TextConfig", "VisionConfig", "clip_config",
    "siglip_config", "Adapters", "LoraConfig", "block_indices", "count_params",
    "init_lora", "merge_lora", "Model", "build", "TwoTowers", "init_params",
]
