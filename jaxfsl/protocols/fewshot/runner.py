"""The few-shot job: K-shot split, training with checkpoints, test top-1.

    from jaxfsl.protocols.fewshot import runner
    results = runner.run(config, workdir)   # configs/fewshot/*.py

What a job writes in WORKDIR:
  fewshot_split.json  {"train": [[relpath, label, classname], ...], "val":
                      [...]}: the K-shot items (CLIP-LoRA's for (K, seed)).
  checkpoints/<k>/    Orbax: adapters, AdamW state, step, per-step losses;
                      every ``fewshot.checkpoint_every`` iterations, at the
                      end, and when SIGINT/SIGTERM stops the job (after the
                      iteration in flight; ``Interrupted``, as the episodic
                      runner). A killed job rerun with the same config
                      resumes from the latest one and ends with the very same
                      results (batches and rng depend only on (seed, step));
                      a finished one computes nothing and keeps its
                      results.json.
  tensorboard/        train/{total,vlm,anti_visual,relation,lr},
                      test/accuracy, test/zero_shot_accuracy.
  results.json        the config, accuracies, per-step losses, timings;
                      ``undersampled_classes``: the classes with fewer
                      images than their shots (sampled with replacement,
                      as CLIP-LoRA; also a warning in log.txt).
  summary.md          a short markdown report.
  log.txt             progress and results (absl logging; written by the
                      CLI).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxfsl.data.fewshot import builders, fake, layouts, pipeline
from jaxfsl.data.fewshot import split as fsplit
from jaxfsl.io import reports
from jaxfsl.io.aggregate import format_duration
from jaxfsl.io.markdown import markdown_table
from jaxfsl.optim import OptimConfig
from jaxfsl.protocols.episodic.config import (
  RENAMED_KEYS,
  ResumeError,
  flatten,
  renamed_key_message,
)
from jaxfsl.protocols.episodic.inputs import (  # The shared keys' readers.
  check_inputs,
  data_dir,
  load_model,
)
from jaxfsl.protocols.episodic.runner import (  # The episodic job's stop.
  DEMO_NOTE,
  StopOnSignal,
  _Abandon,
)
from jaxfsl.protocols.fewshot.trainer import FewshotTrainer, TrainerConfig
from jaxfsl.trainables.lora import LoraConfig

TERMS = ("total", "vlm", "anti_visual", "relation")
# Keys that may change between a killed run and its resumption.
_FREE_KEYS = ("restart", "fewshot.log_every", "fewshot.num_workers",
              "fewshot.prefetch", "fewshot.checkpoint_every",
              "fewshot.eval_batch_size", "fewshot.eval_zero_shot",
              "jax_cache_dir", "multihost")
# Test hook: seconds slept after each iteration (lets the resume test kill a
# tiny job between two checkpoints). Never set it otherwise.
_STEP_SLEEP_ENV = "JAXFSL_FEWSHOT_TEST_STEP_SLEEP"


def total_steps(config: ml_collections.ConfigDict) -> int:
  """T: ``steps`` when > 0, else ``fewshot.iters_per_shot * shot``."""
  if config.steps > 0:
    return int(config.steps)
  return int(config.fewshot.iters_per_shot * config.shot)


def _blocks(blocks: Any) -> Any:
  if isinstance(blocks, str) and blocks and blocks[0].isdigit():
    return tuple(int(b) for b in blocks.split(","))
  return blocks


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the values the few-shot protocol reads.

  Raises:
    ValueError: listing every bad key with its value and what is expected.
  """
  c, f = config, config.fewshot
  bad = []

  def need(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
      bad.append(f"{key}={value!r} (expected {expected})")

  bad += [renamed_key_message(k) for k in flatten(c) if k in RENAMED_KEYS]
  need(c.protocol == "fewshot", "protocol", c.protocol, "'fewshot'")
  need(c.dataset.name in layouts.SPECS, "dataset.name", c.dataset.name,
       f"one of {list(layouts.NAMES)}")
  need(c.shot >= 1, "shot", c.shot, ">= 1")
  need(c.steps >= 1 or c.steps == -1, "steps", c.steps, ">= 1 or -1")
  need(c.seed >= 0, "seed", c.seed, ">= 0")
  need(c.prompt.count("{}") == 1, "prompt", c.prompt, "one '{}'")
  need(c.method.variant in ("none", "svl", "ra", "svl_ra"),
       "method.variant", c.method.variant, "none, svl, ra or svl_ra")
  need(c.method.timing == "begin", "method.timing", c.method.timing,
       "'begin' (the few-shot protocol has no 'last' window)")
  need(c.trainable == "lora", "trainable", c.trainable, "'lora'")
  need(0 < c.method.window_fraction <= 1, "method.window_fraction",
       c.method.window_fraction, "in (0, 1]")
  # The trainer is CLIP-LoRA's AdamW + cosine without warmup: refuse the
  # episodic protocol's other optimisers rather than ignore them.
  need(c.optim.name == "adamw", "optim.name", c.optim.name,
       "'adamw' (the few-shot protocol trains with CLIP-LoRA's AdamW)")
  need(c.optim.warmup_steps == 0, "optim.warmup_steps",
       c.optim.warmup_steps, "0 (CLIP-LoRA's schedule has no warmup)")
  need(c.optim.lr > 0 and 0 < c.optim.min_lr <= c.optim.lr, "optim.min_lr",
       c.optim.min_lr, f"in (0, optim.lr={c.optim.lr}]")
  for key in ("iters_per_shot", "batch_size", "eval_batch_size",
              "text_chunk", "checkpoint_every", "log_every", "num_workers",
              "prefetch", "fake_classes", "fake_image_size"):
    need(f[key] >= 1, f"fewshot.{key}", f[key], ">= 1")
  if bad:
    raise ValueError("few-shot config: " + "; ".join(bad))


def trainer_config(config: ml_collections.ConfigDict) -> TrainerConfig:
  """The trainer's static settings from a job config."""
  if config.method.variant not in ("none", "svl", "ra", "svl_ra"):
    raise ValueError(f"method.variant {config.method.variant!r}: the "
                     "few-shot protocol has none, svl, ra, svl_ra")
  if config.method.timing != "begin":
    raise ValueError("method.timing: the few-shot protocol runs the extra "
                     "terms at the beginning only ('begin').")
  lora = LoraConfig(rank=config.lora.rank, alpha=config.lora.alpha,
                    dropout=config.lora.dropout,
                    targets=tuple(config.lora.targets),
                    towers=config.lora.towers,
                    blocks=_blocks(config.lora.blocks))
  o = config.optim
  return TrainerConfig(
      steps=total_steps(config), batch_size=config.fewshot.batch_size,
      optim=OptimConfig(**o.to_dict()), logit_scale=float(config.logit_scale),
      variant=config.method.variant,
      anti_visual_weight=config.method.anti_visual_weight,
      relation_weight=config.method.relation_weight,
      window_fraction=config.method.window_fraction,
      relation_form=config.method.relation_form, lora=lora,
      text_chunk=config.fewshot.text_chunk, remat=config.remat)


def open_dataset(config: ml_collections.ConfigDict, workdir: Path
                 ) -> builders.FewshotDataset:
  """The prepared dataset (with ``fewshot.fake_data``: generated first)."""
  name = config.dataset.name
  if name not in layouts.SPECS:
    raise ValueError(f"dataset.name {name!r}: expected one of "
                     f"{list(layouts.NAMES)}")
  ddir = data_dir(config, workdir)
  f = config.fewshot
  if f.fake_data and not (builders.dataset_dir(name, ddir) /
                          "dataset_info.json").is_file():
    counts = dict(f.fake_images)
    fake.make_coop_folder(workdir / "raw", name, num_classes=f.fake_classes,
                          counts=counts, image_size=f.fake_image_size)
    return builders.prepare_fewshot(name, ddir, workdir / "raw",
                                    progress=False)
  return builders.load_fewshot(name, ddir)


def kshot_split(ds: builders.FewshotDataset, shot: int, seed: int,
                short: list[dict[str, Any]] | None = None
                ) -> dict[str, list[layouts.Item]]:
  """CLIP-LoRA's K-shot train/val items of a prepared dataset (``short``
  collects the classes sampled with replacement: ``fsplit.fewshot_split``).
  """
  imagenet = layouts.SPECS[ds.name].kind == "imagenet"
  splits = {"train": ds.items("train")}
  if not imagenet:
    splits["val"] = ds.items("val")
  return fsplit.fewshot_split(splits, shot, seed, imagenet=imagenet,
                              short=short)


class _Checkpoints:
  """Orbax manager of {params, opt_state, step, history}."""

  def __init__(self, directory: Path, every: int):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.manager = ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    self.every = every

  def latest(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, step: int, target: dict) -> dict:
    return self.manager.restore(
        step, args=self._ocp.args.StandardRestore(target))

  def save(self, step: int, tree: dict) -> None:
    self.manager.save(step, args=self._ocp.args.StandardSave(tree),
                      force=True)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def check_resumable(config: ml_collections.ConfigDict, workdir: Path
                    ) -> None:
  """Records the config in WORKDIR/fewshot_config.json, or, when a previous
  run left one, checks that only progress/logging keys changed.

  Raises:
    ResumeError: naming every changed key, old and new value.
  """
  path = workdir / "fewshot_config.json"
  new = flatten(json.loads(config.to_json()))
  if path.is_file() and (workdir / "checkpoints").is_dir():
    old = flatten(json.loads(path.read_text()))
    # A run saved before a key was renamed resumes under the new name.
    old = {RENAMED_KEYS.get(k, k): v for k, v in old.items()}
    changed = sorted(k for k in set(old) | set(new)
                     if k not in _FREE_KEYS and old.get(k) != new.get(k))
    if changed:
      # The episodic runner's wording (prepare_workdir), on one line.
      raise ResumeError(
          f"workdir {workdir} holds a run with a different config; "
          "changed: " +
          "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                    for k in changed) +
          ". Use another --workdir, or pass --restart (config.restart=True) "
          "to discard that run and start over.")
  reports.write_json(path, json.loads(config.to_json()))


def _evaluate(trainer: FewshotTrainer, params: Any,
              batches: pipeline.EvalBatches, config) -> float:
  text = trainer.text_features(params)
  correct = sum(trainer.count_correct(params, b, text) for b in
                batches.iterate(config.fewshot.num_workers))
  return correct / max(1, len(batches.labels))


def _summary_md(results: Mapping[str, Any]) -> str:
  r = results
  lines = [
      f"# Few-shot {r['dataset']}, {r['shot']}-shot, seed {r['seed']}",
      "",
      f"Model {r['model']}, variant `{r['variant']}`, {r['steps']} "
      f"iterations of batch {r['batch_size']} on {r['num_devices']} "
      "device(s).",
      "",
  ]
  rows = [("fine-tuned", f"{100 * r['test_accuracy']:.2f}")]
  if r.get("zero_shot_accuracy") is not None:
    rows.append(("zero-shot", f"{100 * r['zero_shot_accuracy']:.2f}"))
  lines.append(markdown_table(["", "top-1 (%)"], rows))
  lines += ["", f"{r['num_test']} test images, {r['num_classes']} classes, "
            f"{r['num_train_items']} K-shot train items. Training "
            f"{format_duration(r['train_seconds'])} "
            f"({r['images_per_second']:.1f} images/s)."]
  short = r.get("undersampled_classes") or []
  if short:
    lines += ["", f"{len(short)} class(es) had fewer images than their "
              "shots and were sampled with replacement: " + "; ".join(
                  f"{s['split']} {s['class']} ({s['images']} images, "
                  f"{s['shots']} shots, {s['unique']} distinct)"
                  for s in short) + "."]
  if r.get("demo"):
    lines += ["", "**Pipeline check on generated data: not a result.**"]
  return "\n".join(lines) + "\n"


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]
        ) -> dict[str, Any]:
  """Runs (or resumes) one few-shot job; returns the results dict.

  Args:
    config: a ``configs/fewshot/*.py`` config (``protocol="fewshot"``).
    workdir: the job folder (created).

  Returns:
    results.json's content. Rerunning a finished job computes nothing and
    returns (and keeps) its results.json.

  Raises:
    DatasetNotPreparedError: with the prepare command.
    MissingInputError: model.checkpoint / model.tokenizer does not exist
      (nothing is written).
    ValueError: a config value the protocol does not support.
    ResumeError: the workdir holds a run of another config.
    Interrupted: SIGINT/SIGTERM; the iterations done are checkpointed.
  """
  workdir = Path(workdir).expanduser()
  # A rejected job leaves the workdir as it found it.
  validate(config)
  check_inputs(config)
  workdir.mkdir(parents=True, exist_ok=True)
  if config.restart:
    import shutil

    for sub in ("checkpoints", "tensorboard"):
      shutil.rmtree(workdir / sub, ignore_errors=True)
    # A kept results.json would pass a rerun of the new job as finished.
    for name in ("results.json", "summary.md"):
      (workdir / name).unlink(missing_ok=True)
  tcfg = trainer_config(config)
  check_resumable(config, workdir)
  kept = _kept_results(workdir, tcfg.steps)
  if kept is not None:
    logging.info("All %d iterations were already done; %s kept as written "
                 "by the run that finished them.", tcfg.steps,
                 workdir / "results.json")
    return kept
  if config.demo:
    logging.warning(DEMO_NOTE)
  with StopOnSignal("iterations", "the current iteration (saved)") as stop:
    try:
      results = _run(config, workdir, tcfg, stop)
    except _Abandon:
      raise stop.interrupted() from None
  if config.demo:
    logging.warning(DEMO_NOTE)
  return results


