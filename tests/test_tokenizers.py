"""jaxfsl.tokenizers against transformers' reference tokenizers.

Every tokenizer file is built here, tiny, from a generated corpus (no
downloads): CLIP byte-level BPE files, a SigLIP SentencePiece model and a
SigLIP2-style Gemma tokenizer.json. The reference is transformers' tokenizer
loaded from the same files and called as the models expect.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import warnings

import numpy as np
import pytest

from jaxfsl import tokenizers as jt

# Everything is local; never let transformers reach for the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")
tk = pytest.importorskip("tokenizers")

# Punctuation, accents, CJK, emoji, mixed case, odd whitespace, empty,
# special tokens typed as text, and over-long strings (truncation).
TEXTS = [
    "a photo of a Cat.",
    "  Café   NAÏVE\tüber\n",
    "東京の猫 😀 smile!",
    "",
    "   ",
    "!!!",
    "it's a dog's life, don't",
    "X-RAY 3D 1990s!!! (jalapeño)",
    "ÉCOLE İstanbul ẞ ﬁne Ｆｕｌｌ",
    "a\u00a0b\u2003c",
    "\u2581a\u2581b",
    "a photo of a <|endoftext|> b",
    "a </s> b",
    "hello </s>",
    "a <eos> b",
    " ".join(["mountain river"] * 60),
    "a b c d e f g h i j k </s> l m",
    "Ünïcödé " * 30,
]

_SYLLABLES = ["ka", "to", "ri", "mo", "su", "ne", "pa", "lu", "zé", "chi",
              "ön", "ba", "de", "fi", "gu", "ha", "ji"]
_WORDS = ["a", "photo", "of", "the", "cat", "dog", "café", "naïve", "über",
          "jalapeño", "airplane", "bird", "it's", "don't", "we're", "1990",
          "école", "東京", "猫", "smile", "mountain", "river", "x-ray", "3d"]


def _corpus() -> list[str]:
  rng = random.Random(0)
  words = _WORDS + ["".join(rng.choice(_SYLLABLES)
                            for _ in range(rng.randint(1, 4)))
                    for _ in range(300)]
  punct = ["", "", ",", ".", "!", "?", ";", "'", "-"]
  return [" ".join(rng.choice(words) + rng.choice(punct)
                   for _ in range(rng.randint(3, 10))) for _ in range(600)]


def _bytes_to_unicode() -> list[str]:
  """GPT-2/CLIP's byte -> printable character table, in vocab order."""
  bs = (list(range(ord("!"), ord("~") + 1)) +
        list(range(ord("¡"), ord("¬") + 1)) +
        list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return [chr(c) for c in cs]


def _merges_of(tokenizer) -> list[tuple[str, str]]:
  merges = json.loads(tokenizer.to_str())["model"]["merges"]
  return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
          for m in merges]


