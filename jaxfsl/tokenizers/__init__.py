"""Tokenizers: the checkpoints' own (CLIP BPE, SigLIP SentencePiece, SigLIP2's
Gemma ``tokenizer.json``) as thin wrappers over ``tokenizers`` /
``sentencepiece``, and a byte-level one for random-init models.

Every tokenizer is a callable ``list[str] -> np.int32 [N, context_length]``
with ``context_length``, ``vocab_size``, ``pad_id`` and ``eos_id`` (the
``Tokenizer`` protocol). ``from_pretrained`` finds a checkpoint's own files
and reproduces, id for id, what transformers' reference tokenizer returns
when called as the models expect (``tok(texts, padding="max_length",
max_length=L, truncation=True)``):

* CLIP (``bpe.ClipTokenizer``): ``[<|startoftext|> ... <|endoftext|>]``,
  truncation keeps ``<|endoftext|>`` last, right padding with the pad token
  (``<|endoftext|>`` unless the checkpoint's config says otherwise).
* SigLIP (``spiece.SiglipTokenizer``): big_vision's ``canonicalize_text``,
  one ``</s>`` appended, right padding with ``</s>``.
* SigLIP2 (``bpe.GemmaTokenizer``, as ``Siglip2Tokenizer``, which
  ``AutoTokenizer`` returns for a SigLIP2 checkpoint): lower-case, the
  tokenizer.json's own post-processor (SigLIP2's ``$A <eos>``: no ``<bos>``),
  right padding with ``<pad>`` (id 0). transformers v5 ignores
  ``add_bos_token``/``add_eos_token`` from tokenizer_config.json when a
  tokenizer.json exists; a bare ``tokenizer.json`` path (no checkpoint
  config, e.g. Gemma's own whose template adds ``<bos>``) gets SigLIP2's
  settings instead of the file's template. Note: big_vision pads SigLIP2 text
  with 1 (``<eos>``); like HF, we pad with the pad token.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jaxfsl.paths import user_path
from jaxfsl.tokenizers.base import ByteTokenizer, Tokenizer

__all__ = ["ByteTokenizer", "ClipTokenizer", "GemmaTokenizer",
           "SiglipTokenizer", "Tokenizer", "from_pretrained"]

_SEARCHED = {
    "clip": ("tokenizer.json", "vocab.json + merges.txt"),
    "siglip": ("spiece.model", "tokenizer.json"),
    "siglip2": ("tokenizer.json",),
    "pe_core": ("bpe_simple_vocab_16e6.txt.gz",),
}
_CONFIG_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token",
                "mask_token", "do_lower_case", "add_bos_token",
                "add_eos_token", "padding_side", "truncation_side")


def __getattr__(name: str) -> Any:
  # The library-backed classes import tokenizers / sentencepiece on first use.
  if name in ("ClipTokenizer", "GemmaTokenizer", "CLIP_SPLIT"):
    from jaxfsl.tokenizers import bpe
    return getattr(bpe, name)
  if name == "SiglipTokenizer":
    from jaxfsl.tokenizers.spiece import SiglipTokenizer
    return SiglipTokenizer
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  return data if isinstance(data, dict) else {}


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


def _find(path: str, family: str) -> tuple[str, str | None, str | None]:
  """(kind, file, folder): kind "spiece", "clip", "clip_files" or "gemma"."""
  def found(*names):
    return all(os.path.isfile(os.path.join(path, n)) for n in names)

  if os.path.isfile(path):
    name = os.path.basename(path)
    if name.endswith(".json"):
      return ("clip" if family == "clip" else "gemma"), path, None
    if name.endswith(".model"):
      if family != "siglip":
        raise ValueError(
            f"{path}: a SentencePiece model is SigLIP's tokenizer; for family "
            f"{family!r} pass a tokenizer.json")
      return "spiece", path, None
    raise ValueError(
        f"{path}: expected a tokenizer file (spiece.model or tokenizer.json)")
  if not os.path.isdir(path):
    raise ValueError(f"tokenizer path {path} does not exist")
  if family == "clip" and found("tokenizer.json"):
    return "clip", os.path.join(path, "tokenizer.json"), path
  if family == "clip" and found("vocab.json", "merges.txt"):
    return "clip_files", None, path
  if family == "siglip" and found("spiece.model"):
    return "spiece", os.path.join(path, "spiece.model"), path
  if family != "clip" and found("tokenizer.json"):
    return "gemma", os.path.join(path, "tokenizer.json"), path
  raise ValueError(f"no {family} tokenizer in {path}: looked for "
                   f"{' or '.join(_SEARCHED[family])}")


def from_pretrained(folder: str | os.PathLike, family: str,
                    context_length: int) -> Tokenizer:
  """The checkpoint's own tokenizer, padded/truncated to ``context_length``.

  Args:
    folder: a checkpoint folder (Hugging Face layout) or a tokenizer file
      (``~`` expanded): a SentencePiece model (``spiece.model``, SigLIP) or a
      ``tokenizer.json`` (CLIP or SigLIP2's Gemma, by ``family``).
    family: a tokenizer kind (``Family.tokenizer``): "clip", "siglip",
      "siglip2" or "pe_core" (CLIP's ``bpe_simple_vocab_16e6.txt.gz``, or a
      folder with it; ``jaxfsl.tokenizers.pe``). For a folder, "siglip"
      finds ``spiece.model`` (SigLIP) or else a Gemma ``tokenizer.json``
      (SigLIP2). For a ``tokenizer.json`` path, "siglip" means SigLIP2
      (the only SigLIP family shipping one).
    context_length: L, the model's text length (77 CLIP, 64 SigLIP).

  Returns:
    A callable ``list[str] -> np.int32 [N, L]`` (see the module docstring);
    ``tokenizer_config.json`` / ``special_tokens_map.json`` in the folder
    override the family's special tokens and flags.

  Raises:
    ValueError: unknown family, or no tokenizer file found (the message names
      the folder and the files looked for).
  """
  family = family.lower()
  if family not in _SEARCHED:
    raise ValueError(
        f"tokenizer family {family!r}: expected one of {sorted(_SEARCHED)}")
  if context_length < 1:
    raise ValueError(f"context_length must be >= 1, got {context_length}")
  path = str(user_path(folder))
  if family == "pe_core":  # CLIP's merges file, open_clip's conventions
    from jaxfsl.tokenizers.pe import from_path
    return from_path(path, context_length)
  kind, file, directory = _find(path, family)
  special = _special_config(directory)
  if kind == "spiece":
    from jaxfsl.tokenizers.spiece import SiglipTokenizer
    return SiglipTokenizer(file, context_length, special)

  from jaxfsl.tokenizers import bpe
  # transformers takes added tokens (and their strip / normalise flags) from
  # tokenizer_config.json when it lists them, else from tokenizer.json.
  config = (_read_json(os.path.join(directory, "tokenizer_config.json"))
            if directory else {})
  added = list((config.get("added_tokens_decoder") or {}).values())
  if kind == "clip_files":
    backend = bpe.read_backend(vocab_merges=(
        os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")))
    return bpe.ClipTokenizer(backend, context_length, special, added)
  backend = bpe.read_backend(tokenizer_json=file)
  if kind == "clip":
    return bpe.ClipTokenizer(backend, context_length, special, added)
  if directory is None:
    # A bare tokenizer.json (e.g. Gemma's own, whose template adds <bos>):
    # SigLIP2's conventions, as HF's SigLIP2 conversion sets them.
    return bpe.GemmaTokenizer(backend, context_length, special, added)
  # A checkpoint folder: transformers (v5) ignores tokenizer_config's
  # add_bos_token / add_eos_token when a tokenizer.json exists and keeps the
  # file's post-processor (SigLIP2's: "$A <eos>"), or none at all.
  return bpe.GemmaTokenizer(backend, context_length, special, added,
                            keep_post_processor=True)
