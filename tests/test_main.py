"""End to end: ``python -m jaxfsl.main --config configs/episodic/demo.py``
shrunk to a few tiny episodes, its outputs, eval_only, and invariance of the
results to ``episodes_per_batch`` and to the number of devices.

Every job runs in a subprocess (its own XLA flags, device count and
compilation cache, nothing leaking into other tests). The reference job is
run once per session and shared with tests/test_resume.py (and between
pytest-xdist workers) through a locked folder of the session.
"""

import contextlib
import fcntl
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxfsl.io import aggregate, reports

REPO = Path(__file__).resolve().parents[1]
# 4 + 4 + 2: the last batch is padded (by repeating an episode).
EPISODES = 10

# The demo config, shrunk: 32x32 inputs, a 1-block ViT, 10 steps (lr raised
# so that 10 steps visibly change accuracies), 3 queries per class.
# tests/test_resume.py runs the same job: keep the two lists equal.
TINY = (
    "--config=configs/episodic/demo.py", "--config.model.image_size=32",
    "--config.model.vision_depth=1", "--config.dataset.synthetic.image_size=32",
    "--config.dataset.synthetic.num_classes=6",
    "--config.dataset.synthetic.images_per_class=8", "--config.query=3",
    "--config.steps=10", "--config.optim.lr=2e-3",
    f"--config.episodes={EPISODES}", "--config.dataset.num_workers=1",
)
REFERENCE = ("--config.episodes_per_batch=4", "--config.save_adapters=True")


