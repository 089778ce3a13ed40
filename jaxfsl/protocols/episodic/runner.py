"""The episodic job: a config in, a workdir of results out, resumable.

``jaxfsl.main`` (the CLI) is a thin shell over ``run``; scripts and notebooks
call it directly::

  from jaxfsl.protocols.episodic import config as config_lib, runner
  config = config_lib.load_config("episodic/eurosat.py")
  config.shot = 5
  results = runner.run(config, "/tmp/eurosat_5shot")

A job fine-tunes and evaluates ``episodes`` episodes, ``episodes_per_batch``
at a time (``EpisodeEngine.run_batch``), episode i being a pure function of
(seed, i): its data comes from ``jaxfsl.data.EpisodeSampler`` and its PRNG
key from ``engine.episode_keys``. After every batch the run state (the raw
results of the finished episodes, the config fingerprint, the next episode
index) is saved with Orbax (``jaxfsl.io.runstate``: a step directory
appears complete or not at all), so rerunning a killed job continues where
it stopped and ends with exactly the results of an uninterrupted run.

SIGINT (Ctrl-C) and SIGTERM stop the job cleanly: the batch in progress
finishes and is saved, then ``run`` raises ``Interrupted`` (the CLI prints
one line and exits with 128 + the signal number). A second signal abandons
the batch in progress (the state of the batches before it is on disk).

Workdir layout::

  config.json         the resolved config of the last start
  log.txt             the log (written by the CLI)
  state/<n>/          Orbax run state after n finished episodes (last two)
  adapters/<i>/       with save_adapters: the final adapters of the batch
                      starting at episode i (Orbax)
  results.json, results.csv, summary.md, plots/*.png, tensorboard/
  eval_only/          the same reports from an ``eval_only`` run

Config keys: ``jaxfsl/configs/base.py`` (or ``jaxfsl-run --help --config
FILE``).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxfsl import compile_cache, distributed, parallel
from jaxfsl.io import aggregate, reports
from jaxfsl.io.runstate import AdapterStore, RunState
from jaxfsl.method.objective import MethodConfig
from jaxfsl.models.model import Model
from jaxfsl.paths import user_path
from jaxfsl.protocols.episodic import config as config_lib
from jaxfsl.protocols.episodic import engine as engine_lib
from jaxfsl.protocols.episodic import inputs
from jaxfsl.protocols.episodic.batch import host_slice
from jaxfsl.protocols.episodic.config import Interrupted, ResumeError
from jaxfsl.trainables.base import TrainableConfigError

# Names other modules (seeds, interop, tools) use as ``runner.X``; their
# homes are config.py and inputs.py.
from jaxfsl.protocols.episodic.config import (  # noqa: E402,F401 isort:skip
    ConfigError, MissingInputError, UserError, load_config, parse_blocks,
    parse_targets, resolve)
from jaxfsl.protocols.episodic.inputs import (  # noqa: E402,F401 isort:skip
    check_inputs, checkpoint_path, load_model, make_sampler, open_dataset)

ConfigDict = ml_collections.ConfigDict
# The protocol interface ``jaxfsl.main`` dispatches to: validate, then
# check_inputs (before the workdir is touched), then run.
validate = config_lib.validate

# Set to 1 (or config.multihost=True) to call jax.distributed.initialize().
MULTIHOST_ENV = distributed.MULTIHOST_ENV

DEMO_NOTE = ("PIPELINE CHECK ONLY: a random-init model on generated data. "
             "These accuracies say the pipeline runs end to end; they are not "
             "a result of the method.")
COMPILING = ("Compiling the episode program... (the first batch includes "
             "compilation; the ETA starts after it)")
# Outputs a restart removes (never the whole workdir: it may hold data).
_OUTPUTS = ("state", "adapters", "eval_only", "tensorboard", "plots",
            "results.json", "results.csv", "summary.md")


class _Abandon(BaseException):
  """Raised by the second signal: leave the batch in progress at once."""


class StopOnSignal:
  """Context: SIGINT/SIGTERM set ``signum`` instead of raising.

  The job checks ``signum`` between batches; a second signal raises
  ``_Abandon`` in the main thread. Outside the main thread (where Python
  cannot install handlers) it does nothing.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self, unit: str = "episodes",
               stopping: str = "the current batch (its episodes are saved)"):
    """``unit`` (what ``done``/``total`` count) and ``stopping`` (what is
    finished and saved before stopping) word the messages (the few-shot
    runner counts iterations)."""
    self.signum: int | None = None
    # Progress for the message (the job updates them).
    self.done: int | None = None
    self.total: int | None = None
    self.unit, self.stopping = unit, stopping
    self._previous: dict[int, Any] = {}

  def interrupted(self) -> Interrupted:
    return Interrupted(self.signum, self.done, self.total, self.unit)

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    if self.signum is not None:
      raise _Abandon()
    self.signum = signum
    logging.warning("%s received: stopping after %s; send it again to stop "
                    "at once.", signal.Signals(signum).name, self.stopping)

  def __enter__(self) -> StopOnSignal:
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc: Any) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)


