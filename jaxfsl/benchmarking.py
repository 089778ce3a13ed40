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

FLOP accounting (``step_flops``), model FLOPs of one training step, counted
the same way for jaxfsl and the PyTorch reference (so their ratio is a ratio
of times). A matmul of [m, k] by [k, n] is 2 m k n FLOPs. Per image of T
tokens through a ViT of width W, H heads, MLP width F, depth L, LoRA rank r
on the targeted projections, per block:

  dense  = 2 T W (3W) [fused qkv] + 2 T W W [out] + 2 * 2 T W F [fc1, fc2]
  attn   = 2 T T W [q k^T, all heads] + 2 T T W [weights @ v]
  lora   = per target 2 T W r + 2 T r W [x a, then (x a) b]

and once per image the projection 2 W E of the pooled token (SigLIP's MAP
head is counted as one cross-attention block with a single query). The patch
embedding is not counted: the engine computes it once per episode in
``prepare``, outside the step (the PyTorch reference, run the release's
way, does pay its 2 (S/p)^2 (3 p^2) W FLOPs per image every step).

Backward pass, with the backbone frozen and only the adapters trained:

  * a frozen projection y = x K needs dx = dy K^T only (no weight gradient):
    the same FLOPs as its forward, 1x;
  * the two attention matmuls have activations on both sides, so both
    operands get a gradient (dq, dk; d weights, dv): 2x their forward;
  * a LoRA branch needs its input gradient and its two weight gradients:
    2x its forward (da, db, and dx through a and b).

So forward + backward = 2 dense + 3 attn + 3 lora per block and image, and a
step over N + M images (stage 1: augmented views and clean support) is

  step_flops = (N + M) * sum over blocks (2 dense + 3 attn + 3 lora) + ...

This is the standard "model FLOPs" count (as used for MFU): it counts the
frozen first block's input gradient, which neither implementation needs
(both skip it), and counts every token of the last block although only the
class token reaches the loss (jaxfsl skips the others). Element-wise work
(LayerNorm, softmax, GELU, dropout), the loss terms and the AdamW update are
not counted (together well under 1% of the matmul FLOPs at ViT-B/16).
For ViT-B/16 at 224 (T = 197) this is 35.2 GFLOP per image forward and 2.17
TFLOP for a 1-shot stage-1 step (30 images).
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
from jaxfsl.models.config import VisionConfig

# Dense peak TFLOP/s per chip by compute dtype, for MFU. float32 on NVIDIA
# GPUs is XLA's default precision for f32 matmuls there (TF32 tensor cores);
# on TPUs f32 matmuls run as bf16 passes, so no f32 peak is given.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989.0, "float32": 494.7},
    "H100": {"bfloat16": 989.0, "float32": 494.7},
    "H800": {"bfloat16": 989.0, "float32": 494.7},
    "GH200": {"bfloat16": 989.0, "float32": 494.7},
    "B200": {"bfloat16": 2250.0, "float32": 1100.0},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "L40S": {"bfloat16": 362.0, "float32": 183.0},
    "L4": {"bfloat16": 121.0, "float32": 60.0},
    "A10G": {"bfloat16": 70.0, "float32": 35.0},
    "TPU v4": {"bfloat16": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0},
    "TPU v5e": {"bfloat16": 197.0},
    "TPU v5p": {"bfloat16": 459.0},
    "TPU v5": {"bfloat16": 459.0},
    "TPU v6 lite": {"bfloat16": 918.0},
    "TPU v6e": {"bfloat16": 918.0},
}


# Below this many model FLOPs per episode step a jaxfsl-vs-torch ratio
# measures framework overheads, not compute (tiny test models).
TINY_STEP_FLOPS = 1e10


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """Dense peak TFLOP/s of one chip for ``dtype``, None when unknown (CPUs).

  Matches the longest table key contained in ``device_kind`` (so "NVIDIA
  H100 80GB HBM3" finds "H100" and "TPU v5 lite" is not taken for "TPU v5").
  """
  matches = [k for k in PEAK_TFLOPS if k.lower() in device_kind.lower()]
  if not matches:
    return None
  return PEAK_TFLOPS[max(matches, key=len)].get(dtype)