def _clip_backend(vocab, merges):
  """CLIP's tokenizers pipeline (as in openai/clip-vit-*'s tokenizer.json)."""
  from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
  )
  from tokenizers.models import BPE

  tok = Tokenizer(BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>",
                      continuing_subword_prefix="",
                      unk_token="<|endoftext|>", fuse_unk=False))
  tok.normalizer = normalizers.Sequence([
      normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
      normalizers.Lowercase()])
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(jt.CLIP_SPLIT), behavior="removed",
                           invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([
      AddedToken("<|startoftext|>", special=True, normalized=True),
      AddedToken("<|endoftext|>", special=True, normalized=True)])
  tok.post_processor = processors.RobertaProcessing(
      ("<|endoftext|>", vocab["<|endoftext|>"]),
      ("<|startoftext|>", vocab["<|startoftext|>"]),
      trim_offsets=False, add_prefix_space=False)
  return tok


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
  """CLIP tokenizer folders: vocab.json + merges.txt, and tokenizer.json."""
  from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
  from tokenizers.models import BPE

  trainer_tok = Tokenizer(BPE(end_of_word_suffix="</w>",
                              continuing_subword_prefix=""))
  trainer_tok.normalizer = normalizers.Sequence([
      normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
      normalizers.Lowercase()])
  trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(jt.CLIP_SPLIT), behavior="removed",
                           invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  trainer_tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
      vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      end_of_word_suffix="</w>", show_progress=False))
  merges = _merges_of(trainer_tok)
  # CLIP's vocab layout: 256 bytes, 256 bytes + </w>, merges, specials last.
  base = _bytes_to_unicode()
  tokens = base + [c + "</w>" for c in base]
  seen = set(tokens)
  for a, b in merges:
    if a + b not in seen:
      tokens.append(a + b)
      seen.add(a + b)
  tokens += ["<|startoftext|>", "<|endoftext|>"]
  vocab = {t: i for i, t in enumerate(tokens)}

  files = tmp_path_factory.mktemp("clip_files")
  (files / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
  (files / "merges.txt").write_text(
      "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
      encoding="utf-8")

  fast = tmp_path_factory.mktemp("clip_json")
  _clip_backend(vocab, merges).save(str(fast / "tokenizer.json"))
  added = {
      str(vocab[t]): {"content": t, "lstrip": False, "normalized": True,
                      "rstrip": False, "single_word": False, "special": True}
      for t in ("<|startoftext|>", "<|endoftext|>")}
  (fast / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "CLIPTokenizer", "do_lower_case": True,
      "model_max_length": 77, "bos_token": "<|startoftext|>",
      "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
      "pad_token": "<|endoftext|>", "added_tokens_decoder": added}))
  return files, fast


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
  """A SigLIP-style unigram SentencePiece model (pad 0, </s> 1, <unk> 2)."""
  folder = tmp_path_factory.mktemp("siglip")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=250,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
      character_coverage=1.0, minloglevel=2)
  (folder / "spiece.model").write_bytes(model.getvalue())
  return folder


_GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def _gemma_json(post: str) -> str:
  """A Gemma-style tokenizer.json; ``post``: "siglip2" ("$A <eos>") or
  "gemma" ("<bos> $A", Gemma's own)."""
  from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    normalizers,
    processors,
    trainers,
  )
  from tokenizers.models import BPE

  trainer_tok = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True,
                              fuse_unk=True))
  trainer_tok.normalizer = normalizers.Replace(" ", "\u2581")
  trainer_tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
      vocab_size=600, show_progress=False, special_tokens=_GEMMA_SPECIALS))
  trained = json.loads(trainer_tok.to_str())["model"]["vocab"]
  # Gemma's layout: specials, then the 256 byte-fallback tokens, then merges.
  tokens = (_GEMMA_SPECIALS + [f"<0x{i:02X}>" for i in range(256)] +
            ["<start_of_turn>"])
  seen = set(tokens)
  for t in sorted(trained, key=trained.get):
    if t not in seen:
      tokens.append(t)
      seen.add(t)
  vocab = {t: i for i, t in enumerate(tokens)}
  tok = Tokenizer(BPE(vocab=vocab, merges=_merges_of(trainer_tok),
                      unk_token="<unk>", byte_fallback=True, fuse_unk=True,
                      dropout=None))
  tok.normalizer = normalizers.Replace(" ", "\u2581")
  tok.decoder = decoders.Sequence([
      decoders.Replace("\u2581", " "), decoders.ByteFallback(),
      decoders.Fuse()])
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t in _GEMMA_SPECIALS + ["<start_of_turn>"]])
  if post == "siglip2":
    tok.post_processor = processors.TemplateProcessing(
        single="$A:0 <eos>:0", pair="$A:0 <eos>:0 $B:1 <eos>:1",
        special_tokens=[("<eos>", vocab["<eos>"])])
  else:
    tok.post_processor = processors.TemplateProcessing(
        single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1",
        special_tokens=[("<bos>", vocab["<bos>"])])
  return tok.to_str()


