"""Kill and interrupt tests: the job, stopped at several points and rerun,
ends with exactly the results of an uninterrupted run.

The job is stopped from outside, as a user or a scheduler would: a signal
sent when the test observes something a real run does anyway, a log line
(the "Compiling the episode program" line before the first batch, the
per-batch progress line) or a folder appearing in the workdir (an Orbax
step of the run state or of the saved adapters). Nothing in the runner
exists for these tests. The tiny job of tests/test_main.py: 10 episodes in
batches of 4 + 4 + 2 (padded).
"""

import importlib.util
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxfsl.io import reports
from jaxfsl.io.runstate import AdapterStore

# The tiny job, its runner and the session's shared uninterrupted reference
# run live in tests/test_main.py (loaded by path: works in any import mode).
_spec = importlib.util.spec_from_file_location(
    "jaxfsl_tests_main", Path(__file__).with_name("test_main.py"))
tm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tm)
PER_BATCH = 4
COMPILING = "Compiling the episode program"


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


def step_identity(work, name, step):
  """Tells a step folder from its replacement (inodes may be reused)."""
  try:
    st = (work / name / str(step)).stat()
  except FileNotFoundError:
    return None
  return st.st_ino, st.st_ctime_ns


def run_and_signal(work, *, line=None, ready=None, sig=signal.SIGKILL,
                   then=None, cache, data, timeout=400, flags=()):
  """Runs the tiny job (the reference's flags, then ``flags``); sends
  ``sig`` as soon as a stderr line contains ``line`` or ``ready()`` is true,
  and then, with ``then=(line2, sig2)``, ``sig2`` once a later line contains
  ``line2``. Returns (return code, stderr, whether the first signal was
  sent)."""
  args, env = tm.job_command(work, *tm.REFERENCE, *flags, cache=cache,
                             data_dir=data)
  proc = subprocess.Popen(args, stderr=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, text=True, cwd=tm.REPO,
                          env=env)
  lines: queue.Queue = queue.Queue()
  reader = threading.Thread(
      target=lambda: [lines.put(x) for x in proc.stderr], daemon=True)
  reader.start()
  seen, sent, sent_then = [], False, then is None
  deadline = time.time() + timeout
  while (proc.poll() is None and not (sent and sent_then)
         and time.time() < deadline):
    fire = False
    try:
      while True:
        seen.append(lines.get_nowait())
        if not sent and line is not None and line in seen[-1]:
          fire = True
        elif sent and then is not None and then[0] in seen[-1]:
          proc.send_signal(then[1])
          sent_then = True
    except queue.Empty:
      pass
    if not sent and ready is not None:
      fire = ready()
    if fire:
      proc.send_signal(sig)
      sent = True
    time.sleep(0.001)
  try:
    proc.wait(timeout=max(deadline - time.time(), 1))
  finally:
    if proc.poll() is None:
      proc.kill()
  reader.join(timeout=10)
  while not lines.empty():
    seen.append(lines.get_nowait())
  return proc.returncode, "".join(seen), sent


def assert_same_as_reference(work, reference, history):
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
  a = AdapterStore(work / "adapters", create=False)
  b = AdapterStore(reference / "adapters", create=False)
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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return tm.shared_reference(tmp_path_factory)


def test_killed_job_resumes_to_identical_results(reference, tmp_path,
                                                  tmp_path_factory):
  cache = tm.xla_cache(tmp_path_factory)
  data = reference / "data"
  work = tmp_path / "killed"
  history = []

  def done():
    return (saved_steps(work, "state") or [0])[-1]

  def kill(case, **when):
    before = done()
    rc, log, sent = run_and_signal(work, cache=cache, data=data, **when)
    assert sent and rc == -signal.SIGKILL, (case, rc, log[-3000:])
    if before:
      assert f"Resuming: {before} episode(s) already done" in log
    assert not (work / "results.json").exists()
    history.append((case, before, done(), saved_steps(work, "adapters")))
    return before, done()

  # Inside the first batch (compiling or computing): nothing saved.
  before, after = kill("in_batch", line=COMPILING)
  assert after == 0 and not saved_steps(work, "adapters"), history

  # While the second batch's run state is being written (its Orbax step
  # folder, temporary or final, appeared): the save is atomic, so the
  # state is the first batch's or the second's, never half of one.
  before, after = kill("saving", ready=lambda: any(
      p.name.split(".")[0] == "8" for p in (work / "state").iterdir())
      if (work / "state").is_dir() else False)
  assert after in (4, 8), history

  # Adapters of the next batch just saved (a new folder for its first
  # episode): the run state is saved right after them and may not be yet.
  step = after
  old = step_identity(work, "adapters", step)
  before, after = kill("after_adapters", ready=lambda: step_identity(
      work, "adapters", step) not in (None, old))
  assert after in (before, before + PER_BATCH), history
  assert saved_steps(work, "adapters")[-1] == before, history

  # Between batches, once a batch's progress line is printed (its state
  # save started, asynchronously).
  if after < tm.EPISODES:
    target = min(after + PER_BATCH, tm.EPISODES)
    before, after = kill("between_batches",
                         line=f"episodes {target}/{tm.EPISODES} |")
    assert after in (before, target), history

  proc = tm.run_job(work, *tm.REFERENCE, cache=cache, data_dir=data)
  assert "Resuming" in proc.stderr or after == 0
  assert_same_as_reference(work, reference, history)


def test_clean_exit_on_sigterm_and_sigint_then_resume(reference, tmp_path,
                                                       tmp_path_factory):
  """SIGTERM / Ctrl-C: the batch in progress finishes and is saved, one
  line says how far it got and how to resume, exit 143 / 130, no
  traceback; rerunning ends with the uninterrupted run's results."""
  cache = tm.xla_cache(tmp_path_factory)
  data = reference / "data"
  work = tmp_path / "interrupted"

  # During compilation of the first batch: it finishes, is saved, stop.
  rc, log, sent = run_and_signal(work, line=COMPILING, sig=signal.SIGTERM,
                                 cache=cache, data=data)
  assert sent and rc == 143, (rc, log[-3000:])
  assert ("Interrupted after 4/10 episodes; rerun the same command to "
          "resume.") in log, log[-3000:]
  # Once on stderr (not also as a logged warning there), and in log.txt.
  assert log.count("Interrupted after 4/10 episodes") == 1, log[-3000:]
  assert "Interrupted after 4/10 episodes" in (work / "log.txt").read_text()
  assert "Traceback" not in log
  assert saved_steps(work, "state")[-1] == 4

  # While starting (before any batch of this process): stops at once.
  rc, log, sent = run_and_signal(work, line="Resuming: 4 episode(s)",
                                 sig=signal.SIGINT, cache=cache, data=data)
  assert sent and rc == 130, (rc, log[-3000:])
  assert "Interrupted after 4/10 episodes" in log and "Traceback" not in log

  # Twice (the second once the first was handled): the batch in progress
  # is abandoned unless it ended first; the saved state stands.
  rc, log, sent = run_and_signal(
      work, line=COMPILING, sig=signal.SIGINT, cache=cache, data=data,
      then=("SIGINT received", signal.SIGINT))
  assert sent and rc == 130, (rc, log[-3000:])
  assert "Traceback" not in log
  stopped = saved_steps(work, "state")[-1]
  assert f"Interrupted after {stopped}/10 episodes" in log, log[-3000:]
  assert stopped == (4 if "Abandoning the batch" in log else 8), log[-3000:]

  tm.run_job(work, *tm.REFERENCE, cache=cache, data_dir=data)
  assert_same_as_reference(work, reference, [])
