"""The method's objective: which terms, how strong, when, and their sum.

``losses`` computes each term (L_vlm, L_ad, L_ra, L_v) on features; this
module says which of them a variant uses, when they are active (the
extra-terms window), RA's fuse weight, when the queries are evaluated, and
combines the terms into the loss that is differentiated.

The release's integer rules (docs/method.md, "Fine-tuning one episode"),
exact for every T, not only multiples of 5. With ``f = int(T / 5)``:

* the extra terms (L_ad, L_ra, L_v) are active for steps ``k < 3 f``
  ("begin" timing; "last" puts a window of the same length at the end);
* RA's fuse weight is ``p_k = 1 - k / int(0.6 T)``: its denominator is
  ``int(0.6 T)`` even though the window ends at ``3 f`` (so p never reaches
  0 inside the window when 5 does not divide T);
* the queries are evaluated after steps ``f, 2f, 3f, 4f`` and ``T``.

T = 22: window [0, 12), p_11 = 1 - 11/13, evaluations after 4, 8, 12, 16, 22.
T = 250: window [0, 150), p_k = 1 - k/150, evaluations every 50 steps.

Everything here but ``weighted_objective`` and ``fuse_weight`` is plain
Python on static values (no JAX arrays), so configs can be checked without
tracing anything.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

Variant = Literal["none", "svl", "ra", "svl_ra", "visual"]
VARIANTS = ("none", "svl", "ra", "svl_ra", "visual")
TIMINGS = ("begin", "last")
RELATION_FORMS = ("release", "softmax_kl")
# Every loss term, in the order they are summed and reported. "vlm" is L_vlm,
# "anti_visual" L_ad (SVL), "relation" L_ra (RA), "visual" L_v (FT + L_v).
TERMS = ("vlm", "anti_visual", "relation", "visual")
# Queries are evaluated NUM_STAGES times, after each fifth of T.
NUM_STAGES = 5
# The fraction of T the extra terms are active for in the release.
RELEASE_WINDOW_FRACTION = 0.6

_VARIANT_TERMS = {
    "none": ("vlm",),
    "svl": ("vlm", "anti_visual"),
    "ra": ("vlm", "relation"),
    "svl_ra": ("vlm", "anti_visual", "relation"),
    "visual": ("vlm", "visual"),
}


@dataclasses.dataclass(frozen=True)
class MethodConfig:
  """Which loss terms, how strong, and when (release defaults).

  Attributes:
    variant: "none" (plain fine-tuning, L_vlm only), "svl" (+ L_ad), "ra"
      (+ L_ra), "svl_ra" (the paper's method) or "visual" (the paper's
      "FT + L_v" analysis: + a visual-learning loss).
    anti_visual_weight: weight of L_ad (SVL); the release: 0.1.
    relation_weight: weight of L_ra (RA); the release: 3.
    visual_weight: weight of L_v for the "visual" variant.
    window_fraction: length of the extra-terms window as a fraction of T
      (config key ``method.window_fraction``). A multiple of 1/5 makes the
      window end at an evaluation step, the release's integer rule: 0.6
      gives ``3 * int(T / 5)`` steps, 1.0 all T. Any other value gives
      ``int(fraction * T)`` steps. RA's fuse weight falls over
      ``int(fraction * T)`` steps in every case.
    timing: "begin" puts the window at the start of training (the method),
      "last" at the end (the paper's "Last" ablation).
    relation_form: "release" (the release's kl_div on cosine matrices) or
      "softmax_kl" (the paper's row-softmax KL).

  Raises:
    ValueError: naming every bad key (``method.variant``, ...) at once.
  """

  variant: Variant = "svl_ra"
  anti_visual_weight: float = 0.1
  relation_weight: float = 3.0
  visual_weight: float = 1.0
  window_fraction: float = RELEASE_WINDOW_FRACTION
  timing: Literal["begin", "last"] = "begin"
  relation_form: Literal["release", "softmax_kl"] = "release"

  def __post_init__(self):
    errors = []
    if self.variant not in VARIANTS:
      errors.append(f"method.variant {self.variant!r}: expected one of "
                    f"{VARIANTS}")
    if self.timing not in TIMINGS:
      errors.append(f"method.timing {self.timing!r}: expected one of "
                    f"{TIMINGS}")
    if self.relation_form not in RELATION_FORMS:
      errors.append(f"method.relation_form {self.relation_form!r}: expected "
                    f"one of {RELATION_FORMS}")
    if not _is_number(self.window_fraction) or not (
        0.0 < self.window_fraction <= 1.0):
      errors.append(f"method.window_fraction {self.window_fraction!r}: "
                    "expected a number in (0, 1]")
    for name in ("anti_visual_weight", "relation_weight", "visual_weight"):
      value = getattr(self, name)
      if not _is_number(value) or not math.isfinite(value) or value < 0:
        errors.append(f"method.{name} {value!r}: expected a finite number "
                      ">= 0")
    if errors:
      raise ValueError("; ".join(errors))

  @property
  def terms(self) -> tuple[str, ...]:
    """The loss terms this variant uses, in ``TERMS`` order."""
    return _VARIANT_TERMS[self.variant]

  def weight(self, term: str) -> float:
    """The weight of ``term`` in the total (L_vlm: 1)."""
    return {"vlm": 1.0, "anti_visual": self.anti_visual_weight,
            "relation": self.relation_weight,
            "visual": self.visual_weight}[term]

  @property
  def uses_svl(self) -> bool:
    return "anti_visual" in self.terms

  @property
  def uses_ra(self) -> bool:
    return "relation" in self.terms

  @property
  def uses_visual(self) -> bool:
    return "visual" in self.terms

  @property
  def needs_clean_pass(self) -> bool:
    """Whether a term reads the clean support features g (RA, L_v)."""
    return self.uses_ra or self.uses_visual


def _is_number(x) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not (
      isinstance(x, bool))


def _check_steps(total_steps: int) -> int:
  if isinstance(total_steps, bool) or int(total_steps) != total_steps or (
      total_steps < 1):
    raise ValueError(f"steps (T) must be an integer >= 1, got "
                     f"{total_steps!r}")
  return int(total_steps)


def evaluation_steps(total_steps: int) -> tuple[int, ...]:
  """Steps after which the queries are evaluated: (f, 2f, 3f, 4f, T).

  With f = int(T / 5) (the release's rule). For T < 5 the first four are 0
  (evaluated before any step, like the zero-shot model).

  Args:
    total_steps: T >= 1.

  Returns:
    NUM_STAGES non-decreasing ints, the last one T.
  """
  t = _check_steps(total_steps)
  f = t // NUM_STAGES
  return tuple(k * f for k in range(1, NUM_STAGES)) + (t,)


def window_length(total_steps: int,
                  fraction: float = RELEASE_WINDOW_FRACTION) -> int:
  """Number of steps the extra terms are active for.

  A fraction j / 5 (j = 1..5) ends the window at the j-th evaluation step
  (the release: 3 * int(T / 5) for 0.6); any other fraction gives
  int(fraction * T).

  Args:
    total_steps: T >= 1.
    fraction: ``MethodConfig.window_fraction``, in (0, 1].

  Returns:
    int in [0, T].
  """
  t = _check_steps(total_steps)
  j = fraction * NUM_STAGES
  if abs(j - round(j)) < 1e-9 and 1 <= round(j) <= NUM_STAGES:
    return evaluation_steps(t)[round(j) - 1]
  return int(fraction * t)


def fuse_denominator(total_steps: int,
                     fraction: float = RELEASE_WINDOW_FRACTION) -> int:
  """int(fraction * T), RA's fuse-weight denominator (Python float64 floor,
  as the release's ``int(0.6 * T)``)."""
  return int(fraction * _check_steps(total_steps))


def active_window(total_steps: int, method: MethodConfig) -> tuple[int, int]:
  """[start, end) steps where the method's extra terms are active.

  Args:
    total_steps: T.
    method: gives ``window_fraction`` and ``timing``.

  Returns:
    (start, end): (0, L) for "begin", (T - L, T) for "last", with L =
    ``window_length(T, method.window_fraction)``.
  """
  length = window_length(total_steps, method.window_fraction)
  if method.timing == "begin":
    return 0, length
  return int(total_steps) - length, int(total_steps)


def fuse_weight(step: ArrayLike, total_steps: int | ArrayLike,
                fraction: float = RELEASE_WINDOW_FRACTION) -> Array:
  """RA's fuse weight p_k = max(0, 1 - k / int(fraction * T)).

  The target of L_ra at step k is p_k A_v(k-1) + (1 - p_k) A_t (see
  ``losses.relation_alignment_loss``). k counts from the window's first
  step (0 for "begin" timing). If int(fraction * T) is 0 the weight is 0.

  Args:
    step: k, int or float scalar; may be traced.
    total_steps: T, an int (the denominator is then Python's float64
      floor, as the release's) or a traced scalar (floor in float32, exact
      for any realistic T).
    fraction: ``MethodConfig.window_fraction`` (static).

  Returns:
    float32 scalar in [0, 1].
  """
  if isinstance(total_steps, (int, np.integer)):
    n = fuse_denominator(int(total_steps), fraction)
    if n <= 0:
      return jnp.zeros((), jnp.float32)
    n = jnp.float32(n)
  else:
    n = jnp.floor(fraction * jnp.asarray(total_steps, jnp.float32))
  p = 1.0 - jnp.asarray(step, jnp.float32) / jnp.maximum(n, 1.0)
  return jnp.where(n > 0, jnp.maximum(p, 0.0), 0.0)


def term_activity(step: ArrayLike, window: tuple[int, int],
                  method: MethodConfig) -> dict[str, Array]:
  """Whether each of the variant's terms enters the loss at ``step``.

  L_vlm always does; the extra terms inside ``window``; L_ra not at the
  window's first step (no previous A_v yet).

  Args:
    step: k, int32 scalar (may be traced).
    window: ``active_window``'s (start, end).
    method: the variant.

  Returns:
    term -> float32 scalar 0 or 1, for ``method.terms``.
  """
  start, end = window
  step = jnp.asarray(step)
  inside = ((step >= start) & (step < end)).astype(jnp.float32)
  out = {}
  for term in method.terms:
    if term == "vlm":
      out[term] = jnp.ones((), jnp.float32)
    elif term == "relation":
      out[term] = inside * (step > start).astype(jnp.float32)
    else:
      out[term] = inside
  return out


def weighted_objective(raw: Mapping[str, Array],
                       activity: Mapping[str, Array],
                       method: MethodConfig) -> tuple[Array, dict[str, Array]]:
  """The loss that is differentiated, and its parts as they entered it.

  ``part_term = activity_term * weight_term * raw_term`` for each of
  ``method.terms`` (L_vlm: ``raw["vlm"]`` itself), and ``total`` their sum
  in ``TERMS`` order, so the reported parts sum to the total. A term absent
  from ``raw`` (not computed at this step, e.g. the stage-2 branch) enters
  as 0. Stage 1 of the release: ``L_vlm + 0.1 L_ad + 3 L_ra``; stage 2:
  ``L_vlm``.

  Args:
    raw: term -> float32 scalar, the unweighted losses (``losses``).
    activity: term -> float32 scalar 0/1 (``term_activity``); a missing
      entry counts as 1.
    method: the variant and weights.

  Returns:
    (total float32 scalar, parts: term -> float32 scalar for
    ``method.terms``, zero where inactive).
  """
  zero = jnp.zeros((), jnp.float32)
  parts: dict[str, Array] = {}
  total = None
  for term in method.terms:
    if term not in raw:
      part = zero
    elif term == "vlm":
      part = raw[term]
    else:
      part = activity.get(term, 1.0) * method.weight(term) * raw[term]
    parts[term] = part
    total = part if total is None else total + part
  return total, parts
