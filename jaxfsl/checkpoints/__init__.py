"""Loading pretrained CLIP / SigLIP checkpoints as ``jaxfsl.models.Model``.

``load_model(path)`` dispatches on what ``path`` is:

* a folder with ``config.json``: Hugging Face ``CLIPModel`` / ``SiglipModel``
  (``hf.load_hf``);
* an ``.npz``: big_vision SigLIP (``big_vision.load_big_vision``);
* a ``.pt`` / ``.pth`` / ``.bin``: OpenAI CLIP (``openai.load_openai``);
* PE-Core in any of its layouts, recognised first (``pe_core.detect``): an
  official ``PE-Core-*.pt``, an open_clip hub folder
  (``open_clip_config.json``), timm ``vit_pe_core_*`` weights
  (``pe_core.load_pe_core``).

Files with another suffix are recognised by content. Nothing is ever
unpickled beyond what ``torch.load(weights_only=True)`` allows; every problem
is a ``CheckpointError`` (a ValueError) naming the file and tensor(s).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from jaxfsl.checkpoints import pe_core
from jaxfsl.checkpoints.big_vision import convert_big_vision, load_big_vision
from jaxfsl.checkpoints.common import (
    CheckpointError,
    CheckpointWarning,
    TokenizerArg,
    read_safetensors,
)
from jaxfsl.checkpoints.hf import (
    clip_config_from_hf,
    load_hf,
    siglip_config_from_hf,
)
from jaxfsl.checkpoints.openai import convert_openai, load_openai
from jaxfsl.checkpoints.pe_core import convert_pe_core, load_pe_core
from jaxfsl.models.model import Model

__all__ = [
    "CheckpointError", "CheckpointWarning", "load_model", "load_hf",
    "load_big_vision", "load_openai", "convert_big_vision", "convert_openai",
    "clip_config_from_hf", "siglip_config_from_hf", "read_safetensors",
    "detect_format", "load_pe_core", "convert_pe_core",
]

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
# Python pickles (torch's legacy non-zip format) start with PROTO 2+.
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def detect_format(path: str | os.PathLike) -> str:
  """"hf", "big_vision" or "openai" for ``path``; CheckpointError otherwise."""
  path = Path(path)
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
    return "big_vision"
  if suffix in _TORCH_SUFFIXES:
    return "openai"
  if path.name == "config.json" or suffix == ".safetensors":
    raise CheckpointError(
        f"{path}: pass the Hugging Face model folder (with config.json and "
        "the weights) rather than one of its files")
  # Unknown suffix: look at the bytes.
  if zipfile.is_zipfile(path):
    try:
      with zipfile.ZipFile(path) as z:
        names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
      raise CheckpointError(f"{path}: corrupt zip archive: {e}") from e
    if names and all(n.endswith(".npy") for n in names):
      return "big_vision"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
      return "openai"
  else:
    with open(path, "rb") as f:
      if f.read(2) in _PICKLE_MAGIC:
        return "openai"
  raise CheckpointError(
      f"{path}: unknown checkpoint layout; expected a Hugging Face folder "
      "(config.json), a big_vision SigLIP .npz or an OpenAI CLIP .pt")


def load_model(path: str | os.PathLike, tokenizer: TokenizerArg = None,
               dtype: Any = jnp.float32, **options: Any) -> Model:
  """Loads a CLIP / SigLIP checkpoint as a ``Model``.

  Args:
    path: a Hugging Face model folder, a big_vision ``.npz`` or an OpenAI
      ``.pt`` (see ``detect_format``).
    tokenizer: None (HF: the folder's own tokenizer files if any; others: no
      tokenizer, feed token ids), a path to tokenizer files or their folder
      (spiece.model, tokenizer.json, vocab.json + merges.txt), or a callable
      list[str] -> int32 [N, L].
    dtype: compute dtype of the matmuls; parameters stay float32.
    **options: layout-specific settings; PE-Core: ``vision_heads``,
      ``text_heads``, ``pool_heads`` (see ``load_pe_core``).

  Returns:
    The Model, its config derived from the checkpoint's own metadata and
    shapes, preprocessing from the checkpoint (or the family defaults).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    CheckpointError: anything wrong with the checkpoint (names the file, the
      tensor(s) and what was expected).
  """
  if pe_core.detect(path) is not None:
    return load_pe_core(path, tokenizer=tokenizer, dtype=dtype, **options)
  if options:
    raise TypeError(f"{path}: options {sorted(options)} apply to PE-Core "
                    "checkpoints only")
  kind = detect_format(path)
  loader = {"hf": load_hf, "big_vision": load_big_vision,
            "openai": load_openai}[kind]
  return loader(path, tokenizer=tokenizer, dtype=dtype)