class _Speed:
  """Episodes per hour of this process, from the end of its first batch
  (which includes compilation) on; None until a second batch is done."""

  def __init__(self):
    self.start = time.time()
    self.first_done: tuple[float, int] | None = None
    self.episodes = 0

  def update(self, n: int) -> float | None:
    now = time.time()
    self.episodes += n
    if self.first_done is None:
      self.first_done = (now, self.episodes)
      logging.info("First batch done in %.1f s (compilation included)",
                   now - self.start)
      return None
    t0, e0 = self.first_done
    return (self.episodes - e0) / max(now - t0, 1e-9) * 3600.0


def setup_jax(config: ConfigDict, workdir: os.PathLike[str] | None = None
              ) -> None:
  """Multi-host initialisation and the persistent compilation cache
  (``jaxfsl.compile_cache``: ``config.jax_cache_dir``, else
  ``JAXFSL_CACHE_DIR``, else ``<workdir>/jax_cache``; "off" disables)."""
  distributed.initialize(config.multihost)
  if (jax.process_count() > 1 and not config.jax_cache_dir
      and not os.environ.get(compile_cache.CACHE_ENV)):
    # On CPU hosts, gloo fails a collective when processes arrive > 30 s
    # apart, and only process 0 writes the cache (docs/scaling.md): the
    # default cache stays off on several processes unless asked for.
    logging.info("compilation cache: off (several processes; set "
                 "config.jax_cache_dir to use one)")
    return
  cache = compile_cache.enable(config.jax_cache_dir or None, workdir=workdir)
  logging.info("compilation cache: %s", cache or "off")


FAMILY_NAMES = {"clip": "CLIP", "siglip": "SigLIP", "pe_core": "PE-Core"}
TRAINABLE_NAMES = {"lora": "LoRA", "coop": "CoOp", "maple": "MaPLe"}
VARIANT_SUFFIXES = {"none": "", "svl": " + SVL", "ra": " + RA",
                    "svl_ra": " + SVL + RA", "visual": " + L_v"}


def inert_terms(variant: str, tunes_vision: bool) -> list[str]:
  """The variant's loss terms that cannot act: SVL's ``anti_visual`` (L_ad
  depends on the image features only) when the trainable leaves the image
  tower frozen (CoOp, text-only LoRA); the engine skips it."""
  if not tunes_vision and "anti_visual" in MethodConfig(variant).terms:
    return ["anti_visual"]
  return []


def method_label(variant: str, family: str, trainable: str = "lora",
                 tunes_vision: bool | None = None) -> str:
  """The paper's row name: ``CLIP-LoRA + SVL + RA``, ``PE-Core-LoRA``,
  ``SigLIP-MaPLe``, ``CoOp + RA`` (prompt learners on CLIP, as the paper
  names them). A term that cannot act is not claimed: CoOp with svl_ra is
  ``CoOp + RA (SVL inert)`` (``inert_terms``).

  Args:
    variant: ``method.variant``.
    family: the backbone's family ("clip", "siglip", "pe_core").
    trainable: ``config.trainable``.
    tunes_vision: whether the trainable adapts the image tower (default:
      the trainable's with its default settings).

  Raises:
    KeyError: unknown variant.
  """
  backbone = FAMILY_NAMES.get(family, family)
  learner = TRAINABLE_NAMES.get(trainable, trainable)
  if trainable == "lora" or family != "clip":
    base = f"{backbone}-{learner}"
  else:
    base = learner
  suffix = VARIANT_SUFFIXES[variant]
  if tunes_vision is None:
    tunes_vision = _tunes_vision(trainable, None)
  if inert_terms(variant, tunes_vision):
    return base + suffix.replace(" + SVL", "") + " (SVL inert)"
  return base + suffix


