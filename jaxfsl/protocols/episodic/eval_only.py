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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from jaxfsl.io import aggregate, reports
from jaxfsl.io.runstate import AdapterStore
from jaxfsl.protocols.episodic import config as config_lib
from jaxfsl.protocols.episodic import engine as engine_lib
from jaxfsl.protocols.episodic import inputs, runner
from jaxfsl.protocols.episodic.config import MissingInputError

ConfigDict = ml_collections.ConfigDict


class AdapterEvaluator:
  """Evaluates episodes' queries with given adapters, no training.

  Built on ``EpisodeEngine.prepare`` / ``evaluate``: one compiled program
  per batch shape, episodes sharded over the engine's mesh like
  ``run_batch``.
  """
  # TODO(lead): replace with ``EpisodeEngine.evaluate_adapters`` (helper E)
  # once merged; this class then goes.

  def __init__(self, engine: engine_lib.EpisodeEngine):
    self.engine = engine
    self._fn = None

  def _one(self, backbone, episode, adapters):
    engine = self.engine
    inputs_ = engine.prepare(backbone, episode)

    def at(tree):
      # ``evaluate`` reads the adapters only; the rest is placeholder.
      return engine_lib.EpisodeState(
          adapters=tree, opt_state=(), prev_relation=jnp.zeros((1, 1)),
          loss=jnp.zeros(()), first_nonfinite_step=jnp.zeros((), jnp.int32))

    zeros = jax.tree.map(jnp.zeros_like, adapters)  # B = 0: the backbone.
    return {"final": engine.evaluate(at(adapters), inputs_, backbone),
            "zero_shot": engine.evaluate(at(zeros), inputs_, backbone)}

  def __call__(self, batch: Mapping[str, np.ndarray], adapters: Any
               ) -> dict[str, Any]:
    """Metrics of E episodes.

    Args:
      batch: the engine's batch arrays (see ``EpisodeEngine.run_batch``;
        on several hosts, this host's slice).
      adapters: adapter tree with a leading E axis (likewise).

    Returns:
      {"final": {metric: [E]}, "zero_shot": {metric: [E]}} as numpy.
    """
    if self._fn is None:
      mesh, axis = self.engine.mesh, self.engine.axis
      episodes = NamedSharding(mesh, PartitionSpec(axis))
      replicated = NamedSharding(mesh, PartitionSpec())
      self._fn = jax.jit(jax.vmap(self._one, in_axes=(None, 0, 0)),
                         in_shardings=(replicated, episodes, episodes),
                         out_shardings=episodes)
    arrays = {k: np.asarray(batch[k]) for k in engine_lib.BATCH_KEYS}
    params = self.engine.model.params
    if jax.process_count() == 1:
      return jax.device_get(self._fn(params, arrays, adapters))
    # Several hosts: as ``EpisodeEngine.run_batch``, each passes its slice
    # and receives the whole batch.
    from jax.experimental import multihost_utils

    episodes = NamedSharding(self.engine.mesh,
                             PartitionSpec(self.engine.axis))
    arrays, adapters = jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(episodes, x),
        (arrays, adapters))
    return multihost_utils.process_allgather(
        self._fn(params, arrays, adapters), tiled=True)


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
  evaluator = AdapterEvaluator(engine)
  prompts = inputs.PromptIds(model, config.prompt)
  info = runner.describe(config, model)
  records = []
  start = time.time()
  if stop is not None:
    stop.done, stop.total = 0, len(indices)
  for idx, valid, batch in inputs.episode_batches(sampler, config, indices):
    if stop is not None and stop.signum is not None:
      raise stop.interrupted()
    trees = [by_index[int(i)] for i in batch["index"]]
    stacked = jax.tree.map(lambda *a: np.stack(a), *trees)
    out = evaluator(inputs.engine_batch(batch, prompts), stacked)
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
  if runner.is_writer():
    reports.write_all(workdir / "eval_only", results)
  logging.info("eval_only: %s %% over %d episodes; max |accuracy - training "
               "accuracy| = %s", aggregate.format_mean_ci(
                   results["accuracy_mean"], results["accuracy_ci95"]),
               len(records), results["max_abs_diff_vs_training"])
  return results
