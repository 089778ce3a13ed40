"""Multi-host runs proven on two local processes.

Two ``python -m jaxfsl.main`` processes (``JAXFSL_MULTIHOST=1``, the
coordinator on 127.0.0.1, 2 forced CPU devices each, gloo collectives) run
the tiny demo job of tests/test_main.py sharded over the 4 devices. Their
per-episode results must equal a single process's with 4 devices (exactly)
and with 1 device (to float tolerance, as tests/test_main.py's device-count
test); killed mid-run with SIGKILL and restarted, the pair must end with the
same results; process 1 must write nothing in the workdir (a Python audit
hook in process 1 records every file it opens for writing, creates, renames
or removes). Also the environment parsing of ``jaxfsl.distributed``.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxfsl import distributed
from jaxfsl.io import reports

# The tiny job and the session's shared 1-device reference run live in
# tests/test_main.py (loaded by path: works in any import mode).
_spec = importlib.util.spec_from_file_location(
    "jaxfsl_tests_main", Path(__file__).with_name("test_main.py"))
tm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tm)

PER_BATCH = 4  # tm.REFERENCE: one episode per device of the pair.

# Process 1 runs the CLI under this audit hook: every write-like file
# operation whose path lies in the workdir is appended (as JSON) to
# argv[1]; argv[2] is the workdir; the CLI's arguments follow.
_AUDITED_MAIN = r"""
import json, os, runpy, sys
log, root = sys.argv[1], os.path.realpath(sys.argv[2])
out = open(log, "a", buffering=1)
def inside(p):
  try:
    p = os.fsdecode(p)
  except TypeError:
    return False
  p = os.path.realpath(p)
  return p == root or p.startswith(root + os.sep)
