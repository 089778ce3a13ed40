"""Trainables: the pytrees fine-tuned per episode beside the frozen backbone.

``base.Trainable`` is the interface the engine trains through and
``get_trainable(name, block)`` the registry (``config.trainable``); LoRA
(``lora.LoraTrainable``) is the first implementation.
"""

from jaxfsl.trainables.base import Trainable, available, get_trainable, register
from jaxfsl.trainables.lora import (
    BLOCK_PRESETS,
    Adapters,
    LoraConfig,
    LoraTrainable,
    block_indices,
    count_params,
    init_lora,
    merge_lora,
)

__all__ = ["BLOCK_PRESETS", "Adapters", "LoraConfig", "LoraTrainable",
           "Trainable", "available", "block_indices", "count_params",
           "get_trainable", "init_lora", "merge_lora", "register"]
