"""The episode engine: per-episode fine-tuning, many episodes at once.

``EpisodeProgram`` (``program.py``) is one episode's fine-tuning and
evaluation as pure JAX functions. ``EpisodeEngine.run_batch`` vmaps that
program over a batch of episodes (each with its own trainable pytree,
optimizer state and rng; the backbone is a shared, unbatched argument) and
jits it with the episode axis sharded over a device mesh
(``jaxfsl.parallel``), so it runs unchanged on one CPU, one GPU, or every
chip of a TPU pod slice. ``evaluate_adapters`` evaluates saved trainable
pytrees the same way (the eval-only job).

The configuration is ``EngineConfig`` (``engine_config.py``); the method's
settings ``MethodConfig`` (``jaxfsl.method.objective``), the optimiser's
``OptimConfig`` (``jaxfsl.optim``) and LoRA's ``LoraConfig``
(``jaxfsl.trainables.lora``) are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxfsl import parallel
from jaxfsl.method.objective import NUM_STAGES, TERMS, VARIANTS, MethodConfig
from jaxfsl.models.model import Model
from jaxfsl.optim import OptimConfig
from jaxfsl.protocols.episodic.batch import BATCH_KEYS, EpisodeBatch
from jaxfsl.protocols.episodic.engine_config import EngineConfig, steps_for
from jaxfsl.protocols.episodic.program import (
    EpisodeInputs,
    EpisodeProgram,
    EpisodeState,
)
from jaxfsl.trainables.lora import LoraConfig

Array = jax.Array

__all__ = [
    "BATCH_KEYS", "CPU_COMPILER_OPTIONS", "NUM_STAGES", "TERMS", "VARIANTS",
    "EngineConfig", "EpisodeBatch", "EpisodeEngine", "EpisodeInputs",
    "EpisodeProgram", "EpisodeState", "LoraConfig", "MethodConfig",
    "OptimConfig", "episode_keys", "steps_for",
]


class EpisodeEngine(EpisodeProgram):
  """Builds and runs the compiled episode programs for one model + config.

  Args:
    model: the backbone (its params are the frozen, shared pytree).
    config: static episode/method/optimiser/trainable settings.
    mesh: device mesh whose first axis carries episodes; default: every
      device in one axis (``parallel.make_mesh``).
  """

  def __init__(self, model: Model, config: EngineConfig,
               mesh: Mesh | None = None):
    super().__init__(model, config)
    self.mesh = parallel.make_mesh() if mesh is None else mesh
    self.axis = parallel.episode_axis(self.mesh)
    self._compiled: dict[Any, Any] = {}

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
