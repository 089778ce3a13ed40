"""big_vision / OpenAI loading parity, and the loaders' validation.

The parity cases write the same random transformers weights in big_vision's
``.npz`` layout and OpenAI's ``.pt`` layout (converters in _reference.py) and
compare features with transformers. The rest feeds broken checkpoints and
checks that each is refused with a CheckpointError naming the file and the
tensor(s).
"""

import json
import pickle
import shutil
import warnings

import _reference as ref
import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch

from jaxfsl.checkpoints import (
    CheckpointError,
    CheckpointWarning,
    clip_config_from_hf,
    detect_format,
    load_model,
    read_safetensors,
)
from jaxfsl.models.families.clip import MEAN as CLIP_MEAN
from jaxfsl.models.families.siglip import MEAN as SIGLIP_MEAN

TOL = 1e-4

# Same architectures as the first parity cases in test_parity_hf.py, so the
# jitted encoders are shared within a session.
SIGLIP_KW = dict(width=72, heads=6, depth=2, patch=16, image=32,
                 text_width=48, text_heads=3, text_depth=2)
CLIP_KW = dict(vision_width=72, vision_heads=6, vision_depth=2, patch=16,
               image=32, text_width=48, text_heads=3, text_depth=2,
               act="quick_gelu", eos_token_id=7)
# OpenAI derives heads as width // 64; the HF reference must agree. Legacy
# eos_token_id 2 makes transformers pool at the argmax, as OpenAI does.
OPENAI_KW = dict(vision_width=128, vision_heads=2, vision_depth=2, patch=16,
                 image=32, text_width=64, text_heads=1, text_depth=2,
                 embed=40, act="quick_gelu", eos_token_id=2)


@pytest.fixture(scope="module")
def siglip():
  return ref.hf_siglip(**SIGLIP_KW, seed=11)


@pytest.fixture(scope="module")
def clip():
  return ref.hf_clip(**CLIP_KW, seed=12)


@pytest.fixture(scope="module")
def openai_clip():
  return ref.hf_clip(**OPENAI_KW, seed=13)


@pytest.fixture(scope="module")
def siglip_folder(siglip, tmp_path_factory):
  return ref.write_hf(siglip, tmp_path_factory.mktemp("hf") / "siglip")


@pytest.fixture(scope="module")
def clip_folder(clip, tmp_path_factory):
  return ref.write_hf(clip, tmp_path_factory.mktemp("hf") / "clip")


def _copy(folder, tmp_path):
  dst = tmp_path / folder.name
  shutil.copytree(folder, dst)
  return dst


def _siglip_inputs():
  return (ref.random_pixels(3, 32, seed=0),
          ref.siglip_ids(5, 16, 100, seed=1))


def _openai_ids():
  # OpenAI tokenizer: EOT is the highest id, padding is 0.
  return ref.clip_ids(5, 16, 100, eos=99, pad=0, bos=98, seed=1, max_id=98)


# -------------------------------------------------------- big_vision parity


@pytest.mark.parametrize("scan,prefix", [(False, "params/"), (True, "")],
                         ids=["pyloop-params", "scan-bare"])
def test_big_vision_parity(tmp_path, siglip, scan, prefix):
  path = tmp_path / "siglip.npz"
  np.savez(path, **ref.siglip_to_big_vision(siglip, scan=scan, prefix=prefix))
  model = load_model(path, tokenizer=lambda texts: np.zeros((len(texts), 16)))
  pixels, ids = _siglip_inputs()
  img, txt = ref.parity(model, siglip, pixels, ids)
  print(f"\nbig_vision scan={scan}: image {img:.2e} text {txt:.2e}")
  assert img <= TOL and txt <= TOL
  assert model.config.vision.heads == 6 and model.config.text.heads == 3
  assert model.preprocessing.mean == SIGLIP_MEAN
  assert model.preprocessing.resample == "bilinear"
  assert model.tokenize(["a", "b"]).shape == (2, 16)
  np.testing.assert_allclose(model.logit_bias, siglip.logit_bias.item(),
                             rtol=1e-6)


