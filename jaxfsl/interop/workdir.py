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
  import orbax.checkpoint as ocp

  workdir = user_path(workdir)
  config = job_config(workdir)
  if config.get("trainable", "lora") != "lora":
    raise InteropError(f"{workdir}: trainable={config.trainable!r}; only "
                       "LoRA adapters load as Adapters")
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