def _tunes_vision(trainable: str, block: Any) -> bool:
  from jaxfsl.trainables import get_trainable

  try:
    return get_trainable(trainable, block).tunes_vision
  except (KeyError, ValueError, TypeError):
    return True  # An unknown trainable: claim nothing inert.


def describe(config: ConfigDict, model: Model,
             engine_config: engine_lib.EngineConfig) -> dict[str, Any]:
  """The job's description keys of ``results.json`` (``window``: the
  [start, end) steps of the extra terms; ``eval_steps``: the steps after
  which the queries are evaluated, for the reports)."""
  tunes_vision = _tunes_vision(config.trainable,
                               engine_config.trainable_block)
  return {
      "dataset": config.dataset.name,
      "way": config.way, "shot": config.shot, "query": config.query,
      "steps": config.steps, "seed": config.seed,
      "trainable": config.trainable,
      "window": list(engine_config.window),
      "eval_steps": list(engine_config.evaluation_steps),
      "variant": config.method.variant,
      "method": method_label(config.method.variant, model.config.family,
                             config.trainable, tunes_vision),
      "inert_terms": inert_terms(config.method.variant, tunes_vision),
      "model": model.name,
      "demo": bool(config.demo),
      "note": DEMO_NOTE if config.demo else "",
  }


def results_dict(config: ConfigDict, info: Mapping[str, Any],
                 records: list[dict[str, Any]], run_info: Mapping[str, Any]
                 ) -> dict[str, Any]:
  """``results.json``: description, statistics, config, run, records."""
  results = dict(info)
  results.update(aggregate.summarize(records))
  results["episodes_expected"] = config.episodes
  results["complete"] = len(records) == config.episodes
  results["config"] = config.to_dict()
  results["run"] = dict(run_info)
  results["episodes"] = records
  return results