def test_big_vision_image_head_and_old_text_posemb(tmp_path, siglip):
  # Optional img/head (projection after the MAP head) and the old duplicated
  # text posemb inside Encoder_0 that big_vision adds to the real one.
  arrays = ref.siglip_to_big_vision(siglip)
  rng = np.random.default_rng(0)
  w, wt, e = 72, 48, 24
  k_img, b_img = rng.normal(size=(w, e)), rng.normal(size=(e,))
  k_txt, b_txt = rng.normal(size=(wt, e)), rng.normal(size=(e,))
  extra_pos = rng.normal(size=(1, 16, wt)).astype(np.float32)
  arrays["params/img/head/kernel"] = k_img.astype(np.float32)
  arrays["params/img/head/bias"] = b_img.astype(np.float32)
  arrays["params/txt/head/kernel"] = k_txt.astype(np.float32)
  arrays["params/txt/head/bias"] = b_txt.astype(np.float32)
  arrays["params/txt/pos_embedding"] -= extra_pos
  arrays["params/txt/Encoder_0/pos_embedding"] = extra_pos
  np.savez(tmp_path / "m.npz", **arrays)
  model = load_model(tmp_path / "m.npz")
  assert model.config.vision.proj and model.config.vision.embed_dim == e

  pixels, ids = _siglip_inputs()
  with torch.no_grad():
    pooled_img = siglip.vision_model(
        pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
    ).pooler_output.numpy()
    hidden = siglip.text_model(input_ids=torch.from_numpy(ids)
                               ).last_hidden_state[:, -1].numpy()
  want_img = pooled_img @ k_img + b_img
  want_txt = hidden @ k_txt + b_txt
  assert ref.max_normalized_diff(model.encode_image(pixels), want_img) <= TOL
  assert ref.max_normalized_diff(model.encode_text(ids), want_txt) <= TOL


def test_big_vision_bfloat16_void(tmp_path, siglip):
  # np.savez stores bfloat16 as void-2; big_vision views it back.
  arrays = ref.siglip_to_big_vision(siglip)
  key = "params/img/embedding/bias"
  bf16 = arrays[key].astype(ml_dtypes.bfloat16)
  arrays[key] = bf16.view(np.dtype("V2"))
  np.savez(tmp_path / "m.npz", **arrays)
  model = load_model(tmp_path / "m.npz")
  np.testing.assert_array_equal(
      np.asarray(model.params["img"]["patch_embed"]["bias"]),
      bf16.astype(np.float32))


def test_npz_pickled_object_array(tmp_path, siglip):
  arrays = ref.siglip_to_big_vision(siglip)
  arrays["params/img/evil"] = np.array([{"run": "code"}], dtype=object)
  path = tmp_path / "pickled.npz"
  np.savez(path, **arrays)
  with pytest.raises(CheckpointError,
                     match=r"pickled\.npz.*'params/img/evil'.*pickle"):
    load_model(path)


def test_npz_missing_and_misshaped(tmp_path, siglip):
  arrays = ref.siglip_to_big_vision(siglip)
  del arrays["params/txt/Encoder_0/encoderblock_1/LayerNorm_0/bias"]
  arrays["params/img/MAPHead_0/MlpBlock_0/Dense_1/bias"] = np.zeros(
      70, np.float32)
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(CheckpointError) as info:
    load_model(tmp_path / "bad.npz")
  msg = str(info.value)
  assert "bad.npz" in msg
  assert ("missing 1 tensor(s): params/txt/Encoder_0/encoderblock_1/"
          "LayerNorm_0/bias (expected shape [48])") in msg
  assert ("params/img/MAPHead_0/MlpBlock_0/Dense_1/bias: expected shape "
          "[72], found [70]") in msg


def test_npz_unknown_layout_and_extra_tensor(tmp_path, siglip):
  np.savez(tmp_path / "vit.npz", **{"params/Transformer/x": np.zeros(3)})
  with pytest.raises(CheckpointError, match=r"vit\.npz: unknown layout"):
    load_model(tmp_path / "vit.npz")
  arrays = ref.siglip_to_big_vision(siglip)
  arrays["params/txt/unused/kernel"] = np.zeros((2, 2), np.float32)
  np.savez(tmp_path / "extra.npz", **arrays)
  with pytest.raises(CheckpointError,
                     match=r"extra\.npz.*unexpected.*params/txt/unused"):
    load_model(tmp_path / "extra.npz")


