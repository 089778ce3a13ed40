"""Benchmarking the episode engine: FLOP counts and timing.

``tools/benchmark.py`` is the command-line front end; everything reusable is
here so that tests and notebooks can call it. The PyTorch reference step
(``--against torch``) is ``tools/torch_reference.py``: this package imports
no torch. Episode settings (T = epochs * shot, learning rate, loss weights,
LoRA) are ``jaxfsl/configs/base.py``'s defaults (``default_engine_config``).

What is timed is the real engine: ``EpisodeEngine.train_step`` vmapped over E
episodes and jitted exactly as ``run_batch`` runs it inside its loop (shared,
unbatched backbone; batched adapters, optimizer state and inputs from
``EpisodeEngine.prepare``), with the model's real sizes and the real episode
shapes (N = 5 * way * shot augmented views and M = way * shot clean support
images per episode).

FLOP accounting (model FLOPs of forward + backward with a frozen backbone)
is ``jaxfsl.flops``; its names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfsl import parallel
from jaxfsl.flops import (  # noqa: F401 - re-exported
    PEAK_TFLOPS,
    TINY_STEP_FLOPS,
    FlopCount,
    peak_tflops,
    step_flops,
    vision_flops,
)

# ------------------------------------------------------------------ timing


def timed(fn: Callable[[], Any]) -> float:
  """Seconds taken by ``fn()``, its JAX outputs waited for."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int
                ) -> dict[str, list[float]]:
  """Times each of ``fns`` ``repeats`` times, alternating between them.

  On a shared machine the load changes from second to second; alternating
  the contenders and comparing medians keeps them under the same conditions.

  Returns:
    name -> list of seconds, one per repeat.
  """
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(timed(fn))
  return times


def median(xs: Sequence[float]) -> float:
  return float(statistics.median(xs))


def tree_bytes(tree) -> int:
  """Bytes of every array in a pytree."""
  return int(sum(x.size * x.dtype.itemsize
                 for x in jax.tree_util.tree_leaves(tree)))


def max_rss_bytes() -> int:
  """This process's peak resident set size (Linux reports KiB)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(rss if sys.platform == "darwin" else rss * 1024)


def peak_memory_bytes() -> tuple[int, str]:
  """(peak bytes, what was measured): the accelerator's peak bytes in use
  where ``memory_stats`` reports it (summed over local devices), else the
  process's peak RSS."""
  total, found = 0, False
  for device in jax.local_devices():
    try:
      stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory stats raise.
      stats = {}
    if "peak_bytes_in_use" in stats:
      total += int(stats["peak_bytes_in_use"])
      found = True
  if found:
    return total, "device_peak_bytes_in_use"
  return max_rss_bytes(), "process_max_rss"


# ----------------------------------------------------------- jaxfsl side


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
    try:
      stats = self.compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it.
      return {}
    if stats is None:
      return {}
    out = {}
    for name in ("temp_size_in_bytes", "argument_size_in_bytes",
                 "output_size_in_bytes", "alias_size_in_bytes"):
      value = getattr(stats, name, None)
      if value is not None:
        out[name] = int(value)
    return out

  def __call__(self, step: int):
    if self.compiled is None:
      self.compile()
    self._count += 1
    rngs = self._fold(self._rngs, self._count)
    self.state, metrics = self.compiled(
        self.state, self.inputs, rngs, self.backbone,
        jnp.asarray(step, jnp.int32))
    return self.state.loss, metrics["total"]


# --------------------------------------------------------------- driver


