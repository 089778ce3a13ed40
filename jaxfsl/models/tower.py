"""What every tower module shares: its settings and its encoder blocks.

``TwoTowers`` builds each tower as ``Tower(config, dtype=..., lora_scaling=
..., lora_dropout=..., remat=...)``; ``Tower`` declares those settings once
for the CLIP/SigLIP towers (``vit.VisionTower``, ``text.TextTower``) and a
family's own (``pe.PeVisionTower``, ``pe.AbsentTextTower``).
``image_encoder_params`` builds, inside an image tower's ``setup``, the
parameters every ViT here has in the same order (the order fixes a
random-init model's draws).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfsl.models.layers import Block

Array = jax.Array


class Tower(nn.Module):
  """The settings of a tower (a Flax module; subclasses narrow ``config``).

  Attributes:
    config: the tower's architecture dataclass.
    dtype: compute dtype (parameters stay float32).
    lora_scaling, lora_dropout: LoRA branch settings (see layers.Attention).
    remat: rematerialise each block in the backward pass (saves memory).
    lora_dropout_masks: how LoRA-dropout masks are drawn ("bernoulli" |
      "packed", ``layers.dropout_keep_mask``).
  """

  config: Any
  dtype: Any = jnp.float32
  lora_scaling: float = 1.0
  lora_dropout: float = 0.0
  remat: bool = False
  lora_dropout_masks: str = "bernoulli"


def image_encoder_params(tower: Tower, class_token: bool
                         ) -> tuple[Array | None, Array, list[nn.Module]]:
  """An image tower's class token, position embedding and blocks.

  Call from ``tower.setup``; ``tower.config`` gives width, num_tokens,
  depth, heads, mlp_dim, act and norm_eps.

  Args:
    tower: the image tower being set up.
    class_token: whether it has a learned class token.

  Returns:
    (cls_token float32 [W] or None, pos_embed float32 [num_tokens, W],
    ``depth`` ``layers.Block``s, rematerialised with ``tower.remat``; their
    static arguments are ``deterministic`` and ``rows`` / ``rope``).
  """
  c = tower.config
  cls_token = None
  if class_token:
    cls_token = tower.param("cls_token", nn.initializers.normal(0.02),
                            (c.width,), jnp.float32)
  pos_embed = tower.param("pos_embed", nn.initializers.normal(0.02),
                          (c.num_tokens, c.width), jnp.float32)
  block_cls = (nn.remat(Block, static_argnums=(3, 4)) if tower.remat
               else Block)
  blocks = [
      block_cls(c.heads, c.mlp_dim, c.act, c.norm_eps, dtype=tower.dtype,
                lora_scaling=tower.lora_scaling,
                lora_dropout=tower.lora_dropout,
                lora_dropout_masks=tower.lora_dropout_masks)
      for _ in range(c.depth)
  ]
  return cls_token, pos_embed, blocks