def hook(event, args):
  paths = ()
  if event == "open" and args[0] is not None and not isinstance(args[0], int):
    mode, flags = args[1] or "", args[2] or 0
    writes = (any(c in mode for c in "wax+") or
              flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
    paths = (args[0],) if writes else ()
  elif event == "os.mkdir" and not os.path.exists(args[0]):
    paths = (args[0],)  # mkdir(exist_ok=True) of an existing folder: no-op.
  elif event in ("os.remove", "os.rmdir", "os.truncate", "shutil.rmtree",
                 "os.symlink", "os.link"):
    paths = (args[0],)
  elif event in ("os.rename", "shutil.move", "shutil.copyfile"):
    paths = (args[0], args[1])
  for p in paths:
    if inside(p):
      out.write(json.dumps([event, os.fsdecode(p)]) + "\n")
sys.addaudithook(hook)
sys.argv = ["jaxfsl.main"] + sys.argv[3:]
runpy.run_module("jaxfsl.main", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def pair_commands(work, *, cache, data, audit_log):
  """(argv, env) of process 0 and process 1 of a two-process tiny job."""
  # No persistent compilation cache: JAX writes it from process 0 only, so
  # process 0 would load programs that process 1 compiles, and on CPU gloo
  # fails a collective whose processes arrive over 30 s apart.
  del cache
  flags = [*tm.TINY, f"--workdir={work}",
           f"--config.dataset.data_dir={data}", *tm.REFERENCE]
  port = free_port()
  out = []
  for pid in (0, 1):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env["XLA_FLAGS"] = ("--xla_backend_optimization_level=0 "
                        "--xla_force_host_platform_device_count=2")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tm.REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update({distributed.MULTIHOST_ENV: "1",
                distributed.COORDINATOR_ENV: f"127.0.0.1:{port}",
                distributed.NUM_PROCESSES_ENV: "2",
                distributed.PROCESS_ID_ENV: str(pid)})
    if pid == 0:
      args = [sys.executable, "-m", "jaxfsl.main", *flags]
    else:
      args = [sys.executable, "-c", _AUDITED_MAIN, str(audit_log), str(work),
              *flags]
    out.append((args, env))
  return out


def run_pair(work, *, cache, data, audit_log, kill_when=None, timeout=600):
  """Runs both processes; with ``kill_when`` (a predicate polled every
  10 ms), SIGKILLs both as soon as it holds. Returns ([rc0, rc1],
  [stderr0, stderr1], whether they were killed)."""
  procs, logs = [], []
  for i, (args, env) in enumerate(pair_commands(
      work, cache=cache, data=data, audit_log=audit_log)):
    log = open(Path(audit_log).with_name(f"stderr_{i}_{time.time()}.txt"),
               "w+")
    logs.append(log)
    procs.append(subprocess.Popen(args, cwd=tm.REPO, env=env, stderr=log,
                                  stdout=subprocess.DEVNULL))
  killed = False
  deadline = time.time() + timeout
  try:
    while (any(p.poll() is None for p in procs)
           and time.time() < deadline):
      if kill_when is not None and not killed and kill_when():
        for p in procs:
          p.send_signal(signal.SIGKILL)
        killed = True
      # One process failing leaves the other waiting on collectives.
      if any(p.returncode not in (None, 0) for p in procs) and not killed:
        time.sleep(2)
        break
      time.sleep(0.01)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  errs = []
  for log in logs:
    log.seek(0)
    errs.append(log.read())
    log.close()
  return [p.returncode for p in procs], errs, killed


def audited(audit_log):
  path = Path(audit_log)
  if not path.exists():
    return []
  return [json.loads(x) for x in path.read_text().splitlines()]


def saved_steps(work, name):
  folder = work / name
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def listing(work):
  """The set of relative paths in the workdir (the data folder left out),
  with the names that hold content hashes, times or host names normalised:
  Orbax's OCDBT data files (``.../d/<hash>``, as many as TensorStore
  flushes) and TensorBoard's event file. A file of process 1 would show as
  an extra path (e.g. an Orbax ``ocdbt.process_1`` folder, written by
  TensorStore outside Python)."""
  out = []
  for p in work.rglob("*"):
    rel = p.relative_to(work)
    if rel.parts[0] == "data":
      continue
    if rel.parts[0] == "tensorboard" and len(rel.parts) > 1:
      rel = Path("tensorboard/<events>")
    elif rel.parent.name == "d":
      rel = rel.parent / "<hash>"
    out.append(str(rel))
  return sorted(set(out))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return tm.shared_reference(tmp_path_factory)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tm.xla_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def four_devices(reference, cache, tmp_path_factory):
  """The same job in one process with 4 devices."""
  work = tmp_path_factory.mktemp("four_devices")
  tm.run_job(work, *tm.REFERENCE, cache=cache, devices=4,
             data_dir=reference / "data")
  return work


@pytest.fixture(scope="module")
def pair(reference, cache, tmp_path_factory):
  """The job on two processes of 2 devices each: (workdir, audit log,
  stderr of both)."""
  root = tmp_path_factory.mktemp("pair")
  work, audit_log = root / "work", root / "audit_1.jsonl"
  rcs, errs, _ = run_pair(work, cache=cache, data=reference / "data",
                          audit_log=audit_log)
  assert rcs == [0, 0], (rcs, errs[0][-3000:], errs[1][-3000:])
  return work, audit_log, errs


def assert_same_episodes(a, b):
  """Same episodes, same predictions (accuracies to the stored 4 decimals),
  every other number equal to float rounding: XLA:CPU partitions its work
  by the devices of a process, so 2 + 2 devices round differently from 4
  (and 4 from 1), by ~1e-6."""
  assert [e["index"] for e in a] == [e["index"] for e in b]
  for x, y in zip(a, b, strict=True):
    for key in ("accuracy", "stage_accuracies", "zero_shot_accuracy"):
      assert x[key] == y[key], (x["index"], key)
    np.testing.assert_allclose(tm.values(x), tm.values(y), rtol=1e-5,
                               atol=1e-5, err_msg=f"episode {x['index']}")


def test_two_processes_give_the_results_of_one(pair, four_devices,
                                               reference):
  work, _, errs = pair
  assert "process 0 of 2, 2 local of 4 devices" in errs[0]
  assert "process 1 of 2, 2 local of 4 devices" in errs[1]
  got = reports.load_results(work)
  assert got["complete"] and got["num_episodes"] == tm.EPISODES
  assert got["run"]["devices"] == 4
  for single in (four_devices, reference):
    assert_same_episodes(reports.load_results(single)["episodes"],
                         got["episodes"])


def test_only_process_0_writes(pair, four_devices):
  work, audit_log, _ = pair
  # Process 1 created, opened for writing, renamed or removed nothing in
  # the workdir (test_audit_hook_records_writes shows the hook sees them).
  writes = audited(audit_log)
  assert writes == [], writes[:20]
  # The workdir holds what a single-process run writes, nothing more: no
  # second log, no second TensorBoard event file, no per-process files.
  assert listing(work) == listing(four_devices)
  assert len(list((work / "tensorboard").iterdir())) == 1
  log = (work / "log.txt").read_text()
  assert log.count("jaxfsl.main ") == 1, log[:2000]


def test_audit_hook_records_writes(tmp_path):
  # The audit hook of process 1 really records writes in the workdir:
  # run it on a tiny script that writes there.
  work = tmp_path / "w"
  work.mkdir()
  log = tmp_path / "audit.jsonl"
  script = _AUDITED_MAIN.replace(
      'runpy.run_module("jaxfsl.main", run_name="__main__", alter_sys=True)',
      'open(os.path.join(root, "x.txt"), "w").write("1")\n'
      'os.mkdir(os.path.join(root, "d"))\n'
      'open("/dev/null", "w").write("1")\n')
  subprocess.run([sys.executable, "-c", script, str(log), str(work)],
                 check=True)
  events = audited(log)
  assert [e for e, _ in events] == ["open", "os.mkdir"], events
  assert events[0][1].endswith("x.txt")


def test_killed_pair_resumes_to_identical_results(pair, reference, cache,
                                                  tmp_path):
  ref_work = pair[0]
  work, audit_log = tmp_path / "work", tmp_path / "audit_1.jsonl"
  data = reference / "data"

  def first_batch_saved():
    return PER_BATCH in saved_steps(work, "state")

  rcs, errs, killed = run_pair(work, cache=cache, data=data,
                               audit_log=audit_log,
                               kill_when=first_batch_saved)
  assert killed and rcs == [-signal.SIGKILL, -signal.SIGKILL], (
      rcs, errs[0][-3000:], errs[1][-3000:])
  assert not (work / "results.json").exists()
  done = saved_steps(work, "state")[-1]
  assert done in (PER_BATCH, 2 * PER_BATCH), saved_steps(work, "state")

  rcs, errs, _ = run_pair(work, cache=cache, data=data, audit_log=audit_log)
  assert rcs == [0, 0], (rcs, errs[0][-3000:], errs[1][-3000:])
  assert f"Resuming: {done} episode(s) already done" in errs[0]
  got, ref = reports.load_results(work), reports.load_results(ref_work)
  assert got["episodes"] == ref["episodes"]
  assert got["complete"] and got["num_episodes"] == tm.EPISODES
  assert (work / "results.csv").read_text() == (
      ref_work / "results.csv").read_text()
  assert saved_steps(work, "adapters") == list(
      range(0, tm.EPISODES, PER_BATCH))
  writes = audited(audit_log)
  assert writes == [], writes[:20]


# ---------------------------------------------------------------------------
# The environment (no processes started).
# ---------------------------------------------------------------------------


def test_requested():
  assert not distributed.requested(False, {})
  assert distributed.requested(True, {})
  assert distributed.requested(False, {"JAXFSL_MULTIHOST": "1"})
  assert distributed.requested(False, {"JAXFSL_MULTIHOST": "true"})
  assert not distributed.requested(False, {"JAXFSL_MULTIHOST": "0"})
  with pytest.raises(distributed.MultihostError, match="JAXFSL_MULTIHOST='2'"):
    distributed.requested(False, {"JAXFSL_MULTIHOST": "2"})


def test_settings_from_env():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476",
         "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert distributed.settings_from_env(env) == {
      "coordinator_address": "10.0.0.2:8476", "num_processes": 4,
      "process_id": 3}
  # Unset ones are left to JAX's cluster auto-detection.
  assert distributed.settings_from_env({}) == {}
  assert distributed.settings_from_env({"JAX_PROCESS_ID": "0"}) == {
      "process_id": 0}


def test_settings_from_env_lists_every_problem():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2", "JAX_NUM_PROCESSES": "two",
         "JAX_PROCESS_ID": "-1"}
  with pytest.raises(distributed.MultihostError) as e:
    distributed.settings_from_env(env)
  message = str(e.value)
  assert "JAX_COORDINATOR_ADDRESS='10.0.0.2': expected host:port" in message
  assert "JAX_NUM_PROCESSES='two': expected an integer >= 1" in message
  assert "JAX_PROCESS_ID='-1': expected an integer >= 0" in message
  with pytest.raises(distributed.MultihostError,
                     match="JAX_PROCESS_ID=2 is not below"):
    distributed.settings_from_env({"JAX_NUM_PROCESSES": "2",
                                   "JAX_PROCESS_ID": "2"})


