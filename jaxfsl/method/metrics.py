"""The paper's analysis metrics: accuracy, modality gap, discriminability,
prototypes, gap shift, and the decomposition of L_vlm's gradient.

docs/method.md, "The analysis the paper makes" and "Fine-tuning one episode"
(evaluation). Units: cosines and distances on the unit sphere (no logit
scale); accuracies are fractions in [0, 1] (the reports turn them into %).

Pure ``jnp`` and jit-friendly (class counts are static). Every metric
L2-normalises its feature inputs first (``losses.l2_normalize``), so raw
encoder outputs and already-normalised features give the same result. All
outputs are float32; matmuls run at ``Precision.HIGHEST`` so that GPU/TPU
results match CPU ones.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxfsl.method.losses import l2_normalize

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_HI = jax.lax.Precision.HIGHEST


def _f32(x: ArrayLike) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


def _unit(x: ArrayLike) -> Array:
  return l2_normalize(jnp.asarray(x).astype(jnp.float32))


def _gap_vector(image_feats: ArrayLike, text_feats: ArrayLike) -> Array:
  """mean(l2n(text)) - mean(l2n(image)), float32 [D]."""
  return (jnp.mean(_unit(text_feats), axis=0)
          - jnp.mean(_unit(image_feats), axis=0))


def modality_gap(image_feats: ArrayLike, text_feats: ArrayLike) -> Array:
  """Distance between the image and text centroids on the unit sphere.

  ``|| mean_i l2n(x_i) - mean_j l2n(t_j) ||_2``: the centroids are means of the
  L2-normalised features and are not themselves re-normalised (the convention
  of Liang et al., "Mind the Gap", 2022), so the value lies in [0, 2].
  Source: docs/method.md, "The analysis the paper makes" (modality gap).

  Args:
    image_feats: float [N, D].
    text_feats: float [C, D], e.g. one prompt per class.

  Returns:
    float32 scalar.
  """
  return jnp.linalg.norm(_gap_vector(image_feats, text_feats))


def class_prototypes(
    feats: ArrayLike, labels: ArrayLike, num_classes: int) -> Array:
  """Class means via a one-hot matmul (no normalisation, static shapes).

  The class visual prototypes mu_c of L_v ("FT + L_v") and of the gradient
  decomposition (docs/method.md, "The analysis the paper makes").

  Args:
    feats: float [N, D], used as given (not normalised).
    labels: int [N]; labels outside [0, num_classes) are ignored.
    num_classes: C (static).

  Returns:
    float32 [C, D]; a class with no sample gets a zero row.
  """
  one_hot = jax.nn.one_hot(jnp.asarray(labels), num_classes, dtype=jnp.float32)
  sums = jnp.matmul(one_hot.T, jnp.asarray(feats).astype(jnp.float32),
                    precision=_HI)
  counts = jnp.sum(one_hot, axis=0)[:, None]
  return sums / jnp.maximum(counts, 1.0)


def visual_discriminability(
    feats: ArrayLike, labels: ArrayLike, num_classes: int) -> dict[str, Array]:
  """Mean intra-class and inter-class cosine similarity of visual features.

  With ``S = l2n(x) l2n(x)^T`` [N, N]:

  * ``intra``: mean of ``S_ij`` over ordered pairs i != j with
    ``y_i == y_j`` (self-pairs excluded);
  * ``inter``: mean of ``S_ij`` over pairs with ``y_i != y_j``;
  * ``difference``: ``intra - inter``; larger means more discriminable.

  The paper's "visual discriminability" (docs/method.md, "The analysis the
  paper makes": FT + L_v strengthens it and lowers accuracy).
  Means are pooled over pairs (for balanced episodes this equals the mean of
  per-class means). A mean with no pair to average (e.g. ``intra`` for
  1-shot clean support) is NaN.

  Args:
    feats: float [N, D]; L2-normalised here.
    labels: int [N]; rows whose label is outside [0, num_classes) (e.g. -1
      padding) take part in no pair.
    num_classes: C (static).

  Returns:
    dict with float32 scalars ``intra``, ``inter``, ``difference``.
  """
  x = _unit(feats)
  sim = jnp.matmul(x, x.T, precision=_HI)
  one_hot = jax.nn.one_hot(jnp.asarray(labels), num_classes, dtype=jnp.float32)
  valid = jnp.sum(one_hot, axis=-1)
  same = jnp.matmul(one_hot, one_hot.T, precision=_HI)
  both_valid = valid[:, None] * valid[None, :]
  intra_mask = same * (1.0 - jnp.eye(sim.shape[0], dtype=jnp.float32))
  inter_mask = both_valid * (1.0 - same)
  intra = jnp.sum(sim * intra_mask) / jnp.sum(intra_mask)
  inter = jnp.sum(sim * inter_mask) / jnp.sum(inter_mask)
  return {"intra": intra, "inter": inter, "difference": intra - inter}


def gap_shift(
    image_feats: ArrayLike, text_feats: ArrayLike, alphas: ArrayLike) -> Array:
  """Image features shifted along the modality-gap direction (the "gap shift").

  With ``delta = mean(l2n(t)) - mean(l2n(x))`` (text centroid minus image
  centroid, not normalised), returns ``l2n(l2n(x_i) + alpha * delta)`` for each
  alpha: alpha = 0 gives the normalised features, alpha = 1 translates the
  image centroid onto the text centroid before re-normalising, negative alpha
  widens the gap. Score each slice with ``accuracy`` to find where it peaks.
  Source: docs/method.md, "The analysis the paper makes" (gap shift).

  Args:
    image_feats: float [N, D].
    text_feats: float [C, D].
    alphas: float [A].

  Returns:
    float32 [A, N, D], unit rows.
  """
  delta = _gap_vector(image_feats, text_feats)
  alphas = jnp.asarray(alphas, jnp.float32).reshape(-1)
  shifted = (_unit(image_feats)[None]
             + alphas[:, None, None] * delta[None, None, :])
  return l2_normalize(shifted)


def accuracy(
    image_feats: ArrayLike, text_feats: ArrayLike, labels: ArrayLike) -> Array:
  """Fraction of rows whose most cosine-similar text feature is their label.

  The benchmark's query accuracy (docs/method.md, "Fine-tuning one episode",
  evaluation): argmax of the cosine with each class's prompt feature.

  Args:
    image_feats: float [N, D].
    text_feats: float [C, D], row c is class c.
    labels: int [N].

  Returns:
    float32 scalar in [0, 1]; ties go to the lowest class index (argmax).
  """
  sim = jnp.matmul(_unit(image_feats), _unit(text_feats).T, precision=_HI)
  pred = jnp.argmax(sim, axis=-1)
  return jnp.mean((pred == jnp.asarray(labels)).astype(jnp.float32))


class VlmGradientParts(NamedTuple):
  """Split of dL_vlm/df_i; ``visual + cross_modal`` is the full gradient.

  Attributes:
    visual: float32 [N, D], the part along the class visual prototypes.
    cross_modal: float32 [N, D], the rest.
    visual_norm: float32 [N], L2 norm of each row of ``visual``.
    cross_modal_norm: float32 [N], L2 norm of each row of ``cross_modal``.
  """

  visual: Array
  cross_modal: Array
  visual_norm: Array
  cross_modal_norm: Array


def decompose_vlm_gradient(
    image_feats: ArrayLike,
    text_feats: ArrayLike,
    labels: ArrayLike,
    prototypes: ArrayLike,
    scale: float = 100.0,
) -> VlmGradientParts:
  """Splits the gradient of L_vlm on each image feature (the paper's analysis).

  docs/method.md, "The analysis the paper makes": the gradient of L_vlm is a
  visual-learning part plus a cross-modal part; tracking both shows the
  visual shortcut.

  With ``P = softmax(scale * f t^T)`` [N, way] and ``Y = one_hot(y)``, the
  gradient of ``vlm_loss`` (mean CE) w.r.t. row i of f, taken as a free
  variable (i.e. after L2 normalisation, not through it), is
  ``G_i = (1/N) sum_c (P_ic - Y_ic) * scale * t_c``.
  Write ``t_c = a_c mu_c + r_c`` with ``mu_c = l2n(prototype_c)`` and
  ``a_c = <t_c, mu_c>``, so ``r_c`` is orthogonal to ``mu_c``. Then

  * ``visual_i = (1/N) sum_c (P_ic - Y_ic) * scale * a_c mu_c``: pulls f_i
    toward its own class prototype and away from the others (visual learning);
  * ``cross_modal_i = (1/N) sum_c (P_ic - Y_ic) * scale * r_c``: the rest.

  Args:
    image_feats: f, float [N, D], L2-normalised.
    text_feats: t, float [way, D], L2-normalised.
    labels: y, int [N] in [0, way).
    prototypes: class visual prototypes (class means), float [way, D]; they
      are L2-normalised here.
    scale: logit scale.

  Returns:
    ``VlmGradientParts`` of float32 arrays.
  """
  f = _f32(image_feats)
  t = _f32(text_feats)
  way = t.shape[0]
  probs = jax.nn.softmax(scale * jnp.matmul(f, t.T, precision=_HI), axis=-1)
  one_hot = jax.nn.one_hot(jnp.asarray(labels), way, dtype=jnp.float32)
  coeff = (probs - one_hot) * (scale / f.shape[0])
  mu = l2_normalize(_f32(prototypes))
  along = jnp.sum(t * mu, axis=-1, keepdims=True) * mu
  rest = t - along
  visual = jnp.matmul(coeff, along, precision=_HI)
  cross_modal = jnp.matmul(coeff, rest, precision=_HI)
  return VlmGradientParts(
      visual=visual,
      cross_modal=cross_modal,
      visual_norm=jnp.linalg.norm(visual, axis=-1),
      cross_modal_norm=jnp.linalg.norm(cross_modal, axis=-1),
  )
