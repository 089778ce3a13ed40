"""The few-shot job end to end on generated data: learns, beats zero-shot,
writes its files, resumes after SIGKILL or SIGTERM to identical results,
keeps a finished job's results, and reports a config clash in one line."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxfsl.configs.fewshot import common, demo
from jaxfsl.data.fewshot import builders
from jaxfsl.data.fewshot import split as fsplit
from jaxfsl.protocols.episodic.config import ResumeError
from jaxfsl.protocols.fewshot import runner

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 24, 6


def job_config():
  config = demo.get_config()
  config.steps = STEPS
  config.fewshot.checkpoint_every = EVERY
  config.fewshot.log_every = EVERY
  return config


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("fewshot_ref")
  return workdir, runner.run(job_config(), workdir)


def test_configs_cover_the_eleven_datasets():
  from jaxfsl.data.fewshot import layouts

  for name in layouts.NAMES:
    module = __import__(f"jaxfsl.configs.fewshot.{name}",
                        fromlist=["get_config"])
    config = module.get_config()
    assert config.dataset.name == name and config.protocol == "fewshot"
  config = common.get_config()
  assert runner.total_steps(config) == 500 * 16
  config.shot = 4
  assert runner.total_steps(config) == 2000
  config.steps = 7
  assert runner.total_steps(config) == 7
  tcfg = runner.trainer_config(common.get_config())
  assert (tcfg.lora.rank, tcfg.lora.alpha, tcfg.lora.towers) == (2, 1.0,
                                                                 "both")
  assert (tcfg.batch_size, tcfg.optim.lr,
          tcfg.optim.weight_decay) == (32, 2e-4, 1e-2)
  assert tcfg.variant == "none" and tcfg.logit_scale == 100.0
  bad = common.get_config()
  bad.method.variant = "visual"
  with pytest.raises(ValueError, match="none, svl, ra, svl_ra"):
    runner.trainer_config(bad)


def test_job_learns_and_writes_its_files(reference):
  workdir, results = reference
  assert results["steps"] == STEPS and results["resumed_from"] == 0
  vlm = np.asarray(results["losses"]["vlm"])
  assert vlm[-EVERY:].mean() < 0.7 * vlm[:EVERY].mean(), vlm
  assert results["test_accuracy"] > results["zero_shot_accuracy"] + 0.1
  on_disk = json.loads((workdir / "results.json").read_text())
  assert on_disk["test_accuracy"] == results["test_accuracy"]
  assert "not a result" in (workdir / "summary.md").read_text()
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  # The split file is CLIP-LoRA's K-shot draw on the prepared dataset.
  ds = builders.load_fewshot("caltech101", workdir / "data")
  expected = fsplit.fewshot_split(
      {"train": ds.items("train"), "val": ds.items("val")}, 4, 1)
  assert fsplit.read_split(workdir / "fewshot_split.json") == expected
  assert len(expected["train"]) == 4 * 4 and len(expected["val"]) == 4 * 4
  # The generated val split has 2 images per class for min(K, 4) = 4 shots:
  # sampled with replacement, recorded in results.json and summary.md.
  short = on_disk["undersampled_classes"]
  assert [(s["split"], s["images"], s["shots"]) for s in short] == [
      ("val", 2, 4)] * 4
  assert all(1 <= s["unique"] <= 2 for s in short)
  assert "sampled with replacement" in (workdir / "summary.md").read_text()


KILLED_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_fewshot_runner import job_config
from jaxfsl.protocols.fewshot import runner
runner.run(job_config(), {workdir!r})
"""


