"""The adapters a job saved (``config.save_adapters=True``) as ``Adapters``.

A job workdir holds ``config.json`` (the resolved config) and
``adapters/<first episode of a batch>/`` (Orbax, written by the runner's
``AdapterStore``: ``{"index": int64 [E], "adapters": tree with a leading E
axis}``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxfsl.interop.common import InteropError
from jaxfsl.paths import user_path
from jaxfsl.trainables.lora import Adapters, LoraConfig


def _adapter_store():
  # The run-state classes are moving from the runner to jaxfsl.io.runstate.
  try:
    from jaxfsl.io.runstate import AdapterStore
  except ImportError:
    from jaxfsl.protocols.episodic.runner import AdapterStore
  return AdapterStore


def job_config(workdir: str | os.PathLike[str]) -> Any:
  """The ``ConfigDict`` of ``workdir/config.json``.

  Raises:
    InteropError: no config.json (naming seed sub-workdirs when present).
  """
  import ml_collections

  workdir = user_path(workdir)
  path = workdir / "config.json"
  if not path.is_file():
    seeds = sorted(p.name for p in workdir.glob("seed_*") if p.is_dir())
    hint = (f"; this is a multi-seed workdir: pass one of "
            f"{[str(workdir / s) for s in seeds]}" if seeds else "")
    raise InteropError(f"{workdir}: not a job workdir (no config.json){hint}")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (OSError, json.JSONDecodeError) as e:
    raise InteropError(f"{path}: not valid JSON: {e}") from None


def lora_config_of(config: Any) -> LoraConfig:
  """The job's LoraConfig (``config.lora``), as the runner builds it."""
  from jaxfsl.protocols.episodic import runner

  c = config.lora
  blocks = c.blocks
  blocks = (runner.parse_blocks(blocks) if isinstance(blocks, str)
            else tuple(int(b) for b in blocks))
  try:
    return LoraConfig(rank=int(c.rank), alpha=float(c.alpha),
                      dropout=float(c.dropout),
                      targets=runner.parse_targets(c.targets),
                      towers=c.towers, blocks=blocks)
  except ValueError as e:
    raise InteropError(f"config.json lora settings: {e}") from None


def load_saved_adapters(workdir: str | os.PathLike[str], episode: int
                        ) -> Adapters:
  """Episode ``episode``'s final adapters from a job workdir.

  Reads only the one saved batch holding that episode.

  Raises:
    InteropError: no saved adapters (the job ran without save_adapters), or
      none for this episode (naming the saved episode range).
  """
  workdir = user_path(workdir)
  config = job_config(workdir)
  if config.get("trainable", "lora") != "lora":
    # The runner saves prompt learners' final prompts like LoRA's adapters
    # (AdapterStore), but no other tool reads them: say where they are.
    raise InteropError(
        f"{workdir}: trainable={config.trainable!r}; export supports LoRA "
        "adapters (PEFT, release .pt, npz); CoOp/MaPLe prompts are saved "
        f"(with --config.save_adapters=True) in {workdir / 'adapters'}/"
        "<first episode of each batch>/ as Orbax checkpoints ('index': the "
        "episodes, 'adapters': their learned prompts) and are not exported "
        "to other formats")
  import orbax.checkpoint as ocp

  directory = workdir / "adapters"
  if not directory.is_dir():
    raise InteropError(
        f"{directory}: no saved adapters; rerun the job with "
        "--config.save_adapters=True (same config and workdir)")
  store = _adapter_store()(Path(directory), create=False)
  try:
    steps = sorted(int(s) for s in store.manager.all_steps())
    starts = [s for s in steps if s <= episode]
    item = None
    if starts:
      item = store.manager.restore(starts[-1],
                                   args=ocp.args.PyTreeRestore())
  finally:
    store.close()
  index = (np.asarray(item["index"]).tolist() if item is not None else [])
  if episode not in index:
    raise InteropError(
        f"{directory}: no adapters for episode {episode}; saved batches start "
        f"at episodes {steps} (episodes 0..{config.episodes - 1} of the job)")
  row = index.index(episode)
  import jax

  params = jax.tree.map(lambda a: np.asarray(a)[row], item["adapters"])
  return Adapters(params=params, config=lora_config_of(config))


def install_for_eval(adapters: Adapters, config: Any,
                     workdir: str | os.PathLike[str]) -> Path:
  """Stores imported adapters as every episode's adapters of a fresh
  workdir, so that ``eval_only`` evaluates them on the job's episodes::

    adapters = jaxfsl.import_adapters("lora_weights.pt", model)
    install_for_eval(adapters, config, "runs/imported")
    config.eval_only = True
    runner.run(config, "runs/imported")

  The same adapters serve every episode (one copy per episode on disk, as
  a training run with save_adapters leaves them).

  Args:
    adapters: e.g. from ``jaxfsl.import_adapters``.
    config: the job config ``eval_only`` will run; its ``lora`` settings
      must describe ``adapters`` (the engine takes the scaling from them).
    workdir: a workdir without a previous run (no state/ or adapters/).

  Returns:
    ``workdir/adapters`` (``workdir/config.json`` is written too).

  Raises:
    InteropError: the config's lora settings differ from the adapters'
      (naming each field and the flag to set), or the workdir holds a run.
  """
  from jaxfsl.protocols.episodic import runner

  workdir = user_path(workdir)
  for name in ("state", "adapters"):
    if (workdir / name).exists():
      raise InteropError(
          f"{workdir / name} exists: install imported adapters into a fresh "
          "workdir (not one holding a run)")
  resolved = runner.resolve(config)
  want = lora_config_of(resolved)
  have = adapters.config
  diffs = [f"lora.{f}: config {getattr(want, f)!r}, adapters "
           f"{getattr(have, f)!r}"
           for f in ("rank", "alpha", "targets", "towers", "blocks")
           if getattr(want, f) != getattr(have, f)]
  if diffs:
    raise InteropError(
        "the job config does not describe these adapters; set "
        + ", ".join(f"--config.{d.split(':')[0]}" for d in diffs)
        + " to the adapters' values (" + "; ".join(diffs) + ")")
  from jaxfsl.io import reports

  # As a training run leaves it: the export tool and readers find the
  # job's settings beside the adapters.
  reports.write_text_atomic(workdir / "config.json",
                            resolved.to_json(indent=2))
  store = _adapter_store()(workdir / "adapters")
  epb = int(resolved.episodes_per_batch)
  if epb < 1:  # -1: auto, sized at training time; any grouping reads back
    epb = 16
  try:
    for start in range(0, int(resolved.episodes), epb):
      indices = np.arange(start, min(start + epb, resolved.episodes))
      stacked = _stack(adapters.params, len(indices))
      store.save(indices, stacked)
  finally:
    store.close()
  return workdir / "adapters"


def _stack(tree: Any, n: int) -> Any:
  import jax

  return jax.tree.map(lambda a: np.repeat(np.asarray(a)[None], n, axis=0),
                      tree)
