"""The episode engine: per-episode LoRA fine-tuning, many episodes at once.

One episode (METHOD.md) starts from the frozen backbone with fresh adapters,
takes T = epochs * shot full-batch AdamW steps on the support set, and is
evaluated on its queries at 1/5, ..., 5/5 of T. Here a whole episode is one
compiled program:

  prepare    normalise pixels, embed the fixed support views / clean support /
             queries with the frozen patch embedding once, encode the class
             prompts once (vision-only tuning), init adapters and AdamW state
  scan over the five evaluation segments:
    fori_loop over the segment's steps: ``train_step``
    evaluate: query accuracy and the analysis metrics (dropout off)

``run_batch`` vmaps that program over a batch of episodes (each with its own
adapters, optimizer state and rng; the backbone is a shared, unbatched
argument) and jits it with the episode axis sharded over a device mesh, so it
runs unchanged on one CPU, one GPU, or every chip of a TPU pod slice.

Shapes used below (one episode; ``E`` leads everything in a batch):
  way classes, shot support images and query images per class;
  M = way * shot clean support images, V = 5 views, N = V * M augmented views,
  Q = way * query, S image side, P patches, W width, D feature width,
  L text context length.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxfsl.method import losses, metrics
from jaxfsl.models.model import Model
from jaxfsl.models.two_towers import TwoTowers
from jaxfsl.optim import release_optimizer
from jaxfsl.trainables.lora import LoraConfig, init_lora

Array = jax.Array
Variant = Literal["none", "svl", "ra", "svl_ra", "visual"]
VARIANTS = ("none", "svl", "ra", "svl_ra", "visual")
NUM_STAGES = 5


@dataclasses.dataclass(frozen=True)
class MethodConfig:
  """Which loss terms, how strong, and when (release defaults).

  Attributes:
    variant: "none" (plain LoRA fine-tuning, L_vlm only), "svl" (+ anti-visual
      loss), "ra" (+ relation alignment), "svl_ra" (the paper's method) or
      "visual" (the paper's "FT + L_v" analysis: + a visual-learning loss).
    anti_visual_weight: weight of L_ad (SVL).
    relation_weight: weight of L_ra (RA).
    visual_weight: weight of L_v for the "visual" variant.
    stage1_fraction: the extra terms are active for this fraction of T.
    timing: "begin" puts that window at the start of training (the method),
      "last" at the end (the paper's "Last" ablation).
    relation_form: "release" (the release's kl_div on cosine matrices) or
      "softmax_kl" (the paper's row-softmax KL).
  """

  variant: Variant = "svl_ra"
  anti_visual_weight: float = 0.1
  relation_weight: float = 3.0
  visual_weight: float = 1.0
  stage1_fraction: float = 0.6
  timing: Literal["begin", "last"] = "begin"
  relation_form: Literal["release", "softmax_kl"] = "release"

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"method.variant {self.variant!r}: expected one of "
                       f"{VARIANTS}")
    if self.timing not in ("begin", "last"):
      raise ValueError(f"method.timing {self.timing!r}: expected begin or last")
    if self.relation_form not in ("release", "softmax_kl"):
      raise ValueError(f"method.relation_form {self.relation_form!r}: expected "
                       "release or softmax_kl")
    if not 0.0 < self.stage1_fraction <= 1.0:
      raise ValueError("method.stage1_fraction must be in (0, 1], got "
                       f"{self.stage1_fraction}")

  @property
  def uses_svl(self) -> bool:
    return self.variant in ("svl", "svl_ra")

  @property
  def uses_ra(self) -> bool:
    return self.variant in ("ra", "svl_ra")

  @property
  def uses_visual(self) -> bool:
    return self.variant == "visual"

  @property
  def needs_clean_pass(self) -> bool:
    return self.uses_ra or self.uses_visual


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The release's AdamW on the adapters, cosine-annealed per step."""

  lr: float = 2e-4
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 1e-2
  min_lr: float = 1e-6
  period_factor: float = 8.0


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Everything static about an episode program.

  Attributes:
    way, shot, query: episode shape.
    steps: T, total optimisation steps (the release: epochs * shot).
    method, optim, lora: see their classes.
    logit_scale: multiplier of cosine logits in every loss and in
      evaluation; a float (the release: 100 for every backbone) or
      "checkpoint" to use the model's learned temperature. (A SigLIP bias
      adds the same constant to every class logit, so it changes neither the
      softmax losses nor the argmax and is not needed here.)
    remat: rematerialise transformer blocks in the backward pass.
    skip_clean_pass_in_stage2: after the stage-1 window the clean support
      pass feeds no loss; skipping it is exact and saves M of N + M images
      per step, at the price of compiling a second step body.
    clean_from_views: opt-in, not the release: take the clean support
      features g from the augmented pass (view 0 is the identity view of
      the same images, rows [0, M) of the views) instead of a second pass
      with its own LoRA dropout masks. Saves M of N + M images per stage-1
      step (1/6 at any shot); g then shares view 0's dropout masks, so
      results differ from the release's beyond rounding.
    cpu_tuning: on CPU devices, compile with ``CPU_COMPILER_OPTIONS``
      (faster, rounding-level differences only); options already set in
      ``XLA_FLAGS`` are left to it. No effect on GPU/TPU.
  """

  way: int = 5
  shot: int = 1
  query: int = 15
  steps: int = 250
  method: MethodConfig = MethodConfig()
  optim: OptimConfig = OptimConfig()
  lora: LoraConfig = LoraConfig()
  logit_scale: float | str = 100.0
  remat: bool = False
  skip_clean_pass_in_stage2: bool = True
  num_views: int = 5
  clean_from_views: bool = False
  cpu_tuning: bool = True

  def __post_init__(self):
    for name in ("way", "shot", "query", "steps", "num_views"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if isinstance(self.logit_scale, str) and self.logit_scale != "checkpoint":
      raise ValueError(f"logit_scale {self.logit_scale!r}: expected a number "
                       "or 'checkpoint'")

  @property
  def window(self) -> tuple[int, int]:
    """[start, end) steps where the method's extra terms are active."""
    length = losses.stage1_steps(self.steps, self.method.stage1_fraction)
    if self.method.timing == "begin":
      return 0, length
    return self.steps - length, self.steps

  @property
  def stage_ends(self) -> tuple[int, ...]:
    """Steps after which the queries are evaluated: round(k T / 5)."""
    return tuple(
        int(round(k * self.steps / NUM_STAGES))
        for k in range(1, NUM_STAGES + 1))


@flax.struct.dataclass
class EpisodeState:
  """What one episode carries from step to step.

  Attributes:
    adapters: LoRA params tree (float32).
    opt_state: AdamW state over the adapters.
    prev_relation: float32 [N, M], A_v of the previous step (RA target).
    loss: float32 [], last total loss.
    first_nonfinite_step: int32 [], -1 until a loss is NaN/inf.
  """

  adapters: dict
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
    text_feats: float32 [way, D] L2-normalised prompt features (frozen text
      tower; recomputed per step when the text tower is adapted).
  """

  view_tokens: Array
  view_labels: Array
  clean_tokens: Array
  clean_labels: Array
  query_tokens: Array
  query_labels: Array
  text_ids: Array
  text_feats: Array


class EpisodeEngine:
  """Builds and runs the compiled episode programs for one model + config.

  Args:
    model: the backbone (its params are the frozen, shared pytree).
    config: static episode/method/optimiser settings.
    mesh: device mesh whose first axis carries episodes; default: every
      device in one axis named "episodes".
  """

  def __init__(self, model: Model, config: EngineConfig,
               mesh: Mesh | None = None):
    self.model = model
    self.config = config
    if mesh is None:
      mesh = Mesh(np.asarray(jax.devices()), ("episodes",))
    self.mesh = mesh
    self.axis = mesh.axis_names[0]
    lora = config.lora
    self.module = TwoTowers(model.config, dtype=model.dtype,
                            lora_scaling=lora.scaling,
                            lora_dropout=lora.dropout, remat=config.remat)
    self.tune_text = lora.towers in ("text", "both")
    self.optimizer = release_optimizer(
        config.steps, base_lr=config.optim.lr,
        betas=(config.optim.b1, config.optim.b2), eps=config.optim.eps,
        weight_decay=config.optim.weight_decay, min_lr=config.optim.min_lr,
        period_factor=config.optim.period_factor)
    self.mean = jnp.asarray(model.preprocessing.mean, jnp.float32) * 255.0
    self.std = jnp.asarray(model.preprocessing.std, jnp.float32) * 255.0
    self._compiled: dict[Any, Any] = {}

  # ---------------------------------------------------------------- helpers

  def scale(self, backbone: dict) -> Array:
    if self.config.logit_scale == "checkpoint":
      return jnp.exp(backbone["logit_scale"])
    return jnp.asarray(self.config.logit_scale, jnp.float32)

  def _normalize(self, pixels: Array) -> Array:
    return (pixels.astype(jnp.float32) - self.mean) / self.std

  def _apply(self, backbone, adapters, method, x, deterministic, rng=None):
    variables = {"params": backbone, "lora": adapters}
    rngs = {} if rng is None else {"dropout": rng}
    return self.module.apply(variables, x, deterministic, method=method,
                             rngs=rngs)

  def _image_feats(self, backbone, adapters, tokens, rng=None):
    deterministic = rng is None or self.config.lora.dropout == 0.0
    feats = self._apply(backbone, adapters, "encode_image_tokens", tokens,
                        deterministic, rng)
    return losses.l2_normalize(feats)

  def _text_feats(self, backbone, adapters, ids, rng=None):
    deterministic = rng is None or self.config.lora.dropout == 0.0
    feats = self._apply(backbone, adapters, "encode_text", ids, deterministic,
                        rng)
    return losses.l2_normalize(feats)

  # ---------------------------------------------------------------- prepare

  def prepare(self, backbone: dict, batch: Mapping[str, Array]
              ) -> EpisodeInputs:
    """Device-side preprocessing of one episode (no batch axis).

    Args:
      backbone: frozen params.
      batch: ``support_views`` uint8 [V, M, S, S, 3], ``support`` uint8
        [M, S, S, 3], ``support_labels`` int32 [M], ``query`` uint8
        [Q, S, S, 3], ``query_labels`` int32 [Q], ``text_ids`` int32
        [way, L].
    """
    views = batch["support_views"]
    num_views, m = views.shape[:2]
    views = views.reshape((num_views * m,) + views.shape[2:])

    def embed(pixels):
      return self.module.apply({"params": backbone}, self._normalize(pixels),
                               method="embed_image")

    text_feats = self._text_feats(backbone, {}, batch["text_ids"])
    return EpisodeInputs(
        view_tokens=embed(views),
        view_labels=jnp.tile(batch["support_labels"], num_views),
        clean_tokens=embed(batch["support"]),
        clean_labels=batch["support_labels"],
        query_tokens=embed(batch["query"]),
        query_labels=batch["query_labels"],
        text_ids=batch["text_ids"],
        text_feats=text_feats,
    )

  def init_state(self, backbone: dict, inputs: EpisodeInputs,
                 rng: Array) -> EpisodeState:
    """Fresh adapters (A uniform, B zero) and AdamW state for one episode."""
    adapters = init_lora(rng, backbone, self.config.lora).params
    n = inputs.view_tokens.shape[0]
    m = inputs.clean_tokens.shape[0]
    return EpisodeState(
        adapters=adapters,
        opt_state=self.optimizer.init(adapters),
        prev_relation=jnp.zeros((n, m), jnp.float32),
        loss=jnp.zeros((), jnp.float32),
        first_nonfinite_step=jnp.asarray(-1, jnp.int32),
    )

  # ------------------------------------------------------------- train step

  def loss_terms(self, adapters: dict, backbone: dict, inputs: EpisodeInputs,
                 prev_relation: Array, step: Array, rng: Array,
                 with_extras: bool) -> tuple[Array, dict]:
    """The episode loss at ``step`` and its parts.

    Args:
      adapters: LoRA params (what is differentiated).
      backbone: frozen params.
      inputs: the episode's fixed inputs.
      prev_relation: float32 [N, M], A_v of the previous step.
      step: int32 [], the step index k (the same for every episode of a
        batch, so branches on it stay real branches under vmap).
      rng: PRNG key of this step.
      with_extras: False computes L_vlm alone (stage 2, skipping the clean
        pass); True adds the variant's terms, each weighted by whether
        ``step`` is inside the method's window.

    Returns:
      (total loss float32 [], aux dict: the unweighted parts ``vlm``,
      ``anti_visual``, ``relation``, ``visual``, and ``relation_matrix``,
      this step's A_v float32 [N, M] with its gradient stopped).
    """
    cfg, method = self.config, self.config.method
    scale = self.scale(backbone)
    view_rng, clean_rng, text_rng, slot_rng = jax.random.split(rng, 4)
    f = self._image_feats(backbone, adapters, inputs.view_tokens, view_rng)
    if self.tune_text:
      t = self._text_feats(backbone, adapters, inputs.text_ids, text_rng)
    else:
      t = inputs.text_feats
    y = inputs.view_labels
    l_vlm = losses.vlm_loss(f, t, y, scale)
    zero = jnp.zeros((), jnp.float32)
    aux = {"vlm": l_vlm, "anti_visual": zero, "relation": zero,
           "visual": zero, "relation_matrix": prev_relation}
    total = l_vlm
    if not with_extras:
      return total, aux
    start, end = cfg.window
    active = ((step >= start) & (step < end)).astype(jnp.float32)
    if method.uses_svl:
      slots = losses.sample_shuffled_slots(slot_rng, f.shape[0], cfg.way)
      l_ad = losses.anti_visual_loss(f, y, slots, scale)
      aux["anti_visual"] = l_ad
      total = total + active * method.anti_visual_weight * l_ad
    if method.needs_clean_pass:
      if cfg.clean_from_views:
        g = f[:inputs.clean_tokens.shape[0]]
      else:
        g = self._image_feats(backbone, adapters, inputs.clean_tokens,
                              clean_rng)
      if method.uses_ra:
        # p falls from 1 at the window's first step to 0 at its end. The
        # window's first step has no previous A_v, hence no RA term.
        p = losses.fuse_weight(step - start, end - start, 1.0)
        l_ra, a_v = losses.relation_alignment_loss(
            f, g, t, y, inputs.clean_labels, prev_relation, p,
            form=method.relation_form)
        ra_active = active * (step > start).astype(jnp.float32)
        aux["relation"] = l_ra
        aux["relation_matrix"] = a_v
        total = total + ra_active * method.relation_weight * l_ra
      if method.uses_visual:
        protos = metrics.class_prototypes(g, inputs.clean_labels, cfg.way)
        l_v = losses.visual_loss(f, y, protos, scale)
        aux["visual"] = l_v
        total = total + active * method.visual_weight * l_v
    return total, aux

  def train_step(self, state: EpisodeState, batch: EpisodeInputs, rng: Array,
                 *, backbone: dict, step: Array) -> tuple[EpisodeState, dict]:
    """One AdamW step of one episode: pure, jit- and vmap-friendly.

    Args:
      state: the episode's adapters, optimizer state and RA memory.
      batch: the episode's fixed inputs (``prepare``'s output).
      rng: PRNG key of this step (dropout masks, SVL slot draw).
      backbone: frozen params, shared by every episode (never batched).
      step: int32 [], the step index k, shared by every episode of a batch.

    Returns:
      (new state, metrics: the unweighted loss parts and ``total``).
    """
    def grads_of(with_extras):
      def run(adapters):
        loss_fn = lambda a: self.loss_terms(  # noqa: E731
            a, backbone, batch, state.prev_relation, step, rng, with_extras)
        return jax.value_and_grad(loss_fn, has_aux=True)(adapters)
      return run

    start, end = self.config.window
    if self.config.method.variant == "none":
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

  def evaluate(self, state: EpisodeState, batch: EpisodeInputs,
               backbone: dict) -> dict:
    """Query accuracy and the paper's analysis metrics, dropout off.

    Returns a dict of float32 scalars: ``accuracy``, ``modality_gap`` (query
    vs text centroids), ``intra_class_cosine`` / ``inter_class_cosine`` of
    the query features (visual discriminability), and the mean norms of the
    visual-learning and cross-modal parts of dL_vlm on the augmented views
    (prototypes: class means of the clean support features).
    """
    cfg = self.config
    scale = self.scale(backbone)
    adapters = state.adapters
    q = self._image_feats(backbone, adapters, batch.query_tokens)
    if self.tune_text:
      t = self._text_feats(backbone, adapters, batch.text_ids)
    else:
      t = batch.text_feats
    f = self._image_feats(backbone, adapters, batch.view_tokens)
    g = self._image_feats(backbone, adapters, batch.clean_tokens)
    protos = metrics.class_prototypes(g, batch.clean_labels, cfg.way)
    parts = losses.decompose_vlm_gradient(f, t, batch.view_labels, protos,
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

  def run_episode(self, backbone: dict, batch: Mapping[str, Array],
                  rng: Array) -> dict:
    """The whole episode as one traced program (no batch axis).

    Args:
      backbone: frozen params.
      batch: one episode's arrays (see ``prepare``).
      rng: the episode's PRNG key; adapters are initialised from
        fold_in(rng, 0) and step k draws from fold_in(fold_in(rng, 1), k).

    Returns:
      dict: ``zero_shot`` metrics (before training) and ``stages``, each a
      dict of float32 [5] arrays (one entry per evaluation at k T / 5),
      ``losses``: the mean loss parts over each segment, float32 [5] each,
      ``first_nonfinite_step`` int32 [], and ``adapters`` (the final tree).
    """
    inputs = self.prepare(backbone, batch)
    state = self.init_state(backbone, inputs, jax.random.fold_in(rng, 0))
    step_rng = jax.random.fold_in(rng, 1)
    zero_shot = self.evaluate(state, inputs, backbone)
    starts = jnp.asarray((0,) + self.config.stage_ends[:-1], jnp.int32)
    ends = jnp.asarray(self.config.stage_ends, jnp.int32)

    def segment(state, bounds):
      start, end = bounds

      def body(k, carry):
        state, sums = carry
        state, metrics = self.train_step(
            state, inputs, jax.random.fold_in(step_rng, k),
            backbone=backbone, step=k)
        sums = jax.tree_util.tree_map(lambda a, b: a + b, sums, metrics)
        return state, sums

      zeros = {k: jnp.zeros((), jnp.float32)
               for k in ("vlm", "anti_visual", "relation", "visual", "total")}
      state, sums = jax.lax.fori_loop(start, end, body, (state, zeros))
      count = jnp.maximum(end - start, 1).astype(jnp.float32)
      means = jax.tree_util.tree_map(lambda s: s / count, sums)
      return state, (self.evaluate(state, inputs, backbone), means)

    state, (stages, segment_losses) = jax.lax.scan(segment, state,
                                                   (starts, ends))
    return {
        "zero_shot": zero_shot,
        "stages": stages,
        "losses": segment_losses,
        "first_nonfinite_step": state.first_nonfinite_step,
        "adapters": state.adapters,
    }

  # ------------------------------------------------------------------ batch

  def _batch_fn(self, return_adapters: bool):
    key = ("batch", return_adapters)
    if key not in self._compiled:
      def run(backbone, batch, rngs):
        out = jax.vmap(self.run_episode, in_axes=(None, 0, 0))(
            backbone, batch, rngs)
        if not return_adapters:
          out.pop("adapters")
        return out

      episodes = NamedSharding(self.mesh, PartitionSpec(self.axis))
      replicated = NamedSharding(self.mesh, PartitionSpec())
      self._compiled[key] = jax.jit(
          run, in_shardings=(replicated, episodes, episodes),
          out_shardings=episodes, compiler_options=self.compiler_options)
    return self._compiled[key]

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

  def run_batch(self, batch: Mapping[str, np.ndarray], rngs: Array,
                episode_ids: np.ndarray | None = None,
                return_adapters: bool = False) -> dict:
    """Fine-tunes and evaluates a batch of E episodes in one program.

    Args:
      batch: host arrays with a leading episode axis E: ``support_views``
        uint8 [E, V, M, S, S, 3], ``support`` uint8 [E, M, S, S, 3],
        ``support_labels`` int32 [E, M], ``query`` uint8 [E, Q, S, S, 3],
        ``query_labels`` int32 [E, Q], ``text_ids`` int32 [E, way, L].
        E must be a multiple of the mesh's episode-axis size. On several
        hosts (``jax.distributed.initialize()``), each host passes its own
        E / process_count episodes and receives the results of all E.
      rngs: PRNG keys [E] (e.g. ``episode_keys(seed, indices)``).
      episode_ids: episode indices [E], used to name an episode in errors.
      return_adapters: also return each episode's final adapters.

    Returns:
      ``run_episode``'s dict with a leading E axis, as numpy arrays.

    Raises:
      FloatingPointError: an episode's loss became NaN/inf; names the episode
        and the step.
    """
    self._check_batch(batch)
    arrays = {k: np.asarray(batch[k]) for k in BATCH_KEYS}
    fn = self._batch_fn(return_adapters)
    if jax.process_count() == 1:
      out = jax.device_get(fn(self.model.params, arrays, rngs))
    else:
      # Multi-host: each host passes its own slice of the episodes; they are
      # assembled into one global array sharded over every host's devices,
      # and the results gathered back so every host sees the whole batch.
      from jax.experimental import multihost_utils

      episodes = NamedSharding(self.mesh, PartitionSpec(self.axis))
      arrays, rngs = jax.tree_util.tree_map(
          lambda x: jax.make_array_from_process_local_data(episodes, x),
          (arrays, np.asarray(jax.random.key_data(rngs))
           if jax.dtypes.issubdtype(rngs.dtype, jax.dtypes.prng_key)
           else np.asarray(rngs)))
      out = multihost_utils.process_allgather(
          fn(self.model.params, arrays, rngs), tiled=True)
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

  def _check_batch(self, batch: Mapping[str, Any]) -> None:
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
      raise KeyError(f"episode batch lacks {missing}; expected keys "
                     f"{BATCH_KEYS}")
    cfg = self.config
    e = np.shape(batch["support"])[0]
    m, q = cfg.way * cfg.shot, cfg.way * cfg.query
    s = self.model.config.vision.image_size
    expected = {
        "support_views": (e, cfg.num_views, m, s, s, 3),
        "support": (e, m, s, s, 3),
        "support_labels": (e, m),
        "query": (e, q, s, s, 3),
        "query_labels": (e, q),
    }
    for key, shape in expected.items():
      if tuple(np.shape(batch[key])) != shape:
        raise ValueError(
            f"episode batch[{key!r}] has shape {tuple(np.shape(batch[key]))}, "
            f"expected {shape} (E={e}, way={cfg.way}, shot={cfg.shot}, "
            f"query={cfg.query}, image size {s})")
    ids_shape = tuple(np.shape(batch["text_ids"]))
    if ids_shape[:2] != (e, cfg.way):
      raise ValueError(f"episode batch['text_ids'] has shape {ids_shape}, "
                       f"expected ({e}, {cfg.way}, L)")
    # Per host: each host feeds the devices it owns.
    devices = max(1, self.mesh.shape[self.axis] // jax.process_count())
    if e % devices:
      raise ValueError(
          f"a batch of {e} episodes cannot be split over {devices} devices; "
          "use a multiple (pad the last batch)")


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

BATCH_KEYS = ("support_views", "support", "support_labels", "query",
              "query_labels", "text_ids")


def episode_keys(seed: int, indices) -> Array:
  """PRNG keys [E] for episodes ``indices``: a pure function of (seed, i)."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(
      jnp.asarray(indices, jnp.uint32))


def steps_for(epochs: int, shot: int) -> int:
  """The release's T = epochs * shot (one step per support image per epoch,
  full batch)."""
  return int(epochs) * int(shot)