def _siglip2_folder(folder, post: str, padding_side: str = "right"):
  """A SigLIP2 checkpoint's tokenizer files, as HF's conversion saves them."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "tokenizer.json").write_text(_gemma_json(post), encoding="utf-8")
  (folder / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
  (folder / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "GemmaTokenizer", "add_bos_token": False,
      "add_eos_token": True, "padding_side": padding_side,
      "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
      "unk_token": "<unk>", "mask_token": "<mask>", "model_max_length": 64}))
  return folder


@pytest.fixture(scope="module")
def siglip2_dir(tmp_path_factory):
  return _siglip2_folder(tmp_path_factory.mktemp("siglip2"), "siglip2")


def _reference(tokenizer, texts, length) -> np.ndarray:
  with warnings.catch_warnings():
    # SiglipTokenizer warns on texts already ending in </s>; expected here.
    warnings.simplefilter("ignore", UserWarning)
    out = tokenizer(list(texts), padding="max_length", max_length=length,
                    truncation=True)
  return np.asarray(out["input_ids"], np.int32)


def _assert_rows_equal(ours: np.ndarray, ref: np.ndarray, texts):
  assert ours.dtype == np.int32
  assert ours.shape == ref.shape
  for row, text in enumerate(texts):
    np.testing.assert_array_equal(ours[row], ref[row], err_msg=repr(text))


# --------------------------------------------------------------------- CLIP


@pytest.mark.parametrize("length", [77, 8])
def test_clip_vocab_merges_matches_transformers(clip_dirs, length):
  files, _ = clip_dirs
  ref = transformers.CLIPTokenizer.from_pretrained(str(files))
  ours = jt.from_pretrained(str(files), "clip", length)
  _assert_rows_equal(ours(TEXTS), _reference(ref, TEXTS, length), TEXTS)
  assert ours.context_length == length
  assert ours.pad_id == ref.pad_token_id == ours.eos_id
  assert ours.vocab_size == len(ref)


@pytest.mark.parametrize("cls", ["CLIPTokenizer", "CLIPTokenizerFast",
                                 "AutoTokenizer"])
def test_clip_tokenizer_json_matches_transformers(clip_dirs, cls):
  _, fast = clip_dirs
  ref = getattr(transformers, cls).from_pretrained(str(fast))
  ours = jt.from_pretrained(str(fast), "clip", 77)
  _assert_rows_equal(ours(TEXTS), _reference(ref, TEXTS, 77), TEXTS)
  # A direct file path gives the same tokenizer.
  direct = jt.from_pretrained(str(fast / "tokenizer.json"), "clip", 77)
  np.testing.assert_array_equal(direct(TEXTS), ours(TEXTS))


def test_clip_layout_and_truncation(clip_dirs):
  files, _ = clip_dirs
  ours = jt.from_pretrained(str(files), "clip", 6)
  ids = ours(["", "a b c d e f g h"])
  bos, eos = ours.bos_id, ours.eos_id
  assert list(ids[0]) == [bos, eos, eos, eos, eos, eos]
  assert ids[1, 0] == bos and ids[1, -1] == eos  # eos survives truncation
  assert eos == ids.max()  # OpenAI argmax pooling finds it


def test_clip_pad_token_from_checkpoint_config(clip_dirs, tmp_path):
  """A checkpoint that pads with "!" (id 0, as open_clip) is honoured."""
  files, _ = clip_dirs
  folder = tmp_path / "clip_pad"
  shutil.copytree(files, folder)
  (folder / "special_tokens_map.json").write_text(json.dumps({
      "pad_token": "!", "bos_token": "<|startoftext|>",
      "eos_token": {"content": "<|endoftext|>", "normalized": True},
      "unk_token": "<|endoftext|>"}))
  ref = transformers.CLIPTokenizer.from_pretrained(str(folder))
  ours = jt.from_pretrained(str(folder), "clip", 16)
  assert ours.pad_id == ref.pad_token_id == 0
  _assert_rows_equal(ours(TEXTS), _reference(ref, TEXTS, 16), TEXTS)


# ------------------------------------------------------------------- SigLIP


@pytest.mark.parametrize("length", [64, 8])
def test_siglip_spiece_matches_transformers(siglip_dir, length):
  ref = transformers.SiglipTokenizer.from_pretrained(str(siglip_dir))
  ours = jt.from_pretrained(str(siglip_dir), "siglip", length)
  _assert_rows_equal(ours(TEXTS), _reference(ref, TEXTS, length), TEXTS)
  assert ours.pad_id == ours.eos_id == ref.eos_token_id == 1
  assert ours.vocab_size == ref.vocab_size
  # big_vision users pass the .model file itself.
  direct = jt.from_pretrained(str(siglip_dir / "spiece.model"), "siglip",
                              length)
  np.testing.assert_array_equal(direct(TEXTS), ours(TEXTS))


def test_siglip_do_lower_case_from_config(siglip_dir, tmp_path):
  folder = tmp_path / "siglip_cased"
  shutil.copytree(siglip_dir, folder)
  (folder / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "SiglipTokenizer", "do_lower_case": False}))
  ref = transformers.SiglipTokenizer.from_pretrained(str(folder))
  ours = jt.from_pretrained(str(folder), "siglip", 64)
  _assert_rows_equal(ours(TEXTS), _reference(ref, TEXTS, 64), TEXTS)
  lower = jt.from_pretrained(str(siglip_dir), "siglip", 64)
  assert not np.array_equal(ours(["CAT"]), lower(["CAT"]))


def test_siglip_canonicalize(siglip_dir):
  tok = jt.from_pretrained(str(siglip_dir), "siglip", 64)
  assert tok.canonicalize("  A, (Photo)!\tof\n\nÉté  ") == "a photo of été"


# ------------------------------------------------------------------ SigLIP2


@pytest.mark.parametrize("length", [64, 8])
def test_siglip2_gemma_matches_transformers(siglip2_dir, length):
  ref = transformers.AutoTokenizer.from_pretrained(str(siglip2_dir))
  # AutoTokenizer picks Siglip2Tokenizer (lower-casing) for model_type siglip2.
  assert type(ref).__name__ == "Siglip2Tokenizer"
  ours = jt.from_pretrained(str(siglip2_dir), "siglip", length)
  _assert_rows_equal(ours(TEXTS), _reference(ref, TEXTS, length), TEXTS)
  assert ours.pad_id == ref.pad_token_id == 0
  assert ours.eos_id == ref.eos_token_id == 1
  assert ours.vocab_size == len(ref)
  ids = ours(["a photo of a cat", ""])
  assert ids[0, 0] != 2  # no <bos>
  assert list(ids[1, :2]) == [1, 0]  # <eos> then <pad>
  # family "siglip2" and the direct file agree on a SigLIP2 tokenizer.json.
  for src, fam in ((siglip2_dir, "siglip2"),
                   (siglip2_dir / "tokenizer.json", "siglip"),
                   (siglip2_dir / "tokenizer.json", "siglip2")):
    np.testing.assert_array_equal(
        jt.from_pretrained(str(src), fam, length)(TEXTS), ours(TEXTS))


def test_siglip2_gemma_folder_follows_file_post_processor(tmp_path):
  """With Gemma's own template ("<bos> $A") transformers v5 keeps the file's
  post-processor (tokenizer_config's add_*_token are dropped): so do we."""
  folder = _siglip2_folder(tmp_path / "gemma_raw", "gemma",
                           padding_side="left")
  ref = transformers.AutoTokenizer.from_pretrained(str(folder))
  ours = jt.from_pretrained(str(folder), "siglip", 12)
  _assert_rows_equal(ours(TEXTS), _reference(ref, TEXTS, 12), TEXTS)
  assert ours(["a"])[0, -2] == 2  # left padded, starts with <bos>


def test_siglip2_bare_file_uses_siglip2_conventions(tmp_path):
  """A bare Gemma tokenizer.json: SigLIP2's conventions (no bos, eos), i.e.
  Siglip2Tokenizer configured as HF's SigLIP2 conversion does."""
  folder = _siglip2_folder(tmp_path / "gemma_raw", "gemma")
  ref = transformers.Siglip2Tokenizer.from_pretrained(str(folder))
  ref.add_bos_token = False
  ref.add_eos_token = True
  ref.padding_side = "right"
  ours = jt.from_pretrained(str(folder / "tokenizer.json"), "siglip2", 64)
  _assert_rows_equal(ours(TEXTS), _reference(ref, TEXTS, 64), TEXTS)


# ------------------------------------------------------------ file finding


def test_folder_prefers_spiece_for_siglip(siglip_dir, siglip2_dir, tmp_path):
  both = tmp_path / "both"
  both.mkdir()
  shutil.copy(siglip_dir / "spiece.model", both / "spiece.model")
  shutil.copy(siglip2_dir / "tokenizer.json", both / "tokenizer.json")
  assert isinstance(jt.from_pretrained(str(both), "siglip", 64),
                    jt.SiglipTokenizer)
  assert isinstance(jt.from_pretrained(str(both), "siglip2", 64),
                    jt.GemmaTokenizer)


def test_missing_files_error_names_folder_and_files(tmp_path):
  with pytest.raises(ValueError) as e:
    jt.from_pretrained(str(tmp_path), "clip", 77)
  msg = str(e.value)
  assert str(tmp_path) in msg
  assert "tokenizer.json" in msg and "vocab.json + merges.txt" in msg
  with pytest.raises(ValueError) as e:
    jt.from_pretrained(str(tmp_path), "siglip", 64)
  assert str(tmp_path) in str(e.value) and "spiece.model" in str(e.value)


def test_bad_arguments(siglip_dir, tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    jt.from_pretrained(str(tmp_path / "nope"), "clip", 77)
  with pytest.raises(ValueError, match="family"):
    jt.from_pretrained(str(siglip_dir), "bert", 77)
  with pytest.raises(ValueError, match="SentencePiece"):
    jt.from_pretrained(str(siglip_dir / "spiece.model"), "clip", 77)
  tok = jt.from_pretrained(str(siglip_dir), "siglip", 8)
  with pytest.raises(TypeError, match="list of strings"):
    tok("a single string")


def test_tokenizers_satisfy_protocol(clip_dirs, siglip_dir, siglip2_dir):
  files, _ = clip_dirs
  for tok in (jt.from_pretrained(str(files), "clip", 77),
              jt.from_pretrained(str(siglip_dir), "siglip", 64),
              jt.from_pretrained(str(siglip2_dir), "siglip", 64),
              jt.ByteTokenizer(300, 8)):
    assert isinstance(tok, jt.Tokenizer)
    out = tok(["a", "b c"])
    assert out.shape == (2, tok.context_length) and out.dtype == np.int32
    assert out.max() < tok.vocab_size


# ------------------------------------------------------------ ByteTokenizer


def test_byte_tokenizer_layout():
  tok = jt.ByteTokenizer(vocab_size=300, context_length=8)
  ids = tok(["Ab", ""])
  bos, eos = 298, 299
  assert ids.dtype == np.int32 and ids.shape == (2, 8)
  assert list(ids[0]) == [bos, 1 + ord("a"), 1 + ord("b"), eos, 0, 0, 0, 0]
  assert list(ids[1]) == [bos, eos, 0, 0, 0, 0, 0, 0]
  assert (tok.pad_id, tok.eos_id) == (0, eos)


def test_byte_tokenizer_truncation_keeps_eos():
  tok = jt.ByteTokenizer(vocab_size=300, context_length=5)
  ids = tok(["abcdefgh", "é"])  # é is two UTF-8 bytes
  assert list(ids[0]) == [298, 98, 99, 100, 299]
  assert list(ids[1]) == [298, 1 + 0xC3, 1 + 0xA9, 299, 0]


def test_byte_tokenizer_eos_is_max_id():
  tok = jt.ByteTokenizer(vocab_size=259, context_length=16)
  ids = tok(["ÿÿÿ", "\U0010ffff", "x" * 40])
  assert (ids.max(axis=1) == tok.eos_id).all()
  assert (np.argmax(ids, axis=1) == np.argmax(ids == tok.eos_id, axis=1)).all()


def test_byte_tokenizer_errors():
  with pytest.raises(ValueError, match="vocab_size"):
    jt.ByteTokenizer(258, 8)
  with pytest.raises(ValueError, match="context_length"):
    jt.ByteTokenizer(300, 1)