@dataclasses.dataclass
class BenchmarkConfig:
  """What ``run`` measures (the CLI's flags).

  Attributes:
    model: a preset name (``jaxfsl.models.PRESETS``) or a checkpoint path.
    shot: support images per class (way 5, 15 queries, 5 views).
    episodes_per_batch: E, episodes in one vmapped step.
    steps: timed steps (after ``warmup`` untimed ones).
    dtype: compute dtype of the jaxfsl model: "float32", "bfloat16" or
      "float16" (with dynamic loss scaling unless engine_options say).
    episodes_per_batch: E, or "auto" (``auto_episodes_per_batch``).
    variant: the method's loss terms (``MethodConfig.variant``).
    trainable: what is fine-tuned (``config.trainable``).
    against: "torch" to time the PyTorch reference in the same run.
    time_stage2: also time stage-2 steps (clean pass skipped) and weigh
      both stages in ``episodes_per_hour``.
    engine_options: extra ``EngineConfig`` fields (opt-in fast paths).
    warmup: untimed steps after compilation.
    compile_only: build and compile, report compile time and XLA's memory
      analysis, run nothing (sizing E without the memory for it).
    seed: data and init seed.
    torch_threads: torch intra-op threads (default: torch's own choice).
    memory_budget_bytes: with ``episodes_per_batch="auto"``, the bytes per
      device to fit (default: the device's ``bytes_limit``; CPUs have
      none: one episode per device).
    cache_dir: persistent compilation cache used to measure the warm-cache
      compile time; default: a fresh temporary directory (so the first
      compile is a cold one). "off": no second compile.
    host_wait_batches: > 0: also measure the host-wait fraction over that
      many batches of whole episodes from the real pipeline (``host_wait``).
    host_wait_steps: T of those episodes (default: the configured T).
  """

  model: str = "clip-vit-b16"
  shot: int = 1
  episodes_per_batch: int | str = 1
  steps: int = 3
  dtype: str = "float32"
  variant: str = "svl_ra"
  trainable: str = "lora"
  against: str | None = None
  time_stage2: bool = False
  engine_options: dict = dataclasses.field(default_factory=dict)
  warmup: int = 1
  compile_only: bool = False
  seed: int = 0
  torch_threads: int | None = None
  memory_budget_bytes: int | None = None
  cache_dir: str | None = None
  host_wait_batches: int = 0
  host_wait_steps: int | None = None


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float16": jnp.float16}


def load(name: str, dtype: str):
  """A preset (random init) or a checkpoint, computing in ``dtype``."""
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
      skip_clean_pass_in_stage2=c.skip_clean_pass_in_stage2)
  # "lora.<field>" options override that LoraConfig field (e.g.
  # --option lora.dropout_masks=packed).
  lora_options = {k.split(".", 1)[1]: options.pop(k) for k in list(options)
                  if k.startswith("lora.")}
  if lora_options:
    fields["lora"] = dataclasses.replace(fields["lora"], **lora_options)
  fields.update(options)
  return EngineConfig(**fields)


