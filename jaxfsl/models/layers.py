"""Transformer building blocks shared by the image and text towers.

LoRA adapters are not parameters of these modules: they live in a separate
variable collection, ``"lora"``, that the caller supplies beside the frozen
``"params"``. An attention module that finds ``lora/<target>`` (a dict with
``a`` [in, r] and ``b`` [r, out]) adds ``scaling * dropout(x) @ a @ b`` to that
projection; one that finds nothing runs the frozen path only, so a model applied
without adapters is bit-identical to the backbone. Because adapters are just
another input, ``jax.vmap`` over them batches episodes while the backbone stays
a single shared (unbatched) pytree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

LORA_COLLECTION = "lora"
LORA_TARGETS = ("q", "k", "v", "o")
# How LoRA-dropout keep masks are drawn (``dropout_keep_mask``).
DROPOUT_MASKS = ("bernoulli", "packed")


def packed_draw_bits(keep: float) -> int | None:
  """Bits per draw with which "packed" masks keep exactly ``keep``.

  A uniform b-bit draw u compared with the integer t = keep * 2^b gives
  P(u < t) = t / 2^b, exactly ``keep`` when that t is an integer: 8 bits
  (four draws per 32-bit word) when ``keep`` is a multiple of 1/256, else
  16 bits (two per word) when it is a multiple of 1/65536, else None (no
  exact packed draw; ``dropout_keep_mask`` refuses it).
  """
  for bits in (8, 16):
    threshold = keep * 2**bits
    if 0 < threshold < 2**bits and threshold == math.floor(threshold):
      return bits
  return None


def keep_mask_from_words(words: Array, keep: float, shape: Sequence[int]
                         ) -> Array:
  """The "packed" keep mask of ``shape`` from random uint32 ``words``.

  Each word is split (little-endian bitcast) into 32 / b unsigned b-bit
  draws (b from ``packed_draw_bits``), consumed in order; element i is
  kept when draw i < keep * 2^b.

  Args:
    words: uint32 [ceil(prod(shape) * b / 32)] random words.
    keep: keep probability, a multiple of 1/256 or of 1/65536 in (0, 1).
    shape: the mask's shape.

  Returns:
    bool [*shape].

  Raises:
    ValueError: ``keep`` has no exact packed draw (see ``packed_draw_bits``).
  """
  bits = packed_draw_bits(keep)
  if bits is None:
    raise ValueError(
        f"packed dropout masks: keep probability {keep!r} is not a multiple "
        "of 1/256 or 1/65536 in (0, 1), so 8- or 16-bit draws cannot keep it "
        "exactly; use dropout_masks='bernoulli' or such a rate")
  dtype = jnp.uint8 if bits == 8 else jnp.uint16
  size = math.prod(shape)
  draws = jax.lax.bitcast_convert_type(words, dtype).reshape(-1)
  if draws.shape[0] != size:
    draws = draws[:size]
  return (draws < jnp.asarray(int(keep * 2**bits), dtype)).reshape(shape)


def dropout_keep_mask(key: Array, keep: float, shape: Sequence[int],
                      masks: str = "bernoulli") -> Array:
  """Boolean keep mask of ``shape``, each element True with prob. ``keep``.

  Args:
    key: PRNG key.
    keep: keep probability (1 - dropout rate), in (0, 1].
    shape: the mask's shape.
    masks: "bernoulli" (default): ``jax.random.bernoulli`` (a float32
      uniform from 32 random bits per element). "packed" (opt-in): 8-bit
      draws, four per 32-bit random word (16-bit, two per word, when
      ``keep`` is a multiple of 1/65536 but not of 1/256), compared with an
      integer threshold (``keep_mask_from_words``): still exactly
      Bernoulli(keep) per element and independent across elements, from 4x
      fewer random bits (threefry evaluations), but other masks than
      "bernoulli" draws from the same key. A ViT-B/16 training step draws
      36 such masks of 30 x 197 x 768 (LoRA on q, k, v), regenerated in the
      backward pass.

  Returns:
    bool [*shape].

  Raises:
    ValueError: an unknown ``masks``, or "packed" with a ``keep`` that is
      not a multiple of 1/65536.
  """
  if masks not in DROPOUT_MASKS:
    raise ValueError(f"dropout masks {masks!r}: expected one of "
                     f"{DROPOUT_MASKS}")
  # The scope names these ops in profiles (tools/profile_step.py).
  with jax.named_scope("dropout_mask"):
    if masks == "bernoulli":
      return jax.random.bernoulli(key, keep, shape)
    bits = packed_draw_bits(keep) or 8
    per_word = 32 // bits
    words = jax.random.bits(key, (-(-math.prod(shape) // per_word),),
                            jnp.uint32)
    return keep_mask_from_words(words, keep, shape)


def activation(name: str) -> Callable[[Array], Array]:
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name == "gelu_tanh":
    return lambda x: jax.nn.gelu(x, approximate=True)
  raise ValueError(
      f"unknown activation {name!r}; expected quick_gelu, gelu or gelu_tanh")


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Rotates channel pairs: (a, b) -> (a cos - b sin, b cos + a sin).

  The GPT-J / interleaved RoPE convention (pair 2j, 2j+1 share an angle), as
  PE-Core's ``rope.py`` (``rotate_half`` on adjacent pairs), computed in
  float32 and cast back.

  Args:
    x: [N, L, H, D].
    cos, sin: float32 [L, D] (each angle repeated for its pair).

  Returns:
    [N, L, H, D] in x's dtype.
  """
  dtype = x.dtype
  x = x.astype(jnp.float32)
  pairs = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(
      x.shape)
  y = x * cos[:, None, :] + rotated * sin[:, None, :]
  return y.astype(dtype)