def test_npz_truncated(tmp_path, siglip):
  path = tmp_path / "cut.npz"
  np.savez(path, **ref.siglip_to_big_vision(siglip))
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match=r"cut\.npz: not a readable"):
    load_model(path)


# ------------------------------------------------------------ OpenAI parity


def test_openai_state_dict_parity(tmp_path, openai_clip):
  path = tmp_path / "ViT-tiny.pt"
  torch.save(ref.clip_to_openai(openai_clip), path)
  model = load_model(path)
  assert model.config.vision.heads == 2 and model.config.text.heads == 1
  assert model.config.text.eot_token_id is None
  assert model.preprocessing.mean == CLIP_MEAN
  pixels = ref.random_pixels(3, 32, seed=0)
  img, txt = ref.parity(model, openai_clip, pixels, _openai_ids())
  print(f"\nOpenAI state dict: image {img:.2e} text {txt:.2e}")
  assert img <= TOL and txt <= TOL

  # A training-script wrapper ({"state_dict": {"module.": ...}}) is the same.
  wrapped = {"epoch": 3, "state_dict": {
      f"module.{k}": v for k, v in ref.clip_to_openai(openai_clip).items()}}
  torch.save(wrapped, tmp_path / "wrapped.pt")
  other = load_model(tmp_path / "wrapped.pt")
  jax.tree.map(np.testing.assert_array_equal, model.params, other.params)


def test_openai_torchscript_parity(tmp_path, openai_clip):
  state = ref.clip_to_openai(openai_clip)
  state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(
      16), vocab_size=torch.tensor(100))
  path = tmp_path / "ViT-tiny-jit.pt"
  ref.save_torchscript(state, path)
  model = load_model(path)
  pixels = ref.random_pixels(3, 32, seed=0)
  img, txt = ref.parity(model, openai_clip, pixels, _openai_ids())
  print(f"\nOpenAI TorchScript: image {img:.2e} text {txt:.2e}")
  assert img <= TOL and txt <= TOL

  state["input_resolution"] = torch.tensor(224)
  ref.save_torchscript(state, tmp_path / "lying.pt")
  with pytest.raises(CheckpointError,
                     match=r"lying\.pt: input_resolution=224 disagrees.*32"):
    load_model(tmp_path / "lying.pt")


class Payload:
  """Something only full pickle could rebuild."""

  def __reduce__(self):
    return (print, ("this must never run",))


def test_pt_that_needs_pickle(tmp_path, openai_clip):
  state = ref.clip_to_openai(openai_clip)
  torch.save({"state_dict": state, "payload": Payload()},
             tmp_path / "evil.pt")
  with pytest.raises(CheckpointError,
                     match=r"evil\.pt: refusing to load.*weights_only"):
    load_model(tmp_path / "evil.pt")
  # Old non-zip torch format, same rule.
  with open(tmp_path / "evil_legacy.pt", "wb") as f:
    pickle.dump(Payload(), f, protocol=2)
  with pytest.raises(CheckpointError, match=r"evil_legacy\.pt"):
    load_model(tmp_path / "evil_legacy.pt")


def test_pt_truncated_missing_resnet(tmp_path, openai_clip):
  state = ref.clip_to_openai(openai_clip)
  torch.save(state, tmp_path / "full.pt")
  data = (tmp_path / "full.pt").read_bytes()
  (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable"):
    load_model(tmp_path / "cut.pt")

  del state["transformer.resblocks.1.mlp.c_proj.bias"]
  state["visual.proj"] = state["visual.proj"][:, :39]
  torch.save(state, tmp_path / "broken.pt")
  with pytest.raises(CheckpointError) as info:
    load_model(tmp_path / "broken.pt")
  msg = str(info.value)
  assert "broken.pt" in msg
  assert "transformer.resblocks.1.mlp.c_proj.bias (expected shape [64])" in msg
  # visual.proj fixes the embedding width (39), so the text projection is
  # the tensor that disagrees.
  assert "text_projection: expected shape [64, 39], found [64, 40]" in msg

  torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1),
              "token_embedding.weight": torch.zeros(2, 2)},
             tmp_path / "RN50.pt")
  with pytest.raises(CheckpointError, match=r"RN50\.pt: a ResNet CLIP"):
    load_model(tmp_path / "RN50.pt")


