"""Reference models and checkpoint fixtures for the checkpoint tests.

Builds small random-init transformers ``CLIPModel`` / ``SiglipModel`` (torch,
CPU), perturbs every parameter so that LayerNorm scales/biases and all biases
are away from their trivial init (a swapped or dropped term then shows), and
rewrites their weights in the big_vision ``.npz`` and OpenAI ``.pt`` layouts.
Nothing is downloaded.

Import as ``import _reference`` from a test module in this folder.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import transformers

# ------------------------------------------------------------ HF models


def perturb_(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
  """Adds N(0, scale^2) noise to every parameter, in place."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in sorted(module.named_parameters()):
      p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def hf_clip(*, vision_width: int = 72, vision_heads: int = 6,
            vision_depth: int = 2, patch: int = 16, image: int = 32,
            text_width: int = 48, text_heads: int = 3, text_depth: int = 2,
            embed: int = 40, vocab: int = 100, context: int = 16,
            act: str = "quick_gelu", text_act: str | None = None,
            eos_token_id: int = 99, seed: int = 0
            ) -> transformers.CLIPModel:
  """A random, perturbed CLIPModel in eval mode."""
  torch.manual_seed(seed)
  text = dict(
      hidden_size=text_width, intermediate_size=2 * text_width,
      num_hidden_layers=text_depth, num_attention_heads=text_heads,
      vocab_size=vocab, max_position_embeddings=context,
      hidden_act=text_act or act, bos_token_id=min(vocab - 2, 49406),
      eos_token_id=eos_token_id, pad_token_id=1)
  vision = dict(
      hidden_size=vision_width, intermediate_size=2 * vision_width,
      num_hidden_layers=vision_depth, num_attention_heads=vision_heads,
      image_size=image, patch_size=patch, hidden_act=act)
  config = transformers.CLIPConfig(text_config=text, vision_config=vision,
                                   projection_dim=embed)
  model = transformers.CLIPModel(config).eval()
  perturb_(model, seed)
  return model


def hf_siglip(*, width: int = 72, heads: int = 6, depth: int = 2,
              patch: int = 16, image: int = 32, text_width: int = 48,
              text_heads: int = 3, text_depth: int = 2, vocab: int = 100,
              context: int = 16, seed: int = 0
              ) -> transformers.SiglipModel:
  """A random, perturbed SiglipModel in eval mode (text head -> width)."""
  torch.manual_seed(seed)
  text = dict(
      hidden_size=text_width, intermediate_size=2 * text_width,
      num_hidden_layers=text_depth, num_attention_heads=text_heads,
      vocab_size=vocab, max_position_embeddings=context,
      projection_size=width, bos_token_id=None, eos_token_id=1,
      pad_token_id=1)
  vision = dict(
      hidden_size=width, intermediate_size=2 * width,
      num_hidden_layers=depth, num_attention_heads=heads, image_size=image,
      patch_size=patch)
  config = transformers.SiglipConfig(text_config=text, vision_config=vision)
  model = transformers.SiglipModel(config).eval()
  perturb_(model, seed)
  return model


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# -------------------------------------------------------------- inputs


def random_pixels(n: int, size: int, seed: int) -> np.ndarray:
  """float32 [N, S, S, 3], roughly normalised pixels."""
  return np.random.default_rng(seed).normal(
      size=(n, size, size, 3)).astype(np.float32)


def clip_ids(n: int, context: int, vocab: int, eos: int, pad: int,
             bos: int, seed: int, max_id: int | None = None) -> np.ndarray:
  """CLIP-style rows ``[bos, w..., eos, pad...]``, EOS at varying places.

  Args:
    pad: the padding id (HF's CLIP tokenizers pad with the EOS id itself;
      OpenAI's pad with 0).
    max_id: exclusive upper bound of the random word ids (default vocab);
      below ``eos`` for OpenAI-style argmax pooling.
  """
  rng = np.random.default_rng(seed)
  hi = vocab if max_id is None else max_id
  ids = np.full((n, context), pad, np.int64)
  for row in range(n):
    end = 1 + (row * 5 + 2) % (context - 1)  # 1 .. context-1
    words = rng.integers(2, hi, size=end - 1)
    words[words == eos] = 2
    words[words == bos] = 3
    ids[row, 0] = bos
    ids[row, 1:end] = words
    ids[row, end] = eos
  return ids


def siglip_ids(n: int, context: int, vocab: int, seed: int, eos: int = 1,
               pad: int = 1) -> np.ndarray:
  """SigLIP-style rows ``[w..., eos, pad...]`` padded to the full length."""
  rng = np.random.default_rng(seed)
  ids = np.full((n, context), pad, np.int64)
  for row in range(n):
    end = (row * 5 + 3) % context
    words = rng.integers(2, vocab, size=end)
    ids[row, :end] = words
    ids[row, end] = eos
  return ids


# ------------------------------------------------------ reference outputs


def _pooled(out) -> torch.Tensor:
  # transformers 5 returns a BaseModelOutputWithPooling; 4.x a tensor.
  return out if isinstance(out, torch.Tensor) else out.pooler_output