def session_root(tmp_path_factory):
  """A folder shared by every pytest-xdist worker of this session."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def xla_cache(tmp_path_factory):
  # One per worker: JAX writes cache entries non-atomically.
  worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
  return session_root(tmp_path_factory) / f"xla_cache_{worker}"


@contextlib.contextmanager
def locked(path):
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def job_command(workdir, *flags, cache, data_dir=None, devices=1):
  """(argv, env) of ``python -m jaxfsl.main`` with the tiny config."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  # Compile time dominates these runs; unoptimised XLA halves it.
  env["XLA_FLAGS"] = ("--xla_backend_optimization_level=0 "
                      f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
  args = [sys.executable, "-m", "jaxfsl.main", *TINY, f"--workdir={workdir}",
          f"--config.jax_cache_dir={cache}"]
  if data_dir is not None:
    args.append(f"--config.dataset.data_dir={data_dir}")
  return args + list(flags), env


def run_job(workdir, *flags, cache, data_dir=None, devices=1, check=True,
            timeout=400):
  """``python -m jaxfsl.main`` with the tiny config; returns the process."""
  args, env = job_command(workdir, *flags, cache=cache, data_dir=data_dir,
                          devices=devices)
  proc = subprocess.run(args, capture_output=True, text=True,
                        timeout=timeout, cwd=REPO, env=env)
  if check:
    assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def shared_reference(tmp_path_factory):
  """The uninterrupted tiny job (4 episodes per batch, adapters saved), run
  once per session whatever the number of xdist workers."""
  root = session_root(tmp_path_factory)
  key = hashlib.sha1(" ".join(TINY + REFERENCE).encode()).hexdigest()[:12]
  work = root / f"reference_{key}"
  with locked(root / f"reference_{key}.lock"):
    if not (work / "results.json").is_file():
      run_job(work, *REFERENCE, cache=xla_cache(tmp_path_factory))
  return work


def values(record):
  """A record's numbers (accuracies as fractions) for tolerance checks."""
  out = [record["zero_shot_accuracy"] / 100]
  out += [a / 100 for a in record["stage_accuracies"]]
  for group in ("stages", "losses"):
    for v in record[group].values():
      out += v
  out += list(record["zero_shot"].values())
  return np.asarray(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return shared_reference(tmp_path_factory)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return xla_cache(tmp_path_factory)


def test_outputs_exist_and_agree(reference):
  work = reference
  for name in ("results.json", "results.csv", "summary.md", "config.json",
               "log.txt"):
    assert (work / name).is_file(), name
  for name in reports.PLOT_FILES:
    assert (work / "plots" / name).stat().st_size > 1000, name
  assert list((work / "tensorboard").glob("events.out.tfevents.*"))

  results = reports.load_results(work)
  episodes = results["episodes"]
  assert [e["index"] for e in episodes] == list(range(EPISODES))
  assert results["complete"] and results["num_episodes"] == EPISODES
  accs = [e["accuracy"] for e in episodes]
  assert results["accuracy_mean"] == pytest.approx(np.mean(accs), abs=1e-9)
  assert results["accuracy_ci95"] == pytest.approx(
      1.96 * np.std(accs) / math.sqrt(EPISODES), abs=1e-9)
  for k in range(5):
    assert results["stage_accuracy_mean"][k] == pytest.approx(
        np.mean([e["stage_accuracies"][k] for e in episodes]), abs=1e-9)
  rows = reports.read_csv(work / "results.csv")
  assert len(rows) == EPISODES
  for row, e in zip(rows, episodes, strict=True):
    assert int(row["index"]) == e["index"]
    assert row["accuracy"] == e["accuracy"]
    assert row["zero_shot_accuracy"] == e["zero_shot_accuracy"]
    assert row["modality_gap_s5"] == e["stages"]["modality_gap"][4]
  assert json.loads((work / "config.json").read_text())["episodes"] == (
      EPISODES)

  summary = (work / "summary.md").read_text()
  assert "PIPELINE CHECK ONLY" in summary
  assert aggregate.format_mean_ci(results["accuracy_mean"],
                                 results["accuracy_ci95"]) in summary
  log = (work / "log.txt").read_text()
  assert "PIPELINE CHECK ONLY" in log
  assert f"episodes {EPISODES}/{EPISODES} | accuracy" in log
  assert "episodes/h | ETA" in log
  # The first ETA excludes compilation: none until a second batch is done.
  progress = [line for line in log.splitlines() if "| ETA" in line]
  assert progress[0].endswith("? episodes/h | ETA ?"), progress[0]
  assert "episodes/h | ETA ?" not in progress[1], progress[1]
  assert log.index("Compiling the episode program") < log.index(progress[0])
  # The config dump says which key set T.
  assert "T = 10 steps, set by 'steps' ('epochs' is unused)" in log
  assert "orbax" not in log.lower()  # Orbax's chatter is filtered out.


def test_training_is_real(reference):
  work = reference
  results = reports.load_results(work)
  episodes = results["episodes"]
  # The cross-modal loss falls over training, in the mean and per episode.
  vlm = results["loss_means"]["vlm"]
  assert vlm[-1] < vlm[0]
  assert all(e["losses"]["vlm"][-1] < e["losses"]["vlm"][0] for e in episodes)
  # SVL and RA act in the first 0.6 T only (segments 1-3 of 5).
  assert all(v > 0 for v in results["loss_means"]["anti_visual"][:3])
  assert results["loss_means"]["anti_visual"][3:] == [0.0, 0.0]
  # Fine-tuning changes predictions.
  assert any(e["accuracy"] != e["zero_shot_accuracy"] for e in episodes)
  assert len({e["accuracy"] for e in episodes}) > 1
  assert all(0.0 <= e["accuracy"] <= 100.0 for e in episodes)


def test_rerun_of_a_finished_job_is_a_no_op(reference, cache):
  work = reference
  before = (work / "results.json").read_text()
  wall = json.loads(before)["run"]["wall_seconds"]
  assert wall > 0
  proc = run_job(work, *REFERENCE, cache=cache)
  assert f"{EPISODES} episode(s) already done" in proc.stderr
  assert "results.json kept" in proc.stderr
  # Not rewritten: its wall time is still the run's that computed it.
  assert (work / "results.json").read_text() == before


def test_eval_only_reproduces_training_accuracy(reference, cache):
  work = reference
  assert len(list((work / "adapters").iterdir())) == math.ceil(EPISODES / 4)
  run_job(work, *REFERENCE, "--config.eval_only=True", cache=cache)
  train = reports.load_results(work)
  ev = reports.load_results(work / "eval_only")
  assert ev["eval_only"] and ev["num_episodes"] == EPISODES
  assert (work / "eval_only" / "summary.md").is_file()
  for a, b in zip(train["episodes"], ev["episodes"], strict=True):
    assert b["index"] == a["index"]
    assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1e-3)
    assert b["train_accuracy"] == a["accuracy"]
    assert b["zero_shot_accuracy"] == pytest.approx(a["zero_shot_accuracy"],
                                                    abs=1e-3)
    assert b["stages"]["modality_gap"][0] == pytest.approx(
        a["stages"]["modality_gap"][-1], abs=1e-5)
  assert ev["max_abs_diff_vs_training"] < 1e-3


def _assert_same_episodes(a, b):
  assert [e["index"] for e in a] == [e["index"] for e in b]
  for x, y in zip(a, b, strict=True):
    np.testing.assert_allclose(values(x), values(y), rtol=1e-5, atol=1e-5,
                               err_msg=f"episode {x['index']}")


def test_episodes_per_batch_does_not_change_results(reference, cache,
                                                    tmp_path):
  work = reference
  run_job(tmp_path, "--config.episodes_per_batch=1", cache=cache,
          data_dir=work / "data")
  _assert_same_episodes(reports.load_results(work)["episodes"],
                        reports.load_results(tmp_path)["episodes"])


def test_four_devices_give_the_same_results(reference, cache, tmp_path):
  work = reference
  # 3 per batch is rounded up to 4, one episode per device.
  proc = run_job(tmp_path, "--config.episodes_per_batch=3", devices=4,
                 cache=cache, data_dir=work / "data")
  assert "over 4 device(s)" in proc.stderr
  results = reports.load_results(tmp_path)
  assert results["run"]["devices"] == 4
  assert results["config"]["episodes_per_batch"] == 4
  _assert_same_episodes(reports.load_results(work)["episodes"],
                        results["episodes"])


def test_seeds_run_one_job_each_and_a_summary(reference, cache, tmp_path):
  """--config.seeds=1,2: WORKDIR/seed_1 (the same episodes as the reference
  run, whose seed is 1) and seed_2 (other episodes), then seeds.json."""
  run_job(tmp_path, "--config.seeds=1,2", "--config.episodes=4",
          cache=cache, data_dir=reference / "data")
  one = reports.load_results(tmp_path / "seed_1")
  two = reports.load_results(tmp_path / "seed_2")
  ref = reports.load_results(reference)["episodes"][:4]
  _assert_same_episodes(ref, one["episodes"])
  assert one["seed"] == 1 and two["seed"] == 2
  assert [e["accuracy"] for e in two["episodes"]] != [
      e["accuracy"] for e in one["episodes"]]
  seeds = json.loads((tmp_path / "seeds.json").read_text())
  assert "2 seeds" in (tmp_path / "summary.md").read_text()
  assert seeds["num_seeds"] == 2
