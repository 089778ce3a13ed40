"""Plumbing shared by the checkpoint loaders.

Every loader reads a checkpoint into a flat ``{name: np.ndarray}`` map without
executing code from the file (safetensors and ``.npz`` parsed as data, ``.pt``
only through ``torch.load(weights_only=True)``), converts it to the param tree
documented in ``jaxfsl.models.config`` with a ``Tensors`` object that checks
every shape and remembers which tensors were used, and finally checks the tree
against the Flax module's own abstract init. Anything unexpected becomes a
``CheckpointError`` that names the file, the tensor(s) and what was expected.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxfsl.models.config import ModelConfig
from jaxfsl.preprocess import SIGLIP_MEAN, SIGLIP_STD, Preprocessing

PathLike = str | os.PathLike
Tokenizer = Callable[[Sequence[str]], np.ndarray]
TokenizerArg = PathLike | Tokenizer | None

# How many names an error message lists before it says "and N more".
_MAX_LISTED = 12


class CheckpointError(ValueError):
  """A checkpoint that cannot be turned into a jaxfsl model.

  The message names the file, the offending tensor(s) or config field, and
  what was expected (e.g. shape expected vs. found).
  """


class CheckpointWarning(UserWarning):
  """A checkpoint entry was ignored on purpose (e.g. ``position_ids``)."""


def listing(names: Iterable[str], limit: int = _MAX_LISTED) -> str:
  """'a, b, c and 7 more' for error messages."""
  names = list(names)
  shown = ", ".join(names[:limit])
  if len(names) > limit:
    shown += f" and {len(names) - limit} more"
  return shown


# ------------------------------------------------------------------ readers

# safetensors dtype codes -> numpy dtypes (little-endian, as the format says).
_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ML_FLOATS = frozenset(np.dtype(t) for t in (
    ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2))
# The safetensors library refuses headers above 100 MB; so do we.
_MAX_HEADER = 100 * 1024 * 1024


def is_float_dtype(dtype: np.dtype) -> bool:
  """numpy floats plus ml_dtypes' bfloat16/float8 (not np.floating)."""
  dtype = np.dtype(dtype)
  return np.issubdtype(dtype, np.floating) or dtype in _ML_FLOATS


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file as read-only memory-mapped arrays.

  The format is parsed here rather than with the ``safetensors`` package
  because its numpy backend cannot return bfloat16 (common in released
  checkpoints), and so that a truncated or inconsistent file is reported with
  the tensor it breaks. Nothing in the file is executed: it is a JSON header
  and raw little-endian bytes.

  Args:
    path: the file.

  Returns:
    {name: array} with the stored dtype (bfloat16 via ml_dtypes) and shape.

  Raises:
    CheckpointError: truncated file, malformed header, unknown dtype, or a
      tensor whose byte range disagrees with its dtype and shape.
  """
  path = str(path)
  size = os.path.getsize(path)
  if size < 8:
    raise CheckpointError(
        f"{path}: truncated safetensors file ({size} bytes; the header length "
        "alone takes 8)")
  with open(path, "rb") as f:
    header_len = int.from_bytes(f.read(8), "little")
    if header_len > min(size - 8, _MAX_HEADER):
      raise CheckpointError(
          f"{path}: truncated or corrupt safetensors file: the header claims "
          f"{header_len} bytes but the file has {size - 8} after the length")
    raw = f.read(header_len)
  try:
    header = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(
        f"{path}: corrupt safetensors header (not JSON: {e})") from e
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: corrupt safetensors header (not a map)")
  header.pop("__metadata__", None)
  data_start = 8 + header_len
  data_size = size - data_start
  data = None
  if data_size > 0:
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start,
                     shape=(data_size,))
  out = {}
  for name, info in header.items():
    try:
      code, shape = info["dtype"], tuple(int(d) for d in info["shape"])
      begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointError(
          f"{path}: corrupt safetensors header entry for {name!r}: "
          f"{info!r}") from e
    if code not in _SAFETENSORS_DTYPES:
      raise CheckpointError(
          f"{path}: tensor {name!r} has unsupported dtype {code}; expected "
          f"one of {sorted(_SAFETENSORS_DTYPES)}")
    dtype = _SAFETENSORS_DTYPES[code]
    nbytes = math.prod(shape) * dtype.itemsize
    if begin < 0 or end - begin != nbytes or any(d < 0 for d in shape):
      raise CheckpointError(
          f"{path}: tensor {name!r} ({code} {list(shape)}) should take "
          f"{nbytes} bytes but its header offsets are [{begin}, {end})")
    if end > data_size:
      raise CheckpointError(
          f"{path}: truncated safetensors file: tensor {name!r} needs bytes "
          f"[{begin}, {end}) of the data section, which has only {data_size}")
    if nbytes == 0:
      out[name] = np.zeros(shape, dtype)
    else:
      out[name] = data[begin:end].view(dtype).reshape(shape)
  return out


def torch_load_weights(path: PathLike) -> Any:
  """``torch.load(path, weights_only=True)`` with errors as CheckpointError.

  ``weights_only=True`` restricts unpickling to tensors, primitive containers
  and a small allow-list of torch types, so a file cannot run code on load; a
  file that needs anything else is refused rather than trusted.
  """
  try:
    import torch
  except ImportError as e:
    raise CheckpointError(
        f"{path}: reading PyTorch weights needs torch (pip install torch; the "
        "CPU build is enough)") from e
  import pickle
  try:
    return torch.load(str(path), map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise CheckpointError(
        f"{path}: refusing to load: the file needs to unpickle objects other "
        "than tensors and plain containers, which torch.load(weights_only=True)"
        f" does not allow (arbitrary pickles can run code): "
        f"{_unpickler_reason(e)}") from e
  except (RuntimeError, OSError, EOFError, ValueError) as e:
    raise CheckpointError(
        f"{path}: not a readable PyTorch weights file (truncated or corrupt?): "
        f"{first_line(e)}") from e


def _unpickler_reason(e: BaseException) -> str:
  """The informative line of torch's long weights_only error."""
  for line in str(e).splitlines():
    if "WeightsUnpickler error:" in line:
      reason = line.split("WeightsUnpickler error:", 1)[1].strip()
      return reason.split(". ")[0]
  return first_line(e)