def prepare_workdir(config: ConfigDict, workdir: Path, restart: bool
                    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
  """Checks the workdir against the config; returns the saved state or None.

  Raises:
    ResumeError: the workdir holds another config's run and not ``restart``.
  """
  state_dir = workdir / "state"
  if not state_dir.exists():
    return None
  if restart:
    logging.warning("restart: removing the previous run's outputs in %s",
                    workdir)
    for name in _OUTPUTS:
      path = workdir / name
      if path.is_dir():
        shutil.rmtree(path)
      elif path.exists():
        path.unlink()
    return None
  store = RunState(state_dir)
  try:
    saved = store.restore()
  finally:
    store.close()
  if saved is None:
    return None
  meta, _ = saved
  diff = config_lib.config_diff(meta["fingerprint"],
                                config_lib.fingerprint(config))
  if diff:
    raise ResumeError(
        f"workdir {workdir} holds a run with a different config; differing "
        "key(s):\n  " + "\n  ".join(diff) + "\nUse another --workdir, or "
        "pass --restart (config.restart=True) to discard that run and start "
        "over.")
  return saved


def _kept_results(workdir: Path, num_records: int) -> dict[str, Any] | None:
  """A finished job's results.json, when rerunning it computed nothing."""
  path = workdir / "results.json"
  if not path.is_file():
    return None
  old = reports.load_results(workdir)
  if old.get("complete") and old.get("num_episodes") == num_records:
    return old
  return None


def run(config: ConfigDict, workdir: str | os.PathLike[str], *,
        restart: bool | None = None,
        on_batch: Callable[[dict[str, Any]], None] | None = None
        ) -> dict[str, Any]:
  """Runs (or resumes, or re-evaluates) a job; writes its reports.

  Args:
    config: a job config (see ``jaxfsl/configs/base.py``); validated here.
    workdir: output folder, created if needed.
    restart: discard a previous run in ``workdir`` (default:
      ``config.restart``).
    on_batch: called after each batch with the progress dict (for UIs).

  Returns:
    The results dict written to ``results.json`` (or
    ``eval_only/results.json``). Rerunning a finished job computes nothing
    and returns (and keeps) its ``results.json``.

  Raises:
    ConfigError, ResumeError, MissingInputError, jaxfsl.data.DataError: the
      user can fix these (the CLI prints them without a traceback).
    Interrupted: SIGINT/SIGTERM; the finished episodes are saved.
    FloatingPointError: an episode's loss became NaN/inf.
  """
  workdir = user_path(workdir)
  t_line = config_lib.t_source(config)
  config_lib.validate(config)
  inert = config_lib.inert_keys(config)
  if inert:
    logging.warning("These keys have no effect with trainable=%r (they "
                    "configure another trainable): %s", config.trainable,
                    ", ".join(inert))
  # Missing input files fail before anything is written (jax_cache,
  # config.json) or slow (a checkpoint loads slowly).
  inputs.check_inputs(config)
  # Before anything asks JAX for devices (multi-host initialisation).
  setup_jax(config, workdir)
  config = config_lib.resolve(config, num_devices=None)
  restart = config.restart if restart is None else restart
  with distributed.main_process_first("workdir"):
    workdir.mkdir(parents=True, exist_ok=True)
  if config.demo:
    logging.warning(DEMO_NOTE)

  with StopOnSignal() as stop:
    try:
      if config.eval_only:
        from jaxfsl.protocols.episodic import eval_only

        return eval_only.run(config, workdir, stop)
      return _run(config, workdir, restart, on_batch, stop, t_line)
    except _Abandon:
      raise stop.interrupted() from None


def _check_prompt_room(engine: Any, model: Any, names: Sequence[str],
                       config: ConfigDict) -> None:
  """A prompt learner whose context leaves too little room for some of the
  dataset's class names (their prompts would be cut, two classes can share
  one): a ConfigError naming the key, its value, the classes and the
  longest context that fits them."""
  trainable = engine.trainable
  if not hasattr(trainable, "cut_class_names"):
    return
  cut = trainable.cut_class_names(model.tokenizer, names, config.prompt)
  if not cut:
    return
  key, over = trainable.name, max(cut.values())
  text = trainable.prompt_text
  block = config[key]
  if block.ctx_init.strip():
    setting = f"{key}.ctx_init={block.ctx_init!r}"
    expected = (f"a phrase of at most {len(text.prefix_ids) - over} tokens "
                f"(it has {len(text.prefix_ids)})")
  else:
    setting = f"{key}.n_ctx={block.n_ctx}"
    expected = f"{key}.n_ctx <= {text.n_ctx - over}"
  shown = sorted(cut)[:5]
  raise ConfigError(
      f"{setting} leaves too little room in the model's text context "
      f"({model.config.text.context_length} tokens) for the class names "
      f"{shown}{' ...' if len(cut) > 5 else ''} ({len(cut)} of "
      f"{len(names)} classes): their prompts would be cut; expected "
      f"{expected} (model {model.name})")


def _run(config: ConfigDict, workdir: Path, restart: bool,
         on_batch: Callable[[dict[str, Any]], None] | None,
         stop: StopOnSignal, t_line: str) -> dict[str, Any]:
  saved = prepare_workdir(config, workdir, restart)
  if reports.is_main_process():
    reports.write_text_atomic(workdir / "config.json",
                              config.to_json(indent=2))
  logging.info("Config (%s):\n%s", t_line, config)

  # The demo's dataset is generated on first use: by process 0, before the
  # other processes of a multi-host job open it.
  with distributed.main_process_first("dataset"):
    dataset = inputs.open_dataset(config, workdir)
  model = inputs.load_model(config)
  sampler = inputs.make_sampler(config, dataset,
                                model.config.vision.image_size)
  try:
    engine, config.episodes_per_batch, choice = engine_lib.build_engine(
        model, config_lib.engine_config(config), config.episodes_per_batch,
        max_episodes=config.episodes, return_adapters=config.save_adapters)
  except TrainableConfigError as e:
    # Settings that do not fit a checkpoint's model (known once loaded):
    # one line naming the key, as a config error.
    raise ConfigError(f"{e} (model {model.name})") from None
  _check_prompt_room(engine, model, dataset.prompt_names, config)
  if choice:
    logging.info("%s", choice)
  # The optimiser as resolved (optim.name "trainable", warmup_steps -1).
  logging.info("Optimiser: %s", engine.config.optim)
  info = describe(config, model, engine.config)
  logging.info("%s on %s (%s): %d-way %d-shot, %d episodes, T=%d steps, "
               "%d episodes per batch over %d device(s)", info["method"],
               config.dataset.name, model.name, config.way, config.shot,
               config.episodes, config.steps, config.episodes_per_batch,
               jax.device_count())

  fp = config_lib.fingerprint(config)
  parts: list[dict[str, Any]] = []
  next_episode, wall_before = 0, 0.0
  if saved is not None:
    meta, outputs = saved
    parts.append(outputs)
    next_episode = int(meta["next_episode"])
    wall_before = float(meta.get("wall_seconds", 0.0))
    logging.info("Resuming: %d episode(s) already done", next_episode)
  total = config.episodes
  stop.done, stop.total = next_episode, total
  state = RunState(workdir / "state")
  adapters = (AdapterStore(workdir / "adapters") if config.save_adapters
              else None)
  tb = (reports.TensorBoard(workdir / "tensorboard")
        if reports.is_main_process() else None)
  speed = _Speed()
  ran = 0
  all_acc = ([] if not parts else
             [aggregate.percent(a)
              for a in parts[0]["stages"]["accuracy"][:, -1]])
  # The next batch's host-to-device copy overlaps this batch's work.
  batches = parallel.prefetch_to_device(
      inputs.episode_batches(model, sampler, config,
                             range(next_episode, total)), engine.mesh,
      part=2)
  try:
    for indices, valid, batch in batches:
      if stop.signum is not None:
        break
      if ran == 0:
        logging.info("%s", COMPILING)
      with compile_cache.CompileMonitor() as compiles:
        out = engine.run_batch(
            batch, engine_lib.episode_keys(config.seed, host_slice(indices)),
            episode_ids=indices, return_adapters=config.save_adapters)
      if compiles.compiles:
        logging.info("Compiled %d program(s) in %.1f s (%d read from the "
                     "persistent compilation cache)", compiles.compiles,
                     compiles.seconds, compiles.cache_hits)
      out = aggregate.take_outputs(out, valid)
      done_idx = indices[valid]
      if adapters is not None:
        adapters.save(done_idx, out.pop("adapters"))
      out["index"] = done_idx
      parts = [aggregate.concat_outputs(parts + [out])]
      next_episode = int(done_idx[-1]) + 1
      ran += len(done_idx)
      stop.done = next_episode
      state.save({"next_episode": next_episode, "fingerprint": fp,
                  "config": config.to_dict(),
                  "wall_seconds": wall_before + time.time() - speed.start},
                 parts[0])
      records = aggregate.episode_records(out, done_idx)
      all_acc += [r["accuracy"] for r in records]
      rate = speed.update(len(done_idx))
      line = aggregate.progress_line(next_episode, total, all_acc, rate)
      logging.info("%s", line)
      progress = {"done": next_episode, "total": total, "rate": rate,
                  "records": records, "line": line}
      if tb is not None:
        tb.batch(progress, all_acc)
      if on_batch is not None:
        on_batch(progress)
  except _Abandon:
    logging.warning("Abandoning the batch in progress.")
  except BaseException:
    if tb is not None:
      tb.close()
    raise
  finally:
    batches.close()
    state.close()
    if adapters is not None:
      adapters.close()
  if stop.signum is not None and next_episode < total:
    if tb is not None:
      tb.close()
    raise stop.interrupted()

  outputs = parts[0] if parts else None
  records = []
  if outputs is not None:
    order = np.flatnonzero(np.asarray(outputs["index"]) < total)
    kept = aggregate.take_outputs(outputs, order)
    records = aggregate.dedupe(
        aggregate.episode_records(kept, kept["index"]))
  kept_results = _kept_results(workdir, len(records)) if not ran else None
  if kept_results is not None:
    logging.info("All %d episodes were already done; %s kept as written by "
                 "the run that finished them.", len(records),
                 workdir / "results.json")
    if tb is not None:
      tb.close()
    return kept_results
  results = results_dict(config, info, records, {
      "devices": jax.device_count(), "workdir": str(workdir),
      "wall_seconds": round(wall_before + time.time() - speed.start, 1),
      "wall_seconds_this_process": round(time.time() - speed.start, 1)})
  if reports.is_main_process():
    reports.write_all(workdir, results)
    if tb is not None:
      tb.final(results)
      tb.close()
  n = results["num_episodes"]
  logging.info("Done: %s %s %d-shot: %s (zero-shot %s)",
               info["method"], config.dataset.name, config.shot,
               aggregate.format_over_episodes(results["accuracy_mean"],
                                              results["accuracy_ci95"], n),
               aggregate.format_mean_ci(
                   results["zero_shot_accuracy_mean"],
                   results["zero_shot_accuracy_ci95"] if n >= 2 else None))
  if config.demo:
    logging.warning(DEMO_NOTE)
  return results
