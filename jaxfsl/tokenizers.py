"""Tokenizers: the checkpoints' own (CLIP BPE, SigLIP SentencePiece, Gemma
``tokenizer.json``) and a byte-level one for random-init models.

Every tokenizer here is a callable ``list[str] -> np.int32 [N, context_length]``
with ``context_length``, ``vocab_size``, ``pad_id`` and ``eos_id`` attributes
(the ``Tokenizer`` protocol). ``from_pretrained`` finds a checkpoint's own files
and reproduces, id for id, what Hugging Face transformers' reference tokenizer
returns when called the way the models expect
(``tok(texts, padding="max_length", max_length=L, truncation=True)``):

* CLIP (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``), as
  ``CLIPTokenizer``/``CLIPTokenizerFast``: NFC, runs of whitespace -> one
  space, lower-case; CLIP's word-splitting regex and byte-level BPE with the
  ``</w>`` end-of-word suffix; ``<|startoftext|> ... <|endoftext|>``;
  truncation keeps the end-of-text token last; right padding with the pad token
  (``<|endoftext|>`` unless the checkpoint's config says otherwise). Like
  transformers' fast tokenizer there is no ftfy / HTML-unescape step (OpenAI's
  ``clip.tokenize`` has one; it only matters for mojibake or ``&amp;``-style
  text).
* SigLIP (``spiece.model``), as ``SiglipTokenizer``: lower-case, ASCII
  punctuation removed, whitespace runs collapsed and stripped (big_vision's
  ``canonicalize_text``), SentencePiece with HF's "``<unk>`` prefix" trick, one
  ``</s>`` appended (not when already last), truncation to L - 1 before it,
  right padding with ``</s>`` (SigLIP's pad token is its eos).
* SigLIP2 (Gemma ``tokenizer.json``), as transformers' ``Siglip2Tokenizer``,
  which ``AutoTokenizer`` returns for a SigLIP2 checkpoint: lower-case (the
  only text clean-up: whitespace is kept, each space -> ``▁``), byte-fallback
  BPE, then the ``tokenizer.json``'s own post-processor. transformers v5
  ignores ``add_bos_token``/``add_eos_token`` from tokenizer_config.json when
  a tokenizer.json exists, and the file HF's SigLIP2 conversion saves
  (``add_bos_token=False, add_eos_token=True, padding_side="right"``) has the
  template ``$A <eos>``: no ``<bos>``, ``<eos>`` appended and kept last on
  truncation, right padding with ``<pad>`` (id 0; padding side and special
  tokens from tokenizer_config.json). A bare ``tokenizer.json`` path (no
  checkpoint config, e.g. Gemma's own whose template adds ``<bos>``) gets
  those SigLIP2 settings instead of the file's template. Note: big_vision pads
  SigLIP2 text with 1 (``<eos>``); like HF, we pad with the pad token.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

# SentencePiece's whitespace marker.
_SPIECE_UNDERLINE = "\u2581"
# CLIP's pre-tokenizer (transformers' CLIPTokenizer): special tokens,
# contractions, letter runs, single digits, runs of other non-space symbols.
_CLIP_SPLIT = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
               r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)

# Defaults per family, overridden by a checkpoint's tokenizer_config.json /
# special_tokens_map.json when present.
_CLIP_DEFAULTS = {
    "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
}
_SIGLIP_DEFAULTS = {
    "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
    "do_lower_case": True,
}
_GEMMA_DEFAULTS = {
    "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
    "pad_token": "<pad>", "mask_token": "<mask>",
    # HF's SigLIP2 conversion (convert_siglip2_to_hf.py) saves these, matching
    # big_vision's SigLIP2 text pipeline (no bos, sticky eos, right padding).
    "add_bos_token": False, "add_eos_token": True, "padding_side": "right",
    "truncation_side": "right",
}


@runtime_checkable
class Tokenizer(Protocol):
  """``list[str] -> np.int32 [N, context_length]``, padded and truncated."""

  context_length: int
  vocab_size: int
  pad_id: int
  eos_id: int

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    ...


def _check_texts(texts: Sequence[str]) -> list[str]:
  # A bare str is a Sequence[str] too; tokenizing its characters one per row
  # is never what the caller meant.
  if isinstance(texts, str):
    raise TypeError("tokenizers expect a list of strings, got one str")
  texts = list(texts)
  for t in texts:
    if not isinstance(t, str):
      raise TypeError(f"expected str texts, got {type(t).__name__}: {t!r}")
  return texts


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
    texts = _check_texts(texts)
    out = np.full((len(texts), self.context_length), self.pad, np.int32)
    for row, text in enumerate(texts):
      ids = [1 + b for b in text.lower().encode("utf-8")]
      ids = [self.bos] + ids[: self.context_length - 2] + [self.eos]
      out[row, : len(ids)] = ids
    return out


def _pad_rows(rows: Sequence[Sequence[int]], length: int, pad_id: int,
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


class _BackendTokenizer:
  """A ``tokenizers.Tokenizer`` with fixed-length truncation and padding.

  Truncation is the backend's (``longest_first``), which reserves room for the
  post-processor's special tokens, so the closing token survives truncation
  exactly as in transformers' fast tokenizers.
  """

  def __init__(self, backend: Any, context_length: int, pad_token: str,
               eos_token: str, padding_side: str = "right",
               truncation_side: str = "right"):
    for side in (padding_side, truncation_side):
      if side not in ("left", "right"):
        raise ValueError(f"padding/truncation side {side!r}: left or right")
    self._backend = backend
    self.context_length = int(context_length)
    self.padding_side = padding_side
    self.pad_id = _token_id(backend, pad_token)
    self.eos_id = _token_id(backend, eos_token)
    self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
    backend.no_padding()
    backend.enable_truncation(max_length=self.context_length, stride=0,
                              strategy="longest_first",
                              direction=truncation_side)

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Unpadded (but truncated) ids with the special tokens, one list a text."""
    encodings = self._backend.encode_batch(_check_texts(texts),
                                           add_special_tokens=True)
    return [e.ids for e in encodings]

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """list[str] -> int32 [N, context_length]."""
    return _pad_rows(self.encode(texts), self.context_length, self.pad_id,
                     self.padding_side)


