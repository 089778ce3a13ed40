"""The release's optimizer for the trainable pytree: AdamW + per-step cosine LR.

The release runs ``torch.optim.AdamW(lr=2e-4, betas=(0.9, 0.999), eps=1e-8,
weight_decay=1e-2)`` with ``CosineAnnealingLR(T_max=8 * T, eta_min=1e-6)``,
calling ``optimizer.step()`` then ``scheduler.step()`` once per training step.
Over the T steps of an episode the LR therefore only travels 1/8 of a
half-period: from 2e-4 to ~1.97e-4.

How ``optax.adamw`` matches torch's AdamW, update k = 0, 1, ... (torch's
``step`` counter is k + 1):

* torch: ``p <- p * (1 - lr_k * wd)``, then
  ``p <- p - lr_k * m_hat / (sqrt(v_hat) + eps)`` with the bias-corrected
  moments ``m_hat = m / (1 - b1^(k+1))``, ``v_hat = v / (1 - b2^(k+1))``.
  Decay uses the parameters from before the update, and the LR is that of the
  current step because the scheduler is stepped after the optimizer.
* optax: ``scale_by_adam`` -> ``m_hat / (sqrt(v_hat) + eps)`` (eps outside the
  square root, eps_root = 0, same bias correction); ``add_decayed_weights``
  adds ``wd * p`` with the same pre-update p; ``scale_by_learning_rate``
  multiplies by ``-schedule(count)`` where count starts at 0 for the first
  update. The sum ``-lr_k * (adam + wd * p)`` is torch's two steps exactly.

So the two only differ in float rounding; ``tests/test_optim.py`` checks them
against each other.
"""

from __future__ import annotations

import dataclasses
import math

import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The release's AdamW on the trainable pytree, cosine-annealed per step.

  Attributes (config keys ``optim.*``):
    lr: initial learning rate (the release: 2e-4).
    b1, b2: Adam betas.
    eps: Adam epsilon, added outside the square root (as torch).
    weight_decay: decoupled weight decay coefficient.
    min_lr: the cosine schedule's floor (torch's eta_min).
    period_factor: the cosine's half-period is period_factor * T steps.

  Raises:
    ValueError: naming every bad key (``optim.lr``, ...) at once.
  """

  lr: float = 2e-4
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 1e-2
  min_lr: float = 1e-6
  period_factor: float = 8.0

  def __post_init__(self):
    errors = []
    for name in ("lr", "eps", "period_factor"):
      value = getattr(self, name)
      if not _finite(value) or value <= 0:
        errors.append(f"optim.{name} {value!r}: expected a number > 0")
    for name in ("b1", "b2"):
      value = getattr(self, name)
      if not _finite(value) or not 0 <= value < 1:
        errors.append(f"optim.{name} {value!r}: expected a number in [0, 1)")
    for name in ("weight_decay", "min_lr"):
      value = getattr(self, name)
      if not _finite(value) or value < 0:
        errors.append(f"optim.{name} {value!r}: expected a number >= 0")
    if not errors and self.min_lr > self.lr:
      errors.append(f"optim.min_lr {self.min_lr!r}: expected <= optim.lr "
                    f"({self.lr!r})")
    if errors:
      raise ValueError("; ".join(errors))


def _finite(x) -> bool:
  return (isinstance(x, (int, float)) and not isinstance(x, bool)
          and math.isfinite(x))


def release_schedule(
    total_steps: int,
    base_lr: float = 2e-4,
    min_lr: float = 1e-6,
    period_factor: float = 8,
) -> optax.Schedule:
  """PyTorch ``CosineAnnealingLR(T_max=period_factor * T)``, stepped per step.

  ``lr_k = min_lr + (base_lr - min_lr) * (1 + cos(pi * k / T_max)) / 2`` for
  the k-th update (k from 0): ``optax.cosine_decay_schedule`` with
  ``alpha = min_lr / base_lr``. It clamps at k = T_max where torch's closed
  form is periodic; the two agree for k <= T_max, which covers every
  episode (k < T = T_max / period_factor).

  Args:
    total_steps: T, the number of training steps of the episode.
    base_lr: LR at k = 0 (> 0).
    min_lr: torch's eta_min.
    period_factor: T_max = period_factor * T.

  Returns:
    An optax schedule: int count -> float32 scalar LR.

  Raises:
    ValueError: T_max <= 0 or base_lr <= 0.
  """
  t_max = period_factor * total_steps
  if t_max <= 0:
    raise ValueError(f"period_factor * total_steps must be > 0, got {t_max}")
  if base_lr <= 0:
    raise ValueError(f"base_lr must be > 0, got {base_lr}")
  return optax.cosine_decay_schedule(
      init_value=base_lr, decay_steps=t_max, alpha=min_lr / base_lr)


def optimizer_from_config(total_steps: int, config: OptimConfig
                          ) -> optax.GradientTransformation:
  """``release_optimizer`` with the settings of an ``OptimConfig``."""
  return release_optimizer(
      total_steps, base_lr=config.lr, betas=(config.b1, config.b2),
      eps=config.eps, weight_decay=config.weight_decay, min_lr=config.min_lr,
      period_factor=config.period_factor)


def release_optimizer(
    total_steps: int,
    base_lr: float = 2e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    min_lr: float = 1e-6,
    period_factor: float = 8,
) -> optax.GradientTransformation:
  """``torch.optim.AdamW`` with the release's per-step cosine schedule.

  Meant for the adapter pytree only (the backbone is frozen and never passed
  to it); every leaf is decayed, as in the release where the optimizer gets
  the LoRA parameters only.

  Args:
    total_steps: T, the number of training steps of the episode.
    base_lr: initial LR.
    betas: Adam (b1, b2).
    eps: Adam epsilon, added outside the square root (as torch).
    weight_decay: decoupled weight decay coefficient (multiplied by the LR).
    min_lr: the cosine schedule's floor (torch's eta_min).
    period_factor: T_max = period_factor * T.

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params``.
  """
  b1, b2 = betas
  return optax.adamw(
      learning_rate=release_schedule(
          total_steps, base_lr, min_lr, period_factor),
      b1=b1,
      b2=b2,
      eps=eps,
      eps_root=0.0,
      weight_decay=weight_decay,
  )
