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

import dataclasses
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
    "AUTO", "AUTO_MARGIN", "BATCH_KEYS", "CPU_COMPILER_OPTIONS",
    "NUM_STAGES", "TERMS", "VARIANTS", "AutoBatch", "EngineConfig",
    "EpisodeBatch", "EpisodeEngine", "EpisodeInputs", "EpisodeProgram",
    "EpisodeState", "LoraConfig", "MethodConfig", "OptimConfig",
    "auto_episodes_per_batch", "build_engine", "compiled_bytes",
    "device_memory_budget", "episode_keys", "program_bytes", "steps_for",
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


# ------------------------------------------------- episodes_per_batch "auto"

# Fraction of the memory budget the chosen batch may use: XLA's static
# buffer sizes leave out the allocator's fragmentation, the runtime's own
# workspace (cuDNN/cuBLAS, collectives) and the host-to-device copies of
# the next batch.
AUTO_MARGIN = 0.85


@dataclasses.dataclass(frozen=True)
class AutoBatch:
  """What ``auto_episodes_per_batch`` chose.

  Attributes:
    episodes_per_batch: E, a multiple of the mesh's episode-axis size.
    remat: whether the engine must rematerialise blocks for E to fit.
    bytes_per_device: XLA's static size of the chosen program per device
      (arguments + outputs + temporaries - aliased), bytes.
    budget_bytes: the per-device budget it was chosen against, bytes.
    reason: one line for the log.
  """

  episodes_per_batch: int
  remat: bool
  bytes_per_device: int
  budget_bytes: int | None
  reason: str


