"""Model FLOPs of the episode engine's training step, and chips' peaks.

FLOP accounting (``step_flops``), model FLOPs of one training step, counted
the same way for jaxfsl and the PyTorch reference (so their ratio is a ratio
of times). A matmul of [m, k] by [k, n] is 2 m k n FLOPs. Per image of T
tokens through a ViT of width W, H heads, MLP width F, depth L, LoRA rank r
on the targeted projections, per block:

  dense  = 2 T W (3W) [fused qkv] + 2 T W W [out] + 2 * 2 T W F [fc1, fc2]
  attn   = 2 T T W [q k^T, all heads] + 2 T T W [weights @ v]
  lora   = per target 2 T W r + 2 T r W [x a, then (x a) b]

and once per image the projection 2 W E of the pooled token (an attention
pool, SigLIP's MAP head or PE-Core's, is counted as one cross-attention
block with a single query, its MLP of width ``pool_mlp_dim`` where the
tower has one, 4 W in PE-Core whatever the blocks' width, else F). The patch
embedding is not counted: the engine computes it once per episode in
``prepare``, outside the step (the PyTorch reference, run the release's
way, does pay its 2 (S/p)^2 (3 p^2) W FLOPs per image every step).

Backward pass, with the backbone frozen and only the adapters trained:

  * a frozen projection y = x K needs dx = dy K^T only (no weight gradient):
    the same FLOPs as its forward, 1x;
  * the two attention matmuls have activations on both sides, so both
    operands get a gradient (dq, dk; d weights, dv): 2x their forward;
  * a LoRA branch needs its input gradient and its two weight gradients:
    2x its forward (da, db, and dx through a and b).

So forward + backward = 2 dense + 3 attn + 3 lora per block and image, and a
step over N + M images (stage 1: augmented views and clean support) is

  step_flops = (N + M) * sum over blocks (2 dense + 3 attn + 3 lora) + ...

This is the standard "model FLOPs" count (as used for MFU): it counts the
frozen first block's input gradient, which neither implementation needs
(both skip it), and counts every token of the last block although only the
class token reaches the loss (jaxfsl skips the others). Element-wise work
(LayerNorm, softmax, GELU, dropout), the loss terms and the AdamW update are
not counted (together well under 1% of the matmul FLOPs at ViT-B/16).
For ViT-B/16 at 224 (T = 197) this is 35.2 GFLOP per image forward and 2.17
TFLOP for a 1-shot stage-1 step (30 images).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from jaxfsl.models.config import VisionConfig

# Dense peak TFLOP/s per chip by compute dtype, for MFU. float32 on NVIDIA
# GPUs is XLA's default precision for f32 matmuls there (TF32 tensor cores);
# on TPUs f32 matmuls run as bf16 passes, so no f32 peak is given.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989.0, "float32": 494.7},
    "H100": {"bfloat16": 989.0, "float32": 494.7},
    "H800": {"bfloat16": 989.0, "float32": 494.7},
    "GH200": {"bfloat16": 989.0, "float32": 494.7},
    "B200": {"bfloat16": 2250.0, "float32": 1100.0},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "L40S": {"bfloat16": 362.0, "float32": 183.0},
    "L4": {"bfloat16": 121.0, "float32": 60.0},
    "A10G": {"bfloat16": 70.0, "float32": 35.0},
    "TPU v4": {"bfloat16": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0},
    "TPU v5e": {"bfloat16": 197.0},
    "TPU v5p": {"bfloat16": 459.0},
    "TPU v5": {"bfloat16": 459.0},
    "TPU v6 lite": {"bfloat16": 918.0},
    "TPU v6e": {"bfloat16": 918.0},
}


# Below this many model FLOPs per episode step a jaxfsl-vs-torch ratio
# measures framework overheads, not compute (tiny test models).
TINY_STEP_FLOPS = 1e10


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """Dense peak TFLOP/s of one chip for ``dtype``, None when unknown (CPUs).

  Matches the longest table key contained in ``device_kind`` (so "NVIDIA
  H100 80GB HBM3" finds "H100" and "TPU v5 lite" is not taken for "TPU v5").
  """
  matches = [k for k in PEAK_TFLOPS if k.lower() in device_kind.lower()]
  if not matches:
    return None
  return PEAK_TFLOPS[max(matches, key=len)].get(dtype)


# ------------------------------------------------------------------- FLOPs


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Model FLOPs of one image through a vision tower (see module docstring).

  Attributes:
    dense: frozen projection matmuls (qkv, out, MLP, final projection).
    attention: the two token-by-token attention matmuls.
    lora: the LoRA branches.
  """

  dense: float
  attention: float
  lora: float

  @property
  def forward(self) -> float:
    return self.dense + self.attention + self.lora

  @property
  def forward_backward(self) -> float:
    """Forward plus the frozen-backbone backward: 2 dense + 3 attn + 3 lora."""
    return 2.0 * self.dense + 3.0 * self.attention + 3.0 * self.lora


def vision_flops(config: VisionConfig, lora_rank: int = 16,
                 lora_targets: Sequence[str] = ("q", "k", "v"),
                 lora_blocks: int | None = None) -> FlopCount:
  """Per-image model FLOPs of ``encode_tokens`` (patch embedding excluded).

  Args:
    config: the vision tower.
    lora_rank: r.
    lora_targets: adapted projections per block.
    lora_blocks: number of adapted blocks (default: all).

  Returns:
    A ``FlopCount`` for one image.
  """
  t, w, f = config.num_tokens, config.width, config.mlp_dim
  depth = config.depth
  blocks = depth if lora_blocks is None else lora_blocks
  dense = depth * (2 * t * w * 3 * w + 2 * t * w * w + 2 * 2 * t * w * f)
  attention = depth * 2 * (2 * t * t * w)
  lora = blocks * len(lora_targets) * 2 * (2 * t * w * lora_rank)
  if config.pool == "map":
    # One probe query: q 2 W W, k and v over T tokens, 1 x T attention, out,
    # MLP on one token. PE-Core's pool MLP is 4 W wide even where the
    # blocks' is not (G: 6144 against 8960); SigLIP's is the blocks'.
    pool_f = getattr(config, "pool_mlp_dim", None) or f
    dense += 2 * w * w + 2 * t * w * 2 * w + 2 * w * w + 2 * 2 * w * pool_f
    attention += 2 * (2 * t * w)
  if config.proj:
    dense += 2 * w * config.embed_dim
  return FlopCount(float(dense), float(attention), float(lora))


def step_flops(config: VisionConfig, num_images: int, lora_rank: int = 16,
               lora_targets: Sequence[str] = ("q", "k", "v"),
               lora_blocks: int | None = None) -> float:
  """Model FLOPs of one training step (forward + backward) of one episode."""
  per_image = vision_flops(config, lora_rank, lora_targets, lora_blocks)
  return num_images * per_image.forward_backward