class LayerNorm(nn.Module):
  """LayerNorm computed in float32 whatever the compute dtype (as CLIP does)."""

  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)
    width = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (width,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (width,), jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    return y.astype(dtype)


class Dense(nn.Module):
  """x @ kernel (+ bias), kernel float32 [in, out], matmul in ``dtype``.

  ``columns=(start, stop)`` computes only those output features (the
  parameters keep their full shape): ``Attention`` uses it to project the
  queries and the keys/values of different rows with one fused kernel.
  """

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array,
               columns: tuple[int, int] | None = None) -> Array:
    kernel = self.param(
        "kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    if columns is not None:
      kernel = kernel[:, columns[0]:columns[1]]
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,),
                        jnp.float32)
      if columns is not None:
        bias = bias[columns[0]:columns[1]]
      y = y + bias.astype(self.dtype)
    return y


class Attention(nn.Module):
  """Multi-head attention with a fused qkv projection and optional LoRA.

  The frozen q, k and v projections are one [W, 3W] matmul; LoRA deltas (low
  rank, cheap) are added per target. ``kv`` given makes it cross-attention:
  queries from ``x``, keys/values from ``kv`` (SigLIP's MAP head).

  Attributes:
    heads: number of heads.
    dtype: compute dtype of the matmuls.
    lora_scaling: multiplier of the LoRA branch (alpha / sqrt(rank)).
    lora_dropout: dropout rate on the LoRA branch input (train mode only).
    lora_dropout_masks: how its masks are drawn: "bernoulli" or "packed"
      (``dropout_keep_mask``).
  """

  heads: int
  dtype: Dtype = jnp.float32
  lora_scaling: float = 1.0
  lora_dropout: float = 0.0
  lora_dropout_masks: str = "bernoulli"

  def _lora(self, target: str, x: Array, deterministic: bool,
            mask_shape: tuple[int, ...] | None = None) -> Array | None:
    """LoRA delta of ``x`` [N, L', W]; ``mask_shape`` [N, L, W], L >= L',
    draws the dropout mask for all L rows and uses its first L' (so a
    row subset sees the mask it gets when every row is computed)."""
    if not self.has_variable(LORA_COLLECTION, target):
      return None
    adapter = self.get_variable(LORA_COLLECTION, target)
    if self.lora_dropout > 0.0 and not deterministic:
      # One mask per target, as separate LoRA layers with their own dropout.
      keep = 1.0 - self.lora_dropout
      mask = dropout_keep_mask(self.make_rng("dropout"), keep,
                               mask_shape or x.shape, self.lora_dropout_masks)
      mask = mask[:, :x.shape[1]]
      x = jnp.where(mask, x / keep, 0).astype(x.dtype)
    h = jnp.dot(x.astype(self.dtype), adapter["a"].astype(self.dtype))
    h = jnp.dot(h, adapter["b"].astype(self.dtype))
    return h * jnp.asarray(self.lora_scaling, self.dtype)

  @nn.compact
  def __call__(self, x: Array, kv: Array | None = None,
               mask: Array | None = None,
               deterministic: bool = True,
               num_queries: int | None = None,
               rope: tuple[Array, Array] | None = None) -> Array:
    """Attention over a sequence.

    Args:
      x: [N, Lq, W] queries (and keys/values when ``kv`` is None).
      kv: optional [N, Lk, W] keys/values source.
      mask: optional boolean [Lq, Lk] (or broadcastable to [N, H, Lq, Lk]),
        True where attention is allowed.
      deterministic: disables LoRA dropout.
      num_queries: self-attention only: compute the outputs of the first
        ``num_queries`` positions only (keys and values still come from every
        position), equal to the first rows of the full outputs. A ViT whose
        last block feeds only its class token uses 1.
      rope: self-attention only: (cos, sin) float32 [L, head_dim] rotary
        tables of the L positions (``apply_rope``), applied to q and k after
        their LoRA deltas (PE-Core's 2D RoPE).

    Returns:
      [N, Lq, W] ([N, num_queries, W] when given) in the compute dtype.
    """
    width = x.shape[-1]
    head_dim = width // self.heads
    qkv_layer = Dense(3 * width, dtype=self.dtype, name="qkv")
    rows = None
    if kv is None and num_queries is not None:
      rows = num_queries
      q_src, kv_src = x[:, :rows], x
      q = qkv_layer(q_src, columns=(0, width))
      k, v = jnp.split(qkv_layer(x, columns=(width, 3 * width)), 2, axis=-1)
      if mask is not None:
        mask = mask[..., :rows, :]
    elif kv is None:
      qkv = qkv_layer(x)
      q, k, v = jnp.split(qkv, 3, axis=-1)
      q_src = kv_src = x
    else:
      # Cross attention still uses the fused parameters: run the one matmul on
      # each source and keep the slices it needs.
      q = jnp.split(qkv_layer(x), 3, axis=-1)[0]
      _, k, v = jnp.split(qkv_layer(kv), 3, axis=-1)
      q_src, kv_src = x, kv
    full_shape = x.shape if rows is not None else None
    for target, src in (("q", q_src), ("k", kv_src), ("v", kv_src)):
      delta = self._lora(target, src, deterministic, full_shape)
      if delta is not None:
        if target == "q":
          q = q + delta
        elif target == "k":
          k = k + delta
        else:
          v = v + delta

    def heads_first(t):
      return t.reshape(t.shape[:-1] + (self.heads, head_dim))

    q, k, v = heads_first(q), heads_first(k), heads_first(v)
    if rope is not None:
      cos, sin = rope
      q = apply_rope(q, cos[:q.shape[1]], sin[:q.shape[1]])
      k = apply_rope(k, cos, sin)
    # Scaling q ([N, Lq, H, D]) rather than the logits ([N, H, Lq, Lk]):
    # Lk / D times fewer multiplies in each pass (3x for ViT-B/16), and XLA
    # fuses it into q's relayout for the matmul. Equal to scaling the
    # logits up to rounding; exactly equal when D is a power of 4 (64:
    # scale 1/8).
    q = q * jnp.asarray(head_dim**-0.5, q.dtype)
    # Heads-major [N, H, L, D] operands: both attention matmuls are then
    # plain batched [L, D] products in XLA's canonical (batch-major) layout
    # and AV comes out as [N, H, Lq, D]; with [N, L, H, D] operands XLA:CPU
    # computed AV transposed ([N, H, D, Lq]) and relaid it out.
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    logits = jnp.einsum("nhqd,nhkd->nhqk", q, k).astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.swapaxes(jnp.einsum("nhqk,nhkd->nhqd", weights, v), 1, 2)
    out = out.reshape(out.shape[:-2] + (width,))
    y = Dense(width, dtype=self.dtype, name="out")(out)
    delta = self._lora("o", out, deterministic, full_shape)
    if delta is not None:
      y = y + delta
    return y


