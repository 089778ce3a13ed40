"""The episode program: one episode's fine-tuning as pure JAX functions.

One episode (docs/method.md) starts from the frozen backbone with a fresh
trainable pytree (``jaxfsl.trainables``: LoRA adapters by default), takes T
full-batch AdamW steps on the support set, and is evaluated on its queries
after steps f, 2f, 3f, 4f and T (f = int(T / 5), the release's rule;
``jaxfsl.method.objective``). ``run_episode`` is the whole episode as one
traced program:

  prepare    normalise pixels, embed the fixed support views / clean support
             / queries with the frozen patch embedding once, encode the class
             prompts once (and the images too when the trainable does not
             touch the vision tower), init the trainable and AdamW state
  scan over the five evaluation segments:
    fori_loop over the segment's steps: ``train_step``
    evaluate: query accuracy and the analysis metrics (dropout off)

Shapes used below (one episode):
  way classes, shot support images and query images per class;
  M = way * shot clean support images, V = 5 views, N = V * M augmented views,
  Q = way * query, S image side, P patches, W width, D feature width,
  L text context length, T steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import logging

from jaxfsl.method import losses, metrics
from jaxfsl.method.objective import (
  fuse_weight,
  term_activity,
  weighted_objective,
)
from jaxfsl.models.model import Model
from jaxfsl.models.two_towers import TwoTowers
from jaxfsl.optim import optimizer_from_config
from jaxfsl.protocols.episodic import loss_scaling
from jaxfsl.protocols.episodic.batch import EpisodeBatch
from jaxfsl.protocols.episodic.engine_config import (
    LOSS_SCALE_INIT,
    EngineConfig,
)
from jaxfsl.protocols.episodic.episode_state import (
    EpisodeInputs,
    EpisodeState,
)
from jaxfsl.trainables import Trainable, get_trainable

Array = jax.Array

# EpisodeInputs and EpisodeState, what ``prepare`` and ``train_step`` return,
# are importable from here too.
__all__ = ["EpisodeInputs", "EpisodeProgram", "EpisodeState"]


class EpisodeProgram:
  """The pure per-episode functions for one model + config (no batch axis,
  no devices): ``prepare``, ``init_state``, ``loss_terms``, ``train_step``,
  ``evaluate``, ``run_episode``. ``EpisodeEngine`` vmaps and compiles them.

  Args:
    model: the backbone (its params are the frozen, shared pytree).
    config: static episode/method/optimiser/trainable settings.
  """

  def __init__(self, model: Model, config: EngineConfig):
    self.model = model
    self.config = config
    trainable = get_trainable(config.trainable, config.trainable_block)
    if hasattr(trainable, "bind"):
      # Prompt learners read the tokenizer (where the text starts, the init
      # phrase's tokens), the class count (class-specific contexts) and the
      # template of the episodes' prompt ids (which their text tower
      # rewrites into their own prompts).
      trainable = trainable.bind(model, config.way, template=config.prompt)
    self.trainable: Trainable = trainable
    if config.method.uses_svl and not trainable.tunes_vision:
      # L_ad depends on the image features only: with a frozen image tower it
      # has no gradient, so its forward is skipped rather than wasted.
      logging.info(
          "trainable %r leaves the image features fixed: the SVL term has "
          "no gradient and is skipped", trainable.name)
    self.module = TwoTowers(model.config, dtype=model.dtype,
                            remat=config.remat,
                            **self.trainable.module_kwargs())
    self.optimizer = optimizer_from_config(config.steps, config.optim)
    self.mean = jnp.asarray(model.preprocessing.mean, jnp.float32) * 255.0
    self.std = jnp.asarray(model.preprocessing.std, jnp.float32) * 255.0

  @property
  def tune_text(self) -> bool:
    return self.trainable.tunes_text

  @property
  def tune_vision(self) -> bool:
    return self.trainable.tunes_vision

  # ---------------------------------------------------------------- helpers

  def scale(self, backbone: dict) -> Array:
    if self.config.logit_scale == "checkpoint":
      return jnp.exp(backbone["logit_scale"])
    return jnp.asarray(self.config.logit_scale, jnp.float32)

  def _normalize(self, pixels: Array) -> Array:
    return (pixels.astype(jnp.float32) - self.mean) / self.std

  def _apply(self, backbone, tree, method, x, deterministic, rng=None):
    # tree None: the pretrained towers (an empty collection).
    variables = {"params": backbone,
                 self.trainable.collection: {} if tree is None else tree}
    rngs = {} if rng is None else {"dropout": rng}
    return self.module.apply(variables, x, deterministic, method=method,
                             rngs=rngs)

  def _image_feats(self, backbone, tree, tokens, rng=None):
    deterministic = rng is None or not self.trainable.stochastic
    feats = self._apply(backbone, tree, "encode_image_tokens", tokens,
                        deterministic, rng)
    return losses.l2_normalize(feats)

  def _text_feats(self, backbone, tree, ids, rng=None):
    deterministic = rng is None or not self.trainable.stochastic
    feats = self._apply(backbone, tree, "encode_text", ids, deterministic,
                        rng)
    return losses.l2_normalize(feats)

  # ---------------------------------------------------------------- prepare

  def prepare(self, backbone: dict, batch: EpisodeBatch | Mapping[str, Array]
              ) -> EpisodeInputs:
    """Device-side preprocessing of one episode (no batch axis).

    Args:
      backbone: frozen params.
      batch: one episode's ``EpisodeBatch`` fields: ``support_views`` uint8
        [V, M, S, S, 3], ``support`` uint8 [M, S, S, 3], ``support_labels``
        int32 [M], ``query`` uint8 [Q, S, S, 3], ``query_labels`` int32
        [Q], ``text_ids`` int32 [way, L] (or a mapping with these keys).
    """
    batch = EpisodeBatch.from_mapping(batch)
    views = batch.support_views
    num_views, m = views.shape[:2]
    views = views.reshape((num_views * m,) + views.shape[2:])

    def embed(pixels):
      return self.module.apply({"params": backbone}, self._normalize(pixels),
                               method="embed_image")

    inputs = EpisodeInputs(
        view_tokens=embed(views),
        view_labels=jnp.tile(batch.support_labels, num_views),
        clean_tokens=embed(batch.support),
        clean_labels=batch.support_labels,
        query_tokens=embed(batch.query),
        query_labels=batch.query_labels,
        text_ids=batch.text_ids,
        text_feats=self._text_feats(backbone, None, batch.text_ids),
    )
    if not self.tune_vision:
      # The image tower is the pretrained one all episode long: encode once.
      feats = tuple(self._image_feats(backbone, None, tokens) for tokens in
                    (inputs.view_tokens, inputs.clean_tokens,
                     inputs.query_tokens))
      inputs = inputs.replace(image_feats=feats)
    return inputs

  def init_state(self, backbone: dict, inputs: EpisodeInputs,
                 rng: Array) -> EpisodeState:
    """A fresh trainable pytree and AdamW state for one episode."""
    tree = self.trainable.init(rng, backbone, self.model.config)
    n = inputs.view_tokens.shape[0]
    m = inputs.clean_tokens.shape[0]
    dynamic = self.config.loss_scaling == "dynamic"
    return EpisodeState(
        adapters=tree,
        opt_state=self.optimizer.init(tree),
        prev_relation=jnp.zeros((n, m), jnp.float32),
        loss=jnp.zeros((), jnp.float32),
        first_nonfinite_step=jnp.asarray(-1, jnp.int32),
        loss_scale=(jnp.asarray(LOSS_SCALE_INIT, jnp.float32) if dynamic
                    else None),
        finite_steps=jnp.asarray(0, jnp.int32) if dynamic else None,
    )

  # ------------------------------------------------------------- train step

  def loss_terms(self, adapters: Any, backbone: dict, inputs: EpisodeInputs,
                 prev_relation: Array, step: Array, rng: Array,
                 with_extras: bool) -> tuple[Array, dict]:
    """The episode loss at ``step`` and its parts as they entered it.

    Args:
      adapters: the trainable pytree (what is differentiated).
      backbone: frozen params.
      inputs: the episode's fixed inputs.
      prev_relation: float32 [N, M], A_v of the previous step.
      step: int32 [], the step index k (the same for every episode of a
        batch, so branches on it stay real branches under vmap).
      rng: PRNG key of this step.
      with_extras: False computes L_vlm alone (outside the window, skipping
        the clean pass); True adds the variant's terms, each weighted by
        whether ``step`` is inside the extra-terms window.

    Returns:
      (total loss float32 [], aux: the variant's terms (``method.terms``),
      each float32 [] weighted as it entered the total and 0 where
      inactive, and ``relation_matrix``, this step's A_v float32 [N, M]
      with its gradient stopped).
    """
    cfg, method = self.config, self.config.method
    scale = self.scale(backbone)
    view_rng, clean_rng, text_rng, slot_rng = jax.random.split(rng, 4)
    if inputs.image_feats is None:
      f = self._image_feats(backbone, adapters, inputs.view_tokens, view_rng)
    else:
      f = inputs.image_feats[0]
    if self.tune_text:
      t = self._text_feats(backbone, adapters, inputs.text_ids, text_rng)
    else:
      t = inputs.text_feats
    y = inputs.view_labels
    raw = {"vlm": losses.vlm_loss(f, t, y, scale)}
    relation_matrix = prev_relation
    start, end = window = cfg.window
    if with_extras:
      if method.uses_svl and self.tune_vision:
        slots = losses.sample_shuffled_slots(slot_rng, f.shape[0], cfg.way)
        raw["anti_visual"] = losses.anti_visual_loss(f, y, slots, scale)
      if method.needs_clean_pass:
        if inputs.image_feats is not None:
          g = inputs.image_feats[1]
        elif cfg.clean_from_views:
          g = f[:inputs.clean_tokens.shape[0]]
        else:
          g = self._image_feats(backbone, adapters, inputs.clean_tokens,
                                clean_rng)
        if method.uses_ra:
          # p falls from 1 at the window's first step over int(0.6 T)
          # steps (the release's denominator); no RA at that first step.
          p = fuse_weight(step - start, cfg.steps, method.window_fraction)
          raw["relation"], relation_matrix = losses.relation_alignment_loss(
              f, g, t, y, inputs.clean_labels, prev_relation, p,
              form=method.relation_form)
        if method.uses_visual:
          protos = metrics.class_prototypes(g, inputs.clean_labels, cfg.way)
          raw["visual"] = losses.visual_loss(f, y, protos, scale)
    total, parts = weighted_objective(
        raw, term_activity(step, window, method), method)
    return total, {**parts, "relation_matrix": relation_matrix}

  def train_step(self, state: EpisodeState, batch: EpisodeInputs, rng: Array,
                 *, backbone: dict, step: Array) -> tuple[EpisodeState, dict]:
    """One AdamW step of one episode: pure, jit- and vmap-friendly.

    Args:
      state: the episode's trainable pytree, optimizer state, RA memory.
      batch: the episode's fixed inputs (``prepare``'s output).
      rng: PRNG key of this step (dropout masks, SVL slot draw).
      backbone: frozen params, shared by every episode (never batched).
      step: int32 [], the step index k, shared by every episode of a batch.

    Returns:
      (new state, metrics: the variant's weighted terms and ``total``,
      float32 [] each).
    """
    scale = state.loss_scale  # None: no loss scaling

    def grads_of(with_extras):
      def run(adapters):
        def loss_fn(a):
          return self.loss_terms(a, backbone, batch, state.prev_relation,
                                 step, rng, with_extras)
        return loss_scaling.value_and_unscaled_grad(loss_fn, adapters, scale)
      return run

    start, end = self.config.window
    if self.config.method.variant == "none" or start == end:
      (total, aux), grads = grads_of(False)(state.adapters)
    elif self.config.skip_clean_pass_outside_window:
      in_window = (step >= start) & (step < end)
      (total, aux), grads = jax.lax.cond(in_window, grads_of(True),
                                         grads_of(False), state.adapters)
    else:
      (total, aux), grads = grads_of(True)(state.adapters)
    updates, opt_state = self.optimizer.update(grads, state.opt_state,
                                               state.adapters)
    adapters = optax.apply_updates(state.adapters, updates)
    loss_scale, finite_steps = state.loss_scale, state.finite_steps
    if scale is not None:
      adapters, opt_state, loss_scale, finite_steps = (
          loss_scaling.dynamic_scale_update(
              grads, (adapters, opt_state),
              (state.adapters, state.opt_state), scale, finite_steps))
    finite = jnp.isfinite(total)
    first_bad = jnp.where(
        (state.first_nonfinite_step < 0) & ~finite, step,
        state.first_nonfinite_step).astype(jnp.int32)
    new_state = EpisodeState(
        adapters=adapters, opt_state=opt_state,
        prev_relation=aux.pop("relation_matrix"), loss=total,
        first_nonfinite_step=first_bad, loss_scale=loss_scale,
        finite_steps=finite_steps)
    aux["total"] = total
    return new_state, aux

  # --------------------------------------------------------------- evaluate

  def evaluate(self, adapters: Any, batch: EpisodeInputs,
               backbone: dict) -> dict:
    """Query accuracy and the paper's analysis metrics, dropout off.

    Args:
      adapters: the trainable pytree (an ``EpisodeState`` is accepted for
        its ``adapters``), or None for the pretrained model (zero-shot).
      batch: the episode's fixed inputs.
      backbone: frozen params.

    Returns:
      dict of float32 scalars: ``accuracy`` (fraction), ``modality_gap``
      (query vs text centroids), ``intra_class_cosine`` /
      ``inter_class_cosine`` of the query features (visual
      discriminability), and the mean norms of the visual-learning and
      cross-modal parts of dL_vlm on the augmented views (prototypes: class
      means of the clean support features; ``metrics.decompose_vlm_gradient``).
    """
    if isinstance(adapters, EpisodeState):
      adapters = adapters.adapters
    cfg = self.config
    scale = self.scale(backbone)
    if batch.image_feats is None:
      f, g, q = (self._image_feats(backbone, adapters, tokens) for tokens in
                 (batch.view_tokens, batch.clean_tokens, batch.query_tokens))
    else:
      f, g, q = batch.image_feats
    if self.tune_text and adapters is not None:
      t = self._text_feats(backbone, adapters, batch.text_ids)
    else:
      t = batch.text_feats
    protos = metrics.class_prototypes(g, batch.clean_labels, cfg.way)
    parts = metrics.decompose_vlm_gradient(f, t, batch.view_labels, protos,
                                           scale)
    disc = metrics.visual_discriminability(q, batch.query_labels, cfg.way)
    return {
        "accuracy": metrics.accuracy(q, t, batch.query_labels),
        "modality_gap": metrics.modality_gap(q, t),
        "intra_class_cosine": disc["intra"],
        "inter_class_cosine": disc["inter"],
        "visual_grad_norm": jnp.mean(parts.visual_norm),
        "cross_modal_grad_norm": jnp.mean(parts.cross_modal_norm),
    }

  # ---------------------------------------------------------------- episode

  def run_episode(self, backbone: dict, batch: EpisodeBatch, rng: Array
                  ) -> dict:
    """The whole episode as one traced program (no batch axis).

    Args:
      backbone: frozen params.
      batch: one episode's arrays (see ``prepare``).
      rng: the episode's PRNG key; the trainable is initialised from
        fold_in(rng, 0) and step k draws from fold_in(fold_in(rng, 1), k).

    Returns:
      dict: ``zero_shot`` metrics (the pretrained model) and ``stages``, a
      dict of float32 [5] arrays (one entry per evaluation step);
      ``losses``: term -> float32 [5], the mean over each evaluation
      segment of each of the variant's terms as it entered the loss, plus
      ``total``; ``step_losses``: the same per step, float32 [T];
      ``first_nonfinite_step`` int32 []; ``adapters`` (the final tree).
    """
    cfg = self.config
    inputs = self.prepare(backbone, batch)
    state = self.init_state(backbone, inputs, jax.random.fold_in(rng, 0))
    step_rng = jax.random.fold_in(rng, 1)
    zero_shot = self.evaluate(None, inputs, backbone)
    ends = cfg.evaluation_steps
    bounds = (jnp.asarray((0,) + ends[:-1], jnp.int32),
              jnp.asarray(ends, jnp.int32))
    names = cfg.terms + ("total",)

    def segment(carry, bounds):
      state, per_step = carry
      start, end = bounds

      def body(k, carry):
        state, sums, per_step = carry
        state, values = self.train_step(
            state, inputs, jax.random.fold_in(step_rng, k),
            backbone=backbone, step=k)
        sums = {n: sums[n] + values[n] for n in names}
        per_step = {n: per_step[n].at[k].set(values[n]) for n in names}
        return state, sums, per_step

      zeros = {n: jnp.zeros((), jnp.float32) for n in names}
      state, sums, per_step = jax.lax.fori_loop(
          start, end, body, (state, zeros, per_step))
      count = jnp.maximum(end - start, 1).astype(jnp.float32)
      means = {n: s / count for n, s in sums.items()}
      return (state, per_step), (self.evaluate(state.adapters, inputs,
                                               backbone), means)

    per_step = {n: jnp.zeros((cfg.steps,), jnp.float32) for n in names}
    (state, per_step), (stages, segment_losses) = jax.lax.scan(
        segment, (state, per_step), bounds)
    return {
        "zero_shot": zero_shot,
        "stages": stages,
        "losses": segment_losses,
        "step_losses": per_step,
        "first_nonfinite_step": state.first_nonfinite_step,
        "adapters": state.adapters,
    }
