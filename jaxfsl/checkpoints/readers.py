"""Checkpoint files -> flat ``{name: np.ndarray}`` maps, executing nothing.

* safetensors through the ``safetensors`` package (``safe_open(...,
  framework="numpy")``); bfloat16 comes back as ``ml_dtypes.bfloat16``;
* ``.npz`` with ``allow_pickle=False``;
* PyTorch files with ``torch.load(weights_only=True)``, and OpenAI's
  TorchScript archives through ``torch.jit.load``, both in ``torch_files``
  (the only module of jaxfsl that imports torch, and only when such a file
  is read).

Every failure is a ``CheckpointError`` naming the file.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# safetensors' numpy backend builds bfloat16 arrays with
# np.dtype("bfloat16"), a name numpy knows only once ml_dtypes is imported
# (measured with safetensors 0.8.0: "data type 'bfloat16' not understood"
# without this import; versions before 0.4.1 cannot return bfloat16 at all).
import ml_dtypes
import numpy as np
import safetensors

from jaxfsl.checkpoints import torch_files
from jaxfsl.checkpoints.errors import CheckpointError, first_line, listing

PathLike = str | os.PathLike


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """Every tensor of a ``.safetensors`` file, stored dtype kept.

  Returns:
    {name: array}; bfloat16 / float8 as ``ml_dtypes`` arrays.

  Raises:
    CheckpointError: truncated or corrupt file, unsupported dtype (the
      library's reason, prefixed with the file).
  """
  path = str(path)
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      return {name: f.get_tensor(name) for name in f.keys()}
  except (safetensors.SafetensorError, TypeError, ValueError, OSError) as e:
    raise CheckpointError(
        f"{path}: unreadable safetensors file (truncated or corrupt?): "
        f"{first_line(e)}") from e


def read_npz(path: PathLike) -> dict[str, np.ndarray]:
  """Every array of an ``.npz``, read with ``allow_pickle=False``.

  Returns:
    {key: array}; numpy's void-2 arrays (how ``np.savez`` stores bfloat16)
    are viewed as bfloat16, as big_vision does.

  Raises:
    CheckpointError: not an npz, truncated, or an entry that needs pickle.
  """
  try:
    npz = np.load(str(path), allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise CheckpointError(
        f"{path}: not a readable .npz file (truncated or not a zip of .npy "
        f"arrays): {e}") from e
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise CheckpointError(
        f"{path}: holds a single array (np.save), not a .npz of named "
        "parameters")
  out = {}
  with npz:
    for key in npz.files:
      try:
        array = npz[key]
      except ValueError as e:
        if "pickle" in str(e):
          raise CheckpointError(
              f"{path}: entry {key!r} is an object array stored with pickle; "
              "refusing to unpickle it (np.load(allow_pickle=False)): "
              "parameters must be plain numeric arrays") from e
        raise CheckpointError(f"{path}: entry {key!r} unreadable: {e}") from e
      except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise CheckpointError(
            f"{path}: entry {key!r} unreadable (truncated file?): {e}") from e
      if array.dtype.type is np.void and array.dtype.itemsize == 2:
        array = array.view(ml_dtypes.bfloat16)
      out[key] = array
  return out


def read_json(path: PathLike) -> dict:
  """A JSON object file; CheckpointError naming the file otherwise."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(data, dict):
    raise CheckpointError(f"{path}: expected a JSON object")
  return data


def read_hf_folder(folder: PathLike
                   ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """The weights of a Hugging Face folder: ({name: array}, {name: file}).

  Order of preference, as transformers: model.safetensors, its sharded
  index, pytorch_model.bin, its index. Other ``*.safetensors`` files in the
  folder (e.g. ``open_clip_model.safetensors``) are never read.

  Raises:
    CheckpointError: no weights; an index naming a missing shard, a tensor
      in two shards, or a tensor not in the shard the index says.
  """
  folder = Path(folder)
  for name, read in _HF_WEIGHTS:
    if (folder / name).is_file():
      arrays = read(folder / name)
      return arrays, dict.fromkeys(arrays, str(folder / name))
  for name, read in _HF_INDEXES:
    if (folder / name).is_file():
      return _read_sharded(folder, folder / name, read)
  present = sorted(p.name for p in folder.iterdir())
  expected = [n for n, _ in _HF_WEIGHTS + _HF_INDEXES]
  raise CheckpointError(
      f"{folder}: no weights found; expected {', '.join(expected)}; the "
      f"folder has: {listing(present)}")


def _read_sharded(folder: Path, index_file: Path, read):
  index = read_json(index_file)
  weight_map = index.get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise CheckpointError(f"{index_file}: no 'weight_map' in the index")
  arrays, files = {}, {}
  for shard in sorted(set(weight_map.values())):
    shard_path = folder / shard
    if Path(shard).name != shard or not shard_path.is_file():
      raise CheckpointError(
          f"{index_file}: shard {shard!r} listed in the index is not a file "
          f"in {folder}")
    for key, array in read(shard_path).items():
      if key in arrays:
        raise CheckpointError(
            f"{shard_path}: tensor {key!r} also appears in {files[key]}")
      arrays[key], files[key] = array, str(shard_path)
  for key, shard in weight_map.items():
    if files.get(key) != str(folder / shard):
      raise CheckpointError(
          f"{index_file}: tensor {key!r} is listed in shard {shard!r} but is "
          "not in that file")
  return arrays, files


# --------------------------------------------------------------- PyTorch


def zip_names(path: PathLike) -> list[str] | None:
  """Member names of a zip file, None when ``path`` is not a zip."""
  if not zipfile.is_zipfile(path):
    return None
  try:
    with zipfile.ZipFile(path) as z:
      return z.namelist()
  except (zipfile.BadZipFile, OSError) as e:
    raise CheckpointError(f"{path}: corrupt zip archive: {e}") from e


def read_torch(path: PathLike) -> dict[str, np.ndarray]:
  """The flat state dict of a PyTorch file as numpy arrays.

  TorchScript archives (they carry ``constants.pkl``, as torch.load's own
  test) go through ``torch.jit.load``, everything else through
  ``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` wrapper and a
  uniform ``module.`` prefix (training scripts' layout) are removed.
  bfloat16 tensors become float32 (exact; numpy's torch bridge has no
  bfloat16).

  Raises:
    CheckpointError: needs torch, refuses pickled objects, truncated file,
      not a map of tensors.
  """
  path = str(path)
  names = zip_names(path)
  if names is not None and any(
      n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
    state = torch_files.load_torchscript_state_dict(path)
  else:
    state = torch_files.load_torch_state_dict(path)
  for wrapper in ("state_dict", "weights"):  # weights: PE's load_ckpt
    if (isinstance(state, Mapping) and wrapper in state
        and isinstance(state[wrapper], Mapping)):
      state = state[wrapper]
      break
  if isinstance(state, Mapping) and state and all(
      isinstance(k, str) and k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state_dict_arrays(state, path)


def state_dict_arrays(tree: Any, path: PathLike) -> dict[str, np.ndarray]:
  """A flat {name: array or number} state dict -> {name: np.ndarray}.

  ``tree`` is what ``torch_files`` returns (tensors already numpy).

  Raises:
    CheckpointError: not a map, a non-string key, or an entry that is
      neither an array nor a number.
  """
  if not isinstance(tree, Mapping):
    raise CheckpointError(
        f"{path}: expected a state dict (a map of tensors), found "
        f"{type(tree).__name__}")
  out = {}
  for name, value in tree.items():
    if not isinstance(name, str):
      raise CheckpointError(f"{path}: non-string key {name!r} in state dict")
    if isinstance(value, np.ndarray):
      out[name] = value
    elif isinstance(value, (int, float)):
      out[name] = np.asarray(value)
    else:
      raise CheckpointError(
          f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
  return out


def _read_torch_weights(path: PathLike) -> dict[str, np.ndarray]:
  return state_dict_arrays(torch_files.load_torch_state_dict(path), path)


# A Hugging Face folder's weight files and sharded indexes, in transformers'
# order of preference, with their readers.
_HF_WEIGHTS = (("model.safetensors", read_safetensors),
               ("pytorch_model.bin", _read_torch_weights))
_HF_INDEXES = (("model.safetensors.index.json", read_safetensors),
               ("pytorch_model.bin.index.json", _read_torch_weights))