# --------------------------------------------------------- HF validation


def test_hf_truncated_safetensors(tmp_path, clip_folder):
  # Cut in the data, in the header length, in the header: each is the file
  # name, then the safetensors library's reason.
  folder = _copy(clip_folder, tmp_path)
  f = folder / "model.safetensors"
  data = f.read_bytes()
  for cut in (len(data) // 2, 5, 100):
    f.write_bytes(data[:cut])
    with pytest.raises(CheckpointError) as info:
      load_model(folder)
    prefix = f"{f}: unreadable safetensors file (truncated or corrupt?): "
    assert str(info.value).startswith(prefix)
    assert len(str(info.value)) > len(prefix)


def _rewrite(folder, edit):
  arrays = {k: np.array(v) for k, v in
            read_safetensors(folder / "model.safetensors").items()}
  edit(arrays)
  safetensors.numpy.save_file(arrays, str(folder / "model.safetensors"))


def test_hf_wrong_shape_missing_unexpected(tmp_path, clip_folder):
  folder = _copy(clip_folder, tmp_path)
  key = "vision_model.encoder.layers.0.mlp.fc1.weight"

  def edit(a):
    a[key] = a[key][:, :70].copy()
    del a["text_model.final_layer_norm.bias"]
    a["vision_model.extra.weight"] = np.zeros(3, np.float32)

  _rewrite(folder, edit)
  with pytest.raises(CheckpointError) as info:
    load_model(folder)
  msg = str(info.value)
  assert "model.safetensors" in msg
  assert f"{key}: expected shape [144, 72], found [144, 70]" in msg
  assert ("missing 1 tensor(s): text_model.final_layer_norm.bias "
          "(expected shape [48])") in msg
  assert "unexpected tensor(s)" in msg and "vision_model.extra.weight" in msg


def test_hf_position_ids_only_warn(tmp_path, clip_folder):
  folder = _copy(clip_folder, tmp_path)

  def edit(a):
    a["text_model.embeddings.position_ids"] = np.arange(16)[None]

  _rewrite(folder, edit)
  with pytest.warns(CheckpointWarning, match="position_ids"):
    model = load_model(folder)
  assert model.config.text.context_length == 16


def test_hf_unknown_model_type_and_config_errors(tmp_path, siglip_folder):
  folder = _copy(siglip_folder, tmp_path)
  cfg = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(CheckpointError,
                     match=r"config\.json: model_type='bert' is not "
                     r"supported"):
    load_model(folder)
  cfg["vision_config"]["vision_use_head"] = False
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match="vision_use_head is false"):
    load_model(folder)
  cfg["vision_config"]["vision_use_head"] = True
  cfg["vision_config"]["hidden_act"] = "relu"
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError,
                     match=r"vision_config\.hidden_act='relu'"):
    load_model(folder)
  cfg["vision_config"]["hidden_act"] = "gelu_pytorch_tanh"
  cfg["vision_config"]["num_attention_heads"] = 5
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match="not a multiple of heads=5"):
    load_model(folder)


def test_hf_sharded_index_errors(tmp_path, siglip):
  folder = ref.write_hf(siglip, tmp_path / "sharded", max_shard_size="40KB")
  index = json.loads((folder / "model.safetensors.index.json").read_text())
  shard = sorted(set(index["weight_map"].values()))[-1]
  (folder / shard).rename(folder / "moved.bin")
  with pytest.raises(CheckpointError, match=f"shard '{shard}' listed"):
    load_model(folder)
  (folder / "moved.bin").rename(folder / shard)
  index["weight_map"]["vision_model.ghost"] = shard
  (folder / "model.safetensors.index.json").write_text(json.dumps(index))
  with pytest.raises(CheckpointError,
                     match=r"'vision_model\.ghost' is listed in shard"):
    load_model(folder)


