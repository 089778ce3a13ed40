"""Loading pretrained checkpoints as ``jaxfsl.models.Model``.

``load_model(path)`` reads what ``path`` is (``detect_format``):

* "hf": a folder with ``config.json``: Hugging Face ``CLIPModel`` /
  ``SiglipModel`` (``hf.load_hf``; architectures by ``hf.MODEL_TYPES``);
* "npz": an ``.npz`` of named arrays (``readers.read_npz``);
* "torch": a ``.pt`` / ``.pth`` / ``.bin`` or any torch/TorchScript file
  (``readers.read_torch``).

Single files are then mapped by the first entry of ``LAYOUTS`` of that file
kind whose ``matches`` accepts the tensor names (big_vision SigLIP for npz,
OpenAI CLIP for torch); when none does, the kind's last layout converts and
says what it expected. Every loader ends in ``tensors.finalize``, which
builds the Model with the family's preprocessing and tokenizer kind
(``jaxfsl.models.families``).

Two registration points, one line each:

* ``LAYOUTS``: a layout module providing ``matches(keys) -> bool`` and
  ``convert(arrays, path) -> (ModelConfig, params)`` for a file kind jaxfsl
  already reads (an ``.npz``, a torch file), placed before a more general
  layout of the same kind;
* ``PATH_LOADERS``: a loader that recognises a path itself
  (``detect(path)``, e.g. a folder with its own config file) and loads it
  (``load(path, tokenizer=, dtype=, **options) -> Model``, ending in
  ``tensors.finalize``); tried first, in order. ``load_model``'s
  ``**options`` go to it.

Nothing is ever unpickled beyond what ``torch.load(weights_only=True)``
allows; every problem is a ``CheckpointError`` (a ValueError) naming the file
and tensor(s).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxfsl.checkpoints import big_vision, openai, pe_core, readers, tensors
from jaxfsl.checkpoints.errors import CheckpointError, CheckpointWarning
from jaxfsl.checkpoints.hf import (
    clip_config_from_hf,
    load_hf,
    siglip_config_from_hf,
)
from jaxfsl.checkpoints.readers import read_safetensors
from jaxfsl.checkpoints.tensors import TokenizerArg
from jaxfsl.models.config import ModelConfig
from jaxfsl.models.model import Model
from jaxfsl.paths import user_path

__all__ = [
    "CheckpointError", "CheckpointWarning", "LAYOUTS", "Layout",
    "PATH_LOADERS", "PathLoader", "load_model",
    "load_hf", "clip_config_from_hf", "siglip_config_from_hf",
    "read_safetensors", "detect_format",
]


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one single-file checkpoint layout becomes a model.

  Attributes:
    name: for messages ("openai", "big_vision", ...).
    kind: the file kind it is read as ("npz" or "torch", see READERS).
    matches: tensor names -> whether this layout claims them.
    convert: (arrays, path) -> (ModelConfig, numpy param tree); raises
      CheckpointError naming the file and tensors.
  """

  name: str
  kind: str
  matches: Callable[[Collection[str]], bool]
  convert: Callable[[Mapping[str, np.ndarray], str],
                    tuple[ModelConfig, dict]]


# The registry of single-file layouts, most specific first within a kind.
LAYOUTS: tuple[Layout, ...] = (
    Layout("big_vision", "npz", big_vision.matches,
           big_vision.convert_big_vision),
    # Before OpenAI's: PE-Core's official .pt shares visual.conv1.
    Layout("pe_core", "torch", pe_core.matches, pe_core.convert),
    Layout("openai", "torch", openai.matches, openai.convert_openai),
)

@dataclasses.dataclass(frozen=True)
class PathLoader:
  """A loader that claims whole paths (tried before ``detect_format``).

  Attributes:
    name: for messages.
    detect: path (``~`` expanded) -> truthy when this loader claims it; must
      be cheap (names, small JSON) and never raise for foreign paths.
    load: (path, tokenizer=..., dtype=..., **options) -> Model.
  """

  name: str
  detect: Callable[[Path], Any]
  load: Callable[..., Model]


