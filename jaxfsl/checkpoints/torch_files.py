"""PyTorch files <-> numpy: the only module of jaxfsl that imports torch.

torch is optional: it is imported lazily, only when a ``.pt`` / ``.bin``
file is read or the release's ``.pt`` adapter format is written, and its
absence is a ``TorchMissingError`` that says how to install the CPU build.
Everything this module returns or accepts is numpy, so no caller touches a
``torch.Tensor`` (``tests/test_checkpoints.py`` walks the package with
``ast`` to keep it that way).

* ``load_torch_state_dict``: ``torch.load(weights_only=True)`` on CPU;
* ``load_torchscript_state_dict``: ``state_dict()`` of a TorchScript
  archive (OpenAI's ``.pt`` files);
* ``save_torch_state_dict``: ``torch.save`` of a tree of numpy arrays.

Every failure is a ``CheckpointError`` naming the file.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxfsl.checkpoints.errors import CheckpointError, first_line

PathLike = str | os.PathLike

# Pinned as the project's optional extra (pyproject.toml) pins it.
INSTALL_HINT = ("the CPU build is enough: pip install torch==2.13.0 "
                "--index-url https://download.pytorch.org/whl/cpu")


class TorchMissingError(CheckpointError):
  """torch is not installed but a PyTorch file must be read or written."""


def _import_torch(path: PathLike, what: str):
  try:
    import torch
  except ImportError as e:
    raise TorchMissingError(f"{path}: {what} needs torch ({INSTALL_HINT})"
                            ) from e
  return torch


def load_torch_state_dict(path: PathLike) -> Any:
  """``torch.load(path, map_location="cpu", weights_only=True)`` as numpy.

  ``weights_only=True`` restricts unpickling to tensors, primitive containers
  and a small allow-list of torch types, so a file cannot run code on load; a
  file that needs anything else is refused rather than trusted.

  Args:
    path: a file written by ``torch.save``.

  Returns:
    The stored object with every tensor, at any depth of dicts, lists and
    tuples, replaced by an ``np.ndarray`` of the same shape and dtype
    (bfloat16 becomes float32, exactly: numpy's torch bridge has no
    bfloat16). Mappings come back as ``dict`` in stored order.

  Raises:
    TorchMissingError: torch is not installed.
    CheckpointError: the file needs objects beyond weights_only's allow-list
      (the unpickler's reason quoted), or is truncated / not a torch file.
  """
  torch = _import_torch(path, "reading PyTorch weights")
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    if "WeightsUnpickler" not in str(e):  # Not a refusal: a broken file.
      raise CheckpointError(
          f"{path}: not a readable PyTorch weights file (truncated or "
          f"corrupt?): {first_line(e)}") from e
    raise CheckpointError(
        f"{path}: refusing to load: the file needs to unpickle objects other "
        "than tensors and plain containers, which torch.load(weights_only=True)"
        f" does not allow (arbitrary pickles can run code): "
        f"{_unpickler_reason(e)}") from e
  except (RuntimeError, OSError, EOFError, ValueError) as e:
    raise CheckpointError(
        f"{path}: not a readable PyTorch weights file (truncated or corrupt?): "
        f"{first_line(e)}") from e
  return _to_numpy(state, torch)


def load_torchscript_state_dict(path: PathLike) -> dict[str, np.ndarray]:
  """``state_dict()`` of a TorchScript archive as numpy, never running it.

  Why this is acceptable where plain pickle is not: ``torch.jit.load`` does
  not use Python's pickle. Its tensors and constants go through TorchScript's
  C++ unpickler, which resolves only tensor-rebuild functions, containers and
  TorchScript (``__torch__``) types, so the file cannot name an arbitrary
  Python callable the way a pickle REDUCE can. The code in the archive is
  TorchScript, compiled and run by the TorchScript interpreter, which can call
  registered torch operators but not the Python interpreter, ``os`` or
  builtins. We never call ``forward``; we only read ``state_dict()``. What
  remains is what OpenAI's own ``clip.load`` accepts: a TorchScript class's
  ``__setstate__`` runs during load (torch ops only) and a malicious archive
  could target bugs in the C++ deserialiser, so load archives from sources
  you trust.

  Returns:
    {name: array} in the archive's order, dtypes as ``load_torch_state_dict``.

  Raises:
    TorchMissingError: torch is not installed.
    CheckpointError: truncated or corrupt archive.
  """
  torch = _import_torch(path, "a TorchScript archive; reading it")
  try:
    with warnings.catch_warnings():
      # torch >= 2.9 deprecates TorchScript, but OpenAI's files are archives.
      warnings.simplefilter("ignore", DeprecationWarning)
      module = torch.jit.load(str(path), map_location="cpu")
  except (RuntimeError, ValueError, OSError) as e:
    raise CheckpointError(
        f"{path}: unreadable TorchScript archive (truncated or corrupt?): "
        f"{first_line(e)}") from e
  return _to_numpy(module.state_dict(), torch)


def save_torch_state_dict(path: PathLike, tree: Any, what: str) -> None:
  """``torch.save`` of ``tree`` with its numpy arrays as torch tensors.

  Args:
    path: the file to write (its folder must exist).
    tree: dicts / lists / tuples of ``np.ndarray`` and plain values (ints,
      floats, strings), e.g. the release's ``save_lora`` dict. Arrays must
      have a dtype torch knows (not bfloat16).
    what: what is being written, for the missing-torch message.

  Raises:
    TorchMissingError: torch is not installed.
  """
  torch = _import_torch(path, what)
  torch.save(_to_torch(tree, torch), str(path))


def _to_numpy(tree: Any, torch) -> Any:
  if isinstance(tree, torch.Tensor):
    tensor = tree.detach().cpu()
    if tensor.dtype == torch.bfloat16:
      tensor = tensor.to(torch.float32)
    return tensor.numpy()
  if isinstance(tree, Mapping):
    return {k: _to_numpy(v, torch) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_to_numpy(v, torch) for v in tree]
  if isinstance(tree, tuple):  # torch.Size and named tuples: plain tuples.
    return tuple(_to_numpy(v, torch) for v in tree)
  return tree


def _to_torch(tree: Any, torch) -> Any:
  if isinstance(tree, np.ndarray):
    return torch.from_numpy(tree)
  if isinstance(tree, Mapping):
    return {k: _to_torch(v, torch) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_to_torch(v, torch) for v in tree]
  if isinstance(tree, tuple):
    return tuple(_to_torch(v, torch) for v in tree)
  return tree


def _unpickler_reason(e: BaseException) -> str:
  """The informative line of torch's long weights_only error."""
  for line in str(e).splitlines():
    if "WeightsUnpickler error:" in line:
      reason = line.split("WeightsUnpickler error:", 1)[1].strip()
      return reason.split(". ")[0]
  return first_line(e)
