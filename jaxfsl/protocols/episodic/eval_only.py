"""The ``eval_only`` job: re-evaluates the adapters a training run saved.

With ``--config.save_adapters=True`` a run keeps each episode's final
adapters (``workdir/adapters``); ``--config.eval_only=True`` with the same
config and workdir reloads them, evaluates each episode's queries (and the
zero-shot model) again without training, and writes the same reports to
``workdir/eval_only/``, with each episode's training-time accuracy beside
(``max_abs_diff_vs_training`` should be ~0).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxfsl.io import aggregate, reports
from jaxfsl.io.runstate import AdapterStore
from jaxfsl.protocols.episodic import config as config_lib
from jaxfsl.protocols.episodic import engine as engine_lib
from jaxfsl.protocols.episodic import inputs, runner
from jaxfsl.protocols.episodic.batch import host_slice
from jaxfsl.protocols.episodic.config import MissingInputError

ConfigDict = ml_collections.ConfigDict


def run(config: ConfigDict, workdir: Path,
        stop: runner.StopOnSignal | None = None) -> dict[str, Any]:
  """Reloads each episode's saved adapters, re-evaluates its queries (and
  the zero-shot model) and writes ``workdir/eval_only/``.

  Args:
    config: a resolved job config (``config_lib.resolve``).
    workdir: the training run's workdir.
    stop: checked between batches (SIGINT/SIGTERM).

  Raises:
    MissingInputError: no adapters saved (run with save_adapters=True).
    ResumeError: the saved run's config differs from this one.
    runner.Interrupted: a signal stopped it (nothing partial is written).
  """
  adapter_dir = workdir / "adapters"
  if not adapter_dir.is_dir():
    raise MissingInputError(
        f"eval_only: {adapter_dir} does not exist; train first with "
        "--config.save_adapters=True (same config and workdir)")
  saved = runner.prepare_workdir(config, workdir, restart=False)
  train_acc = {}
  if saved is not None:
    _, outputs = saved
    final = outputs["stages"]["accuracy"][:, -1]
    for i, a in zip(outputs["index"], final, strict=True):
      train_acc[int(i)] = aggregate.percent(a)
  store = AdapterStore(adapter_dir, create=False)
  try:
    by_index = store.load_all()
  finally:
    store.close()
  indices = [i for i in sorted(by_index) if i < config.episodes]
  if not indices:
    raise MissingInputError(f"eval_only: no saved adapters in {adapter_dir}")
  missing = config.episodes - len(indices)
  if missing:
    logging.warning("eval_only: %d of %d episodes have no saved adapters",
                    missing, config.episodes)

  dataset = inputs.open_dataset(config, workdir)
  model = inputs.load_model(config)
  sampler = inputs.make_sampler(config, dataset,
                                model.config.vision.image_size)
  engine = engine_lib.EpisodeEngine(model, config_lib.engine_config(config))
  if config.episodes_per_batch == engine_lib.AUTO:
    # Evaluation holds no optimiser state or backward pass: one episode
    # per device needs no sizing.
    config.episodes_per_batch = jax.device_count()
  info = runner.describe(config, model, engine.config)
  records = []
  start = time.time()
  if stop is not None:
    stop.done, stop.total = 0, len(indices)
  for idx, valid, batch in inputs.episode_batches(model, sampler, config,
                                                  indices):
    if stop is not None and stop.signum is not None:
      raise stop.interrupted()
    trees = [by_index[int(i)] for i in host_slice(idx)]
    stacked = jax.tree.map(lambda *a: np.stack(a), *trees)
    out = engine.evaluate_adapters(batch, stacked)
    out = aggregate.take_outputs(out, valid)
    as_engine = {
        "stages": {k: np.asarray(v)[:, None] for k, v in out["final"].items()},
        "zero_shot": out["zero_shot"],
    }
    for r in aggregate.episode_records(as_engine, idx[valid]):
      r.pop("losses")
      if r["index"] in train_acc:
        r["train_accuracy"] = train_acc[r["index"]]
      records.append(r)
    if stop is not None:
      stop.done = len(records)
    logging.info("eval_only: %d/%d episodes", len(records), len(indices))
  diffs = [abs(r["accuracy"] - r["train_accuracy"]) for r in records
           if "train_accuracy" in r]
  results = runner.results_dict(config, info, records, {
      "devices": jax.device_count(), "workdir": str(workdir),
      "wall_seconds_this_process": round(time.time() - start, 1)})
  results["eval_only"] = True
  results["max_abs_diff_vs_training"] = max(diffs) if diffs else None
  results["complete"] = len(records) == config.episodes
  if reports.is_main_process():
    reports.write_all(workdir / "eval_only", results)
  logging.info("eval_only: %s; max |accuracy - training accuracy| = %s",
               aggregate.format_over_episodes(
                   results["accuracy_mean"], results["accuracy_ci95"],
                   len(records)), results["max_abs_diff_vs_training"])
  return results
