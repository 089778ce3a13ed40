"""PE-Core (Perception Encoder, CLIP variant) vision tower in Flax.

The forward pass follows facebookresearch/perception_models
``core/vision_encoder/pe.py`` (VisionTransformer, AttentionPooling) and
``rope.py`` (Rope2D):

  patches (conv without bias, row-major tokens y * g + x)
  -> [class token] -> + absolute position embedding (class row included)
  -> ln_pre -> pre-LN blocks with 2D RoPE on q and k, exact GELU
  -> ln_post on every token -> attention pooling (one probe, 8 heads,
  x + MLP(LN(x))) -> projection.

At a grid g' other than the native g the position embedding is resampled
bilinearly without antialias (``F.interpolate(..., mode="bilinear",
align_corners=False)``, pe.py ``_sample_abs_posemb``) and RoPE uses the
integer positions of the new grid (no rescaling to the pretraining grid,
unlike timm's EVA-style ``ref_feat_shape``). Only square grids are supported.

The tower exposes the same ``embed`` / ``encode_tokens`` split as
``jaxfsl.models.vit.VisionTower``, so the episode engine's frozen
patch-embedding cache works unchanged, and its blocks are the shared
``layers.Block`` (LoRA on the packed q | k | v projection as for CLIP).

MaPLe's vision prompts (``encode_tokens(..., prompt=...)``) follow the
shared semantics of ``jaxfsl.models.prompting``, as in ``VisionTower``:
appended after the image tokens once the position embedding is added
(before ``ln_pre``, as CLIP's), replaced before blocks 1..J-1, dropped
before ``ln_post`` and the attention pooling (which then attends over the
class token and the patches, as without prompts: SigLIP's MAP head is
treated the same way). Under RoPE the prompts are not rotated (cos 1,
sin 0), like the class token: they have no grid position
(``VisionPrompt.rope_angles``). The prompts enter after the patch
embedding, so the frozen-embedding cache still applies.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfsl.models.families.pe_core import AbsentTextConfig, PeVisionConfig
from jaxfsl.models.layers import Dense, LayerNorm
from jaxfsl.models.prompting import VisionPrompt
from jaxfsl.models.tower import Tower, image_encoder_params
from jaxfsl.models.vit import MapHead, PatchEmbed

Array = jax.Array


def rope_2d_angles(grid: int, head_dim: int, class_token: bool,
                   theta: float = 10000.0) -> np.ndarray:
  """PE-Core's 2D RoPE angles for a ``grid`` x ``grid`` patch grid.

  Per head channel c (pairs interleaved, ``[f0, f0, f1, f1, ...]``): the
  first half of the channels rotates with the column x, the second half with
  the row y; frequencies ``f_k = theta^(-2k / D)``, ``D = head_dim / 2``,
  ``k < D / 2`` (perception_models ``rope.py``: ``Rope2D`` over
  ``RotaryEmbedding(head_dim // 2, freqs_for="lang")``). Positions start at 1
  with a class token, whose own row is all zeros (not rotated), and at 0
  without one.

  Args:
    grid: patch grid side g.
    head_dim: channels per head (a multiple of 4).
    class_token: whether a class token precedes the patches.
    theta: RoPE base.

  Returns:
    float32 [T, head_dim] angles in radians, T = g*g (+1 with a class token),
    tokens row-major (index y * g + x).
  """
  if head_dim % 4:
    raise ValueError(f"2D RoPE needs head_dim % 4 == 0, got {head_dim}")
  d = head_dim // 2
  freqs = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64)[:d // 2] / d)
  offset = 1 if class_token else 0
  pos = np.arange(grid, dtype=np.float64) + offset
  y, x = np.meshgrid(pos, pos, indexing="ij")  # [g, g] each, row-major
  ax = np.repeat(x.reshape(-1, 1) * freqs, 2, axis=-1)  # [g*g, d]
  ay = np.repeat(y.reshape(-1, 1) * freqs, 2, axis=-1)
  angles = np.concatenate([ax, ay], axis=-1)
  if class_token:
    angles = np.concatenate([np.zeros((1, head_dim)), angles], axis=0)
  return angles.astype(np.float32)


def resample_pos_embed(pos: Array, grid: int, new_grid: int,
                       class_token: bool) -> Array:
  """Bilinear (no antialias, half-pixel centres) resampling of [T, W] to the
  ``new_grid``; the class row is kept as is (pe.py ``_sample_abs_posemb``).

  ``jax.image.resize`` with ``antialias=False`` is torch's
  ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``
  (edge samples clamp to the border in both).
  """
  if new_grid == grid:
    return pos
  cls, patches = (pos[:1], pos[1:]) if class_token else (pos[:0], pos)
  width = pos.shape[-1]
  patches = jax.image.resize(
      patches.reshape(grid, grid, width).astype(jnp.float32),
      (new_grid, new_grid, width), method="bilinear", antialias=False)
  return jnp.concatenate(
      [cls, patches.reshape(new_grid * new_grid, width)], axis=0)


class PeVisionTower(Tower):
  """PE-Core image encoder (see the module docstring).

  Attributes:
    config: the architecture; the other settings as ``Tower`` (RoPE and
      LayerNorm run in float32 whatever ``dtype``).
  """

  config: PeVisionConfig

  def setup(self):
    c = self.config
    self.patch_embed = PatchEmbed(c.patch_size, c.width, False,
                                  dtype=self.dtype)
    self.cls_token, self.pos_embed, self.blocks = image_encoder_params(
        self, c.class_token)
    self.ln_pre = LayerNorm(c.norm_eps)
    self.ln_post = LayerNorm(c.norm_eps)
    self.map_head = MapHead(c.pool_heads, c.pool_mlp_dim, c.act, c.norm_eps,
                            dtype=self.dtype)
    self.proj = Dense(c.embed_dim, use_bias=c.proj_bias, dtype=self.dtype)

  def embed(self, pixels: Array) -> Array:
    """Frozen patch embedding.

    Args:
      pixels: float [N, S', S', 3], normalised; S' any multiple of the patch
        size (the native S or another: see ``encode_tokens``).

    Returns:
      [N, g'*g', W] patch tokens (row-major) in the compute dtype.

    Raises:
      ValueError: non-square input or a side not a multiple of the patch.
    """
    c = self.config
    shape = tuple(pixels.shape)
    if (len(shape) != 4 or shape[1] != shape[2] or shape[1] % c.patch_size
        or shape[1] == 0 or shape[3] != 3):
      raise ValueError(
          f"expected pixels [N, S, S, 3] with S a multiple of the patch size "
          f"{c.patch_size} (native S = {c.image_size}), got "
          f"{shape}")
    return self.patch_embed(pixels)

  def encode_tokens(self, tokens: Array, deterministic: bool = True,
                    prompt: VisionPrompt | None = None) -> Array:
    """The forward pass after ``embed``.

    Args:
      tokens: [N, g'*g', W] from ``embed``. At g' != the native grid the
        position embedding is resampled and RoPE uses the new grid's integer
        positions (perception_models' rule).
      deterministic: False enables LoRA dropout (needs a "dropout" rng).
      prompt: optional MaPLe vision prompts (``jaxfsl.models.prompting``),
        n of them: appended after the position embedding ([N, T + n, W],
        T = g'*g' (+1 with a class token)), unrotated by RoPE (angle 0, as
        the class token), replaced before blocks 1..J-1 and dropped before
        ``ln_post`` and the attention pooling; None runs the plain tower.

    Returns:
      float32 [N, E] projected (not normalised) image features.
    """
    c = self.config
    num = tokens.shape[1]
    grid = math.isqrt(num)
    if grid * grid != num or tokens.shape[-1] != c.width:
      raise ValueError(
          f"expected patch tokens [N, g*g, {c.width}] (a square grid), got "
          f"{tuple(tokens.shape)}")
    x = tokens.astype(self.dtype)
    if c.class_token:
      cls = jnp.broadcast_to(self.cls_token.astype(self.dtype),
                             (x.shape[0], 1, c.width))
      x = jnp.concatenate([cls, x], axis=1)
    pos = resample_pos_embed(self.pos_embed, c.grid, grid, c.class_token)
    x = x + pos.astype(self.dtype)
    if prompt is not None:
      x = prompt.embed(x)
    x = self.ln_pre(x)
    # Constants of the (static) grid: folded into the compiled program.
    angles = rope_2d_angles(grid, c.width // c.heads, c.class_token,
                            c.rope_theta)
    if prompt is not None:
      angles = prompt.rope_angles(angles)
    rope = (jnp.asarray(np.cos(angles)), jnp.asarray(np.sin(angles)))
    for i, block in enumerate(self.blocks):
      if prompt is not None:
        x = prompt.before_block(i, x)
      x = block(x, None, deterministic, None, rope)
    if prompt is not None:
      x = prompt.strip(x)
    pooled = self.map_head(self.ln_post(x))
    return self.proj(pooled).astype(jnp.float32)

  def __call__(self, pixels: Array, deterministic: bool = True,
               prompt: VisionPrompt | None = None) -> Array:
    """float [N, S, S, 3] -> float32 [N, E] image features (``prompt`` as
    in ``encode_tokens``)."""
    return self.encode_tokens(self.embed(pixels), deterministic, prompt)


class AbsentTextTower(Tower):
  """The text side of a vision-only checkpoint: raises when used.

  Initialisation (which builds the whole two-tower module to check shapes)
  returns zeros and creates no parameters; any real call raises.
  """

  config: AbsentTextConfig

  @nn.compact
  def __call__(self, token_ids: Array, deterministic: bool = True) -> Array:
    del deterministic
    if self.is_initializing():
      return jnp.zeros((token_ids.shape[0], self.config.embed_dim),
                       jnp.float32)
    raise ValueError(self.config.reason)