def _kept_results(workdir: Path, steps: int) -> dict[str, Any] | None:
  """A finished job's results.json (its final checkpoint is there too)."""
  path = workdir / "results.json"
  if not (path.is_file() and (workdir / "checkpoints" / str(steps)).is_dir()):
    return None
  old = reports.load_results(path)
  return old if old.get("steps") == steps else None


def _run(config: ml_collections.ConfigDict, workdir: Path,
         tcfg: TrainerConfig, stop: StopOnSignal) -> dict[str, Any]:
  f = config.fewshot
  ds = open_dataset(config, workdir)
  short: list[dict[str, Any]] = []  # Classes with fewer images than K.
  split = kshot_split(ds, config.shot, config.seed, short)
  fsplit.write_split(workdir / "fewshot_split.json", split)

  model = load_model(config)
  prompts = [config.prompt.format(n) for n in ds.prompt_names]
  trainer = FewshotTrainer(model, tcfg, model.tokenize(prompts))
  size = model.config.vision.image_size
  resample = model.preprocessing.resample

  train_src = ds.split("train")
  index_of = {name: i for i, name in enumerate(train_src.files)}
  items = split["train"]
  train_batches = pipeline.TrainBatches(
      lambda i: train_src.image(index_of[items[i][0]]),
      [y for _, y, _ in items], seed=config.seed,
      batch_size=tcfg.batch_size, image_size=size, with_clean=tcfg.uses_ra,
      resample=resample, center_crop=f.center_crop)
  test_src = ds.split("test")
  test_batches = pipeline.EvalBatches(
      test_src.image, test_src.labels, batch_size=f.eval_batch_size,
      image_size=size, resample=resample, center_crop=f.center_crop,
      pad_multiple=trainer.num_devices)

  steps = tcfg.steps
  state = trainer.init_state(jax.random.PRNGKey(config.seed))
  history = np.zeros((steps, len(TERMS)), np.float32)
  ckpt = _Checkpoints(workdir / "checkpoints", f.checkpoint_every)
  start = 0
  latest = ckpt.latest()
  if latest is not None:
    target = {"params": state.params, "opt_state": state.opt_state,
              "step": state.step, "history": history}
    restored = ckpt.restore(latest, target)
    state = state.replace(params=restored["params"],
                          opt_state=restored["opt_state"],
                          step=restored["step"])
    history = np.asarray(restored["history"])
    start = int(restored["step"])
    logging.info("Resumed from checkpoint %d (iteration %d/%d).", latest,
                 start, steps)
  stop.done, stop.total = start, steps

  tb = reports.TensorBoard(workdir / "tensorboard")
  zero_shot = None
  if f.eval_zero_shot:
    zero_shot = _evaluate(trainer, {}, test_batches, config)
    logging.info("zero-shot top-1 %.2f%%", 100 * zero_shot)
    tb.write_scalars(0, {"test/zero_shot_accuracy": zero_shot})

  sleep = float(os.environ.get(_STEP_SLEEP_ENV, "0") or 0)
  base_key = jax.random.PRNGKey(config.seed)
  t0 = time.perf_counter()
  timed_from, timed_steps = None, 0
  pending = []
  for k, batch in zip(range(start, steps), train_batches.iterate(
      start, steps, f.num_workers, f.prefetch), strict=True):
    state, parts = trainer.train_step(state, batch,
                                      jax.random.fold_in(base_key, k))
    pending.append((k, parts))
    if sleep:
      time.sleep(sleep)
    # A signal (StopOnSignal) ends the job here, after a checkpoint.
    last = k == steps - 1 or stop.signum is not None
    if (k + 1) % f.log_every == 0 or last or (k + 1) % f.checkpoint_every == 0:
      for j, p in pending:
        host = {key: float(v) for key, v in jax.device_get(p).items()}
        history[j] = [host[t] for t in TERMS]
        tb.write_scalars(j, {f"train/{t}": host[t] for t in (*TERMS, "lr")})
      pending = []
      now = time.perf_counter()
      if timed_from is None:  # Excludes compilation from the rate.
        timed_from, timed_steps = now, k + 1
        rate = float("nan")
      else:
        rate = (k + 1 - timed_steps) / max(now - timed_from, 1e-9)
      known = rate == rate and rate > 0
      eta = (steps - k - 1) / rate if known else None
      speed = f"{rate * tcfg.batch_size:.1f}" if known else "?"
      logging.info("iteration %d/%d  loss %.4f (vlm %.4f)  %s images/s  "
                   "ETA %s", k + 1, steps, history[k, 0], history[k, 1],
                   speed, format_duration(eta))
    if (k + 1) % f.checkpoint_every == 0 or last:
      ckpt.save(k + 1, {"params": state.params,
                        "opt_state": state.opt_state,
                        "step": state.step, "history": history})
      stop.done = k + 1
    if last:
      break
  ckpt.close()
  if stop.signum is not None and stop.done < steps:
    tb.close()
    raise stop.interrupted()
  train_seconds = time.perf_counter() - t0
  done_steps = steps - start
  accuracy = _evaluate(trainer, state.params, test_batches, config)
  logging.info("test top-1 %.2f%% (%d images)", 100 * accuracy,
               len(test_src))
  tb.write_scalars(steps, {"test/accuracy": accuracy})
  tb.close()
  results = {
      "protocol": "fewshot", "dataset": ds.name, "shot": int(config.shot),
      "seed": int(config.seed), "variant": tcfg.variant, "steps": steps,
      "batch_size": tcfg.batch_size, "model": model.name,
      "num_devices": trainer.num_devices, "num_classes": ds.num_classes,
      "num_test": len(test_src), "num_train_items": len(items),
      "undersampled_classes": short,
      "test_accuracy": accuracy, "zero_shot_accuracy": zero_shot,
      "losses": {t: history[:, i].tolist() for i, t in enumerate(TERMS)},
      "resumed_from": start, "train_seconds": train_seconds,
      "images_per_second": done_steps * tcfg.batch_size /
      max(train_seconds, 1e-9),
      "demo": bool(config.demo), "config": json.loads(config.to_json()),
  }
  reports.write_json(workdir / "results.json", results)
  reports.write_text_atomic(workdir / "summary.md", _summary_md(results))
  return results