def run(cfg: BenchmarkConfig, log: Callable[[str], None] | None = None,
        reference: Callable[..., Any] | None = None) -> dict:
  """Builds the engine, compiles and times its step; returns the report.

  Args:
    cfg: what to measure.
    log: progress messages.
    reference: with ``cfg.against == "torch"``, a factory
      ``reference(vision_config, engine_config, threads=, seed=)`` of a
      step callable with ``threads``, ``attn_implementation`` and ``torch``
      attributes (``tools/torch_reference.py``; this package imports no
      torch).

  Returns:
    A JSON-serialisable dict (see ``tools/benchmark.py`` for the fields).
  """
  from jaxfsl.protocols.episodic.engine import EpisodeEngine

  log = log or (lambda _: None)
  if cfg.steps < 1 and not cfg.compile_only:
    raise ValueError(f"steps must be >= 1, got {cfg.steps}")
  if cfg.dtype not in DTYPES:
    raise ValueError(f"dtype {cfg.dtype!r}: expected one of {sorted(DTYPES)}")
  if cfg.dtype == "float16" and "loss_scaling" not in cfg.engine_options:
    # float16 trains as the release's AMP does: with dynamic loss scaling.
    cfg = dataclasses.replace(cfg, engine_options={
        **cfg.engine_options, "loss_scaling": "dynamic"})
  if cfg.against not in (None, "torch"):
    raise ValueError(f"--against {cfg.against!r}: expected torch")
  if cfg.against == "torch" and reference is None:
    raise ValueError("--against torch needs the PyTorch reference step "
                     "(tools/torch_reference.py; tools/benchmark.py passes "
                     "it)")
  config = default_engine_config(cfg.shot, cfg.variant, cfg.trainable,
                                 **cfg.engine_options)
  if cfg.against == "torch" and config.method.uses_visual:
    raise ValueError("the PyTorch reference has no 'visual' variant")
  model = load(cfg.model, cfg.dtype)
  total_steps = config.steps
  devices = jax.devices()
  choice = None
  if cfg.episodes_per_batch == "auto":
    from jaxfsl.protocols.episodic.engine import auto_episodes_per_batch

    auto = auto_episodes_per_batch(model, config, cfg.memory_budget_bytes)
    log(auto.reason)
    choice = auto.reason
    cfg = dataclasses.replace(cfg, episodes_per_batch=auto.episodes_per_batch)
    config = dataclasses.replace(config, remat=auto.remat)
  if not isinstance(cfg.episodes_per_batch, int) or \
      cfg.episodes_per_batch < 1 or cfg.episodes_per_batch % len(devices):
    raise ValueError(f"episodes_per_batch={cfg.episodes_per_batch!r}: "
                     "expected 'auto' or a positive multiple of the "
                     f"{len(devices)} devices")
  engine = EpisodeEngine(model, config)
  rss_before = max_rss_bytes()
  log(f"building {cfg.episodes_per_batch} episode(s) of {model.name}")
  step = JaxStep(engine, cfg.episodes_per_batch, cfg.seed)
  compile_seconds, warm_seconds, warm_hit = compile_cold_and_warm(
      step, cfg.cache_dir, log)
  stage1, stage2 = stage_steps(config)
  common = {
      "model": model.name,
      "dtype": cfg.dtype,
      "variant": cfg.variant,
      "trainable": cfg.trainable,
      "shot": cfg.shot,
      "episodes_per_batch": cfg.episodes_per_batch,
      "episodes_per_batch_choice": choice,
      "remat": config.remat,
      "compile_seconds": compile_seconds,
      "compile_seconds_warm_cache": warm_seconds,
      "warm_compile_hit_cache": warm_hit,
      "backbone_bytes": tree_bytes(model.params),
      "episode_state_bytes": tree_bytes(step.state),
      "episode_inputs_bytes": tree_bytes(step.inputs),
      "compiled_memory": step.memory_analysis(),
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "platform": devices[0].platform,
      "engine_options": dict(cfg.engine_options),
      "compiler_options": engine.compiler_options,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax_version": jax.__version__,
  }
  if cfg.compile_only:
    peak, peak_kind = peak_memory_bytes()
    return {**common, "peak_memory_bytes": peak,
            "peak_memory_kind": peak_kind}

  if cfg.against == "torch":
    reference = reference(model.config.vision, config,
                          threads=cfg.torch_threads, seed=cfg.seed)
  else:
    reference = None

  log(f"warm-up ({cfg.warmup} step(s))")
  for _ in range(cfg.warmup):
    jax.block_until_ready(step(stage1))
    if reference is not None:
      reference()
  fns = {"jaxfsl": lambda: step(stage1)}
  if reference is not None:
    fns["torch"] = reference
  if cfg.time_stage2 and stage2 is not None:
    fns["jaxfsl_stage2"] = lambda: step(stage2)
  log(f"timing {cfg.steps} step(s) of {sorted(fns)}, interleaved")
  times = interleaved(fns, cfg.steps)
  peak, peak_kind = peak_memory_bytes()
  waits = {}
  if cfg.host_wait_batches > 0:
    options = {} if cfg.host_wait_steps is None else {
        "steps": cfg.host_wait_steps}
    wait_engine = EpisodeEngine(model, dataclasses.replace(config,
                                                           **options))
    log(f"host-wait run: {cfg.host_wait_batches} batch(es) of "
        f"{cfg.episodes_per_batch} episode(s), T={wait_engine.config.steps}")
    waits = host_wait(wait_engine, cfg.host_wait_batches,
                      cfg.episodes_per_batch, log=log)

  e = cfg.episodes_per_batch
  m = config.way * config.shot
  n = config.num_views * m
  # Images through the tower per stage-1 step, counted as the release runs
  # them: the N views, plus the M clean support images when a term needs
  # them (with clean_from_views jaxfsl does less work for the same count).
  images = n + (m if config.method.needs_clean_pass else 0)
  seconds = median(times["jaxfsl"])
  flops = e * step_flops(model.config.vision, images, config.lora.rank,
                         config.lora.targets)
  tflops = flops / seconds / 1e12
  kind = devices[0].device_kind
  peak_tf = peak_tflops(kind, cfg.dtype)
  start, end = config.window
  if "jaxfsl_stage2" in times:
    seconds2 = median(times["jaxfsl_stage2"])
    episode_seconds = (end - start) * seconds + (
        total_steps - (end - start)) * seconds2
    basis = "stage1_and_stage2_measured"
  else:
    seconds2 = None
    episode_seconds = total_steps * seconds
    basis = "every_step_as_stage1"
  report = {
      **common,
      "images_per_episode_step": images,
      "steps_timed": cfg.steps,
      "step_seconds": seconds,
      "step_seconds_all": times["jaxfsl"],
      "stage2_step_seconds": seconds2,
      "images_per_second": e * images / seconds,
      "total_steps_per_episode": total_steps,
      "episodes_per_hour": 3600.0 * e / episode_seconds,
      "episodes_per_hour_basis": basis,
      "step_tflop": flops / 1e12,
      "tflops_per_second": tflops,
      "mfu": None if peak_tf is None else tflops / (peak_tf * len(devices)),
      "peak_tflops_per_device": peak_tf,
      "peak_memory_bytes": peak,
      "peak_memory_kind": peak_kind,
      "rss_before_step_bytes": rss_before,
      "uptime_load": _load_average(),
      **waits,
  }
  if reference is not None:
    torch_seconds = median(times["torch"])
    paired = [e * t / j for j, t in zip(times["jaxfsl"], times["torch"],
                                        strict=True)]
    report.update({
        "torch_step_seconds": torch_seconds,
        "torch_step_seconds_all": times["torch"],
        "torch_tflops_per_second": flops / e / torch_seconds / 1e12,
        # Episodes per second, jaxfsl over torch (torch runs one episode).
        "speedup_vs_torch": (e / seconds) / (1.0 / torch_seconds),
        # The same from each round's adjacent pair of steps, then the
        # median: steadier when the machine's load drifts during the run.
        "speedup_vs_torch_paired": median(paired),
        "speedup_vs_torch_paired_all": paired,
        "speedup_vs_torch_paired_spread": spread(paired),
        "pairs": len(paired),
        "torch_threads": reference.threads,
        "torch_attn_implementation": reference.attn_implementation,
        "torch_version": reference.torch.__version__,
    })
    if flops / e < TINY_STEP_FLOPS:
      report["speedup_caveat"] = (
          f"a step of {flops / e / 1e9:.2f} GFLOP per episode: both sides "
          "are dominated by per-step overheads (Python, dispatch, kernel "
          "launches), not by compute; this speed-up says nothing about "
          "real backbones (time clip-vit-b16 for that)")
  return report


