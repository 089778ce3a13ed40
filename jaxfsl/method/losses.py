"""Per-episode fine-tuning losses on L2-normalised features (pure ``jnp``).

Notation shared by every function here (see docs/method.md, "Fine-tuning one
episode"):

* ``f``  [N, D]: L2-normalised features of the augmented support views, labels
  ``y`` int [N] in ``[0, way)``.
* ``g``  [M, D]: L2-normalised features of the clean support, labels ``y0``
  int [M].
* ``t``  [way, D]: L2-normalised text features of the episode's classes, row
  ``c`` is class ``c``.
* ``CE(logits, y)`` is softmax cross-entropy with integer labels, averaged over
  rows (PyTorch ``F.cross_entropy`` with its default ``reduction='mean'``).

Every loss is computed in float32 whatever the dtype of its inputs (bf16/fp16
features are upcast) and returns a float32 scalar. The feature matmuls run at
``Precision.HIGHEST``: they are tiny next to the towers, and the default
f32 matmul precision on GPU/TPU (TF32/bf16 passes) would perturb cosines by
~1e-3, i.e. logits by ~0.1 once multiplied by the scale of 100.

The functions are atomic on purpose: ``jaxfsl.method.objective`` says which
terms a variant uses, when, and weights and sums them (stage 1:
``L_vlm + 0.1 L_ad + 3 L_ra``; stage 2: ``L_vlm``); RA's fuse weight p_k is
``objective.fuse_weight``. The gradient decomposition of L_vlm is in
``jaxfsl.method.metrics``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# torch.nn.functional.normalize's default eps.
NORMALIZE_EPS = 1e-12

RELATION_FORMS = ("release", "softmax_kl")


def _f32(x: ArrayLike) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


def _cosines(a: Array, b: Array) -> Array:
  """a [P, D] @ b[Q, D]^T -> [P, Q] float32, full-precision matmul."""
  return jnp.einsum(
      "pd,qd->pq", _f32(a), _f32(b), precision=jax.lax.Precision.HIGHEST)


def l2_normalize(
    x: ArrayLike, axis: int = -1, eps: float = NORMALIZE_EPS) -> Array:
  """``x / max(||x||_2, eps)`` along ``axis``, as ``torch.F.normalize``.

  Args:
    x: any shape, any float dtype.
    axis: the axis to normalise.
    eps: lower bound on the norm; an all-zero vector stays zero.

  Returns:
    Same shape and dtype as ``x``.
  """
  x = jnp.asarray(x)
  norm = jnp.linalg.norm(x.astype(jnp.float32), axis=axis, keepdims=True)
  return (x / jnp.maximum(norm, eps)).astype(x.dtype)


def _cross_entropy(logits: Array, labels: ArrayLike) -> Array:
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.asarray(labels)))


def vlm_loss(
    image_feats: ArrayLike,
    text_feats: ArrayLike,
    labels: ArrayLike,
    scale: float = 100.0,
) -> Array:
  """L_vlm = CE(scale * f t^T, y): the usual cross-modal fine-tuning loss.

  Args:
    image_feats: f, float [N, D], L2-normalised.
    text_feats: t, float [way, D], L2-normalised.
    labels: y, int [N] in [0, way).
    scale: logit scale (CLIP's exp(logit_scale) = 100).

  Returns:
    float32 scalar, mean over the N rows.
  """
  return _cross_entropy(scale * _cosines(image_feats, text_feats), labels)


def visual_loss(
    image_feats: ArrayLike,
    labels: ArrayLike,
    prototypes: ArrayLike,
    scale: float = 100.0,
) -> Array:
  """L_v ("FT + L_v" in the paper): CE of f against the class visual prototypes.

  ``CE(scale * f l2n(P)^T, y)`` where ``P`` are class means of support features;
  the prototypes are L2-normalised here, so raw class means may be passed.
  Whether gradient flows into ``P`` is the caller's choice (pass
  ``stop_gradient(P)`` for a fixed classifier).

  Args:
    image_feats: f, float [N, D], L2-normalised.
    labels: y, int [N] in [0, way).
    prototypes: P, float [way, D], not necessarily normalised.
    scale: logit scale.

  Returns:
    float32 scalar, mean over the N rows.
  """
  w = l2_normalize(_f32(prototypes))
  return _cross_entropy(scale * _cosines(image_feats, w), labels)


def sample_shuffled_slots(rng: Array, num_rows: int, way: int) -> Array:
  """Draws the rows of f that form SVL's class-shuffled classifier.

  One row index per classifier slot, uniform over all ``num_rows`` augmented
  views and with replacement, so a slot may get a view of any class and two
  slots may get the same view.

  Args:
    rng: a ``jax.random`` key.
    num_rows: N, the number of rows of f (static).
    way: number of classifier slots (static).

  Returns:
    int32 [way] in [0, num_rows).
  """
  return jax.random.randint(rng, (way,), 0, num_rows, dtype=jnp.int32)


def anti_visual_loss(
    image_feats: ArrayLike,
    labels: ArrayLike,
    slot_indices: ArrayLike,
    scale: float = 100.0,
) -> Array:
  """L_ad, suppressing visual learning (SVL).

  ``w' = l2n(f[slot_indices])`` [way, D] is a visual classifier whose slot
  ``c`` holds a random view (of any class), and ``L_ad = CE(scale * f w'^T, y)``
  with the true labels: minimising it cannot be done by making views of one
  class cluster, which is what suppresses the visual shortcut. Gradient flows
  through both ``f`` and ``w'`` (no stop-gradient, as in the release).

  Args:
    image_feats: f, float [N, D], L2-normalised.
    labels: y, int [N] in [0, way).
    slot_indices: int [way] in [0, N), e.g. from ``sample_shuffled_slots``;
      repeated indices are allowed.
    scale: logit scale.

  Returns:
    float32 scalar, mean over the N rows.
  """
  f = _f32(image_feats)
  w = l2_normalize(jnp.take(f, jnp.asarray(slot_indices), axis=0))
  return _cross_entropy(scale * _cosines(f, w), labels)


def _relation_targets(
    text_feats: ArrayLike, labels: ArrayLike, clean_labels: ArrayLike) -> Array:
  """A_t = (t t^T)[y][:, y0]: text-side class relations, float32 [N, M]."""
  text_rel = _cosines(text_feats, text_feats)
  return text_rel[jnp.asarray(labels)][:, jnp.asarray(clean_labels)]


def relation_alignment_loss(
    image_feats: ArrayLike,
    clean_feats: ArrayLike,
    text_feats: ArrayLike,
    labels: ArrayLike,
    clean_labels: ArrayLike,
    prev_relation: ArrayLike,
    fuse_weight: ArrayLike,
    form: str = "release",
) -> tuple[Array, Array]:
  """L_ra, relationship alignment (RA).

  ``A_v = f g^T`` (unscaled cosines) [N, M];
  ``A_t = (t t^T)[y][:, y0]`` [N, M];
  ``F = p * stop_gradient(prev_relation) + (1 - p) * A_t``, p = ``fuse_weight``.

  * ``form="release"`` (default): ``mean_{i,j} exp(F_ij) * (F_ij - A_v_ij)``,
    the mean over all N*M entries; this is what the release computes with
    ``F.kl_div(A_v, F, log_target=True, reduction='mean')``, treating both
    cosine matrices as log-probabilities (it is not a proper KL, and it
    can be negative: nothing makes exp(F) a distribution).
  * ``form="softmax_kl"`` (the paper's D_KL(A_v || A_fuse)): with
    ``P_i = softmax(A_v_i)`` and ``Q_i = softmax(F_i)`` over each row (no
    temperature), ``(1/N) sum_i sum_j P_ij (log P_ij - log Q_ij)``.

  Gradient flows into ``f`` and ``g`` through A_v and, if the text tower is
  tuned, into ``t`` through A_t; never into ``prev_relation``.

  At step 0 there is no previous A_v: the engine skips RA there rather than
  passing a dummy (with p_0 = 1 the target would be all prev_relation).

  Args:
    image_feats: f, float [N, D], L2-normalised augmented views.
    clean_feats: g, float [M, D], L2-normalised clean support.
    text_feats: t, float [way, D], L2-normalised.
    labels: y, int [N].
    clean_labels: y0, int [M].
    prev_relation: A_v of the previous step, float [N, M].
    fuse_weight: p, float scalar in [0, 1] (``objective.fuse_weight``);
      may be traced.
    form: "release" or "softmax_kl" (static).

  Returns:
    (loss, A_v): float32 scalar and float32 [N, M]; A_v is returned with its
    gradient stopped, to be passed as ``prev_relation`` at the next step.
  """
  if form not in RELATION_FORMS:
    raise ValueError(f"unknown form {form!r}; expected one of {RELATION_FORMS}")
  a_v = _cosines(image_feats, clean_feats)
  a_t = _relation_targets(text_feats, labels, clean_labels)
  p = _f32(fuse_weight)
  target = p * jax.lax.stop_gradient(_f32(prev_relation)) + (1.0 - p) * a_t
  if form == "release":
    loss = jnp.mean(jnp.exp(target) * (target - a_v))
  else:
    log_p = jax.nn.log_softmax(a_v, axis=-1)
    log_q = jax.nn.log_softmax(target, axis=-1)
    loss = jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))
  return loss, jax.lax.stop_gradient(a_v)