def _token_id(backend: Any, token: str) -> int:
  token_id = backend.token_to_id(token)
  if token_id is None:
    raise ValueError(f"special token {token!r} is not in the vocabulary")
  return int(token_id)


class ClipTokenizer(_BackendTokenizer):
  """CLIP's byte-level BPE, as transformers' ``CLIPTokenizer`` (v5).

  Output rows: ``[<|startoftext|>, ..., <|endoftext|>, pad, ...]`` with at
  most ``context_length - 2`` text tokens. Like transformers, the pipeline is
  rebuilt around the checkpoint's vocabulary and merges (a ``tokenizer.json``'s
  own normalizer / pre-tokenizer are not used).
  """

  def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]],
               context_length: int, special: dict[str, Any] | None = None,
               added_tokens: Sequence[dict] = ()):
    """Builds the tokenizer.

    Args:
      vocab, merges: CLIP's BPE (``vocab.json`` / ``merges.txt``, or the model
        section of a ``tokenizer.json``).
      context_length: L (77 for CLIP).
      special: overrides of the special tokens and ``padding_side`` /
        ``truncation_side`` (a checkpoint's tokenizer config).
      added_tokens: ``tokenizer.json``-style added-token dicts.
    """
    if context_length < 2:
      raise ValueError(
          f"CLIP context_length must be >= 2 (bos + eos), got {context_length}")
    from tokenizers import (
      Regex,
      decoders,
      normalizers,
      pre_tokenizers,
      processors,
    )
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import BPE

    s = {**_CLIP_DEFAULTS, **(special or {})}
    backend = Backend(BPE(
        vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
        end_of_word_suffix="</w>", fuse_unk=False, unk_token=s["unk_token"]))
    backend.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed",
                             invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    _add_tokens(backend, added_tokens,
                [s[k] for k in ("bos_token", "eos_token", "unk_token",
                                "pad_token")])
    bos, eos = s["bos_token"], s["eos_token"]
    backend.post_processor = processors.RobertaProcessing(
        (eos, _token_id(backend, eos)), (bos, _token_id(backend, bos)),
        trim_offsets=False, add_prefix_space=False)
    super().__init__(backend, context_length, s["pad_token"], eos,
                     s.get("padding_side", "right"),
                     s.get("truncation_side", "right"))
    self.bos_id = _token_id(backend, bos)