def test_hf_bfloat16_weights(tmp_path, clip, clip_folder):
  folder = ref.write_hf(clip.to(torch.bfloat16), tmp_path / "bf16")
  clip.to(torch.float32)
  arrays = read_safetensors(folder / "model.safetensors")
  key = "vision_model.post_layernorm.bias"
  assert arrays[key].dtype == ml_dtypes.bfloat16
  model = load_model(folder)
  np.testing.assert_array_equal(
      np.asarray(model.params["img"]["ln_post"]["bias"]),
      arrays[key].astype(np.float32))
  reference = load_model(clip_folder)
  # bfloat16 rounding only.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=0.02,
                                                       rtol=0.01),
               model.params, reference.params)


def test_hf_preprocessing_and_tokenizer_argument(tmp_path, clip_folder,
                                                 siglip_folder):
  assert load_model(siglip_folder).preprocessing.mean == SIGLIP_MEAN
  clip_model = load_model(clip_folder)
  assert clip_model.preprocessing.mean == CLIP_MEAN
  assert clip_model.preprocessing.image_size == 32
  assert clip_model.tokenizer is None

  folder = _copy(clip_folder, tmp_path)
  (folder / "preprocessor_config.json").write_text(json.dumps({
      "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6],
      "resample": 2, "size": {"shortest_edge": 224}}))
  model = load_model(folder, tokenizer=ref.l2n)
  assert model.preprocessing.mean == (0.1, 0.2, 0.3)
  assert model.preprocessing.std == (0.4, 0.5, 0.6)
  assert model.preprocessing.resample == "bilinear"
  assert model.preprocessing.image_size == 32  # the model's, not HF's crop
  assert model.tokenizer is ref.l2n

  # transformers 5 writes the image processor inside processor_config.json.
  (folder / "preprocessor_config.json").unlink()
  (folder / "processor_config.json").write_text(json.dumps({
      "image_processor": {"image_mean": [0.5, 0.5, 0.5],
                          "image_std": [0.25, 0.25, 0.25], "resample": 3}}))
  assert load_model(folder).preprocessing.std == (0.25, 0.25, 0.25)
  with pytest.raises(FileNotFoundError, match="no_such_spiece"):
    load_model(folder, tokenizer=tmp_path / "no_such_spiece.model")


def test_clip_config_legacy_dict_and_defaults():
  cfg = {"model_type": "clip", "projection_dim": 40,
         "text_config": {"eos_token_id": 49407, "hidden_size": 48,
                         "num_attention_heads": 3},
         "text_config_dict": {"eos_token_id": 2},
         "vision_config": {"image_size": [32, 32], "patch_size": 16}}
  config = clip_config_from_hf(cfg)
  # text_config_dict wins, as in transformers; 2 means argmax pooling.
  assert config.text.eot_token_id is None
  assert config.text.context_length == 77 and config.text.width == 48
  assert config.vision.image_size == 32 and config.vision.width == 768
  assert config.vision.embed_dim == config.text.embed_dim == 40


# ------------------------------------------------------------- dispatch


def test_dispatch(tmp_path, clip_folder):
  assert detect_format(clip_folder) == "hf"
  with pytest.raises(FileNotFoundError):
    load_model(tmp_path / "nothing_here")
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match=r"empty: a folder without "
                     r"config\.json"):
    load_model(tmp_path / "empty")
  with pytest.raises(CheckpointError, match="pass the Hugging Face model "
                     "folder"):
    load_model(clip_folder / "model.safetensors")
  (tmp_path / "weights.dat").write_bytes(b"\x00garbage" * 10)
  with pytest.raises(CheckpointError,
                     match=r"weights\.dat: unknown checkpoint layout"):
    load_model(tmp_path / "weights.dat")
  np.savez(tmp_path / "m.noext", x=np.zeros(1))
  shutil.move(tmp_path / "m.noext.npz", tmp_path / "m.ckpt")
  assert detect_format(tmp_path / "m.ckpt") == "npz"
  torch.save({"a": torch.zeros(1)}, tmp_path / "t.ckpt")
  assert detect_format(tmp_path / "t.ckpt") == "torch"


