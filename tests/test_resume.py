"""Kill tests: the job, SIGKILLed at several points and rerun, ends with
exactly the results of an uninterrupted run.

The runner kills itself through its test-only hook (``JAXFSL_TEST_KILL_AT``,
see ``jaxfsl.protocols.episodic.runner.KILL_ENV``): inside a batch's compute, after the
adapters of a batch are saved but not the run state, while the run state's
Orbax save is writing, and between batches. The tiny job of
tests/test_main.py: 10 episodes in batches of 4 + 4 + 2 (padded).
"""

import importlib.util
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxfsl.io import reports
from jaxfsl.protocols.episodic import runner as experiment

# The tiny job, its runner and the session's shared uninterrupted reference
# run live in tests/test_main.py (loaded by path: works in any import mode).
_spec = importlib.util.spec_from_file_location(
    "jaxfsl_tests_main", Path(__file__).with_name("test_main.py"))
tm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tm)
PER_BATCH = 4


def first_difference(a, b, path="episodes"):
  """Where two JSON trees first differ, for the failure message."""
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      if a.get(k) != b.get(k):
        return first_difference(a.get(k), b.get(k), f"{path}.{k}")
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
      if x != y:
        return first_difference(x, y, f"{path}[{i}]")
  return f"{path}: {a!r} != {b!r}"


def saved_steps(work, name):
  folder = work / name
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return tm.shared_reference(tmp_path_factory)


def test_killed_job_resumes_to_identical_results(reference, tmp_path,
                                                  tmp_path_factory):
  cache = tm.xla_cache(tmp_path_factory)
  data = reference / "data"
  work = tmp_path / "killed"
  history = []
  # (hook, finished episodes expected in the run state afterwards).
  chain = [
      ("in_batch:1", {0}),            # Inside the first batch's compute.
      ("saving:2", {4, 8}),           # Second batch's state save writing.
      ("after_adapters:1", None),     # Adapters on disk, run state not.
      ("after_save:1", None),         # Between batches.
  ]
  for hook, expected in chain:
    before = (saved_steps(work, "state") or [0])[-1]
    proc = tm.run_job(work, *tm.REFERENCE, cache=cache, data_dir=data,
                      kill=hook, check=False)
    assert proc.returncode == -signal.SIGKILL, (hook, proc.stderr[-3000:])
    assert f"killing myself at {hook.split(':')[0]}" in proc.stderr
    if before:
      assert f"Resuming: {before} episode(s) already done" in proc.stderr
    done = (saved_steps(work, "state") or [0])[-1]
    history.append((hook, done, saved_steps(work, "adapters")))
    if expected is not None:
      assert done in expected, history
    elif hook.startswith("after_adapters"):
      assert done == before, history
      # The batch after ``done`` left its adapters behind.
      assert saved_steps(work, "adapters")[-1] == done, history
    else:
      assert done == min(before + PER_BATCH, tm.EPISODES), history
    assert not (work / "results.json").exists()

  proc = tm.run_job(work, *tm.REFERENCE, cache=cache, data_dir=data)
  assert "Resuming" in proc.stderr

  ref = reports.load_results(reference)
  got = reports.load_results(work)
  # Exactly, not approximately.
  assert got["episodes"] == ref["episodes"], (
      first_difference(got["episodes"], ref["episodes"]), history)
  for key in ("accuracy_mean", "accuracy_ci95", "stage_accuracy_mean",
              "zero_shot_accuracy_mean", "stage_means", "loss_means",
              "num_episodes", "complete"):
    assert got[key] == ref[key], key
  assert (work / "results.csv").read_text() == (
      reference / "results.csv").read_text()

  # Every episode's adapters are on disk once, equal to the uninterrupted
  # run's (a batch redone after a kill replaced its earlier save).
  assert saved_steps(work, "adapters") == list(
      range(0, tm.EPISODES, PER_BATCH))
  a = experiment.AdapterStore(work / "adapters", create=False)
  b = experiment.AdapterStore(reference / "adapters", create=False)
  try:
    mine, theirs = a.load_all(), b.load_all()
  finally:
    a.close()
    b.close()
  assert sorted(mine) == list(range(tm.EPISODES))
  for i in range(tm.EPISODES):
    leaves = zip(jax.tree.leaves(mine[i]), jax.tree.leaves(theirs[i]),
                 strict=True)
    assert all(np.array_equal(x, y) for x, y in leaves), i