class GemmaTokenizer(_BackendTokenizer):
  """SigLIP2's Gemma BPE, as transformers' ``Siglip2Tokenizer``.

  Rows (defaults): ``[text tokens..., <eos>, <pad>, ...]``: lower-cased, no
  ``<bos>``, ``<eos>`` kept last on truncation, right padding with ``<pad>``.
  """

  def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]],
               context_length: int, special: dict[str, Any] | None = None,
               added_tokens: Sequence[dict] = (),
               post_processor: Any | None = None):
    """Builds the tokenizer.

    Args:
      vocab, merges: the BPE model of a Gemma ``tokenizer.json``.
      context_length: L.
      special: overrides of the special tokens and of ``add_bos_token`` /
        ``add_eos_token`` / ``padding_side`` / ``truncation_side``.
      added_tokens: ``tokenizer.json``-style added-token dicts.
      post_processor: a ``tokenizers`` post-processor to use as is (a
        checkpoint's own, as transformers does); None builds the template from
        the add_bos/add_eos flags.
    """
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    s = {**_GEMMA_DEFAULTS, **(special or {})}
    if context_length < 3:
      raise ValueError(
          f"context_length must be >= 3 (bos, eos and one token), got "
          f"{context_length}")
    # The same pipeline transformers' GemmaTokenizer builds, plus the
    # Lowercase that Siglip2Tokenizer prepends (SigLIP2 trained on lower-case
    # text).
    backend = Backend(BPE(vocab=vocab, merges=merges, fuse_unk=True,
                          unk_token=s["unk_token"], dropout=None,
                          byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Split(
        pattern=" ", behavior="merged_with_previous", invert=False)
    backend.decoder = decoders.Sequence([
        decoders.Replace(_SPIECE_UNDERLINE, " "), decoders.ByteFallback(),
        decoders.Fuse()])
    backend.normalizer = normalizers.Sequence([
        normalizers.Lowercase(), normalizers.Replace(" ", _SPIECE_UNDERLINE)])
    _add_tokens(backend, added_tokens,
                [s[k] for k in ("bos_token", "eos_token", "unk_token",
                                "pad_token", "mask_token") if s.get(k)])
    bos, eos = s["bos_token"], s["eos_token"]
    if post_processor is None:
      # transformers' TokenizersBackend.update_post_processor template.
      single = "$A:0"
      pieces = []
      if s["add_bos_token"]:
        single = f"{bos}:0 {single}"
        pieces.append((bos, _token_id(backend, bos)))
      if s["add_eos_token"]:
        single = f"{single} {eos}:0"
        pieces.append((eos, _token_id(backend, eos)))
      post_processor = processors.TemplateProcessing(
          single=single, special_tokens=pieces)
    backend.post_processor = post_processor
    super().__init__(backend, context_length, s["pad_token"], eos,
                     s["padding_side"], s["truncation_side"])


def _add_tokens(backend: Any, added_tokens: Sequence[dict],
                specials: Sequence[str]) -> None:
  """Registers a tokenizer.json's added tokens, then the named specials.

  Added tokens are matched in the raw text before the model runs (so
  ``"<|endoftext|>"`` typed in a prompt is the special id, as in transformers).
  """
  from tokenizers import AddedToken

  for entry in added_tokens:
    token = AddedToken(
        entry["content"], single_word=entry.get("single_word", False),
        lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
        normalized=entry.get("normalized", not entry.get("special", False)),
        special=entry.get("special", False))
    if token.special:
      backend.add_special_tokens([token])
    else:
      backend.add_tokens([token])
  present = {e["content"] for e in added_tokens}
  missing = []
  for token in specials:
    if token not in present and token not in missing:
      missing.append(token)
  backend.add_special_tokens(
      [AddedToken(t, special=True, normalized=False) for t in missing])


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
    import sentencepiece as spm

    if context_length < 1:
      raise ValueError(f"context_length must be >= 1, got {context_length}")
    s = {**_SIGLIP_DEFAULTS, **(special or {})}
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
    self.padding_side = s.get("padding_side", "right")
    self.truncation_side = s.get("truncation_side", "right")
    for side in (self.padding_side, self.truncation_side):
      if side not in ("left", "right"):
        raise ValueError(f"padding/truncation side {side!r}: left or right")
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
    text = _SPIECE_UNDERLINE + text.replace(_SPIECE_UNDERLINE, " ")
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
    if (len(pieces) > 1 and pieces[0] == _SPIECE_UNDERLINE
        and pieces[1] in self._specials):
      pieces = pieces[1:]
    return pieces

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Unpadded ids with the closing eos, truncated to context_length."""
    rows = []
    for text in _check_texts(texts):
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
    return _pad_rows(self.encode(texts), self.context_length, self.pad_id,
                     self.padding_side)


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  return data if isinstance(data, dict) else {}


_CONFIG_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token",
                "mask_token", "do_lower_case", "add_bos_token",
                "add_eos_token", "padding_side", "truncation_side")


def _special_config(folder: str | None) -> dict[str, Any]:
  """Token settings from special_tokens_map.json then tokenizer_config.json."""
  if folder is None:
    return {}
  out: dict[str, Any] = {}
  for name in ("special_tokens_map.json", "tokenizer_config.json"):
    for key, value in _read_json(os.path.join(folder, name)).items():
      if key not in _CONFIG_KEYS or value is None:
        continue
      if isinstance(value, dict):  # serialised AddedToken
        value = value.get("content")
        if value is None:
          continue
      out[key] = value
  return out


def _bpe_from_json(path: str) -> tuple[dict[str, int], list[tuple[str, str]],
                                       list[dict], Any | None]:
  """vocab, merges, added tokens and post-processor of a BPE tokenizer.json."""
  from tokenizers import Tokenizer as Backend

  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  model = data.get("model") or {}
  if model.get("type", "BPE") != "BPE" or "merges" not in model:
    raise ValueError(
        f"{path}: expected a BPE tokenizer.json, got model type "
        f"{model.get('type')!r}")
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
            for m in model["merges"]]
  post_processor = None
  if data.get("post_processor") is not None:
    # Deserialised through an otherwise empty tokenizer (as transformers
    # does), since the post-processor classes have no JSON constructor.
    minimal = {**data, "added_tokens": [],
               "model": {**model, "vocab": {}, "merges": []}}
    post_processor = Backend.from_str(json.dumps(minimal)).post_processor
  vocab = model["vocab"]
  if isinstance(vocab, list):  # [[token, score], ...] in some exports
    vocab = {t[0] if isinstance(t, list) else t: i for i, t in enumerate(vocab)}
  return (dict(vocab), merges, list(data.get("added_tokens") or []),
          post_processor)


_SEARCHED = {
    "clip": ("tokenizer.json", "vocab.json + merges.txt"),
    "siglip": ("spiece.model", "tokenizer.json"),
    "siglip2": ("tokenizer.json",),
}


def from_pretrained(folder: str, family: str, context_length: int
                    ) -> Tokenizer:
  """The checkpoint's own tokenizer, padded/truncated to ``context_length``.

  Args:
    folder: a checkpoint folder (Hugging Face layout) or a tokenizer file: a
      SentencePiece model (``spiece.model``, SigLIP) or a ``tokenizer.json``
      (CLIP or SigLIP2's Gemma, by ``family``).
    family: "clip", "siglip" or "siglip2". For a folder, "siglip" finds
      ``spiece.model`` (SigLIP) or else a Gemma ``tokenizer.json`` (SigLIP2).
      For a ``tokenizer.json`` path, "siglip" means SigLIP2 (the only SigLIP
      family shipping one).
    context_length: L, the model's text length (77 CLIP, 64 SigLIP).

  Returns:
    A callable ``list[str] -> np.int32 [N, L]`` with ``context_length``,
    ``vocab_size``, ``pad_id`` and ``eos_id``, equal to transformers' reference
    tokenizer called with ``padding="max_length", max_length=L,
    truncation=True`` (see the module docstring for the conventions).
    ``tokenizer_config.json`` / ``special_tokens_map.json`` in the folder
    override the family's special tokens and flags.

  Raises:
    ValueError: unknown family, or no tokenizer file found (the message names
      the folder and the files looked for).
  """
  family = family.lower()
  if family not in _SEARCHED:
    raise ValueError(
        f"tokenizer family {family!r}: expected clip, siglip or siglip2")
  if context_length < 1:
    raise ValueError(f"context_length must be >= 1, got {context_length}")
  path = os.fspath(folder)

  if os.path.isfile(path):
    directory = None
    name = os.path.basename(path)
    if name.endswith(".json"):
      kind = "clip" if family == "clip" else "gemma"
      json_file = path
    elif name.endswith(".model"):
      if family != "siglip":
        raise ValueError(
            f"{path}: a SentencePiece model is SigLIP's tokenizer; for family "
            f"{family!r} pass a tokenizer.json")
      kind, model_file = "spiece", path
    else:
      raise ValueError(
          f"{path}: expected a tokenizer file (spiece.model or tokenizer.json)")
  elif os.path.isdir(path):
    directory = path

    def found(*names):
      return all(os.path.isfile(os.path.join(path, n)) for n in names)

    kind = None
    if family == "clip":
      if found("tokenizer.json"):
        kind, json_file = "clip", os.path.join(path, "tokenizer.json")
      elif found("vocab.json", "merges.txt"):
        kind = "clip_files"
    else:
      if family == "siglip" and found("spiece.model"):
        kind, model_file = "spiece", os.path.join(path, "spiece.model")
      elif found("tokenizer.json"):
        kind, json_file = "gemma", os.path.join(path, "tokenizer.json")
    if kind is None:
      raise ValueError(
          f"no {family} tokenizer in {path}: looked for "
          f"{' or '.join(_SEARCHED[family])}")
  else:
    raise ValueError(f"tokenizer path {path} does not exist")

  special = _special_config(directory)
  if kind == "spiece":
    return SiglipTokenizer(model_file, context_length, special)
  # transformers takes added tokens (and their strip / normalise flags) from
  # tokenizer_config.json when it lists them, else from tokenizer.json.
  config = (_read_json(os.path.join(directory, "tokenizer_config.json"))
            if directory else {})
  config_added = list((config.get("added_tokens_decoder") or {}).values())
  if kind == "clip_files":
    from tokenizers.models import BPE

    vocab, merges = BPE.read_file(os.path.join(path, "vocab.json"),
                                  os.path.join(path, "merges.txt"))
    return ClipTokenizer(vocab, merges, context_length, special, config_added)
  vocab, merges, added, post_processor = _bpe_from_json(json_file)
  added = config_added or added
  if kind == "clip":
    return ClipTokenizer(vocab, merges, context_length, special, added)
  if directory is None:
    # A bare tokenizer.json (e.g. Gemma's own, whose template adds <bos>):
    # SigLIP2's conventions, as HF's SigLIP2 conversion sets them.
    return GemmaTokenizer(vocab, merges, context_length, special, added)
  # A checkpoint folder: transformers (v5) ignores tokenizer_config's
  # add_bos_token / add_eos_token when a tokenizer.json exists and keeps the
  # file's post-processor (SigLIP2's: "$A <eos>"), or none at all.
  special = {k: v for k, v in special.items()
             if k not in ("add_bos_token", "add_eos_token")}
  if post_processor is None:
    special.update(add_bos_token=False, add_eos_token=False)
  return GemmaTokenizer(vocab, merges, context_length, special, added,
                        post_processor)