class Mlp(nn.Module):
  mlp_dim: int
  act: str
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    h = Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x)
    h = activation(self.act)(h)
    return Dense(width, dtype=self.dtype, name="fc2")(h)


class Block(nn.Module):
  """Pre-LN transformer block: x + attn(ln1(x)); x + mlp(ln2(x)).

  The towers name their blocks blocks_0 .. blocks_{depth-1} and unroll them
  rather than scan, so that LoRA can target any subset of blocks.
  """

  heads: int
  mlp_dim: int
  act: str
  norm_eps: float
  dtype: Dtype = jnp.float32
  lora_scaling: float = 1.0
  lora_dropout: float = 0.0
  lora_dropout_masks: str = "bernoulli"

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None,
               deterministic: bool = True,
               num_queries: int | None = None,
               rope: tuple[Array, Array] | None = None) -> Array:
    """[N, L, W] -> [N, L, W]; [N, num_queries, W] when given: the outputs
    of the first positions only (see ``Attention``); ``rope`` as there."""
    h = LayerNorm(self.norm_eps, name="ln1")(x)
    h = Attention(self.heads, dtype=self.dtype, lora_scaling=self.lora_scaling,
                  lora_dropout=self.lora_dropout,
                  lora_dropout_masks=self.lora_dropout_masks, name="attn")(
                      h, mask=mask, deterministic=deterministic,
                      num_queries=num_queries, rope=rope)
    if num_queries is not None:
      x = x[:, :num_queries]
    x = x + h.astype(x.dtype)
    h = LayerNorm(self.norm_eps, name="ln2")(x)
    h = Mlp(self.mlp_dim, self.act, dtype=self.dtype, name="mlp")(h)
    return x + h.astype(x.dtype)
