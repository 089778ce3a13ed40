"""jaxfsl: source-free cross-domain few-shot learning with vision-language
models in JAX/Flax ("Mind the Discriminability Trap", CVPR 2026).

Public entry points::

  jaxfsl.load_model(path)          # HF folder, big_vision .npz, OpenAI .pt
  jaxfsl.models.build("tiny-clip") # random-init model from a preset/config
  jaxfsl.losses                    # L_vlm, SVL, RA, FT+L_v, decomposition
  jaxfsl.finetune.EpisodeEngine    # vmapped, sharded per-episode fine-tuning
  jaxfsl.data                      # TFDS builders, episodes, augmentations
"""

from jaxfsl import analysis, losses, models, optim
from jaxfsl.models import (
  Adapters,
  LoraConfig,
  Model,
  build,
  init_lora,
  merge_lora,
)

__version__ = "0.1.0"


def load_model(path: str, tokenizer: str | None = None, dtype=None) -> Model:
  """Loads a checkpoint (HF folder, big_vision .npz, OpenAI .pt) as a Model.

  See ``jaxfsl.checkpoints.load_model``.
  """
  from jaxfsl.checkpoints import load_model as _load

  kwargs = {} if dtype is None else {"dtype": dtype}
  return _load(path, tokenizer=tokenizer, **kwargs)


__all__ = [
    "analysis", "losses", "models", "optim", "Adapters", "LoraConfig",
    "Model", "build", "init_lora", "merge_lora", "load_model",
]
