"""jaxfsl: source-free cross-domain few-shot learning with vision-language
models in JAX/Flax ("Mind the Discriminability Trap", CVPR 2026).

Public entry points::

  jaxfsl.load_model(path)             # HF folder, big_vision .npz, OpenAI .pt,
                                      # PE-Core (.pt, open_clip, timm)
  jaxfsl.build("tiny-clip")           # random-init model from a preset
  jaxfsl.method                       # L_vlm, SVL, RA, FT+L_v, metrics
  jaxfsl.trainables                   # LoRA (the Trainable interface)
  jaxfsl.protocols.episodic           # vmapped, sharded per-episode engine
  jaxfsl.data                         # TFDS builders, episodes, augmentations
  jaxfsl.import_adapters(path, model) # PEFT folder / release .pt / npz

Submodules are imported on first use (PEP 562), so ``import jaxfsl`` and
loading a config file (``jaxfsl.configs``) do not import JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself)
_LAZY = {
    "models": ("jaxfsl.models", None),
    "method": ("jaxfsl.method", None),
    "losses": ("jaxfsl.method.losses", None),
    "metrics": ("jaxfsl.method.metrics", None),
    "optim": ("jaxfsl.optim", None),
    "trainables": ("jaxfsl.trainables", None),
    "checkpoints": ("jaxfsl.checkpoints", None),
    "data": ("jaxfsl.data", None),
    "protocols": ("jaxfsl.protocols", None),
    "tokenizers": ("jaxfsl.tokenizers", None),
    "Model": ("jaxfsl.models", "Model"),
    "build": ("jaxfsl.models", "build"),
    "Adapters": ("jaxfsl.trainables", "Adapters"),
    "LoraConfig": ("jaxfsl.trainables", "LoraConfig"),
    "init_lora": ("jaxfsl.trainables", "init_lora"),
    "merge_lora": ("jaxfsl.trainables", "merge_lora"),
    "interop": ("jaxfsl.interop", None),
    "import_adapters": ("jaxfsl.interop", "import_adapters"),
    "export_adapters": ("jaxfsl.interop", "export_adapters"),
}


def load_model(path: str, tokenizer: str | None = None, dtype: Any = None,
               **options: Any) -> Any:
  """Loads a checkpoint (HF, big_vision, OpenAI, PE-Core) as a Model.

  See ``jaxfsl.checkpoints.load_model``.
  """
  from jaxfsl.checkpoints import load_model as _load

  kwargs = {} if dtype is None else {"dtype": dtype}
  return _load(path, tokenizer=tokenizer, **kwargs, **options)


def __getattr__(name: str) -> Any:
  if name not in _LAZY:
    raise AttributeError(f"module 'jaxfsl' has no attribute {name!r}")
  module, attr = _LAZY[name]
  value = importlib.import_module(module)
  if attr is not None:
    value = getattr(value, attr)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted([*globals(), *_LAZY])


__all__ = ["load_model", *_LAZY]
