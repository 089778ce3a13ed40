"""The episode engine: per-episode fine-tuning, many episodes at once.

One episode (docs/method.md) starts from the frozen backbone with a fresh
trainable pytree (``jaxfsl.trainables``: LoRA adapters by default), takes T
full-batch AdamW steps on the support set, and is evaluated on its queries
after steps f, 2f, 3f, 4f and T (f = int(T / 5), the release's rule;
``jaxfsl.method.objective``). Here a whole episode is one compiled program:

  prepare    normalise pixels, embed the fixed support views / clean support
             / queries with the frozen patch embedding once, encode the class
             prompts once (and the images too when the trainable does not
             touch the vision tower), init the trainable and AdamW state
  scan over the five evaluation segments:
    fori_loop over the segment's steps: ``train_step``
    evaluate: query accuracy and the analysis metrics (dropout off)

``run_batch`` vmaps that program over a batch of episodes (each with its own
trainable pytree, optimizer state and rng; the backbone is a shared,
unbatched argument) and jits it with the episode axis sharded over a device
mesh (``jaxfsl.parallel``), so it runs unchanged on one CPU, one GPU, or
every chip of a TPU pod slice.

Shapes used below (one episode; ``E`` leads everything in a batch):
  way classes, shot support images and query images per class;
  M = way * shot clean support images, V = 5 views, N = V * M augmented views,
  Q = way * query, S image side, P patches, W width, D feature width,
  L text context length, T steps.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxfsl import parallel
from jaxfsl.method import losses, metrics
from jaxfsl.method.objective import (
    NUM_STAGES,
    TERMS,
    VARIANTS,
    MethodConfig,
    active_window,
    evaluation_steps,
    fuse_weight,
    term_activity,
    weighted_objective,
)
from jaxfsl.models.model import Model
from jaxfsl.models.two_towers import TwoTowers
from jaxfsl.optim import OptimConfig, optimizer_from_config
from jaxfsl.protocols.episodic.batch import BATCH_KEYS, NUM_VIEWS, EpisodeBatch
from jaxfsl.trainables import LoraConfig, Trainable, get_trainable

Array = jax.Array

__all__ = [
    "BATCH_KEYS", "CPU_COMPILER_OPTIONS", "NUM_STAGES", "TERMS", "VARIANTS",
    "EngineConfig", "EpisodeBatch", "EpisodeEngine", "EpisodeInputs",
    "EpisodeState", "LoraConfig", "MethodConfig", "OptimConfig",
    "episode_keys", "steps_for",
]


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Everything static about an episode program.

  Attributes:
    way, shot, query: episode shape.
    steps: T, total optimisation steps (the release: epochs * shot).
    method: loss terms, weights, extra-terms window (``MethodConfig``).
    optim: AdamW and its schedule (``OptimConfig``).
    lora: LoRA settings, used when ``trainable`` is "lora" and
      ``trainable_config`` is None.
    trainable: what is fine-tuned (``config.trainable``; see
      ``jaxfsl.trainables.available()``).
    trainable_config: the settings block of a non-LoRA trainable (its
      dataclass or a mapping), given to ``get_trainable``.
    logit_scale: multiplier of cosine logits in every loss and in
      evaluation; a float (the release: 100 for every backbone) or
      "checkpoint" to use the model's learned temperature. (A SigLIP bias
      adds the same constant to every class logit, so it changes neither the
      softmax losses nor the argmax and is not needed here.)
    remat: rematerialise transformer blocks in the backward pass.
    skip_clean_pass_in_stage2: outside the extra-terms window the clean
      support pass feeds no loss; skipping it is exact and saves M of N + M
      images per step, at the price of compiling a second step body.
    num_views: V, augmented views per support image.
    clean_from_views: opt-in, not the release: take the clean support
      features g from the augmented pass (view 0 is the identity view of
      the same images, rows [0, M) of the views) instead of a second pass
      with its own dropout masks. Saves M of N + M images per window step;
      g then shares view 0's dropout masks, so results differ from the
      release's beyond rounding.
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
  logit_scale: float | str = 100.0
  remat: bool = False
  skip_clean_pass_in_stage2: bool = True
  num_views: int = NUM_VIEWS
  clean_from_views: bool = False
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
    if errors:
      raise ValueError("; ".join(errors))

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


@flax.struct.dataclass
class EpisodeState:
  """What one episode carries from step to step.

  Attributes:
    adapters: the trainable pytree (float32; LoRA: the adapter tree).
    opt_state: AdamW state over it.
    prev_relation: float32 [N, M], A_v of the previous step (RA target).
    loss: float32 [], last total loss.
    first_nonfinite_step: int32 [], -1 until a loss is NaN/inf.
  """

  adapters: Any
  opt_state: Any
  prev_relation: Array
  loss: Array
  first_nonfinite_step: Array


@flax.struct.dataclass
class EpisodeInputs:
  """The fixed, device-side inputs of one episode after ``prepare``.

  Attributes:
    view_tokens: [N, P, W] patch tokens of the augmented views.
    view_labels: int32 [N].
    clean_tokens: [M, P, W] patch tokens of the clean support.
    clean_labels: int32 [M].
    query_tokens: [Q, P, W].
    query_labels: int32 [Q].
    text_ids: int32 [way, L] class prompts.
    text_feats: float32 [way, D] L2-normalised prompt features of the
      pretrained text tower (recomputed per step when it is tuned).
    image_feats: None, or (when the trainable leaves the vision tower
      alone) the fixed L2-normalised features (views [N, D], clean [M, D],
      queries [Q, D]).
  """

  view_tokens: Array
  view_labels: Array
  clean_tokens: Array
  clean_labels: Array
  query_tokens: Array
  query_labels: Array
  text_ids: Array
  text_feats: Array
  image_feats: tuple[Array, Array, Array] | None = None


class EpisodeEngine:
  """Builds and runs the compiled episode programs for one model + config.

  Args:
    model: the backbone (its params are the frozen, shared pytree).
    config: static episode/method/optimiser/trainable settings.
    mesh: device mesh whose first axis carries episodes; default: every
      device in one axis (``parallel.make_mesh``).
  """

  def __init__(self, model: Model, config: EngineConfig,
               mesh: Mesh | None = None):
    self.model = model
    self.config = config
    self.mesh = parallel.make_mesh() if mesh is None else mesh
    self.axis = parallel.episode_axis(self.mesh)
    self.trainable: Trainable = get_trainable(config.trainable,
                                              config.trainable_block)
    self.module = TwoTowers(model.config, dtype=model.dtype,
                            remat=config.remat,
                            **self.trainable.module_kwargs())
    self.optimizer = optimizer_from_config(config.steps, config.optim)
    self.mean = jnp.asarray(model.preprocessing.mean, jnp.float32) * 255.0
    self.std = jnp.asarray(model.preprocessing.std, jnp.float32) * 255.0
    self._compiled: dict[Any, Any] = {}

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
    return EpisodeState(
        adapters=tree,
        opt_state=self.optimizer.init(tree),
        prev_relation=jnp.zeros((n, m), jnp.float32),
        loss=jnp.zeros((), jnp.float32),
        first_nonfinite_step=jnp.asarray(-1, jnp.int32),
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
      if method.uses_svl:
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
          p = fuse_weight(step - start, cfg.steps, method.stage1_fraction)
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
    def grads_of(with_extras):
      def run(adapters):
        loss_fn = lambda a: self.loss_terms(  # noqa: E731
            a, backbone, batch, state.prev_relation, step, rng, with_extras)
        return jax.value_and_grad(loss_fn, has_aux=True)(adapters)
      return run

    start, end = self.config.window
    if self.config.method.variant == "none" or start == end:
      (total, aux), grads = grads_of(False)(state.adapters)
    elif self.config.skip_clean_pass_in_stage2:
      in_window = (step >= start) & (step < end)
      (total, aux), grads = jax.lax.cond(in_window, grads_of(True),
                                         grads_of(False), state.adapters)
    else:
      (total, aux), grads = grads_of(True)(state.adapters)
    updates, opt_state = self.optimizer.update(grads, state.opt_state,
                                               state.adapters)
    adapters = optax.apply_updates(state.adapters, updates)
    finite = jnp.isfinite(total)
    first_bad = jnp.where(
        (state.first_nonfinite_step < 0) & ~finite, step,
        state.first_nonfinite_step).astype(jnp.int32)
    new_state = EpisodeState(
        adapters=adapters, opt_state=opt_state,
        prev_relation=aux.pop("relation_matrix"), loss=total,
        first_nonfinite_step=first_bad)
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

  # ------------------------------------------------------------------ batch

  @property
  def compiler_options(self) -> dict | None:
    """XLA options the engine's programs are compiled with (None: XLA's)."""
    if not self.config.cpu_tuning or any(
        d.platform != "cpu" for d in self.mesh.devices.flat):
      return None
    user_flags = os.environ.get("XLA_FLAGS", "")
    options = {k: v for k, v in CPU_COMPILER_OPTIONS.items()
               if f"--{k}" not in user_flags}
    return options or None

  def _batch_fn(self, return_adapters: bool):
    key = ("batch", return_adapters)
    if key not in self._compiled:
      def run(backbone, batch, rngs):
        out = jax.vmap(self.run_episode, in_axes=(None, 0, 0))(
            backbone, batch, rngs)
        if not return_adapters:
          out.pop("adapters")
        return out

      self._compiled[key] = parallel.jit_episodes(
          run, self.mesh, shared=(True, False, False),
          compiler_options=self.compiler_options)
    return self._compiled[key]

  def run_batch(self, batch: EpisodeBatch | Mapping[str, np.ndarray],
                rngs: Array, episode_ids: np.ndarray | None = None,
                return_adapters: bool = False) -> dict:
    """Fine-tunes and evaluates a batch of E episodes in one program.

    Args:
      batch: an ``EpisodeBatch`` (or a mapping with its keys) of host
        arrays with a leading episode axis E (``make_batches`` gives them).
        E must be a multiple of the mesh's episode-axis size. On several
        hosts (``jax.distributed.initialize()``), each host passes its own
        E / process_count episodes and receives the results of all E.
      rngs: PRNG keys [E] (e.g. ``episode_keys(seed, indices)``).
      episode_ids: episode indices [E], used to name an episode in errors.
      return_adapters: also return each episode's final trainable pytree.

    Returns:
      ``run_episode``'s dict with a leading E axis, as numpy arrays.

    Raises:
      KeyError / ValueError: missing keys or wrong shapes, named.
      FloatingPointError: an episode's loss became NaN/inf; names the episode
        and the step.
    """
    batch = self._check_batch(batch)
    out = parallel.run_episodes(self._batch_fn(return_adapters), self.mesh,
                                self.model.params, batch, rngs)
    bad = np.flatnonzero(out["first_nonfinite_step"] >= 0)
    if bad.size:
      e = int(bad[0])
      name = int(episode_ids[e]) if episode_ids is not None else e
      raise FloatingPointError(
          f"episode {name}: loss became non-finite at step "
          f"{int(out['first_nonfinite_step'][e])} of {self.config.steps} "
          f"(variant {self.config.method.variant!r}, lr "
          f"{self.config.optim.lr}); try a lower learning rate or float32 "
          "compute")
    return out

  def _evaluate_fn(self):
    if "evaluate" not in self._compiled:
      def one(backbone, episode, tree):
        inputs = self.prepare(backbone, episode)
        return {"final": self.evaluate(tree, inputs, backbone),
                "zero_shot": self.evaluate(None, inputs, backbone)}

      self._compiled["evaluate"] = parallel.jit_episodes(
          jax.vmap(one, in_axes=(None, 0, 0)), self.mesh,
          shared=(True, False, False),
          compiler_options=self.compiler_options)
    return self._compiled["evaluate"]

  def evaluate_adapters(self, batch: EpisodeBatch | Mapping[str, np.ndarray],
                        adapters: Any) -> dict:
    """Evaluates E episodes' queries with given trainable pytrees, no
    training (the eval-only job).

    Args:
      batch: as ``run_batch`` (on several hosts, this host's slice).
      adapters: the trainable pytree with a leading E axis (likewise),
        e.g. ``run_batch(..., return_adapters=True)["adapters"]``.

    Returns:
      {"final": {metric: [E]}, "zero_shot": {metric: [E]}} as numpy, the
      metrics of ``evaluate``.
    """
    batch = self._check_batch(batch)
    return parallel.run_episodes(self._evaluate_fn(), self.mesh,
                                 self.model.params, batch, adapters)

  def _check_batch(self, batch: Any) -> EpisodeBatch:
    batch = EpisodeBatch.from_mapping(batch)
    cfg = self.config
    e = np.shape(batch.support)[0]
    m, q = cfg.way * cfg.shot, cfg.way * cfg.query
    s = self.model.config.vision.image_size
    expected = {
        "support_views": (e, cfg.num_views, m, s, s, 3),
        "support": (e, m, s, s, 3),
        "support_labels": (e, m),
        "query": (e, q, s, s, 3),
        "query_labels": (e, q),
    }
    errors = []
    for key, shape in expected.items():
      if tuple(np.shape(batch[key])) != shape:
        errors.append(f"episode batch[{key!r}] has shape "
                      f"{tuple(np.shape(batch[key]))}, expected {shape}")
    ids_shape = tuple(np.shape(batch.text_ids))
    if ids_shape[:2] != (e, cfg.way) or len(ids_shape) != 3:
      errors.append(f"episode batch['text_ids'] has shape {ids_shape}, "
                    f"expected ({e}, {cfg.way}, L)")
    if errors:
      raise ValueError("; ".join(errors) + f" (E={e}, way={cfg.way}, shot="
                       f"{cfg.shot}, query={cfg.query}, image size {s})")
    parallel.check_episode_count(e, self.mesh)
    return batch


# XLA:CPU options for the engine's programs (``EngineConfig.cpu_tuning``),
# chosen with tools/benchmark.py on x86 (AVX-512) CPUs, ViT-B/16 steps:
# * an empty YNNPACK fusion list: XLA's default sends every dot through a
#   YNNPACK fusion, ~15% slower per step here than its Eigen matmuls;
# * 512-bit vectors for the element-wise fusions (LayerNorm, softmax, GELU,
#   dropout masks): ~5% (ignored on CPUs without AVX-512).
# Only the choice of kernels changes: results differ by rounding at most.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "",
    "xla_cpu_prefer_vector_width": 512,
}


def episode_keys(seed: int, indices) -> Array:
  """PRNG keys [E] for episodes ``indices``: a pure function of (seed, i)."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(
      jnp.asarray(indices, jnp.uint32))


def steps_for(epochs: int, shot: int) -> int:
  """The release's T = epochs * shot (one step per support image per epoch,
  full batch)."""
  return int(epochs) * int(shot)
