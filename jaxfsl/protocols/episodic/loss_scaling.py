"""Dynamic loss scaling of an episode's step, for float16 compute.

PyTorch's ``torch.amp.GradScaler`` rule with its defaults (the release
trains with torch AMP; ``engine_config.LOSS_SCALE_INIT`` and
``LOSS_SCALE_GROWTH_STEPS``): the loss is multiplied by a scale before
differentiation so that float16 gradients do not underflow, the gradients
are divided by it, a step whose gradients overflow is skipped and the scale
halved, and the scale doubles after a run of finite steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxfsl.protocols.episodic.engine_config import LOSS_SCALE_GROWTH_STEPS

Array = jax.Array


def value_and_unscaled_grad(loss_fn: Callable[[Any], tuple[Array, dict]],
                            params: Any, scale: Array | None
                            ) -> tuple[tuple[Array, dict], Any]:
  """``jax.value_and_grad(loss_fn, has_aux=True)(params)`` under a scale.

  Args:
    loss_fn: params -> (loss float32 [], aux dict).
    params: the pytree differentiated.
    scale: float32 [] loss scale, or None for plain differentiation.

  Returns:
    ((loss, aux), grads): the loss unscaled; the gradients of
    ``scale * loss`` divided by ``scale`` (inf/NaN where float16
    overflowed, which ``dynamic_scale_update`` then detects).
  """
  if scale is None:
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  def scaled(p):
    total, aux = loss_fn(p)
    return total * scale, {**aux, "unscaled": total}

  (_, aux), grads = jax.value_and_grad(scaled, has_aux=True)(params)
  total = aux.pop("unscaled")
  grads = jax.tree_util.tree_map(lambda g: g / scale, grads)
  return (total, aux), grads


def dynamic_scale_update(grads: Any, updated: Any, previous: Any,
                         scale: Array, finite_steps: Array
                         ) -> tuple[Any, Any, Array, Array]:
  """torch.amp.GradScaler's rule: keep the update when every gradient is
  finite (doubling the scale after ``LOSS_SCALE_GROWTH_STEPS`` such steps
  in a row), else keep the previous adapters and optimiser state (the step
  is skipped, as GradScaler skips ``optimizer.step()``) and halve the scale
  (never below 1).

  Args:
    grads: this step's unscaled gradients.
    updated: (adapters, opt_state) after the optimiser update.
    previous: (adapters, opt_state) before it.
    scale: float32 [] the scale the step used.
    finite_steps: int32 [] finite steps in a row before this one.

  Returns:
    (adapters, opt_state, new scale float32 [], finite steps int32 []).
  """
  finite = jnp.all(jnp.asarray(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
  adapters, opt_state = jax.tree_util.tree_map(
      lambda new, old: jnp.where(finite, new, old), updated, previous)
  grown = finite_steps + 1 >= LOSS_SCALE_GROWTH_STEPS
  new_scale = jnp.where(finite, jnp.where(grown, scale * 2.0, scale),
                        jnp.maximum(scale * 0.5, 1.0))
  new_count = jnp.where(finite & ~grown, finite_steps + 1, 0)
  return (adapters, opt_state, new_scale.astype(jnp.float32),
          new_count.astype(jnp.int32))