def test_not_requested_starts_nothing():
  assert distributed.initialize(False, {}) is False


def test_bad_settings_fail_before_jax_distributed_starts():
  import jax

  with pytest.raises(distributed.MultihostError, match="JAX_NUM_PROCESSES"):
    distributed.initialize(True, {"JAX_NUM_PROCESSES": "x"})
  assert not jax.distributed.is_initialized()


def test_asked_without_a_coordinator_says_what_to_set():
  # In a fresh process: jax.distributed must start before any backend.
  env = {k: v for k, v in os.environ.items() if not k.startswith(
      ("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_",
       "OMPI_"))}
  env.update(JAX_PLATFORMS="cpu", JAXFSL_MULTIHOST="1", PYTHONPATH=str(tm.REPO))
  proc = subprocess.run(
      [sys.executable, "-c",
       "from jaxfsl import distributed; distributed.initialize()"],
      capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 1
  assert "MultihostError: JAXFSL_MULTIHOST=1" in proc.stderr
  assert ("Set JAX_COORDINATOR_ADDRESS (host:port of process 0), "
          "JAX_NUM_PROCESSES and JAX_PROCESS_ID") in proc.stderr


def test_one_process_is_the_main_one():
  assert distributed.is_main_process()
  ran = []
  with distributed.main_process_first("test"):
    ran.append(1)
  distributed.sync("test")
  assert ran == [1]
