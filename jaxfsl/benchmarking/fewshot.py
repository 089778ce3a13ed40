"""The few-shot protocol's throughput: the trainer's iterations/s and,
beside it, its input pipeline's images/s alone.

Trainer: ``FewshotTrainer.train_step`` (the compiled program a few-shot job
runs) on a backbone built as the job builds it (``runner.load_model``:
a random-init preset has the checkpoint's shapes and FLOPs), with the
protocol's settings from ``configs/fewshot/common.py`` (CLIP-LoRA's: batch
32, LoRA r=2 on q/k/v of every block of both towers, the prompts of all
``classes`` classes re-encoded every iteration when the text tower trains)
through ``runner.trainer_config``. The minibatch is random pixels already
on the devices, so only the step is timed; the first call (compilation) is
reported apart.

Pipeline: the job's ``TrainBatches`` on grain threads (decode, CLIP-LoRA's
RandomResizedCrop + flip, and RA's eval view with an ``ra`` variant) over
JPEGs written to a temporary folder at a typical size of the 11 datasets
(500 x 375 by default), with no device work. A pipeline that keeps the
device fed delivers more images/s than the trainer consumes
(``pipeline_over_trainer`` > 1).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxfsl.benchmarking.episodic import DTYPES
from jaxfsl.benchmarking.measure import (
  interleaved,
  load_average,
  machine,
  median,
  peak_memory_bytes,
  tree_bytes,
)


@dataclasses.dataclass
class FewshotBenchmarkConfig:
  """What ``run_fewshot`` measures (``tools/benchmark.py --protocol
  fewshot``'s flags). None means the protocol's default
  (``configs/fewshot/common.py``).

  Attributes:
    model: a preset name (``jaxfsl.models.PRESETS``) or a checkpoint path.
    image_size: random-init presets only: input side (0: the preset's).
    dtype: compute dtype: "float32", "bfloat16" or "float16".
    variant: the method's terms (none = CLIP-LoRA, svl, ra, svl_ra).
    towers: LoRA towers ("vision", "text", "both"); None: the config's.
    batch_size: B; None: the config's ``fewshot.batch_size`` (32).
    classes: class prompts re-encoded per iteration (100: Caltech101's
      count; ImageNet has 1,000).
    steps: timed iterations (after ``warmup`` untimed ones).
    warmup: untimed iterations after the first (compiling) one.
    pipeline_batches: timed pipeline batches (0: no pipeline figure).
    num_workers: grain threads; None: the config's ``fewshot.num_workers``.
    source_images: distinct JPEGs written (read round-robin).
    source_size: (width, height) of those JPEGs in pixels.
    skip_trainer: measure the pipeline only.
    seed: data and init seed.
  """

  model: str = "clip-vit-b16"
  image_size: int = 0
  dtype: str = "float32"
  variant: str = "none"
  towers: str | None = None
  batch_size: int | None = None
  classes: int = 100
  steps: int = 5
  warmup: int = 1
  pipeline_batches: int = 20
  num_workers: int | None = None
  source_images: int = 64
  source_size: tuple[int, int] = (500, 375)
  skip_trainer: bool = False
  seed: int = 0


def job_config(cfg: FewshotBenchmarkConfig):
  """The few-shot job config (``configs/fewshot/common.py``) the benchmark
  stands for, with ``cfg``'s overrides."""
  from jaxfsl.configs.fewshot import common
  from jaxfsl.models import PRESETS

  config = common.get_config()
  if cfg.model in PRESETS:
    config.model.init = cfg.model
    config.model.image_size = cfg.image_size
  else:
    config.model.checkpoint = cfg.model
  config.compute_dtype = cfg.dtype
  config.method.variant = cfg.variant
  if cfg.towers is not None:
    config.lora.towers = cfg.towers
  if cfg.batch_size is not None:
    config.fewshot.batch_size = cfg.batch_size
  if cfg.num_workers is not None:
    config.fewshot.num_workers = cfg.num_workers
  return config


def check(cfg: FewshotBenchmarkConfig) -> None:
  """Raises ValueError listing every bad field with its value."""
  bad = []
  if cfg.dtype not in DTYPES:
    bad.append(f"dtype={cfg.dtype!r} (expected one of {sorted(DTYPES)})")
  if cfg.variant not in ("none", "svl", "ra", "svl_ra"):
    bad.append(f"variant={cfg.variant!r} (expected none, svl, ra, svl_ra)")
  if cfg.towers not in (None, "vision", "text", "both"):
    bad.append(f"towers={cfg.towers!r} (expected vision, text or both)")
  for key, low in (("classes", 1), ("steps", 1), ("warmup", 0),
                   ("pipeline_batches", 0), ("source_images", 1)):
    if getattr(cfg, key) < low:
      bad.append(f"{key}={getattr(cfg, key)!r} (expected >= {low})")
  if cfg.batch_size is not None and cfg.batch_size < 1:
    bad.append(f"batch_size={cfg.batch_size!r} (expected >= 1)")
  if min(cfg.source_size) < 1:
    bad.append(f"source_size={cfg.source_size!r} (expected positive)")
  if bad:
    raise ValueError("fewshot benchmark: " + "; ".join(bad))


def trainer_throughput(trainer, cfg: FewshotBenchmarkConfig,
                       log: Callable[[str], None]) -> dict[str, Any]:
  """Times ``trainer.train_step`` on a random minibatch on the devices.

  Returns:
    ``first_step_seconds`` (compilation + one iteration),
    ``iteration_seconds`` (median) with ``_all``, ``iterations_per_second``,
    ``train_images_per_second`` (B / iteration_seconds), ``state_bytes``.
  """
  b = trainer.config.batch_size
  s = trainer.model.config.vision.image_size
  rng = np.random.default_rng(cfg.seed)
  host = {"images": rng.integers(0, 256, (b, s, s, 3), np.uint8),
          "labels": rng.integers(0, trainer.num_classes, b).astype(np.int32)}
  if trainer.config.uses_ra:  # RA's eval view, as the job's pipeline adds.
    host["clean"] = rng.integers(0, 256, (b, s, s, 3), np.uint8)
  batch = trainer.put_batch(host)
  key = jax.random.PRNGKey(cfg.seed)
  carry = {"state": trainer.init_state(key), "k": 0}

  def step():
    carry["k"] += 1
    carry["state"], parts = trainer.train_step(
        carry["state"], batch, jax.random.fold_in(key, carry["k"]))
    return parts

  log(f"compiling the few-shot step (batch {b}, {trainer.num_classes} "
      "classes)")
  start = time.perf_counter()
  jax.block_until_ready(step())
  first = time.perf_counter() - start
  log(f"first iteration {first:.1f} s; warm-up ({cfg.warmup})")
  for _ in range(cfg.warmup):
    jax.block_until_ready(step())
  log(f"timing {cfg.steps} iteration(s)")
  times = interleaved({"trainer": step}, cfg.steps)["trainer"]
  seconds = median(times)
  return {"first_step_seconds": first,
          "iteration_seconds": seconds,
          "iteration_seconds_all": times,
          "iterations_per_second": 1.0 / seconds,
          "train_images_per_second": b / seconds,
          "state_bytes": tree_bytes(carry["state"].params) +
          tree_bytes(carry["state"].opt_state)}


def write_jpegs(folder: Path, count: int, size: tuple[int, int],
                seed: int = 0) -> list[Path]:
  """``count`` JPEGs of ``size`` (width, height) in ``folder``: synthetic
  shapes (``jaxfsl.data.synthetic``) resized, with pixel noise so that they
  compress (and decode) like photographs rather than flat colour."""
  from PIL import Image

  from jaxfsl.data import synthetic

  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    base = Image.fromarray(synthetic.make_image(seed, i % 10, i, 64))
    pixels = np.asarray(base.resize(size, Image.BILINEAR), np.int16)
    pixels = pixels + rng.integers(-12, 13, pixels.shape)
    path = folder / f"{i:05d}.jpg"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        path, format="JPEG", quality=90)
    paths.append(path)
  return paths


def pipeline_throughput(config, image_size: int, resample: str,
                        with_clean: bool, cfg: FewshotBenchmarkConfig,
                        log: Callable[[str], None]) -> dict[str, Any]:
  """Images/s of the job's training pipeline alone (no device work).

  Args:
    config: the job config (batch size, workers, prefetch, centre crop).
    image_size: S of the model.
    resample: the model's PIL filter name.
    with_clean: also build RA's eval view (the job does with ra variants).
    cfg: source images and batch counts.
    log: progress messages.

  Returns:
    ``pipeline_images_per_second``, ``pipeline_batches``,
    ``pipeline_workers``, ``pipeline_source`` ("WxH JPEG"),
    ``pipeline_clean_view``.
  """
  from jaxfsl.data.dataset import decode_image
  from jaxfsl.data.fewshot import pipeline

  f = config.fewshot
  with tempfile.TemporaryDirectory(prefix="jaxfsl_bench_fewshot_") as tmp:
    log(f"writing {cfg.source_images} {cfg.source_size[0]}x"
        f"{cfg.source_size[1]} JPEGs to {tmp}")
    paths = write_jpegs(Path(tmp), cfg.source_images, cfg.source_size,
                        cfg.seed)
    batches = pipeline.TrainBatches(
        lambda i: decode_image(paths[i].read_bytes()),
        [i % 10 for i in range(len(paths))], seed=cfg.seed,
        batch_size=f.batch_size, image_size=image_size,
        with_clean=with_clean, resample=resample,
        center_crop=f.center_crop)
    log(f"timing {cfg.pipeline_batches} pipeline batch(es) on "
        f"{f.num_workers} thread(s)")
    # Timed from the iterator's creation: the prefetching threads start
    # decoding at once, so a clock started after a first untimed batch
    # would miss the batches they finished meanwhile (an inflated rate).
    # Thread start-up is included, so this is a lower bound.
    start = time.perf_counter()
    count = sum(len(b["labels"]) for b in batches.iterate(
        0, cfg.pipeline_batches, f.num_workers, f.prefetch))
    seconds = time.perf_counter() - start
  return {"pipeline_images_per_second": count / seconds,
          "pipeline_batches": cfg.pipeline_batches,
          "pipeline_workers": f.num_workers,
          "pipeline_source": f"{cfg.source_size[0]}x{cfg.source_size[1]} "
          "JPEG",
          "pipeline_clean_view": with_clean}


def run_fewshot(cfg: FewshotBenchmarkConfig,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Measures the few-shot trainer and its pipeline; returns the report.

  Returns:
    A JSON-serialisable dict: ``protocol`` ("fewshot"), the settings
    (``model``, ``dtype``, ``variant``, ``lora_towers``, ``lora_rank``,
    ``batch_size``, ``classes``, ``image_size``, ``device_count``, ...),
    ``trainer_throughput``'s and ``pipeline_throughput``'s fields,
    ``pipeline_over_trainer`` (pipeline images/s over the trainer's; > 1:
    the pipeline keeps up), ``peak_memory_bytes`` and ``uptime_load``.

  Raises:
    ValueError: a bad field (all of them listed), or a batch size that is
      not a multiple of the device count.
    FileNotFoundError: a checkpoint path that does not exist.
  """
  from jaxfsl.protocols.fewshot import runner
  from jaxfsl.protocols.fewshot.trainer import FewshotTrainer

  log = log or (lambda _: None)
  check(cfg)
  config = job_config(cfg)
  tcfg = runner.trainer_config(config)
  model = runner.load_model(config)
  size = model.config.vision.image_size
  # The job rebuilds a preset from its (possibly resized) architecture, so
  # the model names itself "random-init:custom": report what was asked.
  report = {"protocol": "fewshot", "model": cfg.model, "dtype": cfg.dtype,
            "variant": tcfg.variant, "lora_towers": tcfg.lora.towers,
            "lora_rank": tcfg.lora.rank, "batch_size": tcfg.batch_size,
            "classes": cfg.classes, "image_size": size,
            "steps_timed": 0 if cfg.skip_trainer else cfg.steps,
            **machine(), "cpu_count": os.cpu_count()}
  if not cfg.skip_trainer:
    ids = model.tokenize([config.prompt.format(f"class {c}")
                          for c in range(cfg.classes)])
    trainer = FewshotTrainer(model, tcfg, ids)
    report["backbone_bytes"] = tree_bytes(model.params)
    report.update(trainer_throughput(trainer, cfg, log))
  if cfg.pipeline_batches:
    report.update(pipeline_throughput(
        config, size, model.preprocessing.resample, tcfg.uses_ra, cfg, log))
  if "iterations_per_second" in report and \
      "pipeline_images_per_second" in report:
    report["pipeline_over_trainer"] = (report["pipeline_images_per_second"]
                                       / report["train_images_per_second"])
  peak, peak_kind = peak_memory_bytes()
  report.update({"peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
                 "uptime_load": load_average()})
  return report