def hf_image_features(model, pixels_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(
        pixels_nhwc.transpose(0, 3, 1, 2)))
    return _pooled(model.get_image_features(pixel_values=x)).numpy()


def hf_text_features(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return _pooled(model.get_text_features(
        input_ids=torch.from_numpy(ids))).numpy()


def l2n(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def max_normalized_diff(a, b) -> float:
  """max |a/|a| - b/|b|| over rows (the acceptance metric)."""
  return float(np.max(np.abs(l2n(a) - l2n(b))))


# ------------------------------------------------------- big_vision layout


def siglip_to_big_vision(model: transformers.SiglipModel,
                         scan: bool = False,
                         prefix: str = "params/") -> dict[str, np.ndarray]:
  """HF SiglipModel weights -> flat big_vision npz keys and shapes.

  Follows big_vision's SigLIP (vit.py, text_transformer.py, two_towers.py)
  naming; ``scan=True`` stacks the encoder blocks as ``nn.scan`` saves them.
  """
  sd = state_dict_numpy(model)
  vc, tc = model.config.vision_config, model.config.text_config
  out = {}

  def attention(dst, get, width, heads):
    d = width // heads
    for bv, hf in (("query", "q"), ("key", "k"), ("value", "v")):
      w, b = get(hf)
      out[f"{dst}/{bv}/kernel"] = w.T.reshape(width, heads, d)
      out[f"{dst}/{bv}/bias"] = b.reshape(heads, d)

  def mlp(dst, src):
    for i, fc in enumerate(("fc1", "fc2")):
      out[f"{dst}/Dense_{i}/kernel"] = sd[f"{src}.{fc}.weight"].T
      out[f"{dst}/Dense_{i}/bias"] = sd[f"{src}.{fc}.bias"]

  def ln(dst, src):
    out[f"{dst}/scale"] = sd[f"{src}.weight"]
    out[f"{dst}/bias"] = sd[f"{src}.bias"]

  def encoder(dst, src, cfg):
    w, h = cfg.hidden_size, cfg.num_attention_heads
    for i in range(cfg.num_hidden_layers):
      b, s = f"{dst}/encoderblock_{i}", f"{src}.layers.{i}"
      ln(f"{b}/LayerNorm_0", f"{s}.layer_norm1")
      ln(f"{b}/LayerNorm_1", f"{s}.layer_norm2")
      attention(f"{b}/MultiHeadDotProductAttention_0",
                lambda n, s=s: (sd[f"{s}.self_attn.{n}_proj.weight"],
                                sd[f"{s}.self_attn.{n}_proj.bias"]), w, h)
      out[f"{b}/MultiHeadDotProductAttention_0/out/kernel"] = (
          sd[f"{s}.self_attn.out_proj.weight"].T.reshape(h, w // h, w))
      out[f"{b}/MultiHeadDotProductAttention_0/out/bias"] = (
          sd[f"{s}.self_attn.out_proj.bias"])
      mlp(f"{b}/MlpBlock_0", f"{s}.mlp")

  w, h = vc.hidden_size, vc.num_attention_heads
  out["img/embedding/kernel"] = sd[
      "vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0)
  out["img/embedding/bias"] = sd[
      "vision_model.embeddings.patch_embedding.bias"]
  out["img/pos_embedding"] = sd[
      "vision_model.embeddings.position_embedding.weight"][None]
  encoder("img/Transformer", "vision_model.encoder", vc)
  ln("img/Transformer/encoder_norm", "vision_model.post_layernorm")
  head = "vision_model.head"
  out["img/MAPHead_0/probe"] = sd[f"{head}.probe"]
  in_w = np.split(sd[f"{head}.attention.in_proj_weight"], 3, axis=0)
  in_b = np.split(sd[f"{head}.attention.in_proj_bias"], 3, axis=0)
  attention("img/MAPHead_0/MultiHeadDotProductAttention_0",
            lambda n: (in_w["qkv".index(n)], in_b["qkv".index(n)]), w, h)
  out["img/MAPHead_0/MultiHeadDotProductAttention_0/out/kernel"] = (
      sd[f"{head}.attention.out_proj.weight"].T.reshape(h, w // h, w))
  out["img/MAPHead_0/MultiHeadDotProductAttention_0/out/bias"] = (
      sd[f"{head}.attention.out_proj.bias"])
  ln("img/MAPHead_0/LayerNorm_0", f"{head}.layernorm")
  mlp("img/MAPHead_0/MlpBlock_0", f"{head}.mlp")

  out["txt/Embed_0/embedding"] = sd[
      "text_model.embeddings.token_embedding.weight"]
  out["txt/pos_embedding"] = sd[
      "text_model.embeddings.position_embedding.weight"][None]
  encoder("txt/Encoder_0", "text_model.encoder", tc)
  ln("txt/Encoder_0/encoder_norm", "text_model.final_layer_norm")
  out["txt/head/kernel"] = sd["text_model.head.weight"].T
  out["txt/head/bias"] = sd["text_model.head.bias"]
  out["t"] = sd["logit_scale"].reshape(1)
  out["b"] = sd["logit_bias"].reshape(1)

  if scan:
    for base, depth in (("img/Transformer", vc.num_hidden_layers),
                        ("txt/Encoder_0", tc.num_hidden_layers)):
      names = {k[len(f"{base}/encoderblock_0/"):] for k in out
               if k.startswith(f"{base}/encoderblock_0/")}
      for name in names:
        layers = [out.pop(f"{base}/encoderblock_{i}/{name}")
                  for i in range(depth)]
        out[f"{base}/encoderblock/{name}"] = np.stack(layers)
  return {prefix + k: np.ascontiguousarray(v, np.float32)
          for k, v in out.items()}


# ----------------------------------------------------------- OpenAI layout


def clip_to_openai(model: transformers.CLIPModel) -> dict[str, torch.Tensor]:
  """HF CLIPModel weights -> OpenAI ``clip/model.py`` state dict names."""
  sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
  out = {}

  def blocks(dst, src, depth):
    for i in range(depth):
      d, s = f"{dst}.{i}", f"{src}.layers.{i}"
      out[f"{d}.attn.in_proj_weight"] = torch.cat(
          [sd[f"{s}.self_attn.{n}_proj.weight"] for n in "qkv"], 0)
      out[f"{d}.attn.in_proj_bias"] = torch.cat(
          [sd[f"{s}.self_attn.{n}_proj.bias"] for n in "qkv"], 0)
      for p in ("weight", "bias"):
        out[f"{d}.attn.out_proj.{p}"] = sd[f"{s}.self_attn.out_proj.{p}"]
        out[f"{d}.ln_1.{p}"] = sd[f"{s}.layer_norm1.{p}"]
        out[f"{d}.ln_2.{p}"] = sd[f"{s}.layer_norm2.{p}"]
        out[f"{d}.mlp.c_fc.{p}"] = sd[f"{s}.mlp.fc1.{p}"]
        out[f"{d}.mlp.c_proj.{p}"] = sd[f"{s}.mlp.fc2.{p}"]

  vc, tc = model.config.vision_config, model.config.text_config
  out["visual.conv1.weight"] = sd[
      "vision_model.embeddings.patch_embedding.weight"]
  out["visual.class_embedding"] = sd["vision_model.embeddings.class_embedding"]
  out["visual.positional_embedding"] = sd[
      "vision_model.embeddings.position_embedding.weight"]
  for p in ("weight", "bias"):
    out[f"visual.ln_pre.{p}"] = sd[f"vision_model.pre_layrnorm.{p}"]
    out[f"visual.ln_post.{p}"] = sd[f"vision_model.post_layernorm.{p}"]
    out[f"ln_final.{p}"] = sd[f"text_model.final_layer_norm.{p}"]
  blocks("visual.transformer.resblocks", "vision_model.encoder",
         vc.num_hidden_layers)
  out["visual.proj"] = sd["visual_projection.weight"].T.contiguous()
  out["token_embedding.weight"] = sd[
      "text_model.embeddings.token_embedding.weight"]
  out["positional_embedding"] = sd[
      "text_model.embeddings.position_embedding.weight"]
  blocks("transformer.resblocks", "text_model.encoder", tc.num_hidden_layers)
  out["text_projection"] = sd["text_projection.weight"].T.contiguous()
  out["logit_scale"] = sd["logit_scale"]
  return out


class _Holder(torch.nn.Module):
  """A scriptable container whose children/parameters carry given names."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x


def save_torchscript(state: Mapping[str, torch.Tensor],
                     path: str | Path) -> None:
  """Writes ``state`` as a TorchScript archive whose state_dict() is it.

  Stands in for OpenAI's official (TorchScript) files; integer entries
  become buffers, as OpenAI's ``input_resolution`` etc.
  """
  root = _Holder()
  for name, value in state.items():
    *parents, leaf = name.split(".")
    module = root
    for part in parents:
      if part not in module._modules:
        module.add_module(part, _Holder())
      module = module._modules[part]
    if value.is_floating_point():
      module.register_parameter(leaf, torch.nn.Parameter(value.clone()))
    else:
      module.register_buffer(leaf, value.clone())
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    torch.jit.save(torch.jit.script(root), str(path))


def write_hf(model, folder: Path, max_shard_size: str | None = None
             ) -> Path:
  """save_pretrained to ``folder`` (optionally sharded); returns it."""
  kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(str(folder), **kw)
  return folder


def parity(model_ours, model_hf, pixels: np.ndarray, ids: np.ndarray
           ) -> tuple[float, float]:
  """(image, text) max normalised differences between ours and HF."""
  img = max_normalized_diff(model_ours.encode_image(pixels),
                            hf_image_features(model_hf, pixels))
  txt = max_normalized_diff(model_ours.encode_text(ids),
                            hf_text_features(model_hf, ids))
  return img, txt


__all__: Sequence[str] = (
    "perturb_", "hf_clip", "hf_siglip", "state_dict_numpy", "random_pixels",
    "clip_ids", "siglip_ids", "hf_image_features", "hf_text_features", "l2n",
    "max_normalized_diff", "siglip_to_big_vision", "clip_to_openai",
    "save_torchscript", "write_hf", "parity")
