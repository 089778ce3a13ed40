"""The named tensors of a checkpoint (``Tensors``) and the one tail every
loader ends in (``finalize``: check the converted tree, build the ``Model``).

A layout module (hf.py, big_vision.py, openai.py) maps a checkpoint's names
onto the param tree documented in ``jaxfsl.models.config`` with a ``Tensors``
object, which checks every shape and remembers what was used, then hands the
tree to ``finalize``, which checks it against the Flax module's own abstract
init and attaches the family's preprocessing and tokenizer.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxfsl.checkpoints.errors import (
    CheckpointError,
    CheckpointWarning,
    listing,
)
from jaxfsl.models import families
from jaxfsl.models.config import ModelConfig
from jaxfsl.models.model import Model
from jaxfsl.paths import user_path
from jaxfsl.preprocess import Preprocessing

PathLike = str | os.PathLike
Tokenizer = Callable[[Sequence[str]], np.ndarray]
TokenizerArg = PathLike | Tokenizer | None

_ML_FLOATS = frozenset(np.dtype(t) for t in (
    ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2))


def is_float_dtype(dtype: np.dtype) -> bool:
  """numpy floats plus ml_dtypes' bfloat16/float8 (not np.floating)."""
  dtype = np.dtype(dtype)
  return np.issubdtype(dtype, np.floating) or dtype in _ML_FLOATS


class Tensors:
  """The named tensors of a checkpoint, checked as the loader consumes them.

  ``get`` checks presence and shape and returns float32; problems are
  collected rather than raised one at a time, so that ``finish`` can report
  every missing / mis-shaped / unused tensor in one error.

  Attributes:
    arrays: {name: array} as read (any float dtype).
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

  def scalar(self, key: str) -> np.ndarray:
    """A float32 [] scalar stored as [] or [1] (CLIP vs. SigLIP style)."""
    shape = self.shape(key) if key in self else ()
    return self.get(key, shape if shape in ((), (1,)) else ()).reshape(())

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


def torch_linear(t: Tensors, prefix: str, n_in: int, n_out: int,
                 bias: bool = True) -> dict:
  """torch ``Linear`` ``{prefix}.weight`` [out, in] (+ ``.bias``) -> Dense."""
  kernel = t.get(f"{prefix}.weight", (n_out, n_in)).T
  return dense(kernel, t.get(f"{prefix}.bias", (n_out,)) if bias else None)


def torch_layer_norm(t: Tensors, prefix: str, width: int) -> dict:
  """torch ``LayerNorm`` ``{prefix}.weight`` / ``.bias`` [W] -> LayerNorm."""
  return ln(t.get(f"{prefix}.weight", (width,)),
            t.get(f"{prefix}.bias", (width,)))


def count_blocks(t: Tensors, prefix: str, sep: str, path: PathLike) -> int:
  """Depth of blocks named ``{prefix}{i}{sep}...``, which must be 0..depth-1.

  Raises:
    CheckpointError: no such block, or a gap (the first missing one named).
  """
  pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(sep))
  found = {int(m.group(1)) for k in t.keys() if (m := pattern.match(k))}
  if not found:
    raise CheckpointError(
        f"{path}: no transformer blocks {prefix}0{sep}... in the checkpoint")
  depth = max(found) + 1
  missing = sorted(set(range(depth)) - found)
  if missing:
    raise CheckpointError(
        f"{path}: blocks {prefix}N are not contiguous: missing "
        f"{prefix}{missing[0]} (of 0..{depth - 1})")
  return depth


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


def check_params(params: dict, config: ModelConfig, path: PathLike) -> dict:
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


def make_config(path: PathLike, family: str, vision: Mapping[str, Any],
                text: Mapping[str, Any], **top: Any) -> ModelConfig:
  """``families.get(family).config(...)``, its errors as CheckpointError."""
  try:
    return families.get(family).config(vision, text, **top)
  except (ValueError, TypeError) as e:
    raise CheckpointError(
        f"{path}: the checkpoint describes an architecture jaxfsl cannot "
        f"build: {e}") from e


def resolve_tokenizer(tokenizer: TokenizerArg, family: str,
                      context_length: int) -> Tokenizer | None:
  """A tokenizer from a callable, a path (file or folder), or None.

  Paths (``~`` expanded) go to ``jaxfsl.tokenizers.from_pretrained`` with the
  family's tokenizer kind: a folder (it picks the family's files) or one file
  (spiece.model, tokenizer.json).

  Raises:
    FileNotFoundError: the path does not exist.
  """
  if tokenizer is None or callable(tokenizer):
    return tokenizer
  path = user_path(tokenizer)
  if not path.exists():
    raise FileNotFoundError(f"tokenizer path {str(path)!r} does not exist")
  # Imported here: tokenizers pulls in sentencepiece/tokenizers, which a user
  # feeding token ids never needs.
  from jaxfsl import tokenizers
  return tokenizers.from_pretrained(str(path), families.get(family).tokenizer,
                                    context_length)


def finalize(config: ModelConfig, params: dict, path: PathLike, *,
             tokenizer: TokenizerArg = None, dtype: Any = jnp.float32,
             preprocessing: Preprocessing | None = None) -> Model:
  """The ``Model`` of a converted checkpoint: the tail of every loader.

  Args:
    config: the architecture read from the checkpoint.
    params: the converted tree (numpy leaves), checked by ``check_params``.
    path: the checkpoint (for messages and ``Model.name``).
    tokenizer: see ``resolve_tokenizer``; None: the family's
      ``default_tokenizer`` if it has one.
    dtype: compute dtype; parameters stay float32.
    preprocessing: the checkpoint's own, else the family's default.

  Raises:
    CheckpointError: the tree does not fit the module built from ``config``.
    FileNotFoundError: a tokenizer path that does not exist.
  """
  family = families.get(config.family)
  params = check_params(params, config, path)
  if tokenizer is None and family.default_tokenizer is not None:
    tokenizer = family.default_tokenizer(config.text)
  return Model(
      config=config, params=params,
      tokenizer=resolve_tokenizer(tokenizer, family.name,
                                  config.text.context_length),
      preprocessing=(preprocessing if preprocessing is not None
                     else family.preprocessing(config.vision.image_size)),
      dtype=dtype, name=str(Path(path)))
