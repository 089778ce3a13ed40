"""The episode engine's step as the benchmark times it: the model, the
engine config a job would run, synthetic episodes and the compiled step.

What is timed is the real engine: ``EpisodeEngine.train_step`` vmapped over E
episodes and jitted exactly as ``run_batch`` runs it inside its loop (shared,
unbatched backbone; batched adapters, optimizer state and inputs from
``EpisodeEngine.prepare``), with the model's real sizes and the real episode
shapes (N = 5 * way * shot augmented views and M = way * shot clean support
images per episode).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxfsl import parallel
from jaxfsl.benchmarking.compile import compiled_memory

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float16": jnp.float16}


def load(name: str, dtype: str):
  """A preset (random init) or a checkpoint, computing in ``dtype``.

  Raises:
    ValueError: ``name`` is neither a preset nor an existing path.
  """
  from jaxfsl.models import PRESETS, build

  jdtype = DTYPES[dtype]
  if name in PRESETS:
    return build(name, dtype=jdtype)
  if os.path.exists(name):
    import jaxfsl
    return jaxfsl.load_model(name, dtype=jdtype)
  raise ValueError(f"--model {name!r} is neither a preset "
                   f"({sorted(PRESETS)}) nor an existing path")


def default_engine_config(shot: int, variant: str | None = None,
                          trainable: str | None = None, **options):
  """The engine config a job with ``configs/base.py``'s defaults would run:
  T = epochs * shot, the optimiser, method weights, LoRA settings and logit
  scale from ``get_config()``; ``options`` override ``EngineConfig`` fields.
  """
  from jaxfsl.configs.base import get_config
  from jaxfsl.optim import OptimConfig
  from jaxfsl.protocols.episodic.engine import (
    EngineConfig,
    MethodConfig,
    steps_for,
  )
  from jaxfsl.trainables import LoraConfig

  c = get_config()
  method = c.method.to_dict()
  if variant is not None:
    method["variant"] = variant
  lora = c.lora
  trainable = c.trainable if trainable is None else trainable
  fields = dict(
      way=c.way, shot=shot, query=c.query, steps=steps_for(c.epochs, shot),
      method=MethodConfig(**method), optim=OptimConfig(**c.optim.to_dict()),
      lora=LoraConfig(rank=lora.rank, alpha=float(lora.alpha),
                      dropout=float(lora.dropout),
                      targets=tuple(lora.targets), towers=lora.towers,
                      blocks=lora.blocks, dropout_masks=lora.dropout_masks),
      trainable=trainable,
      trainable_config=(None if trainable == "lora"
                        else c.get(trainable)),
      logit_scale=float(c.logit_scale), remat=c.remat,
      skip_clean_pass_outside_window=c.skip_clean_pass_outside_window)
  # "lora.<field>" options override that LoraConfig field (e.g.
  # --option lora.dropout_masks=packed).
  lora_options = {k.split(".", 1)[1]: options.pop(k) for k in list(options)
                  if k.startswith("lora.")}
  if lora_options:
    fields["lora"] = dataclasses.replace(fields["lora"], **lora_options)
  fields.update(options)
  return EngineConfig(**fields)


def synthetic_episodes(model, config, num_episodes: int, seed: int = 0
                       ) -> dict[str, np.ndarray]:
  """A random batch of E episodes with ``run_batch``'s keys and shapes."""
  rng = np.random.default_rng(seed)
  s = model.config.vision.image_size
  m, q = config.way * config.shot, config.way * config.query
  e = num_episodes

  def images(*lead):
    return rng.integers(0, 256, lead + (s, s, 3), dtype=np.uint8)

  length = model.config.text.context_length
  vocab = model.config.text.vocab_size
  labels = np.tile(np.repeat(np.arange(config.way), config.shot), (e, 1))
  views = images(e, config.num_views, m)
  return {
      "support_views": views,
      "support": views[:, 0].copy(),  # view 0 is the identity view
      "support_labels": labels.astype(np.int32),
      "query": images(e, q),
      "query_labels": np.tile(np.repeat(np.arange(config.way), config.query),
                              (e, 1)).astype(np.int32),
      "text_ids": rng.integers(1, vocab, (e, config.way, length),
                               dtype=np.int32),
  }


def stage_steps(config) -> tuple[int, int | None]:
  """A step index inside the method's window with every term active (the
  most expensive step: RA needs a previous A_v, so not the window's first),
  and one outside it (stage 2), None when the window covers all of T."""
  start, end = config.window
  stage1 = min(start + 1, end - 1)
  if end < config.steps:
    stage2 = end
  elif start > 0:
    stage2 = 0
  else:
    stage2 = None
  return stage1, stage2


class JaxStep:
  """The engine's compiled train step over a batch of E episodes.

  ``__call__`` runs one step (the state is donated and carried), so timing
  it repeatedly is timing the engine's inner loop.
  """

  def __init__(self, engine, num_episodes: int, seed: int = 0):
    self.engine = engine
    backbone = engine.model.params
    self.backbone = backbone
    batch = synthetic_episodes(engine.model, engine.config, num_episodes,
                               seed)
    rngs = jax.random.split(jax.random.PRNGKey(seed), num_episodes)

    def setup(backbone, batch, rngs):
      def one(b, r):
        inputs = engine.prepare(backbone, b)
        return inputs, engine.init_state(backbone, inputs, r)
      return jax.vmap(one)(batch, rngs)

    setup = parallel.jit_episodes(setup, engine.mesh,
                                  shared=(True, False, False))
    self.inputs, self.state = setup(backbone, batch, rngs)
    jax.block_until_ready(self.state)

    def step(state, inputs, rngs, backbone, k):
      def one(s, b, r):
        return engine.train_step(s, b, r, backbone=backbone, step=k)
      return jax.vmap(one)(state, inputs, rngs)

    self._jit = parallel.jit_episodes(
        step, engine.mesh, shared=(False, False, False, True, True),
        donate_argnums=(0,),
        compiler_options=getattr(engine, "compiler_options", None))
    self._rngs = rngs
    self._fold = jax.jit(lambda keys, i: jax.vmap(
        lambda key: jax.random.fold_in(key, i))(keys))
    self._count = 0
    self.compiled = None
    self.compile_seconds = None

  def compile(self) -> float:
    """Lowers and compiles the step; returns the seconds it took."""
    start = time.perf_counter()
    k = jnp.asarray(0, jnp.int32)
    self.compiled = self._jit.lower(self.state, self.inputs, self._rngs,
                                    self.backbone, k).compile()
    self.compile_seconds = time.perf_counter() - start
    return self.compile_seconds

  def memory_analysis(self) -> dict[str, int]:
    """XLA's static buffer sizes of the compiled step (bytes), if known."""
    return compiled_memory(self.compiled)

  def __call__(self, step: int):
    if self.compiled is None:
      self.compile()
    self._count += 1
    rngs = self._fold(self._rngs, self._count)
    self.state, metrics = self.compiled(
        self.state, self.inputs, rngs, self.backbone,
        jnp.asarray(step, jnp.int32))
    return self.state.loss, metrics["total"]
