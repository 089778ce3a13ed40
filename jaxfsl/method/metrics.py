"""The paper's analysis metrics: modality gap, discriminability, gap shift.

Pure ``jnp`` and jit-friendly (class counts are static). Every metric
L2-normalises its feature inputs first (``losses.l2_normalize``), so raw
encoder outputs and already-normalised features give the same result. All
outputs are float32; matmuls run at ``Precision.HIGHEST`` so that GPU/TPU
results match CPU ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxfsl.method.losses import l2_normalize

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_HI = jax.lax.Precision.HIGHEST


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