def test_no_warnings_on_clean_checkpoints(clip_folder, siglip_folder):
  with warnings.catch_warnings():
    warnings.simplefilter("error", CheckpointWarning)
    load_model(clip_folder)
    load_model(siglip_folder)


def test_hf_folder_tokenizer_files_are_used(tmp_path, clip_folder,
                                            monkeypatch):
  # With tokenizer files in the folder, load_hf asks jaxfsl.tokenizers for
  # the folder's tokenizer at the model's context length.
  from jaxfsl import tokenizers
  calls = []

  def fake(folder, family, context_length):
    calls.append((folder, family, context_length))
    return lambda texts: np.zeros((len(texts), context_length), np.int32)

  monkeypatch.setattr(tokenizers, "from_pretrained", fake, raising=False)
  folder = _copy(clip_folder, tmp_path)
  (folder / "tokenizer.json").write_text("{}")
  model = load_model(folder)
  assert calls == [(str(folder), "clip", 16)]
  assert model.tokenize(["a photo"]).shape == (1, 16)


def test_big_vision_with_sentencepiece_tokenizer(tmp_path, siglip):
  # tokenizer= a spiece.model path: texts in, features equal transformers on
  # the same ids. The tiny SentencePiece model is trained here (offline).
  import sentencepiece as spm
  corpus = ["a photo of a cat", "a photo of a dog", "satellite image of a "
            "field", "x-ray of a chest", "the quick brown fox"] * 20
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus), model_prefix=str(tmp_path / "spiece"),
      vocab_size=30, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1, minloglevel=2)
  np.savez(tmp_path / "m.npz", **ref.siglip_to_big_vision(siglip))
  model = load_model(tmp_path / "m.npz", tokenizer=tmp_path / "spiece.model")
  texts = ["a photo of a cat", "A DOG.", "x-ray", "field", "fox"]
  ids = model.tokenize(texts)
  assert ids.shape == (5, 16) and (ids[:, -1] == 1).all()
  assert ref.max_normalized_diff(
      model.encode_text(texts),
      ref.hf_text_features(siglip, ids.astype(np.int64))) <= TOL


# ------------------------------------------------ user paths (issue 10)


def _spiece_model(folder):
  import sentencepiece as spm
  corpus = ["a photo of a cat", "a photo of a dog", "x-ray of a chest"] * 20
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus), model_prefix=str(folder / "spiece"),
      vocab_size=30, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1, minloglevel=2)
  return folder / "spiece.model"


def test_paths_tilde_load_model_and_tokenizer(tmp_path, monkeypatch, siglip,
                                              clip_folder):
  """~ and $VARS in jaxfsl.load_model's path and tokenizer= argument."""
  import jaxfsl
  home = tmp_path / "home"
  home.mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.setenv("JAXFSL_TEST_DIR", str(home))
  np.savez(home / "m.npz", **ref.siglip_to_big_vision(siglip))
  _spiece_model(home)
  shutil.copytree(clip_folder, home / "clip")
  model = jaxfsl.load_model("~/m.npz", tokenizer="~/spiece.model")
  assert model.tokenize(["a photo of a cat"]).shape == (1, 16)
  assert model.name == str(home / "m.npz")
  model = jaxfsl.load_model("$JAXFSL_TEST_DIR/m.npz",
                            tokenizer="${JAXFSL_TEST_DIR}/spiece.model")
  assert model.tokenizer is not None
  assert jaxfsl.load_model("~/clip").config.family == "clip"
  assert detect_format("~/clip") == "hf"
  with pytest.raises(FileNotFoundError, match="does not exist"):
    jaxfsl.load_model("~/m.npz", tokenizer="~/nothing.model")


def test_paths_tilde_tokenizer_from_pretrained(tmp_path, monkeypatch):
  from jaxfsl import tokenizers
  monkeypatch.setenv("HOME", str(tmp_path))
  _spiece_model(tmp_path)
  tok = tokenizers.from_pretrained("~/spiece.model", "siglip", 8)
  direct = tokenizers.from_pretrained(tmp_path / "spiece.model", "siglip", 8)
  np.testing.assert_array_equal(tok(["a cat"]), direct(["a cat"]))
  assert tokenizers.from_pretrained("~", "siglip", 8)(["a"]).shape == (1, 8)


