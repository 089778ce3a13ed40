"""``EngineConfig``: everything static about an episode program."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxfsl import optim as optim_lib
from jaxfsl.method.objective import (
  MethodConfig,
  active_window,
  evaluation_steps,
)
from jaxfsl.optim import OptimConfig
from jaxfsl.protocols.episodic.batch import NUM_VIEWS
from jaxfsl.trainables.lora import LoraConfig

LOSS_SCALING = ("none", "dynamic")
# torch.amp.GradScaler's defaults (the release trains with torch AMP).
LOSS_SCALE_INIT = 2.0 ** 16
LOSS_SCALE_GROWTH_STEPS = 2000


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Everything static about an episode program.

  Attributes:
    way, shot, query: episode shape.
    steps: T, total optimisation steps (the release: epochs * shot).
    method: loss terms, weights, extra-terms window (``MethodConfig``).
    optim: the optimiser and its schedule (``OptimConfig``): the release's
      AdamW by default. Resolved here (``jaxfsl.optim.resolve``): name
      "trainable" becomes the trainable's own optimiser
      (``Trainable.optim_overrides``; CoOp / MaPLe: their originals' SGD)
      and warmup_steps -1 becomes ``shot`` steps (one epoch of T = epochs *
      shot).
    lora: LoRA settings, used when ``trainable`` is "lora" and
      ``trainable_config`` is None.
    trainable: what is fine-tuned (``config.trainable``; see
      ``jaxfsl.trainables.available()``).
    trainable_config: the settings block of a non-LoRA trainable (its
      dataclass or a mapping), given to ``get_trainable``.
    prompt: the class-prompt template ("{}": the class name) of the token
      ids the episodes carry (``config.prompt``); prompt learners are bound
      to it (their text tower rewrites those ids into their own prompts).
    logit_scale: multiplier of cosine logits in every loss and in
      evaluation; a float (the release: 100 for every backbone) or
      "checkpoint" to use the model's learned temperature. (A SigLIP bias
      adds the same constant to every class logit, so it changes neither the
      softmax losses nor the argmax and is not needed here.)
    remat: rematerialise transformer blocks in the backward pass.
    skip_clean_pass_outside_window: outside the extra-terms window the clean
      support pass feeds no loss; skipping it is exact and saves M of N + M
      images per step, at the price of compiling a second step body.
    num_views: V, augmented views per support image.
    clean_from_views: opt-in, not the release: take the clean support
      features g from the augmented pass (view 0 is the identity view of
      the same images, rows [0, M) of the views) instead of a second pass
      with its own dropout masks. Saves M of N + M images per window step;
      g then shares view 0's dropout masks, so results differ from the
      release's beyond rounding.
    loss_scaling: "none", or "dynamic" for float16 compute: the loss is
      multiplied by a scale before differentiation and the gradients
      divided by it; a step whose gradients overflow is skipped and the
      scale halved, and the scale doubles after ``LOSS_SCALE_GROWTH_STEPS``
      finite steps in a row (PyTorch's ``GradScaler`` defaults, which the
      release's AMP uses: initial 2**16, growth 2, backoff 0.5, interval
      2000). Parameters, optimiser state and losses stay float32.
    cpu_tuning: on CPU devices, compile with ``CPU_COMPILER_OPTIONS``
      (faster, rounding-level differences only); options already set in
      ``XLA_FLAGS`` are left to it. No effect on GPU/TPU.

  Raises:
    ValueError: naming every bad field at once.
  """

  way: int = 5
  shot: int = 1
  query: int = 15
  steps: int = 250
  method: MethodConfig = MethodConfig()
  optim: OptimConfig = OptimConfig()
  lora: LoraConfig = LoraConfig()
  trainable: str = "lora"
  trainable_config: Any = None
  prompt: str = "a photo of a {}."
  logit_scale: float | str = 100.0
  remat: bool = False
  skip_clean_pass_outside_window: bool = True
  num_views: int = NUM_VIEWS
  clean_from_views: bool = False
  loss_scaling: str = "none"
  cpu_tuning: bool = True

  def __post_init__(self):
    errors = []
    for name in ("way", "shot", "query", "steps", "num_views"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
          or value < 1:
        errors.append(f"{name} {value!r}: expected an integer >= 1")
    if isinstance(self.logit_scale, str) and self.logit_scale != "checkpoint":
      errors.append(f"logit_scale {self.logit_scale!r}: expected a number "
                    "or 'checkpoint'")
    elif not isinstance(self.logit_scale, str) and not (
        math.isfinite(self.logit_scale) and self.logit_scale > 0):
      # A scale <= 0 flattens or reverses every softmax.
      errors.append(f"logit_scale {self.logit_scale!r}: expected a finite "
                    "number > 0 (the release: 100), or 'checkpoint'")
    if self.loss_scaling not in LOSS_SCALING:
      errors.append(f"loss_scaling {self.loss_scaling!r}: expected one of "
                    f"{LOSS_SCALING}")
    if not isinstance(self.prompt, str) or self.prompt.count("{}") != 1:
      errors.append(f"prompt {self.prompt!r}: expected a template with '{{}}' "
                    "exactly once (the class name)")
    if errors:
      raise ValueError("; ".join(errors))
    object.__setattr__(self, "optim", self._resolved_optim())

  def _resolved_optim(self) -> OptimConfig:
    overrides = {}
    if self.optim.name == "trainable":
      from jaxfsl.trainables import get_trainable  # The registry.

      overrides = get_trainable(self.trainable,
                                self.trainable_block).optim_overrides()
    optim = optim_lib.resolve(self.optim, overrides, self.shot)
    if not optim.warmup_steps < self.steps:
      raise ValueError(f"optim.warmup_steps {optim.warmup_steps}: expected "
                       f"< T = {self.steps} steps (the warmup would cover "
                       "the whole episode)")
    return optim

  @property
  def window(self) -> tuple[int, int]:
    """[start, end) steps where the method's extra terms are active."""
    return active_window(self.steps, self.method)

  @property
  def window_end(self) -> int:
    """The first step after the extra-terms window (for plots)."""
    return self.window[1]

  @property
  def evaluation_steps(self) -> tuple[int, ...]:
    """Steps after which the queries are evaluated: (f, 2f, 3f, 4f, T)."""
    return evaluation_steps(self.steps)

  stage_ends = evaluation_steps

  @property
  def terms(self) -> tuple[str, ...]:
    """The loss terms reported (and summed) for this variant."""
    return self.method.terms

  @property
  def trainable_block(self) -> Any:
    """The settings given to ``get_trainable(self.trainable, ...)``."""
    if self.trainable_config is None and self.trainable == "lora":
      return self.lora
    return self.trainable_config


def steps_for(epochs: int, shot: int) -> int:
  """The release's T = epochs * shot (one step per support image per epoch,
  full batch)."""
  return int(epochs) * int(shot)
