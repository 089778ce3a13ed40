"""Transformer text tower (CLIP and SigLIP variants) from ``TextConfig``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfsl.models.config import TextConfig
from jaxfsl.models.layers import Block, Dense, LayerNorm
from jaxfsl.models.prompting import TextPrompt
from jaxfsl.models.tower import Tower

Array = jax.Array


class TextTower(Tower):
  """Text encoder: token + position embeddings, blocks, final norm, pooling.

  Attributes:
    config: the architecture; the other settings as ``Tower``.
  """

  config: TextConfig

  @nn.compact
  def __call__(self, token_ids: Array, deterministic: bool = True,
               prompt: TextPrompt | None = None) -> Array:
    """Encodes token ids.

    Args:
      token_ids: int32 [N, L], L == config.context_length, as produced by the
        checkpoint's tokenizer (padded to L).
      deterministic: False enables LoRA dropout (needs a "dropout" rng).
      prompt: optional prompt-learner hooks (``jaxfsl.models.prompting``):
        the ids rewritten into the learner's prompts, context vectors
        inserted before the position embeddings, deep prompts before blocks;
        None runs the plain tower.

    Returns:
      float32 [N, E] projected (not normalised) text features.
    """
    c = self.config
    if token_ids.ndim != 2 or token_ids.shape[1] != c.context_length:
      raise ValueError(
          f"expected token ids [N, {c.context_length}], got "
          f"{tuple(token_ids.shape)}")
    if prompt is not None:
      token_ids = prompt.token_ids(token_ids)
    embedding = self.param("token_embed", nn.initializers.normal(0.02),
                           (c.vocab_size, c.width), jnp.float32)
    pos = self.param("pos_embed", nn.initializers.normal(0.01),
                     (c.context_length, c.width), jnp.float32)
    x = jnp.take(embedding, token_ids, axis=0)
    if prompt is not None:
      x = prompt.embed(x, token_ids)
    x = (x + pos).astype(self.dtype)
    mask = None
    if c.causal:
      mask = jnp.tril(jnp.ones((c.context_length, c.context_length), bool))
    block_cls = nn.remat(Block, static_argnums=(3,)) if self.remat else Block
    for i in range(c.depth):
      if prompt is not None:
        x = prompt.before_block(i, x)
      x = block_cls(c.heads, c.mlp_dim, c.act, c.norm_eps, dtype=self.dtype,
                    lora_scaling=self.lora_scaling,
                    lora_dropout=self.lora_dropout,
                    lora_dropout_masks=self.lora_dropout_masks,
                    name=f"blocks_{i}")(
                        x, mask, deterministic)
    x = LayerNorm(c.norm_eps, name="ln_final")(x)
    if c.pool == "last":
      pooled = x[:, -1]
    else:
      if c.eot_token_id is None:
        # OpenAI's convention: the end-of-text token has the largest id.
        position = jnp.argmax(token_ids, axis=-1)
      else:
        position = jnp.argmax(token_ids == c.eot_token_id, axis=-1)
      pooled = jnp.take_along_axis(x, position[:, None, None], axis=1)[:, 0]
    pooled = Dense(c.embed_dim, use_bias=c.proj_bias, dtype=self.dtype,
                   name="proj")(pooled)
    return pooled.astype(jnp.float32)
