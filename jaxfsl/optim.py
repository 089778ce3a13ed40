"""The optimizer of the trainable pytree: the release's AdamW (default) or
CoOp's / MaPLe's SGD, with a per-step cosine LR and an optional warmup.

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

SGD (``OptimConfig.name = "sgd"``) is ``torch.optim.SGD(lr, momentum,
weight_decay)`` with dampening 0 and no Nesterov, the optimiser of CoOp and
MaPLe (Dassl's defaults): torch adds ``wd * p`` to the gradient *before* the
momentum buffer ``buf <- momentum * buf + g`` (``buf = g`` at the first
step) and updates ``p <- p - lr_k * buf``. optax: ``add_decayed_weights(wd)``
-> ``trace(momentum)`` (zero-initialised, so its first value is g as well)
-> ``scale_by_learning_rate(schedule)``: the same sums in the same order.

The warmup (``warmup_steps`` W > 0) holds the LR at ``warmup_lr`` for steps
0..W-1; step k >= W uses the cosine at k - W (Dassl's
``ConstantWarmupScheduler`` with its default ``WARMUP_RECOUNT``; torch:
``SequentialLR([ConstantLR, CosineAnnealingLR], milestones=[W])``). Dassl
counts in epochs and steps the LR once per epoch; an episode has no epochs of
several batches (each of its T steps is a full batch), so jaxfsl counts in
steps, and ``warmup_steps = -1`` means one epoch of the release's
``T = epochs * shot``: ``shot`` steps (``resolve``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import optax

# optim.name: the release's AdamW, torch's SGD, or the trainable's own
# (``Trainable.optim_overrides``: CoOp / MaPLe their originals' SGD, LoRA the
# release's AdamW).
OPTIMIZERS = ("adamw", "sgd", "trainable")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The optimiser of the trainable pytree, cosine-annealed per step.

  Attributes (config keys ``optim.*``):
    name: "adamw" (the release), "sgd" (torch's SGD with momentum and
      coupled weight decay) or "trainable" (the trainable's own settings,
      ``Trainable.optim_overrides``, replace these fields; ``resolve``).
    lr: initial learning rate (the release: 2e-4).
    b1, b2: Adam betas (AdamW only).
    eps: Adam epsilon, added outside the square root (as torch; AdamW only).
    weight_decay: AdamW: decoupled, multiplied by the LR; SGD: added to the
      gradient before momentum (torch's SGD).
    min_lr: the cosine schedule's floor (torch's eta_min).
    period_factor: the cosine's half-period is period_factor * T steps.
    momentum: SGD's momentum (dampening 0, no Nesterov; SGD only).
    warmup_steps: steps at the constant ``warmup_lr`` before the cosine
      starts (0: none, the release; -1: one epoch of T = epochs * shot, i.e.
      ``shot`` steps, set by ``resolve``).
    warmup_lr: the LR during the warmup.

  Raises:
    ValueError: naming every bad key (``optim.lr``, ...) at once.
  """

  name: str = "adamw"
  lr: float = 2e-4
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 1e-2
  min_lr: float = 1e-6
  period_factor: float = 8.0
  momentum: float = 0.9
  warmup_steps: int = 0
  warmup_lr: float = 1e-5

  def __post_init__(self):
    errors = []
    if self.name not in OPTIMIZERS:
      errors.append(f"optim.name {self.name!r}: expected one of "
                    f"{OPTIMIZERS}")
    if not _finite(self.momentum) or not 0 <= self.momentum < 1:
      errors.append(f"optim.momentum {self.momentum!r}: expected a number "
                    "in [0, 1)")
    if (isinstance(self.warmup_steps, bool)
        or not isinstance(self.warmup_steps, int) or self.warmup_steps < -1):
      errors.append(f"optim.warmup_steps {self.warmup_steps!r}: expected an "
                    "integer >= 0 (or -1: one epoch, shot steps)")
    if not _finite(self.warmup_lr) or self.warmup_lr < 0:
      errors.append(f"optim.warmup_lr {self.warmup_lr!r}: expected a number "
                    ">= 0")
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


def resolve(config: OptimConfig, overrides: Mapping[str, Any],
            epoch_steps: int) -> OptimConfig:
  """The optimiser a job runs: ``name = "trainable"`` replaced by the
  trainable's own fields (``overrides``, from
  ``Trainable.optim_overrides()``; none: the release's AdamW with the
  config's other fields), and ``warmup_steps = -1`` by ``epoch_steps``.

  Raises:
    ValueError: an override that is not an ``OptimConfig`` field or a bad
      value (naming the key).
  """
  if config.name == "trainable":
    unknown = sorted(set(overrides) - {f.name for f in
                                       dataclasses.fields(OptimConfig)})
    if unknown:
      raise ValueError(f"trainable optimiser overrides {unknown} are not "
                       "OptimConfig fields")
    config = dataclasses.replace(config, **{"name": "adamw", **overrides})
  if config.warmup_steps == -1:
    config = dataclasses.replace(config, warmup_steps=int(epoch_steps))
  return config


def schedule_from_config(total_steps: int, config: OptimConfig
                         ) -> optax.Schedule:
  """``release_schedule`` after ``config.warmup_steps`` steps at
  ``config.warmup_lr`` (the cosine restarts its count at the warmup's end;
  module docstring). T_max stays ``period_factor * total_steps``.

  Raises:
    ValueError: warmup_steps -1 (not resolved) or >= total_steps.
  """
  cosine = release_schedule(total_steps, config.lr, config.min_lr,
                            config.period_factor)
  w = config.warmup_steps
  if w == 0:
    return cosine
  if not 0 < w < total_steps:
    raise ValueError(f"optim.warmup_steps {w}: expected 0 <= warmup_steps < "
                     f"T = {total_steps} (-1 is resolved by resolve())")
  return optax.join_schedules(
      [optax.constant_schedule(config.warmup_lr), cosine], boundaries=[w])


def optimizer_from_config(total_steps: int, config: OptimConfig
                          ) -> optax.GradientTransformation:
  """The optimiser of an ``OptimConfig`` (name "adamw" or "sgd") over
  ``total_steps`` = T steps.

  Raises:
    ValueError: name "trainable" or warmup_steps -1 (``resolve`` first), or
      warmup_steps >= T.
  """
  if config.name == "trainable":
    raise ValueError("optim.name 'trainable' must be resolved against the "
                     "trainable first (jaxfsl.optim.resolve)")
  sched = schedule_from_config(total_steps, config)
  if config.name == "sgd":
    return sgd(sched, momentum=config.momentum,
               weight_decay=config.weight_decay)
  return optax.adamw(learning_rate=sched, b1=config.b1, b2=config.b2,
                     eps=config.eps, eps_root=0.0,
                     weight_decay=config.weight_decay)


def sgd(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9,
        weight_decay: float = 0.0) -> optax.GradientTransformation:
  """``torch.optim.SGD(lr, momentum, weight_decay)`` (dampening 0, no
  Nesterov): ``g += wd * p`` before the momentum buffer (module docstring).

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params`` when
    ``weight_decay`` > 0.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.trace(decay=momentum, nesterov=False),
      optax.scale_by_learning_rate(learning_rate))


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