def test_encode_text_accepts_str():
  """model.encode_text("a photo of a cat.") is one text: [1, E]."""
  from jaxfsl.models import build
  model = build("tiny-clip")
  one = model.encode_text("a photo of a cat.")
  assert one.shape == (1, model.config.text.embed_dim)
  np.testing.assert_array_equal(
      one, model.encode_text(["a photo of a cat."]))
  with pytest.raises(TypeError, match="integers"):
    model.encode_text(np.zeros((1, 48), np.float32))


# ------------------------------------------------- families and layouts


def test_families_registry_and_flags():
  from jaxfsl.models import PRESETS, families
  assert set(families.FAMILIES) >= {"clip", "siglip"}
  with pytest.raises(ValueError, match=r"unknown model family 'nope'.*clip"):
    families.get("nope")
  for name, config in PRESETS.items():
    assert config.family in families.FAMILIES, name
  clip = families.get("clip")
  config = clip.config(
      vision=dict(image_size=32, patch_size=16, width=64, depth=1, heads=2,
                  mlp_dim=128, embed_dim=16),
      text=dict(vocab_size=300, context_length=8, width=32, depth=1, heads=2,
                mlp_dim=64, embed_dim=16, eot_token_id=7))
  # The family supplies every flag the caller did not state.
  assert (config.vision.act, config.vision.pool, config.vision.pre_norm,
          config.vision.norm_eps) == ("quick_gelu", "cls", True, 1e-5)
  assert (config.text.causal, config.text.pool,
          config.text.eot_token_id) == (True, "eot", 7)
  siglip = families.get("siglip").preprocessing(32)
  assert siglip.mean == SIGLIP_MEAN and siglip.image_size == 32


def test_layout_registry_hook(tmp_path, monkeypatch, openai_clip):
  """A new single-file layout is one Layout entry in LAYOUTS, tried before
  the more general layout of its file kind."""
  import jaxfsl.checkpoints as ckpt
  from jaxfsl.checkpoints import openai as openai_layout
  seen = []

  def convert(arrays, path):
    seen.append(path)
    return openai_layout.convert_openai(
        {k.removeprefix("fake."): v for k, v in arrays.items()}, path)

  fake = ckpt.Layout("fake", "torch",
                     lambda keys: any(k.startswith("fake.") for k in keys),
                     convert)
  monkeypatch.setattr(ckpt, "LAYOUTS", (fake, *ckpt.LAYOUTS))
  state = ref.clip_to_openai(openai_clip)
  torch.save({f"fake.{k}": v for k, v in state.items()}, tmp_path / "f.pt")
  torch.save(state, tmp_path / "plain.pt")
  model = load_model(tmp_path / "f.pt")
  assert seen == [str(tmp_path / "f.pt")]
  plain = load_model(tmp_path / "plain.pt")  # still the OpenAI layout
  assert seen == [str(tmp_path / "f.pt")]
  jax.tree.map(np.testing.assert_array_equal, model.params, plain.params)


def test_path_loader_hook(tmp_path, monkeypatch, clip_folder):
  """A loader owning whole paths (e.g. a folder with its own config file) is
  one PathLoader entry; load_model's **options reach it."""
  import jaxfsl.checkpoints as ckpt
  calls = []

  def load(path, tokenizer=None, dtype=None, **options):
    calls.append((path, options))
    return ckpt.load_hf(path / "inner", tokenizer=tokenizer, dtype=dtype)

  own = tmp_path / "own"
  shutil.copytree(clip_folder, own / "inner")
  (own / "own_config.json").write_text("{}")
  monkeypatch.setattr(ckpt, "PATH_LOADERS", (ckpt.PathLoader(
      "own", lambda p: (p / "own_config.json").is_file(), load),))
  model = load_model(own, heads=3)
  assert calls == [(own, {"heads": 3})]
  assert model.config.family == "clip"
  with pytest.raises(TypeError, match=r"options \['heads'\].*\['own'\]"):
    load_model(clip_folder, heads=3)