# Loaders of whole paths, tried in order before the built-in file kinds.
PATH_LOADERS: tuple[PathLoader, ...] = (
    # open_clip / timm folders, .safetensors and zip .pt files; its options
    # are PE-Core's head-count overrides (pe_core.load).
    PathLoader("pe_core", pe_core.detect, pe_core.load),
)

READERS: dict[str, Callable[[str], dict[str, np.ndarray]]] = {
    "npz": readers.read_npz,
    "torch": readers.read_torch,
}

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
# Python pickles (torch's legacy non-zip format) start with PROTO 2+.
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def detect_format(path: str | os.PathLike) -> str:
  """"hf", "npz" or "torch" for ``path``; CheckpointError otherwise.

  Raises:
    FileNotFoundError: ``path`` (``~`` expanded) does not exist.
    CheckpointError: a folder without config.json, one file of an HF folder,
      or a file that is neither an npz nor a torch file.
  """
  path = user_path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
  if path.is_dir():
    if (path / "config.json").is_file():
      return "hf"
    raise CheckpointError(
        f"{path}: a folder without config.json; expected a Hugging Face "
        "CLIPModel/SiglipModel folder, a big_vision .npz or an OpenAI .pt")
  suffix = path.suffix.lower()
  if suffix == ".npz":
    return "npz"
  if suffix in _TORCH_SUFFIXES:
    return "torch"
  if path.name == "config.json" or suffix == ".safetensors":
    raise CheckpointError(
        f"{path}: pass the Hugging Face model folder (with config.json and "
        "the weights) rather than one of its files")
  # Unknown suffix: look at the bytes.
  names = readers.zip_names(path)
  if names is not None:
    if names and all(n.endswith(".npy") for n in names):
      return "npz"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
      return "torch"
  else:
    with open(path, "rb") as f:
      if f.read(2) in _PICKLE_MAGIC:
        return "torch"
  raise CheckpointError(
      f"{path}: unknown checkpoint layout; expected a Hugging Face folder "
      "(config.json), a big_vision SigLIP .npz or an OpenAI CLIP .pt")


def load_model(path: str | os.PathLike, tokenizer: TokenizerArg = None,
               dtype: Any = jnp.float32, **options: Any) -> Model:
  """Loads a CLIP / SigLIP checkpoint as a ``Model``.

  Args:
    path: a Hugging Face model folder, a big_vision ``.npz`` or an OpenAI
      ``.pt`` (see ``detect_format``); ``~`` and ``$VARS`` are expanded.
    tokenizer: None (HF: the folder's own tokenizer files if any; others: no
      tokenizer, feed token ids), a path to tokenizer files or their folder
      (spiece.model, tokenizer.json, vocab.json + merges.txt; ``~``
      expanded), or a callable list[str] -> int32 [N, L].
    dtype: compute dtype of the matmuls; parameters stay float32.
    **options: settings of the ``PATH_LOADERS`` entry that claims ``path``.

  Returns:
    The Model, its config derived from the checkpoint's own metadata and
    shapes, preprocessing from the checkpoint (or the family defaults).

  Raises:
    FileNotFoundError: ``path`` or a tokenizer path does not exist.
    CheckpointError: anything wrong with the checkpoint (names the file, the
      tensor(s) and what was expected).
    TypeError: ``options`` for a path no ``PATH_LOADERS`` entry claims.
  """
  path = user_path(path)
  for loader in PATH_LOADERS:
    if loader.detect(path):
      return loader.load(path, tokenizer=tokenizer, dtype=dtype, **options)
  if options:
    raise TypeError(
        f"{path}: options {sorted(options)} are not understood by the loader "
        f"of this checkpoint; they apply to: "
        f"{[loader.name for loader in PATH_LOADERS] or 'no loader'}")
  kind = detect_format(path)
  if kind == "hf":
    return load_hf(path, tokenizer=tokenizer, dtype=dtype)
  arrays = READERS[kind](str(path))
  candidates = [layout for layout in LAYOUTS if layout.kind == kind]
  layout = next((c for c in candidates if c.matches(arrays.keys())),
                candidates[-1])
  config, params = layout.convert(arrays, str(path))
  return tensors.finalize(config, params, path, tokenizer=tokenizer,
                          dtype=dtype)