# ------------------------------------------------------------------- FLOPs


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Model FLOPs of one image through a vision tower (see module docstring).

  Attributes:
    dense: frozen projection matmuls (qkv, out, MLP, final projection).
    attention: the two token-by-token attention matmuls.
    lora: the LoRA branches.
  """

  dense: float
  attention: float
  lora: float

  @property
  def forward(self) -> float:
    return self.dense + self.attention + self.lora

  @property
  def forward_backward(self) -> float:
    """Forward plus the frozen-backbone backward: 2 dense + 3 attn + 3 lora."""
    return 2.0 * self.dense + 3.0 * self.attention + 3.0 * self.lora


def vision_flops(config: VisionConfig, lora_rank: int = 16,
                 lora_targets: Sequence[str] = ("q", "k", "v"),
                 lora_blocks: int | None = None) -> FlopCount:
  """Per-image model FLOPs of ``encode_tokens`` (patch embedding excluded).

  Args:
    config: the vision tower.
    lora_rank: r.
    lora_targets: adapted projections per block.
    lora_blocks: number of adapted blocks (default: all).

  Returns:
    A ``FlopCount`` for one image.
  """
  t, w, f = config.num_tokens, config.width, config.mlp_dim
  depth = config.depth
  blocks = depth if lora_blocks is None else lora_blocks
  dense = depth * (2 * t * w * 3 * w + 2 * t * w * w + 2 * 2 * t * w * f)
  attention = depth * 2 * (2 * t * t * w)
  lora = blocks * len(lora_targets) * 2 * (2 * t * w * lora_rank)
  if config.pool == "map":
    # One probe query: q 2 W W, k and v over T tokens, 1 x T attention, out,
    # MLP on one token.
    dense += 2 * w * w + 2 * t * w * 2 * w + 2 * w * w + 2 * 2 * w * f
    attention += 2 * (2 * t * w)
  if config.proj:
    dense += 2 * w * config.embed_dim
  return FlopCount(float(dense), float(attention), float(lora))


def step_flops(config: VisionConfig, num_images: int, lora_rank: int = 16,
               lora_targets: Sequence[str] = ("q", "k", "v"),
               lora_blocks: int | None = None) -> float:
  """Model FLOPs of one training step (forward + backward) of one episode."""
  per_image = vision_flops(config, lora_rank, lora_targets, lora_blocks)
  return num_images * per_image.forward_backward


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
    dtype: compute dtype of the jaxfsl model, "float32" or "bfloat16".
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
  """

  model: str = "clip-vit-b16"
  shot: int = 1
  episodes_per_batch: int = 1
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


def load(name: str, dtype: str):
  """A preset (random init) or a checkpoint, computing in ``dtype``."""
  from jaxfsl.models import PRESETS, build

  jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
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
                      blocks=lora.blocks),
      trainable=trainable,
      trainable_config=(None if trainable == "lora"
                        else c.get(trainable)),
      logit_scale=float(c.logit_scale), remat=c.remat,
      skip_clean_pass_in_stage2=c.skip_clean_pass_in_stage2)
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
  if cfg.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype {cfg.dtype!r}: expected float32 or bfloat16")
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
  if cfg.episodes_per_batch % len(devices):
    raise ValueError(f"episodes_per_batch={cfg.episodes_per_batch} is not a "
                     f"multiple of the {len(devices)} devices")
  engine = EpisodeEngine(model, config)
  rss_before = max_rss_bytes()
  log(f"building {cfg.episodes_per_batch} episode(s) of {model.name}")
  step = JaxStep(engine, cfg.episodes_per_batch, cfg.seed)
  log("compiling the step")
  compile_seconds = step.compile()
  log(f"compiled in {compile_seconds:.1f} s")
  stage1, stage2 = stage_steps(config)
  common = {
      "model": model.name,
      "dtype": cfg.dtype,
      "variant": cfg.variant,
      "trainable": cfg.trainable,
      "shot": cfg.shot,
      "episodes_per_batch": cfg.episodes_per_batch,
      "compile_seconds": compile_seconds,
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
  }
  if reference is not None:
    torch_seconds = median(times["torch"])
    report.update({
        "torch_step_seconds": torch_seconds,
        "torch_step_seconds_all": times["torch"],
        "torch_tflops_per_second": flops / e / torch_seconds / 1e12,
        # Episodes per second, jaxfsl over torch (torch runs one episode).
        "speedup_vs_torch": (e / seconds) / (1.0 / torch_seconds),
        # The same from each round's adjacent pair of steps, then the
        # median: steadier when the machine's load drifts during the run.
        "speedup_vs_torch_paired": median(
            [e * t / j for j, t in zip(times["jaxfsl"], times["torch"],
                                       strict=True)]),
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
