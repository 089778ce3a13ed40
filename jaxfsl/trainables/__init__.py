"""Trainables: the pytrees fine-tuned per episode beside the frozen backbone
(LoRA adapters; prompt learners plug in the same way)."""

from jaxfsl.trainables.lora import (
    BLOCK_PRESETS,
    Adapters,
    LoraConfig,
    block_indices,
    count_params,
    init_lora,
    merge_lora,
)

__all__ = ["BLOCK_PRESETS", "Adapters", "LoraConfig", "block_indices",
           "count_params", "init_lora", "merge_lora"]
