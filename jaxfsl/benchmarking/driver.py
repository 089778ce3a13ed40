"""The episodic benchmark: ``BenchmarkConfig`` and ``run``, which builds the
engine, compiles and times its step and assembles the report.

``tools/benchmark.py`` is the command-line front end; the PyTorch reference
step (``--against torch``) is ``tools/torch_reference.py`` (this package
imports no torch). Episode settings (T = epochs * shot, learning rate, loss
weights, LoRA) are ``jaxfsl/configs/base.py``'s defaults
(``default_engine_config``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from jaxfsl.benchmarking.compile import compile_cold_and_warm
from jaxfsl.benchmarking.episodic import (
  DTYPES,
  JaxStep,
  default_engine_config,
  load,
  stage_steps,
)
from jaxfsl.benchmarking.host_wait import host_wait
from jaxfsl.benchmarking.measure import (
  interleaved,
  load_average,
  machine,
  max_rss_bytes,
  peak_memory_bytes,
  tree_bytes,
)
from jaxfsl.benchmarking.report import throughput, torch_comparison


def parse_option_value(value: str) -> bool | int | float | str:
  """A command-line ``NAME=VALUE`` option's VALUE as a Python value.

  "true"/"false" (any case) -> bool, then int, then float; anything else is
  returned as the string itself. Shared by ``tools/benchmark.py`` and
  ``tools/profile_step.py`` (``--option`` / ``--trainable_option``).

  >>> parse_option_value("True"), parse_option_value("false")
  (True, False)
  >>> parse_option_value("8"), parse_option_value("0.25")
  (8, 0.25)
  >>> parse_option_value("packed"), parse_option_value("")
  ('packed', '')
  """
  lowered = value.lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  for cast in (int, float):
    try:
      return cast(value)
    except ValueError:
      pass
  return value


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
  host = machine()
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
      **host,
      "engine_options": dict(cfg.engine_options),
      "compiler_options": engine.compiler_options,
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
  report = {
      **common,
      "steps_timed": cfg.steps,
      **throughput(model, config, times, e, cfg.dtype, host["device_kind"],
                   host["device_count"]),
      "peak_memory_bytes": peak,
      "peak_memory_kind": peak_kind,
      "rss_before_step_bytes": rss_before,
      "uptime_load": load_average(),
      **waits,
  }
  if reference is not None:
    report.update(torch_comparison(times, e, report["step_tflop"],
                                   reference))
  return report