def first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def torch_to_numpy(tree: Any, path: PathLike) -> dict[str, np.ndarray]:
  """A flat {name: torch.Tensor} map -> {name: np.ndarray} (floats kept)."""
  import torch
  if not isinstance(tree, Mapping):
    raise CheckpointError(
        f"{path}: expected a state dict (a map of tensors), found "
        f"{type(tree).__name__}")
  out = {}
  for name, value in tree.items():
    if not isinstance(name, str):
      raise CheckpointError(f"{path}: non-string key {name!r} in state dict")
    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      if value.dtype == torch.bfloat16:
        # numpy has no bfloat16; go through float32 (exact).
        value = value.to(torch.float32)
      out[name] = value.numpy()
    elif isinstance(value, (int, float)):
      out[name] = np.asarray(value)
    else:
      raise CheckpointError(
          f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
  return out


def read_json(path: PathLike) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(data, dict):
    raise CheckpointError(f"{path}: expected a JSON object")
  return data


# ---------------------------------------------------------------- tensors


class Tensors:
  """The named tensors of a checkpoint, checked as the loader consumes them.

  ``get`` checks presence and shape and returns float32; problems are
  collected rather than raised one at a time, so that ``finish`` can report
  every missing / mis-shaped / unused tensor in one error.

  Attributes:
    arrays: {name: array} as read (possibly memory-mapped, any float dtype).
    files: {name: file it came from}, for messages.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray],
               files: Mapping[str, str] | PathLike):
    self.arrays = dict(arrays)
    if isinstance(files, Mapping):
      self.files = {k: str(v) for k, v in files.items()}
      self._default_file = ", ".join(sorted(set(self.files.values())))
    else:
      self.files = {}
      self._default_file = str(files)
    self._used: set[str] = set()
    self._missing: list[str] = []
    self._mismatched: list[str] = []

  def file(self, key: str) -> str:
    return self.files.get(key, self._default_file)

  def __contains__(self, key: str) -> bool:
    return key in self.arrays

  def keys(self) -> list[str]:
    return list(self.arrays)

  def shape(self, key: str, why: str = "") -> tuple[int, ...]:
    """Shape of a tensor that must exist (used to infer the architecture)."""
    if key not in self.arrays:
      raise CheckpointError(
          f"{self._default_file}: missing tensor {key!r}"
          + (f" (needed to infer {why})" if why else ""))
    return tuple(self.arrays[key].shape)

  def get(self, key: str, shape: Sequence[int]) -> np.ndarray:
    """float32 copy of ``key``, which must have exactly ``shape``.

    A missing or mis-shaped tensor is recorded for ``finish`` and zeros of
    ``shape`` are returned so that conversion can go on and find the rest.
    """
    shape = tuple(int(d) for d in shape)
    if key not in self.arrays:
      self._missing.append(f"{key} (expected shape {list(shape)})")
      return np.zeros(shape, np.float32)
    self._used.add(key)
    array = self.arrays[key]
    if tuple(array.shape) != shape:
      self._mismatched.append(
          f"{key}: expected shape {list(shape)}, found {list(array.shape)} "
          f"(in {self.file(key)})")
      return np.zeros(shape, np.float32)
    if not is_float_dtype(array.dtype):
      self._mismatched.append(
          f"{key}: expected a floating-point tensor, found {array.dtype} "
          f"(in {self.file(key)})")
      return np.zeros(shape, np.float32)
    return np.array(array, dtype=np.float32)

  def mark_used(self, *keys: str) -> None:
    """Marks tensors consumed outside ``get`` (e.g. checked metadata)."""
    self._used.update(k for k in keys if k in self.arrays)

  def finish(self, harmless: Callable[[str], bool] = lambda k: False,
             what: str = "checkpoint") -> None:
    """Raises for missing/mis-shaped/unused tensors; warns for harmless ones.

    Args:
      harmless: predicate for unused tensors that are known to carry nothing
        the model needs (e.g. HF's ``position_ids`` buffers): warned about.
      what: description of the layout for the message.
    """
    unused = sorted(k for k in self.arrays if k not in self._used)
    ignored = [k for k in unused if harmless(k)]
    unknown = [k for k in unused if not harmless(k)]
    problems = []
    if self._missing:
      problems.append(f"missing {len(self._missing)} tensor(s): "
                      f"{listing(self._missing)}")
    if self._mismatched:
      problems.append(f"{len(self._mismatched)} tensor(s) with the wrong "
                      f"shape/dtype: {listing(self._mismatched)}")
    if unknown:
      problems.append(
          f"{len(unknown)} unexpected tensor(s) that this loader does not "
          f"know how to use: {listing(unknown)}")
    if problems:
      raise CheckpointError(
          f"{self._default_file}: cannot load as {what}: "
          + "; ".join(problems))
    if ignored:
      warnings.warn(
          f"{self._default_file}: ignoring {len(ignored)} tensor(s) that the "
          f"model does not need: {listing(ignored)}", CheckpointWarning,
          stacklevel=3)


# ------------------------------------------------------------ param trees


def ln(scale: np.ndarray, bias: np.ndarray) -> dict:
  return {"scale": scale, "bias": bias}


def dense(kernel: np.ndarray, bias: np.ndarray | None = None) -> dict:
  """A Dense param dict; ``kernel`` already [in, out]."""
  out = {"kernel": kernel}
  if bias is not None:
    out["bias"] = bias
  return out


def fused_qkv(q: dict, k: dict, v: dict) -> dict:
  """Three Dense dicts ([W, W] kernels) -> one [W, 3W] with columns q|k|v."""
  return {
      "kernel": np.concatenate([q["kernel"], k["kernel"], v["kernel"]], 1),
      "bias": np.concatenate([q["bias"], k["bias"], v["bias"]], 0),
  }


def expected_shapes(config: ModelConfig) -> dict[tuple[str, ...], tuple]:
  """{path: shape} of the param tree TwoTowers(config) initialises."""
  from jaxfsl.models.two_towers import TwoTowers
  s = config.vision.image_size
  tree = jax.eval_shape(
      TwoTowers(config).init, jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32),
      jax.ShapeDtypeStruct((1, config.text.context_length), jnp.int32))
  flat = flax.traverse_util.flatten_dict(tree["params"])
  return {k: tuple(v.shape) for k, v in flat.items()}


def finalize_params(params: dict, config: ModelConfig, path: PathLike
                    ) -> dict:
  """Checks a converted tree against the module and moves it to JAX.

  A disagreement here is a loader bug or an architecture this config cannot
  describe; either way the message lists the paths.

  Returns:
    The same tree with float32 jax arrays as leaves.
  """
  flat = flax.traverse_util.flatten_dict(params)
  want = expected_shapes(config)
  problems = []
  for k in sorted(set(want) - set(flat)):
    problems.append(f"missing {'/'.join(k)} {list(want[k])}")
  for k in sorted(set(flat) - set(want)):
    problems.append(f"unexpected {'/'.join(k)}")
  for k in sorted(set(want) & set(flat)):
    if tuple(np.shape(flat[k])) != want[k]:
      problems.append(f"{'/'.join(k)}: expected {list(want[k])}, found "
                      f"{list(np.shape(flat[k]))}")
  if problems:
    raise CheckpointError(
        f"{path}: converted parameters do not fit the model built from the "
        f"checkpoint's config: {listing(problems)}")
  flat = {k: jnp.asarray(np.asarray(v, np.float32)) for k, v in flat.items()}
  return flax.traverse_util.unflatten_dict(flat)


def make_config(path: PathLike, build: Callable[[], ModelConfig]
                ) -> ModelConfig:
  """Runs a ModelConfig constructor, reporting its ValueError as ours."""
  try:
    return build()
  except CheckpointError:
    raise
  except (ValueError, TypeError) as e:
    raise CheckpointError(
        f"{path}: the checkpoint describes an architecture jaxfsl cannot "
        f"build: {e}") from e


# ------------------------------------------------- tokenizer, preprocessing


def resolve_tokenizer(tokenizer: TokenizerArg, family: str,
                      context_length: int) -> Tokenizer | None:
  """A tokenizer from a callable, a path (file or folder), or None.

  Paths go to ``jaxfsl.tokenizers.from_pretrained`` as given: a folder (it
  picks the family's files) or one file (spiece.model, tokenizer.json).
  """
  if tokenizer is None or callable(tokenizer):
    return tokenizer
  path = Path(tokenizer)
  if not path.exists():
    raise FileNotFoundError(f"tokenizer path {str(path)!r} does not exist")
  # Imported here: tokenizers pulls in sentencepiece/tokenizers, which a user
  # feeding token ids never needs.
  from jaxfsl import tokenizers
  return tokenizers.from_pretrained(str(path), family, context_length)


def default_preprocessing(family: str, image_size: int) -> Preprocessing:
  """CLIP: OpenAI mean/std, bicubic; SigLIP: [-1, 1] scaling, bilinear."""
  if family == "siglip":
    return Preprocessing(image_size, SIGLIP_MEAN, SIGLIP_STD, "bilinear")
  return Preprocessing(image_size)


def is_torchscript_zip(names: Iterable[str]) -> bool:
  """TorchScript archives carry ``constants.pkl`` (and code/), torch.save's
  zip files do not (same test as torch.load's own)."""
  return any(n == "constants.pkl" or n.endswith("/constants.pkl")
             for n in names)
