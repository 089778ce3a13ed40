"""A job's resumable state on disk (Orbax): the run state and saved adapters.

Both are Orbax ``CheckpointManager`` folders: a step directory appears
complete or not at all (Orbax writes into a temporary directory and renames
it), and temporary directories left by a killed process are removed when
the folder is opened again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

STATE_ITEMS = ("meta", "outputs")


class RunState:
  """The resumable state in ``workdir/state``.

  Orbax steps are named by the number of finished episodes; each holds
  ``meta`` (JSON: config fingerprint, next episode, config, wall time) and
  ``outputs`` (the engine's raw per-episode results, numpy, leading axis =
  finished episodes, plus ``index``). The last two steps are kept.

  Saves are asynchronous (the next batch computes meanwhile); ``close``
  waits for the one in flight.
  """

  def __init__(self, directory: Path):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.manager = ocp.CheckpointManager(
        Path(directory).resolve(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=2, create=True, cleanup_tmp_directories=True),
        item_names=STATE_ITEMS)

  def restore(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(meta, outputs) of the latest complete save, or None."""
    step = self.manager.latest_step()
    if step is None:
      return None
    ocp = self._ocp
    out = self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore(), outputs=ocp.args.PyTreeRestore()))
    return dict(out["meta"]), out["outputs"]

  def save(self, meta: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Starts saving step ``meta["next_episode"]`` (returns at once)."""
    ocp = self._ocp
    self.manager.save(
        int(meta["next_episode"]), args=ocp.args.Composite(
            meta=ocp.args.JsonSave(dict(meta)),
            outputs=ocp.args.PyTreeSave(dict(outputs))))

  def close(self) -> None:
    """Waits for the save in flight, then releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()


class AdapterStore:
  """Final adapters per batch in ``workdir/adapters/<first episode>``.

  Args:
    directory: the folder.
    create: create it if absent (False for reading).
  """

  def __init__(self, directory: Path, create: bool = True):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.manager = ocp.CheckpointManager(
        Path(directory).resolve(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None, create=create, cleanup_tmp_directories=True))

  def save(self, indices: np.ndarray, adapters: Any) -> None:
    """Saves a batch's adapters (leading axis = its episodes), and waits:
    the run state saved next must never list an episode whose adapters are
    not on disk."""
    ocp = self._ocp
    step = int(indices[0])
    if step in self.manager.all_steps():
      # Left by a run killed before its state save: same episodes, redone.
      self.manager.delete(step)
    self.manager.save(step, args=ocp.args.PyTreeSave(
        {"index": np.asarray(indices, np.int64), "adapters": adapters}))
    self.manager.wait_until_finished()

  def load_all(self) -> dict[int, Any]:
    """{episode index: its adapter tree (numpy)} over every saved batch."""
    ocp = self._ocp
    by_index = {}
    for step in sorted(self.manager.all_steps()):
      item = self.manager.restore(step, args=ocp.args.PyTreeRestore())
      for e, index in enumerate(np.asarray(item["index"])):
        by_index[int(index)] = jax.tree.map(lambda a, e=e: np.asarray(a)[e],
                                            item["adapters"])
    return by_index

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