# ------------------------------------------------------ host wait fraction


def synthetic_sampler(config, image_size: int, num_classes: int = 10,
                      per_class: int = 20, seed: int = 0):
  """An ``EpisodeSampler`` over the synthetic dataset (coloured shapes,
  ``jaxfsl.data.synthetic``) held in memory: the real episode pipeline
  (sampling, augmentation, resizing, threads) without a prepared dataset."""
  from jaxfsl import data
  from jaxfsl.data import synthetic

  if num_classes < config.way:
    raise ValueError(f"num_classes {num_classes} < way {config.way}")
  if per_class < config.shot + config.query:
    raise ValueError(f"per_class {per_class} < shot + query "
                     f"{config.shot + config.query}")
  labels = np.repeat(np.arange(num_classes), per_class)
  images = [synthetic.make_image(seed, int(c), i, 64)
            for i, c in enumerate(labels)]
  dataset = data.InMemoryDataset(images, labels,
                                 synthetic.class_names(num_classes))
  return data.EpisodeSampler(dataset, image_size=image_size, way=config.way,
                             shot=config.shot, query=config.query, seed=seed)


def host_wait(engine, num_batches: int, episodes_per_batch: int,
              num_workers: int = 2, prefetch: bool = True,
              log: Callable[[str], None] | None = None) -> dict:
  """The fraction of wall time the device waits on the host.

  Runs ``num_batches`` + 1 batches of whole episodes (``run_batch``) fed
  by the real pipeline (``synthetic_sampler`` -> ``make_batches`` ->
  ``parallel.prefetch_to_device``); the first batch (compilation, pipeline
  start) is not timed. The host-wait time is the time spent blocked in the
  input iterator: the device is idle then, since ``run_batch`` returns only
  when its batch is done.

  Returns:
    {"host_wait_fraction": wait / total, "host_wait_seconds",
    "host_wait_total_seconds", "host_wait_batches",
    "host_wait_episodes_per_batch", "host_wait_steps", "host_wait_prefetch"}.
  """
  from jaxfsl.protocols.episodic.batch import make_batches
  from jaxfsl.protocols.episodic.engine import episode_keys

  if num_batches < 1:
    raise ValueError(f"num_batches must be >= 1, got {num_batches}")
  log = log or (lambda _: None)
  e = episodes_per_batch
  sampler = synthetic_sampler(engine.config,
                              engine.model.config.vision.image_size)
  items = make_batches(engine.model, sampler, range((num_batches + 1) * e),
                       e, num_workers=num_workers)
  if prefetch:
    items = parallel.prefetch_to_device(items, engine.mesh, part=2)
  items = iter(items)
  indices, _, batch = next(items)
  log("host-wait run: compiling on the first batch")
  engine.run_batch(batch, episode_keys(0, indices), episode_ids=indices)
  wait = 0.0
  start = time.perf_counter()
  for _ in range(num_batches):
    before = time.perf_counter()
    indices, _, batch = next(items)
    wait += time.perf_counter() - before
    engine.run_batch(batch, episode_keys(0, indices), episode_ids=indices)
  total = time.perf_counter() - start
  return {"host_wait_fraction": wait / total,
          "host_wait_seconds": wait,
          "host_wait_total_seconds": total,
          "host_wait_batches": num_batches,
          "host_wait_episodes_per_batch": e,
          "host_wait_steps": engine.config.steps,
          "host_wait_prefetch": prefetch}