def test_resume_after_sigkill_is_identical(reference, tmp_path):
  ref_dir, ref = reference
  workdir = tmp_path / "job"
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  env["JAXFSL_FEWSHOT_TEST_STEP_SLEEP"] = "0.5"
  script = KILLED_SCRIPT.format(tests=str(ROOT / "tests"),
                                workdir=str(workdir))
  proc = subprocess.Popen([sys.executable, "-c", script], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  first = workdir / "checkpoints" / str(EVERY)
  deadline = time.time() + 900
  try:
    while not first.is_dir() and proc.poll() is None:
      assert time.time() < deadline, "no checkpoint appeared"
      time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (workdir / "results.json").exists()
  resumed = runner.run(job_config(), workdir)
  assert 0 < resumed["resumed_from"] < STEPS
  for term, values in ref["losses"].items():
    assert resumed["losses"][term] == values, term
  assert resumed["test_accuracy"] == ref["test_accuracy"]
  assert (workdir / "fewshot_split.json").read_text() == (
      ref_dir / "fewshot_split.json").read_text()


# job_config() as ``python -m jaxfsl.main`` flags.
JOB_FLAGS = ("--config", str(ROOT / "configs" / "fewshot" / "demo.py"),
             f"--config.steps={STEPS}",
             f"--config.fewshot.checkpoint_every={EVERY}",
             f"--config.fewshot.log_every={EVERY}")


def main_env(step_sleep=0.0):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  if step_sleep:
    env["JAXFSL_FEWSHOT_TEST_STEP_SLEEP"] = str(step_sleep)
  return env


def run_main(workdir, *flags, timeout=900):
  return subprocess.run(
      [sys.executable, "-m", "jaxfsl.main", *JOB_FLAGS,
       f"--workdir={workdir}", *flags], capture_output=True, text=True,
      env=main_env(), cwd=ROOT, timeout=timeout)


def test_rerun_of_finished_job_computes_nothing(reference):
  workdir, results = reference
  before = {n: (workdir / n).read_bytes()
            for n in ("results.json", "summary.md")}
  again = runner.run(job_config(), workdir)
  assert again == json.loads(before["results.json"])
  for name, content in before.items():
    assert (workdir / name).read_bytes() == content, name


def test_sigterm_saves_and_rerun_finishes_identically(reference, tmp_path):
  ref_dir, ref = reference
  workdir = tmp_path / "job"
  proc = subprocess.Popen(
      [sys.executable, "-m", "jaxfsl.main", *JOB_FLAGS,
       f"--workdir={workdir}"], env=main_env(step_sleep=0.5), cwd=ROOT,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  seen = []
  try:
    # The progress line of the first checkpoint (logged, on stderr).
    for line in proc.stderr:
      seen.append(line)
      if f"iteration {EVERY}/{STEPS}" in line:
        proc.send_signal(signal.SIGTERM)
        break
    seen += proc.stderr.readlines()
    proc.wait(timeout=600)
  finally:
    if proc.poll() is None:
      proc.kill()
  err = "".join(seen)
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  stopped = re.search(rf"Interrupted after (\d+)/{STEPS} iterations; rerun "
                      r"the same command to resume\.", err)
  assert stopped and "Traceback" not in err, err[-3000:]
  done = int(stopped.group(1))
  assert EVERY <= done < STEPS
  # Saved where it stopped, completely (no Orbax tmp folder left).
  assert (workdir / "checkpoints" / str(done)).is_dir()
  assert not list((workdir / "checkpoints").glob("*tmp*"))
  assert not (workdir / "results.json").exists()

  rerun = run_main(workdir)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  got = json.loads((workdir / "results.json").read_text())
  assert got["resumed_from"] == done
  assert got["losses"] == ref["losses"]
  assert got["test_accuracy"] == ref["test_accuracy"]
  assert got["zero_shot_accuracy"] == ref["zero_shot_accuracy"]
  # Progress and results are in log.txt, not only on the console.
  log = (workdir / "log.txt").read_text()
  for text in (f"iteration {STEPS}/{STEPS}", "ETA", "zero-shot top-1",
               "test top-1", "PIPELINE CHECK ONLY", stopped.group(0)):
    assert text in log, text

  # Once more: finished, so nothing is computed and results.json stays.
  before = (workdir / "results.json").read_bytes()
  third = run_main(workdir)
  assert third.returncode == 0, third.stderr[-3000:]
  assert "already done" in third.stderr
  assert "test top-1" not in third.stderr
  assert (workdir / "results.json").read_bytes() == before


def test_changed_config_is_one_error_line(tmp_path):
  runner.check_resumable(job_config(), tmp_path)
  (tmp_path / "checkpoints").mkdir()
  proc = run_main(tmp_path, "--config.steps=20", timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  errors = [x for x in proc.stderr.splitlines() if x.startswith("ERROR:")]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert f"steps: {STEPS} -> 20" in errors[0]
  assert "pass --restart (config.restart=True)" in errors[0]


def test_resuming_with_another_config_is_refused(tmp_path):
  config = job_config()
  runner.check_resumable(config, tmp_path)
  (tmp_path / "checkpoints").mkdir()
  config.fewshot.log_every = 1  # Free to change.
  runner.check_resumable(config, tmp_path)
  config.shot = 8
  config.method.variant = "svl"
  with pytest.raises(ResumeError) as e:
    runner.check_resumable(config, tmp_path)
  assert "method.variant: 'none' -> 'svl'" in str(e.value)
  assert "shot: 4 -> 8" in str(e.value) and "restart" in str(e.value)


def test_missing_checkpoint_writes_nothing(tmp_path):
  """A nonexistent model.checkpoint is refused before the job writes
  anything (fewshot_config.json, raw/, data/): the workdir is as found."""
  (tmp_path / "notes.txt").write_text("mine")
  config = job_config()
  config.model.checkpoint, config.model.init = str(tmp_path / "none"), ""
  with pytest.raises(FileNotFoundError, match="model.checkpoint") as e:
    runner.run(config, tmp_path)
  # The no-download hint names this protocol's demo config.
  assert "--config configs/fewshot/demo.py" in str(e.value)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
  with pytest.raises(FileNotFoundError, match="model.checkpoint"):
    runner.run(config, tmp_path / "new")
  assert not (tmp_path / "new").exists()


def test_validate_lists_every_bad_key():
  config = job_config()
  runner.validate(config)
  config.shot = 0
  config.dataset.name = "mnist"
  config.fewshot.batch_size = 0
  with pytest.raises(ValueError) as e:
    runner.validate(config)
  msg = str(e.value)
  assert "shot=0" in msg and "dataset.name='mnist'" in msg
  assert "fewshot.batch_size=0" in msg


def test_episodic_optimisers_refused_not_ignored():
  config = job_config()
  config.optim.name = "sgd"
  config.optim.warmup_steps = 5
  with pytest.raises(ValueError) as e:
    runner.validate(config)
  assert "optim.name='sgd'" in str(e.value)
  assert "optim.warmup_steps=5" in str(e.value)


def test_renamed_keys_refused_and_old_workdirs_resume(tmp_path):
  config = job_config()
  config.method.stage1_fraction = 0.5  # An old config file.
  with pytest.raises(ValueError, match="'method.stage1_fraction' was "
                     "renamed to 'method.window_fraction'"):
    runner.validate(config)
  # A run recorded under the old name resumes under the new one.
  config = job_config()
  saved = json.loads(config.to_json())
  saved["method"]["stage1_fraction"] = saved["method"].pop("window_fraction")
  (tmp_path / "fewshot_config.json").write_text(json.dumps(saved))
  (tmp_path / "checkpoints").mkdir()
  runner.check_resumable(config, tmp_path)
  saved["method"]["stage1_fraction"] = 0.4
  (tmp_path / "fewshot_config.json").write_text(json.dumps(saved))
  with pytest.raises(ResumeError,
                     match="method.window_fraction: 0.4 -> 0.6"):
    runner.check_resumable(config, tmp_path)


def test_table_means_over_seeds(tmp_path):
  from jaxfsl.protocols.fewshot.table import fewshot_table, find_results

  def write(name, dataset, shot, seed, acc):
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps({
        "protocol": "fewshot", "dataset": dataset, "shot": shot,
        "seed": seed, "variant": "none", "model": "m",
        "test_accuracy": acc}))

  for seed, acc in ((1, 0.90), (2, 0.92), (3, 0.94)):
    write(f"c{seed}", "caltech101", 16, seed, acc)
  write("e1", "eurosat", 16, 1, 0.5)
  write("e2", "eurosat", 1, 1, 0.25)
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "results.json").write_text('{"protocol": "x"}')
  results = find_results(tmp_path)
  assert len(results) == 5
  table = fewshot_table(results, reference={"caltech101": {16: 93.7}})
  assert "| dataset | 1-shot | 16-shot |" in table
  assert "| caltech101 |  | 92.00 (93.7) |" in table
  assert "| eurosat | 25.00 (n=1) | 50.00 (n=1) |" in table
  assert "| Average |  | 71.00 |" in table
  assert fewshot_table([]) == "No few-shot results found."
