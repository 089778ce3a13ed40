"""The few-shot (CLIP-LoRA) trainer: one model fine-tuned on a K-shot set.

CLIP-LoRA's loop (MaxZanella/CLIP-LoRA ``lora.py:35-148``): T = 500 K
iterations on minibatches of 32, AdamW (lr 2e-4, weight decay 1e-2, betas
0.9/0.999) with the LR cosine-annealed to 1e-6 over the T iterations (no
warmup), cross-entropy on ``100 * l2n(f) l2n(t)^T``; with the text tower
tuned the prompts of *all* classes are re-encoded every iteration. LoRA r=2,
alpha=1 (scaling alpha/sqrt(r)), dropout 0.25 on q, k, v of every block of
both towers.

The method's terms in minibatch form (docs/fewshot.md), active during the
first ``window_fraction`` of the T iterations:

* SVL: ``L_ad = CE(s f w'^T, y)`` with one slot per class of the dataset,
  slot c = the feature of a row of the minibatch drawn uniformly with
  replacement (``losses.sample_shuffled_slots(rng, B, C)``).
* RA: g = the same minibatch images without augmentation (eval transform),
  ``A_v = f g^T``, ``A_t = (t t^T)[y][:, y]``, target
  ``p stop_grad(A_v) + (1 - p) A_t`` with ``p = fuse_weight(k, T, 0.6)``
  (this step's own A_v, gradient stopped: a minibatch has no previous
  A_v of the same rows).

``train_step(state, batch, rng)`` is pure (jit-compiled once): the minibatch
is sharded over every device of the mesh (data parallel, through
``jaxfsl.parallel``: ``shard_batch``), parameters and optimizer state are
replicated; the result does not depend on the device count beyond float
rounding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh

from jaxfsl import optim, parallel
from jaxfsl.method import losses, objective
from jaxfsl.models.model import Model
from jaxfsl.models.two_towers import TwoTowers
from jaxfsl.trainables.lora import LoraConfig, init_lora

Array = jax.Array
VARIANTS = ("none", "svl", "ra", "svl_ra")
CLIP_LORA_LORA = LoraConfig(rank=2, alpha=1.0, dropout=0.25,
                            targets=("q", "k", "v"), towers="both",
                            blocks="all")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """Static settings of a few-shot run (CLIP-LoRA's defaults).

  Attributes:
    steps: T, total iterations (CLIP-LoRA: 500 * K).
    batch_size: B, images per iteration (a multiple of the device count).
    optim: AdamW and its cosine floor (``optim.OptimConfig``: lr, b1, b2,
      eps, weight_decay, min_lr; CLIP-LoRA's are its defaults). The cosine
      spans T here (CLIP-LoRA), so ``period_factor`` and the SGD/warmup keys
      are not read.
    logit_scale: fixed multiplier of cosine logits (CLIP-LoRA: 100).
    variant: none | svl | ra | svl_ra.
    anti_visual_weight, relation_weight: weights of L_ad and L_ra.
    window_fraction: the extra terms act for floor(fraction * T) iterations.
    relation_form: "release" or "softmax_kl" (``losses``).
    lora: adapters (default CLIP-LoRA's r=2, alpha=1, q/k/v, both towers).
    text_chunk: prompts encoded per chunk (rematerialised in the backward
      pass), so 1,000 ImageNet prompts fit in memory.
    remat: rematerialise transformer blocks.
  """

  steps: int
  batch_size: int = 32
  optim: optim.OptimConfig = dataclasses.field(
      default_factory=optim.OptimConfig)
  logit_scale: float = 100.0
  variant: str = "none"
  anti_visual_weight: float = 0.1
  relation_weight: float = 3.0
  window_fraction: float = 0.6
  relation_form: str = "release"
  lora: LoraConfig = CLIP_LORA_LORA
  text_chunk: int = 128
  remat: bool = False

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"fewshot variant {self.variant!r}: expected one of "
                       f"{VARIANTS}")
    for key in ("steps", "batch_size", "text_chunk"):
      if getattr(self, key) < 1:
        raise ValueError(f"fewshot {key} must be >= 1, got "
                         f"{getattr(self, key)}")
    if not 0.0 < self.window_fraction <= 1.0:
      raise ValueError("window_fraction must be in (0, 1], got "
                       f"{self.window_fraction}")

  @property
  def uses_svl(self) -> bool:
    return self.variant in ("svl", "svl_ra")

  @property
  def uses_ra(self) -> bool:
    return self.variant in ("ra", "svl_ra")

  @property
  def window_end(self) -> int:
    """Iterations k < window_end carry the variant's extra terms:
    int(window_fraction * T), the fuse weight's denominator (the minibatch
    form's window, docs/fewshot.md)."""
    return objective.fuse_denominator(self.steps, self.window_fraction)


class TrainState(train_state.TrainState):
  """flax TrainState: ``params`` = the LoRA adapter tree, ``step`` = k."""


def make_optimizer(cfg: TrainerConfig) -> optax.GradientTransformation:
  """AdamW with torch's ``CosineAnnealingLR(T_max=T, eta_min=min_lr)``
  stepped per iteration (CLIP-LoRA's): the episodic protocol's
  ``jaxfsl.optim.release_optimizer`` with a period of T instead of 8 T."""
  o = cfg.optim
  return optim.release_optimizer(
      cfg.steps, base_lr=o.lr, betas=(o.b1, o.b2), eps=o.eps,
      weight_decay=o.weight_decay, min_lr=o.min_lr, period_factor=1)


class FewshotTrainer:
  """Compiled train / eval programs for one model, class list and config.

  Args:
    model: the frozen backbone.
    config: static settings.
    text_ids: int32 [C, L] token ids of every class prompt (label order).
    mesh: device mesh (default: ``parallel.make_mesh()``, all devices);
      its first axis shards the minibatch.
  """

  def __init__(self, model: Model, config: TrainerConfig,
               text_ids: np.ndarray, mesh: Mesh | None = None):
    self.model, self.config = model, config
    self.mesh = mesh if mesh is not None else parallel.make_mesh()
    self.num_devices = int(self.mesh.shape[parallel.episode_axis(self.mesh)])
    if config.batch_size % self.num_devices:
      raise ValueError(f"batch_size {config.batch_size} is not a multiple of "
                       f"the {self.num_devices} devices")
    self.module = TwoTowers(model.config, dtype=model.dtype,
                            lora_scaling=config.lora.scaling,
                            lora_dropout=config.lora.dropout,
                            remat=config.remat)
    self.tx = make_optimizer(config)
    self.tune_text = config.lora.towers in ("text", "both")
    self.num_classes = int(text_ids.shape[0])
    self.mean = np.asarray(model.preprocessing.mean, np.float32) * 255.0
    self.std = np.asarray(model.preprocessing.std, np.float32) * 255.0
    self.replicated = parallel.replicated(self.mesh)
    self.backbone = jax.device_put(model.params, self.replicated)
    self.text_ids = jax.device_put(jnp.asarray(text_ids, jnp.int32),
                                   self.replicated)
    self._step = jax.jit(self._train_step, donate_argnums=(0,))
    self._eval_jit = jax.jit(self._eval_correct)
    self._text_jit = jax.jit(self._eval_text)
    self.frozen_text = None if self.tune_text else self._text_jit(
        {}, self.backbone, self.text_ids)

  # ----------------------------------------------------------------- state

  def init_state(self, rng: Array) -> TrainState:
    """Fresh adapters (A uniform, B zero: the backbone exactly) + AdamW."""
    adapters = init_lora(rng, self.model.params, self.config.lora).params
    state = TrainState.create(apply_fn=self.module.apply, params=adapters,
                              tx=self.tx)
    return jax.device_put(state, self.replicated)

  def put_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, Array]:
    """The global numpy batch (the same on every process) -> device arrays
    sharded on their leading axis (``parallel.shard_batch``); on several
    hosts each process passes on only its own rows
    (``parallel.process_rows``)."""
    batch = dict(batch)
    if jax.process_count() > 1 and not any(
        isinstance(v, jax.Array) for v in batch.values()):
      batch = parallel.process_rows(batch)
    return parallel.shard_batch(batch, self.mesh)

  # -------------------------------------------------------------- features

  def _normalize(self, pixels: Array) -> Array:
    return (pixels.astype(jnp.float32) - self.mean) / self.std

  def _image_feats(self, backbone, adapters, pixels, rng=None) -> Array:
    deterministic = rng is None or self.config.lora.dropout == 0.0
    feats = self.module.apply(
        {"params": backbone, "lora": adapters}, self._normalize(pixels),
        deterministic, method="encode_image",
        rngs={} if deterministic else {"dropout": rng})
    return losses.l2_normalize(feats)

  def _text_feats(self, backbone, adapters, ids, rng=None) -> Array:
    """float32 [C, D] L2-normalised, encoded ``text_chunk`` prompts at a
    time; each chunk is rematerialised in the backward pass, so only one
    chunk's activations are alive at once, and split over the devices
    (with 1,000 ImageNet prompts the text tower costs several times the 32
    images, so replicating it would waste most of a multi-device mesh)."""
    deterministic = rng is None or self.config.lora.dropout == 0.0
    num, ndev = ids.shape[0], self.num_devices
    chunk = -(-min(self.config.text_chunk, num) // ndev) * ndev
    pad = -num % chunk
    ids = jnp.concatenate([ids, jnp.repeat(ids[:1], pad, axis=0)])
    ids = ids.reshape(-1, chunk, ids.shape[-1])
    if ndev > 1:
      ids = jax.lax.with_sharding_constraint(
          ids, parallel.data_sharding(self.mesh, axis=1))
    keys = (jax.random.split(rng, ids.shape[0]) if not deterministic
            else jnp.zeros((ids.shape[0], 2), jnp.uint32))

    @jax.checkpoint
    def encode(args):
      chunk_ids, key = args
      return self.module.apply(
          {"params": backbone, "lora": adapters}, chunk_ids, deterministic,
          method="encode_text",
          rngs={} if deterministic else {"dropout": key})

    if ids.shape[0] == 1:
      feats = encode((ids[0], keys[0]))
    else:
      feats = jax.lax.map(encode, (ids, keys))
      feats = feats.reshape(-1, feats.shape[-1])
    return losses.l2_normalize(feats[:num])

  # ------------------------------------------------------------ train step

  def loss_terms(self, params, backbone, text_ids, frozen_text, batch, rng,
                 step, with_extras: bool) -> tuple[Array, dict]:
    """Total loss at iteration ``step`` and its unweighted parts.

    Args:
      params: LoRA adapters (differentiated).
      backbone: frozen params; text_ids: int32 [C, L].
      frozen_text: float32 [C, D] (vision-only tuning) or None.
      batch: images uint8 [B, S, S, 3], labels int32 [B], clean uint8
        [B, S, S, 3] (RA).
      rng: this iteration's key; step: int32 [] k.
      with_extras: add the variant's terms (inside the window).

    Returns:
      (total float32 [], {"vlm", "anti_visual", "relation"} float32 []).
    """
    cfg = self.config
    view_rng, clean_rng, text_rng, slot_rng = jax.random.split(rng, 4)
    f = self._image_feats(backbone, params, batch["images"], view_rng)
    if self.tune_text:
      t = self._text_feats(backbone, params, text_ids, text_rng)
    else:
      t = frozen_text
    y = batch["labels"]
    scale = cfg.logit_scale
    zero = jnp.zeros((), jnp.float32)
    parts = {"vlm": losses.vlm_loss(f, t, y, scale), "anti_visual": zero,
             "relation": zero}
    total = parts["vlm"]
    if not with_extras:
      return total, parts
    if cfg.uses_svl:
      slots = losses.sample_shuffled_slots(slot_rng, f.shape[0],
                                           self.num_classes)
      parts["anti_visual"] = losses.anti_visual_loss(f, y, slots, scale)
      total = total + cfg.anti_visual_weight * parts["anti_visual"]
    if cfg.uses_ra:
      g = self._image_feats(backbone, params, batch["clean"], clean_rng)
      a_v = jax.lax.stop_gradient(
          jnp.einsum("pd,qd->pq", f, g,
                     precision=jax.lax.Precision.HIGHEST).astype(jnp.float32))
      p = objective.fuse_weight(step, cfg.steps, cfg.window_fraction)
      parts["relation"], _ = losses.relation_alignment_loss(
          f, g, t, y, y, a_v, p, form=cfg.relation_form)
      total = total + cfg.relation_weight * parts["relation"]
    return total, parts

  def _train_step(self, state: TrainState, batch, rng, backbone, text_ids,
                  frozen_text) -> tuple[TrainState, dict]:
    step = state.step

    def grads(with_extras):
      def run(params):
        fn = lambda p: self.loss_terms(  # noqa: E731
            p, backbone, text_ids, frozen_text, batch, rng, step,
            with_extras)
        return jax.value_and_grad(fn, has_aux=True)(params)
      return run

    if self.config.variant == "none":
      (total, parts), g = grads(False)(state.params)
    else:
      (total, parts), g = jax.lax.cond(
          step < self.config.window_end, grads(True), grads(False),
          state.params)
    new_state = state.apply_gradients(grads=g)
    parts = dict(parts, total=total,
                 lr=self.tx_lr(step))
    return new_state, parts

  def tx_lr(self, step: Array) -> Array:
    cfg = self.config
    return optim.release_schedule(cfg.steps, cfg.optim.lr, cfg.optim.min_lr,
                                  period_factor=1)(step)

  def train_step(self, state: TrainState, batch: Mapping[str, Any],
                 rng: Array) -> tuple[TrainState, dict]:
    """One AdamW iteration (pure; ``state`` is donated).

    Args:
      state: adapters, AdamW state and iteration k.
      batch: ``images`` uint8 [B, S, S, 3], ``labels`` int32 [B] and, for
        RA, ``clean`` uint8 [B, S, S, 3]; numpy or ``put_batch``'s arrays.
      rng: this iteration's key (LoRA dropout, SVL slots).

    Returns:
      (new state, {"total", "vlm", "anti_visual", "relation", "lr"} float32
      [] device scalars, unweighted parts).
    """
    if not isinstance(next(iter(batch.values())), jax.Array):
      batch = self.put_batch(batch)
    return self._step(state, batch, rng, self.backbone, self.text_ids,
                      self.frozen_text)

  # ------------------------------------------------------------- evaluate

  def _eval_text(self, params, backbone, text_ids) -> Array:
    return self._text_feats(backbone, params, text_ids)

  def _eval_correct(self, params, backbone, text_feats, images, labels,
                    mask) -> Array:
    f = self._image_feats(backbone, params, images)
    logits = jnp.einsum("pd,qd->pq", f, text_feats,
                        precision=jax.lax.Precision.HIGHEST)
    return jnp.sum((jnp.argmax(logits, axis=-1) == labels) & mask)

  def text_features(self, params: Any) -> Array:
    """float32 [C, D] class text features under ``params`` (dropout off);
    ``params={}`` gives the zero-shot (frozen) ones."""
    if not self.tune_text and self.frozen_text is not None:
      return self.frozen_text
    return self._text_jit(params, self.backbone, self.text_ids)

  def count_correct(self, params: Any, batch: Mapping[str, np.ndarray],
                    text_feats: Array) -> int:
    """Correct top-1 predictions among the ``batch["mask"]`` rows (dropout
    off). ``params``: adapters, or ``{}`` for zero-shot; ``text_feats`` from
    ``text_features(params)``."""
    b = self.put_batch(batch)
    return int(self._eval_jit(params, self.backbone, text_feats, b["images"],
                              b["labels"], b["mask"]))
