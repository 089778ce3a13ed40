"""SigLIP's SentencePiece tokenizer (``spiece.model``), as transformers'
``SiglipTokenizer``.

Why not the ``tokenizers`` library: transformers (5.24, measured) has no
``tokenizers`` pipeline for SigLIP either: ``SiglipTokenizerFast`` is the same
Python class over ``sentencepiece`` (``SentencePieceBackend``), and its text
clean-up (big_vision's punctuation removal) and "``<unk>`` prefix" trick are
Python code there too. So this wraps ``sentencepiece`` and re-states those
few steps, which the exact-parity tests pin.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

from jaxfsl.tokenizers.base import check_side, check_texts, pad_rows

SPIECE_UNDERLINE = "\u2581"
_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
DEFAULTS = {
    "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
    "do_lower_case": True, "padding_side": "right", "truncation_side": "right",
}


class SiglipTokenizer:
  """SigLIP's SentencePiece tokenizer, as transformers' ``SiglipTokenizer``.

  Rows: ``[text tokens..., </s>, </s>, ...]`` (eos and pad are both ``</s>``)
  with at most ``context_length - 1`` text tokens. Text goes through
  big_vision's ``canonicalize_text`` (lower-case, ``string.punctuation``
  removed, whitespace runs -> one space, stripped) and is encoded with the same
  calls transformers makes, so ids match it exactly, quirks included (the
  leading ``▁`` marker, special tokens typed in the text).
  """

  def __init__(self, model_file: str, context_length: int,
               special: dict[str, Any] | None = None):
    if context_length < 1:
      raise ValueError(f"context_length must be >= 1, got {context_length}")
    s = {**DEFAULTS, **(special or {})}
    self._sp = spm.SentencePieceProcessor()
    self._sp.Load(model_file)
    self.context_length = int(context_length)
    self.do_lower_case = bool(s["do_lower_case"])
    self.vocab_size = self._sp.get_piece_size()
    self._unk = s["unk_token"]
    self._specials = {}
    for key in ("eos_token", "unk_token", "pad_token"):
      token = s[key]
      token_id = self._sp.piece_to_id(token)
      if self._sp.id_to_piece(token_id) != token:
        raise ValueError(
            f"{key} {token!r} is not a piece of the SentencePiece model "
            f"{model_file}")
      self._specials[token] = token_id
    self.eos_id = self._specials[s["eos_token"]]
    self.pad_id = self._specials[s["pad_token"]]
    self.padding_side = check_side(s["padding_side"])
    self.truncation_side = check_side(s["truncation_side"])
    # transformers splits the text on its special tokens (longest first)
    # before SentencePiece sees it.
    alternatives = sorted(self._specials, key=len, reverse=True)
    self._special_re = re.compile(
        "(" + "|".join(re.escape(t) for t in alternatives) + ")")
    # The unk token is encoded as a prefix and its pieces dropped (below).
    self._unk_length = len(self._sp.encode(self._unk))

  def canonicalize(self, text: str) -> str:
    """big_vision's canonicalize_text (transformers' copy)."""
    if self.do_lower_case:
      text = text.lower()
    text = text.translate(_PUNCTUATION_TABLE)
    return re.sub(r"\s+", " ", text).strip()

  def _encode_chunk(self, text: str) -> list[str]:
    # transformers encodes "<unk>" + text and drops the unk's pieces, so that
    # the chunk gets no dummy-prefix "▁" of its own beyond what it carries.
    text = self.canonicalize(text)
    pieces = self._sp.encode(self._unk + text, out_type=str)
    if len(pieces) >= self._unk_length:
      return pieces[self._unk_length:]
    return pieces

  def pieces(self, text: str) -> list[str]:
    """One text -> its pieces (no eos), as ``SiglipTokenizer.tokenize``."""
    text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
    chunks = self._special_re.split(text)
    # Special tokens are AddedToken(lstrip=True, rstrip=True): they eat the
    # whitespace around them.
    for i, chunk in enumerate(chunks):
      if chunk in self._specials:
        if i + 1 < len(chunks) and chunks[i + 1]:
          chunks[i + 1] = chunks[i + 1].lstrip()
        if i > 0 and chunks[i - 1]:
          chunks[i - 1] = chunks[i - 1].rstrip()
    pieces: list[str] = []
    for i, chunk in enumerate(chunks):
      if not chunk:
        continue
      if i % 2 == 1:  # re.split puts the captured separators at odd indices
        pieces.append(chunk)
      else:
        pieces.extend(self._encode_chunk(chunk))
    if (len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE
        and pieces[1] in self._specials):
      pieces = pieces[1:]
    return pieces

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Unpadded ids with the closing eos, truncated to context_length."""
    rows = []
    for text in check_texts(texts):
      ids = [self._specials[p] if p in self._specials
             else self._sp.piece_to_id(p) for p in self.pieces(text)]
      # Room for the one special token, then eos unless already last.
      keep = self.context_length - 1
      if len(ids) > keep:
        ids = (ids[:keep] if self.truncation_side == "right"
               else ids[len(ids) - keep:])
      if not ids or ids[-1] != self.eos_id:
        ids.append(self.eos_id)
      rows.append(ids)
    return rows

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """list[str] -> int32 [N, context_length]."""
    return pad_rows(self.encode(texts), self.context_length, self.pad_id,
                    self.padding_side)