def spread(xs: Sequence[float]) -> dict:
  """min, max and the interquartile range of ``xs`` (for ratios/timings)."""
  xs = sorted(float(x) for x in xs)
  if len(xs) == 1:
    return {"min": xs[0], "max": xs[0], "iqr": 0.0}
  q = statistics.quantiles(xs, n=4, method="inclusive")
  return {"min": xs[0], "max": xs[-1], "iqr": q[2] - q[0]}


def compile_cold_and_warm(step: JaxStep, cache_dir: str | None,
                          log: Callable[[str], None]
                          ) -> tuple[float, float | None, bool | None]:
  """Compiles ``step`` with an empty persistent cache, then again (in-memory
  caches cleared) from that cache.

  Returns:
    (cold seconds, warm seconds or None with ``cache_dir="off"``, whether
    the warm compile was served by the cache).
  """
  import tempfile

  from jaxfsl import compile_cache

  if cache_dir is not None and str(cache_dir).lower() in compile_cache.OFF:
    log("compiling the step")
    seconds = step.compile()
    log(f"compiled in {seconds:.1f} s")
    return seconds, None, None
  temporary = None
  if cache_dir is None:
    temporary = tempfile.TemporaryDirectory(prefix="jaxfsl_bench_cache_")
    cache_dir = temporary.name
  compile_cache.enable(cache_dir)
  try:
    log(f"compiling the step (cold; cache {cache_dir})")
    cold = step.compile()
    jax.clear_caches()
    with compile_cache.CompileMonitor() as monitor:
      warm = step.compile()
    log(f"compiled in {cold:.1f} s cold, {warm:.1f} s from the cache")
  finally:
    compile_cache.disable()
    if temporary is not None:
      temporary.cleanup()
  return cold, warm, monitor.cache_hits > 0


def _load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None
