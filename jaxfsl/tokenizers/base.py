"""What every jaxfsl tokenizer shares: the ``Tokenizer`` protocol, input
checks, fixed-length padding, a ``tokenizers``-backed base class, and the
byte-level tokenizer of random-init models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Tokenizer(Protocol):
  """``list[str] -> np.int32 [N, context_length]``, padded and truncated."""

  context_length: int
  vocab_size: int
  pad_id: int
  eos_id: int

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    ...


def check_texts(texts: Sequence[str]) -> list[str]:
  """``texts`` as a list of str; TypeError for one str or non-str items."""
  # A bare str is a Sequence[str] too; tokenizing its characters one per row
  # is never what the caller meant.
  if isinstance(texts, str):
    raise TypeError("tokenizers expect a list of strings, got one str")
  texts = list(texts)
  bad = [t for t in texts if not isinstance(t, str)]
  if bad:
    raise TypeError(f"expected str texts, got {len(bad)} other value(s), "
                    f"e.g. {type(bad[0]).__name__}: {bad[0]!r}")
  return texts


def check_side(side: str) -> str:
  if side not in ("left", "right"):
    raise ValueError(f"padding/truncation side {side!r}: left or right")
  return side


def pad_rows(rows: Sequence[Sequence[int]], length: int, pad_id: int,
             side: str) -> np.ndarray:
  """Ragged id lists (each <= length) -> int32 [N, length], padded on side."""
  out = np.full((len(rows), length), pad_id, np.int32)
  for i, ids in enumerate(rows):
    if len(ids) > length:
      raise AssertionError(f"row {i} has {len(ids)} > {length} ids")
    if side == "left":
      out[i, length - len(ids):] = ids
    else:
      out[i, :len(ids)] = ids
  return out


def token_id(backend: Any, token: str) -> int:
  """The id of ``token`` in a ``tokenizers.Tokenizer``; ValueError if none."""
  found = backend.token_to_id(token)
  if found is None:
    raise ValueError(f"special token {token!r} is not in the vocabulary")
  return int(found)


class BackendTokenizer:
  """A ``tokenizers.Tokenizer`` with fixed-length truncation and padding.

  Truncation is the backend's (``longest_first``), which reserves room for the
  post-processor's special tokens, so the closing token survives truncation
  exactly as in transformers' fast tokenizers. Padding is done here (to a
  fixed length, as the models were trained).
  """

  def __init__(self, backend: Any, context_length: int, pad_token: str,
               eos_token: str, padding_side: str = "right",
               truncation_side: str = "right"):
    self._backend = backend
    self.context_length = int(context_length)
    self.padding_side = check_side(padding_side)
    self.pad_id = token_id(backend, pad_token)
    self.eos_id = token_id(backend, eos_token)
    self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
    backend.no_padding()
    backend.enable_truncation(max_length=self.context_length, stride=0,
                              strategy="longest_first",
                              direction=check_side(truncation_side))

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Unpadded (but truncated) ids with the special tokens, one list a text."""
    encodings = self._backend.encode_batch(check_texts(texts),
                                           add_special_tokens=True)
    return [e.ids for e in encodings]

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """list[str] -> int32 [N, context_length]."""
    return pad_rows(self.encode(texts), self.context_length, self.pad_id,
                    self.padding_side)


class ByteTokenizer:
  """UTF-8 bytes as tokens, for random-init models that have no vocabulary.

  Layout of a row (int32, length ``context_length``)::

    [bos, 1 + byte_0, 1 + byte_1, ..., eos, 0, 0, ...]

  with bos = vocab_size - 2 and eos = vocab_size - 1 (the largest id, so
  OpenAI-style argmax pooling finds it). Text is lower-cased; rows longer than
  the context are truncated keeping the final eos.
  """

  def __init__(self, vocab_size: int, context_length: int):
    if vocab_size < 259:
      raise ValueError(
          f"ByteTokenizer needs vocab_size >= 259 (256 bytes + pad, bos, eos), "
          f"got {vocab_size}")
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2, got {context_length}")
    self.vocab_size = vocab_size
    self.context_length = context_length
    self.bos = vocab_size - 2
    self.eos = vocab_size - 1
    self.pad = 0

  @property
  def pad_id(self) -> int:
    return self.pad

  @property
  def eos_id(self) -> int:
    return self.eos

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """list[str] -> int32 [N, context_length]."""
    texts = check_texts(texts)
    out = np.full((len(texts), self.context_length), self.pad, np.int32)
    for row, text in enumerate(texts):
      ids = [1 + b for b in text.lower().encode("utf-8")]
      ids = [self.bos] + ids[: self.context_length - 2] + [self.eos]
      out[row, : len(ids)] = ids
    return out
