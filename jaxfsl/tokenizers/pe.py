"""OpenAI CLIP's BPE as PE-Core (and open_clip) tokenize text.

PE-Core checkpoints ship no tokenizer files: their text tower uses OpenAI
CLIP's byte-level BPE (``bpe_simple_vocab_16e6.txt.gz``, MIT licence, shipped
in ``jaxfsl/assets`` as open_clip and OpenAI's CLIP ship it). Differences
from transformers' ``CLIPTokenizer`` (``bpe.ClipTokenizer``, whose BPE
pipeline this reuses):

* cleaning: ``ftfy.fix_text``, HTML unescaped twice, whitespace runs ->
  one space, stripped, lower-cased (perception_models ``tokenizer.py`` /
  open_clip ``SimpleTokenizer(clean="lower")``), done in Python before the
  BPE (``tokenizers`` cannot express ftfy), so special-token text matches
  case-insensitively as in open_clip;
* special tokens ``<start_of_text>`` / ``<end_of_text>`` (ids 49406, 49407);
* rows ``[<start_of_text>, ..., <end_of_text>, 0, 0, ...]``: **zero
  padding**; an over-long row keeps ``<end_of_text>`` in its last slot (the
  largest id, where the text tower pools).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import os
from collections.abc import Sequence

from tokenizers import Tokenizer as Backend
from tokenizers import normalizers
from tokenizers.models import BPE

from jaxfsl.tokenizers.base import check_texts
from jaxfsl.tokenizers.bpe import ClipTokenizer

BPE_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
# Merges kept by OpenAI's and open_clip's tokenizer: 49152 - 256 - 2.
_NUM_MERGES = 49152 - 256 - 2
_SPECIAL = {"bos_token": SOT_TOKEN, "eos_token": EOT_TOKEN,
            "unk_token": EOT_TOKEN, "pad_token": EOT_TOKEN}


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


def read_merges(path: str) -> Backend:
  """A BPE backend from CLIP's gzipped merges file: OpenAI's vocabulary
  order (256 bytes, the same with ``</w>``, one token per merge, the two
  special tokens), ``</w>`` end-of-word suffix.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: not CLIP's merges format (the line numbers named).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"CLIP BPE merges file {path!r} does not exist")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")
  merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
  bad = [i + 2 for i, m in enumerate(merges) if len(m) != 2]
  if len(merges) != _NUM_MERGES or bad:
    raise ValueError(
        f"{path}: expected {_NUM_MERGES} merges of two symbols after the "
        f"header line (CLIP's {BPE_VOCAB_FILE}); found {len(merges)}"
        + (f", malformed at lines {bad[:5]}" if bad else ""))
  chars = _byte_chars()
  words = (chars + [c + "</w>" for c in chars]
           + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN])
  return Backend(BPE(vocab={w: i for i, w in enumerate(words)},
                     merges=merges, dropout=None, continuing_subword_prefix="",
                     end_of_word_suffix="</w>", fuse_unk=False))


class PeCoreTokenizer(ClipTokenizer):
  """``list[str] -> int32 [N, context_length]`` exactly as open_clip's
  ``get_tokenizer("PE-Core-B-16")`` (see the module docstring).

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
    import ftfy  # noqa: F401  (fail at construction, not on first call)
    super().__init__(read_merges(bpe_path or default_bpe_path()),
                     context_length, _SPECIAL)
    # clean_text has normalised already; NFC again after HTML unescaping
    # would differ from open_clip.
    self._backend.normalizer = normalizers.Sequence([])
    self.pad_id = 0

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Unpadded (but truncated) ids with the special tokens, one list a text."""
    return super().encode([clean_text(t) for t in check_texts(texts)])


@functools.lru_cache(maxsize=8)
def pe_core_tokenizer(context_length: int = 32) -> PeCoreTokenizer:
  """The packaged PE-Core tokenizer for context ``L`` (cached)."""
  return PeCoreTokenizer(context_length)


def from_path(path: str, context_length: int) -> PeCoreTokenizer:
  """A PE tokenizer from a merges file or a folder holding
  ``bpe_simple_vocab_16e6.txt.gz``.

  Raises:
    ValueError: a folder without that file.
  """
  if os.path.isdir(path):
    file = os.path.join(path, BPE_VOCAB_FILE)
    if not os.path.isfile(file):
      raise ValueError(f"no pe_core tokenizer in {path}: looked for "
                       f"{BPE_VOCAB_FILE} (CLIP's BPE merges)")
    path = file
  return PeCoreTokenizer(context_length, path)