def compiled_bytes(compiled: Any) -> int | None:
  """Bytes per device a compiled program needs, from XLA's memory analysis
  (arguments + outputs + temporaries - outputs aliased to arguments); None
  where the backend does not report it."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it.
    return None
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes +
             stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def device_memory_budget() -> tuple[int | None, str]:
  """(bytes, source): the smallest ``bytes_limit`` of this host's devices
  (``Device.memory_stats()``, GPU/TPU), or (None, why) where no device
  reports one (CPU)."""
  limits = parallel.device_memory_stat(None, "bytes_limit")
  if not limits:
    return None, f"{jax.local_devices()[0].platform} reports no bytes_limit"
  return min(limits), f"{jax.local_devices()[0].device_kind} bytes_limit"


def _batch_struct(engine: EpisodeEngine, num_episodes: int):
  """Abstract (shape/dtype only) run_batch arguments for E episodes."""
  cfg, model = engine.config, engine.model
  s = model.config.vision.image_size
  m, q, e = cfg.way * cfg.shot, cfg.way * cfg.query, num_episodes
  u8, i32 = np.uint8, np.int32
  sds = jax.ShapeDtypeStruct
  batch = EpisodeBatch(
      support_views=sds((e, cfg.num_views, m, s, s, 3), u8),
      support=sds((e, m, s, s, 3), u8),
      support_labels=sds((e, m), i32),
      query=sds((e, q, s, s, 3), u8),
      query_labels=sds((e, q), i32),
      text_ids=sds((e, cfg.way, model.config.text.context_length), i32))
  rngs = jax.eval_shape(episode_keys, 0, np.arange(e))
  return batch, rngs


def program_bytes(engine: EpisodeEngine, num_episodes: int,
                  return_adapters: bool = False) -> int | None:
  """Bytes per device of ``engine.run_batch``'s program for E episodes,
  from compiling it on abstract inputs (nothing is allocated or run)."""
  batch, rngs = _batch_struct(engine, num_episodes)
  params = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype),
      engine.model.params)
  compiled = engine._batch_fn(return_adapters).lower(
      params, batch, rngs).compile()
  return compiled_bytes(compiled)


def auto_episodes_per_batch(model: Model, config: EngineConfig,
                            budget_bytes: int | None = None, *,
                            mesh: Mesh | None = None,
                            max_episodes: int | None = None,
                            margin: float = AUTO_MARGIN,
                            return_adapters: bool = False) -> AutoBatch:
  """The largest episodes_per_batch whose program fits the device memory.

  The run_batch program is compiled (not run) for d and 2d episodes (d: the
  mesh's episode-axis size) and XLA's memory analysis of each
  (``compiled_bytes``) is extrapolated linearly in E: bytes(E) = fixed +
  per_step * E / d (the backbone and code are fixed; inputs, activations,
  trainable and optimiser state grow per episode). The largest multiple of
  d with bytes(E) <= margin * budget is then compiled to confirm it (and
  halved until it fits, should XLA's sizes not be linear). When not even d
  episodes fit, the same is tried with blocks rematerialised
  (``EngineConfig.remat``); the caller then builds its engine with
  ``remat=True``.

  Args:
    model: the backbone.
    config: the episode program's settings.
    budget_bytes: bytes per device; default: the devices' ``bytes_limit``
      (GPU/TPU). CPUs report none: without a budget one episode per device
      is chosen (CPUs gain no throughput from larger batches).
    mesh: as ``EpisodeEngine``'s.
    max_episodes: an upper bound (e.g. the job's episode count), rounded
      up to a multiple of d.
    margin: fraction of the budget the program may use (``AUTO_MARGIN``).
    return_adapters: size the program that returns the adapters.

  Returns:
    ``AutoBatch`` with the choice and a one-line reason.

  Raises:
    ValueError: bad ``budget_bytes``/``margin``/``max_episodes``, or not
      even d episodes fit with remat (names the sizes).
  """
  errors = []
  if budget_bytes is not None and budget_bytes <= 0:
    errors.append(f"budget_bytes {budget_bytes!r}: expected > 0")
  if not 0 < margin <= 1:
    errors.append(f"margin {margin!r}: expected in (0, 1]")
  if max_episodes is not None and max_episodes < 1:
    errors.append(f"max_episodes {max_episodes!r}: expected >= 1")
  if errors:
    raise ValueError("auto_episodes_per_batch: " + "; ".join(errors))
  mesh = parallel.make_mesh() if mesh is None else mesh
  d = int(mesh.shape[parallel.episode_axis(mesh)])
  source = "given budget"
  if budget_bytes is None:
    budget_bytes, source = device_memory_budget()
    if budget_bytes is None:
      return AutoBatch(d, config.remat, 0, None,
                       f"episodes_per_batch=auto -> {d}: {source} and no "
                       "memory budget was given; one episode per device "
                       "(CPUs gain no throughput from larger batches)")
  cap = None if max_episodes is None else -(-max_episodes // d)
  limit = margin * budget_bytes
  gib = 2.0 ** 30
  tried = []
  for remat in ((False, True) if not config.remat else (True,)):
    engine = EpisodeEngine(model, dataclasses.replace(config, remat=remat),
                           mesh)
    one = program_bytes(engine, d, return_adapters)
    if one is None:
      raise ValueError("auto_episodes_per_batch: this backend reports no "
                       "memory analysis; set episodes_per_batch explicitly")
    two = program_bytes(engine, 2 * d, return_adapters)
    per_step = max(two - one, 1)
    fixed = one - per_step
    k = int((limit - fixed) // per_step)
    tried.append(f"remat={remat}: {one / gib:.2f} GiB for {d} episode(s), "
                 f"+{per_step / gib:.3f} GiB per {d} more")
    if k < 1:
      continue
    if cap is not None:
      k = min(k, cap)
    while True:
      size = one if k == 1 else two if k == 2 else program_bytes(
          engine, k * d, return_adapters)
      if size <= limit or k == 1:
        break
      k = max(1, k // 2)
    if size > limit:
      continue
    e = k * d
    capped = " (capped by the episode count)" if cap is not None and \
        k == cap else ""
    reason = (f"episodes_per_batch=auto -> {e}{capped}: "
              f"{size / gib:.2f} GiB per device of a {budget_bytes / gib:.2f}"
              f" GiB budget ({source}, margin {margin:.2f}); "
              + "; ".join(tried))
    return AutoBatch(e, remat, size, budget_bytes, reason)
  raise ValueError(
      f"auto_episodes_per_batch: not even {d} episode(s) fit "
      f"{margin:.2f} x {budget_bytes / gib:.2f} GiB per device ({source}): "
      + "; ".join(tried) + "; use a smaller model, image size or shot")


AUTO = -1  # config.episodes_per_batch = -1: auto_episodes_per_batch


def build_engine(model: Model, config: EngineConfig, episodes_per_batch: int,
                 *, mesh: Mesh | None = None,
                 max_episodes: int | None = None,
                 return_adapters: bool = False
                 ) -> tuple[EpisodeEngine, int, str | None]:
  """The job's engine and batch size, resolving ``episodes_per_batch =
  AUTO`` (-1) with ``auto_episodes_per_batch`` (the engine then has
  ``remat`` on when the choice needs it).

  Returns:
    (engine, episodes per batch, the choice's log line or None).
  """
  if episodes_per_batch != AUTO:
    return EpisodeEngine(model, config, mesh), int(episodes_per_batch), None
  choice = auto_episodes_per_batch(model, config, mesh=mesh,
                                   max_episodes=max_episodes,
                                   return_adapters=return_adapters)
  config = dataclasses.replace(config, remat=choice.remat)
  return (EpisodeEngine(model, config, mesh), choice.episodes_per_batch,
          choice.reason)
