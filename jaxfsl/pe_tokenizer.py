"""OpenAI CLIP's BPE as PE-Core (and open_clip) tokenize text.

PE-Core checkpoints ship no tokenizer files: their text tower uses OpenAI
CLIP's byte-level BPE (``bpe_simple_vocab_16e6.txt.gz``, MIT licence, shipped
in ``jaxfsl/assets`` as open_clip and OpenAI's CLIP ship it), with

* cleaning: ``ftfy.fix_text``, HTML unescaped twice, whitespace runs ->
  one space, stripped, lower-cased (perception_models ``tokenizer.py`` /
  open_clip ``SimpleTokenizer(clean="lower")``);
* words: CLIP's regex (special tokens, contractions, letter runs, single
  digits, runs of other non-space symbols), bytes mapped to GPT-2's printable
  characters, BPE with the ``</w>`` end-of-word suffix;
* rows ``[<start_of_text>, ..., <end_of_text>, 0, 0, ...]``: **zero
  padding**; an over-long row is cut to the context and its last slot
  overwritten with ``<end_of_text>`` (id 49407, the largest id, where the
  text tower pools).

The BPE itself runs in Hugging Face ``tokenizers`` (a kept library); the
cleaning, which that library cannot express (ftfy), runs in Python first.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import os
from collections.abc import Sequence

import numpy as np

BPE_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
# Merges kept by OpenAI's and open_clip's tokenizer: 49152 - 256 - 2.
_NUM_MERGES = 49152 - 256 - 2
_SPLIT = (r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|"""
          r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")


def default_bpe_path() -> str:
  """Path of the packaged ``bpe_simple_vocab_16e6.txt.gz``."""
  return str(importlib.resources.files("jaxfsl") / "assets" / BPE_VOCAB_FILE)


def _byte_chars() -> list[str]:
  """GPT-2's reversible byte -> printable character table (OpenAI CLIP's
  ``bytes_to_unicode``), in vocabulary order: the printable Latin-1 bytes
  (as themselves) first, then the other bytes as chr(256 + n) in byte order.
  ``ByteLevel`` pre-tokenization uses the same table."""
  keep = (list(range(ord("!"), ord("~") + 1))
          + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
  rest = [b for b in range(256) if b not in keep]
  return [chr(b) for b in keep] + [chr(256 + n) for n in range(len(rest))]


def clean_text(text: str) -> str:
  """PE-Core's ``clean="lower"``: ftfy, HTML unescape (twice), whitespace,
  lower case."""
  import ftfy
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return " ".join(text.split()).lower()


class OpenClipBpeTokenizer:
  """``list[str] -> int32 [N, context_length]`` exactly as open_clip's
  ``SimpleTokenizer`` (``get_tokenizer("PE-Core-B-16")``).

  Attributes:
    context_length: L (32 for PE-Core T/S/B/L, 72 for G).
    vocab_size: 49408.
    pad_id: 0.
    bos_id, eos_id: 49406, 49407.
  """

  def __init__(self, context_length: int, bpe_path: str | None = None):
    """Builds the tokenizer.

    Args:
      context_length: L >= 2.
      bpe_path: the gzipped merges file; default: the packaged copy.

    Raises:
      ValueError: L < 2, or a merges file that is not CLIP's format.
      FileNotFoundError: ``bpe_path`` does not exist.
      ImportError: ftfy is not installed (it is part of the cleaning).
    """
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2 (start + end of text), "
                       f"got {context_length}")
    import ftfy  # noqa: F401  (fail at construction, not on first call)
    from tokenizers import Regex, pre_tokenizers
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import BPE

    path = bpe_path or default_bpe_path()
    if not os.path.isfile(path):
      raise FileNotFoundError(f"CLIP BPE merges file {path!r} does not exist")
    with gzip.open(path, "rt", encoding="utf-8") as f:
      lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
    bad = [i + 2 for i, m in enumerate(merges) if len(m) != 2]
    if len(merges) != _NUM_MERGES or bad:
      raise ValueError(
          f"{path}: expected {_NUM_MERGES} merges of two symbols after the "
          f"header line (CLIP's bpe_simple_vocab_16e6.txt.gz); found "
          f"{len(merges)}" + (f", malformed at lines {bad[:5]}" if bad else ""))
    chars = _byte_chars()
    words = (chars + [c + "</w>" for c in chars]
             + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN])
    vocab = {w: i for i, w in enumerate(words)}
    backend = Backend(BPE(vocab=vocab, merges=merges, dropout=None,
                          continuing_subword_prefix="",
                          end_of_word_suffix="</w>", fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    # Special-token text in the input maps to the special ids, as open_clip's
    # BPE cache does.
    backend.add_special_tokens([SOT_TOKEN, EOT_TOKEN])
    self._backend = backend
    self.context_length = int(context_length)
    self.vocab_size = len(vocab)
    self.pad_id = 0
    self.bos_id = vocab[SOT_TOKEN]
    self.eos_id = vocab[EOT_TOKEN]

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Unpadded, untruncated ids (without start/end tokens), one list a text."""
    cleaned = [clean_text(t) for t in texts]
    out = self._backend.encode_batch(cleaned, add_special_tokens=False)
    return [e.ids for e in out]

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """list[str] -> int32 [N, L]; see the module docstring for the layout."""
    if isinstance(texts, str):
      raise TypeError("expected a list of strings, got one str")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
      raise TypeError(f"texts[{bad}] are not strings")
    length = self.context_length
    out = np.full((len(texts), length), self.pad_id, np.int32)
    for i, ids in enumerate(self.encode(texts)):
      row = [self.bos_id] + ids + [self.eos_id]
      if len(row) > length:
        row = row[:length]
        row[-1] = self.eos_id
      out[i, :len(row)] = row
    return out


@functools.lru_cache(maxsize=8)
def pe_core_tokenizer(context_length: int = 32) -> OpenClipBpeTokenizer:
  """The packaged PE-Core tokenizer for context ``L`` (cached)."""
  return OpenClipBpeTokenizer(context_length)
