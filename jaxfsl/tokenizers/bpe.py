"""BPE tokenizers on the ``tokenizers`` library: CLIP's byte-level BPE and
SigLIP2's Gemma BPE, each the pipeline transformers (5.x) builds around a
checkpoint's vocabulary, so ids match its ``CLIPTokenizer`` /
``Siglip2Tokenizer`` exactly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from jaxfsl.tokenizers.base import BackendTokenizer, token_id

# SentencePiece's whitespace marker (Gemma's vocabulary uses it).
SPIECE_UNDERLINE = "\u2581"
# CLIP's pre-tokenizer (transformers' CLIPTokenizer): special tokens,
# contractions, letter runs, single digits, runs of other non-space symbols.
CLIP_SPLIT = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
              r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")

# Defaults per family, overridden by a checkpoint's tokenizer_config.json /
# special_tokens_map.json when present.
CLIP_DEFAULTS = {
    "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    "padding_side": "right", "truncation_side": "right",
}
GEMMA_DEFAULTS = {
    "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
    "pad_token": "<pad>", "mask_token": "<mask>",
    # HF's SigLIP2 conversion (convert_siglip2_to_hf.py) saves these, matching
    # big_vision's SigLIP2 text pipeline (no bos, sticky eos, right padding).
    "add_bos_token": False, "add_eos_token": True, "padding_side": "right",
    "truncation_side": "right",
}


def read_backend(tokenizer_json: str | None = None,
                 vocab_merges: tuple[str, str] | None = None,
                 unk_token: str = "<|endoftext|>") -> Any:
  """A ``tokenizers.Tokenizer`` from a tokenizer.json (``from_file``) or from
  CLIP's vocab.json + merges.txt (a BPE model with CLIP's ``</w>`` suffix).

  Raises:
    ValueError: the tokenizer.json's model is not BPE.
  """
  if tokenizer_json is not None:
    backend = Backend.from_file(tokenizer_json)
    if not isinstance(backend.model, BPE):
      raise ValueError(f"{tokenizer_json}: expected a BPE tokenizer.json, got "
                       f"model type {type(backend.model).__name__}")
    return backend
  vocab, merges = vocab_merges
  return Backend(BPE.from_file(
      vocab, merges, dropout=None, continuing_subword_prefix="",
      end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk_token))


def add_tokens(backend: Any, added_tokens: Sequence[dict],
               specials: Sequence[str]) -> None:
  """Registers added tokens (a tokenizer config's), then the named specials
  the backend does not have yet.

  Added tokens are matched in the raw text before the model runs (so
  ``"<|endoftext|>"`` typed in a prompt is the special id, as in transformers).
  """
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
  present = {t.content for t in backend.get_added_tokens_decoder().values()}
  missing = list(dict.fromkeys(t for t in specials if t not in present))
  backend.add_special_tokens(
      [AddedToken(t, special=True, normalized=False) for t in missing])


class ClipTokenizer(BackendTokenizer):
  """CLIP's byte-level BPE, as transformers' ``CLIPTokenizer`` (v5).

  Output rows: ``[<|startoftext|>, ..., <|endoftext|>, pad, ...]`` with at
  most ``context_length - 2`` text tokens: NFC, whitespace runs -> one space,
  lower-case, CLIP's split regex, byte-level BPE with ``</w>``. Like
  transformers, the normaliser, pre-tokeniser and post-processor are CLIP's
  whatever a tokenizer.json says. Like transformers' fast tokenizer there is
  no ftfy / HTML-unescape step (OpenAI's ``clip.tokenize`` has one; it only
  matters for mojibake or ``&amp;``-style text).
  """

  def __init__(self, backend: Any, context_length: int,
               special: dict[str, Any] | None = None,
               added_tokens: Sequence[dict] = ()):
    """Args: a BPE ``backend`` (``read_backend``), L (77 for CLIP), special
    token / side overrides (a checkpoint's tokenizer config), and that
    config's added-token dicts."""
    if context_length < 2:
      raise ValueError(
          f"CLIP context_length must be >= 2 (bos + eos), got {context_length}")
    s = {**CLIP_DEFAULTS, **(special or {})}
    backend.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed",
                             invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    add_tokens(backend, added_tokens,
               [s[k] for k in ("bos_token", "eos_token", "unk_token",
                               "pad_token")])
    bos, eos = s["bos_token"], s["eos_token"]
    backend.post_processor = processors.RobertaProcessing(
        (eos, token_id(backend, eos)), (bos, token_id(backend, bos)),
        trim_offsets=False, add_prefix_space=False)
    super().__init__(backend, context_length, s["pad_token"], eos,
                     s["padding_side"], s["truncation_side"])
    self.bos_id = token_id(backend, bos)


class GemmaTokenizer(BackendTokenizer):
  """SigLIP2's Gemma BPE, as transformers' ``Siglip2Tokenizer``.

  Rows (defaults): ``[text tokens..., <eos>, <pad>, ...]``: lower-cased (the
  only text clean-up: each space -> ``▁``), byte-fallback BPE, no ``<bos>``,
  ``<eos>`` kept last on truncation, right padding with ``<pad>`` (id 0).
  """

  def __init__(self, backend: Any, context_length: int,
               special: dict[str, Any] | None = None,
               added_tokens: Sequence[dict] = (),
               keep_post_processor: bool = False):
    """Args: a Gemma ``backend`` (``read_backend``), L, special-token / flag
    overrides (``add_bos_token`` / ``add_eos_token`` / sides), the config's
    added tokens, and ``keep_post_processor``: use the file's own
    post-processor (a checkpoint folder, as transformers does) instead of the
    template the add_bos / add_eos flags give."""
    if context_length < 3:
      raise ValueError(
          f"context_length must be >= 3 (bos, eos and one token), got "
          f"{context_length}")
    s = {**GEMMA_DEFAULTS, **(special or {})}
    # transformers' GemmaTokenizer pipeline, plus the Lowercase that
    # Siglip2Tokenizer prepends (SigLIP2 trained on lower-case text).
    backend.normalizer = normalizers.Sequence([
        normalizers.Lowercase(), normalizers.Replace(" ", SPIECE_UNDERLINE)])
    backend.pre_tokenizer = pre_tokenizers.Split(
        pattern=" ", behavior="merged_with_previous", invert=False)
    backend.decoder = decoders.Sequence([
        decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(),
        decoders.Fuse()])
    add_tokens(backend, added_tokens,
               [s[k] for k in ("bos_token", "eos_token", "unk_token",
                               "pad_token", "mask_token") if s.get(k)])
    if not keep_post_processor:
      # transformers' TokenizersBackend.update_post_processor template.
      pieces = [s[k] for k, flag in (("bos_token", "add_bos_token"),
                                     ("eos_token", "add_eos_token"))
                if s[flag]]
      single = " ".join(
          ([f"{s['bos_token']}:0"] if s["add_bos_token"] else []) + ["$A:0"]
          + ([f"{s['eos_token']}:0"] if s["add_eos_token"] else []))
      backend.post_processor = processors.TemplateProcessing(
          single=single,
          special_tokens=[(t, token_id(backend, t)) for t in pieces])
    super().__init__(backend, context_length, s["pad_token"], s["eos_token"],
                     s["padding_side"], s["truncation_side"])
