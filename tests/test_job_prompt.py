"""CoOp and MaPLe through the real job: ``python -m jaxfsl.main`` with the
tiny demo config of tests/test_main.py and ``--config.trainable=coop|maple``,
variants ``none`` and ``svl_ra``.

Each job runs in a subprocess (tests/test_main.py's ``run_job``): losses
fall, fine-tuning moves accuracy off zero-shot, the report rows are labelled
by trainable, ``episodes_per_batch`` 1 and 4 give the same episodes (to
tests/test_main.py's tolerance), and a job killed with SIGKILL from outside
(tests/test_resume.py's ``run_and_signal``: at an Orbax step folder of the
run state, or at a progress line) resumes to exactly the uninterrupted
run's results and saved prompts. A MaPLe depth beyond the model's blocks is
one ``ERROR:`` line before anything is written.
"""

import importlib.util
import signal
import subprocess
from pathlib import Path

import pytest

from jaxfsl.io import reports


def _load(name, file):
  # Loaded by path, as tests/test_resume.py loads test_main.py.
  spec = importlib.util.spec_from_file_location(
      name, Path(__file__).with_name(file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tm = _load("jaxfsl_tests_main", "test_main.py")
tr = _load("jaxfsl_tests_resume", "test_resume.py")

# Small learners so that 10 AdamW steps visibly move them: CoOp from 4
# random context vectors; MaPLe with deep prompts (depth 2 needs the 2-block
# vision tower, tiny-clip's own depth).
LEARNERS = {
    "coop": ("--config.trainable=coop", "--config.coop.n_ctx=4"),
    "maple": ("--config.trainable=maple", "--config.model.vision_depth=2",
              "--config.maple.depth=2"),
}
LABELS = {"coop": "CoOp", "maple": "MaPLe"}
CASES = [(n, v) for n in LEARNERS for v in ("none", "svl_ra")]


def flags(name, variant):
  return LEARNERS[name] + (f"--config.method.variant={variant}",)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
  """(name, variant) -> the workdir of its uninterrupted reference job
  (4 episodes per batch, prompts saved), run on first use."""
  root = tmp_path_factory.mktemp("prompt_jobs")
  cache = tm.xla_cache(tmp_path_factory)
  done = {}

  def get(name, variant):
    if (name, variant) not in done:
      work = root / f"{name}_{variant}"
      tm.run_job(work, *tm.REFERENCE, *flags(name, variant), cache=cache,
                 data_dir=root / "data")
      done[name, variant] = work
    return done[name, variant]

  get.cache = cache
  get.data = root / "data"
  return get


@pytest.mark.parametrize("name,variant", CASES)
def test_prompt_job_trains(jobs, name, variant):
  work = jobs(name, variant)
  results = reports.load_results(work)
  episodes = results["episodes"]
  assert results["complete"] and results["num_episodes"] == tm.EPISODES
  assert results["trainable"] == name
  # CoOp leaves the image features fixed: its SVL is inert and not claimed.
  svl_ra = " + RA (SVL inert)" if name == "coop" else " + SVL + RA"
  assert results["method"] == LABELS[name] + (
      svl_ra if variant == "svl_ra" else "")
  assert results["inert_terms"] == (
      ["anti_visual"] if (name, variant) == ("coop", "svl_ra") else [])
  assert results["config"]["trainable"] == name
  # The cross-modal loss falls, in the mean and in every episode.
  vlm = results["loss_means"]["vlm"]
  assert vlm[-1] < vlm[0], vlm
  assert all(e["losses"]["vlm"][-1] < e["losses"]["vlm"][0]
             for e in episodes)
  # The prompts change predictions.
  assert any(e["accuracy"] != e["zero_shot_accuracy"] for e in episodes)
  log = (work / "log.txt").read_text()
  skipped = "the SVL term has no gradient and is skipped"
  if variant == "svl_ra":
    # RA reaches both learners (CoOp through the text relation A_t); SVL
    # only MaPLe, whose vision prompts move the image features.
    # (The release's KL on raw cosines may be negative.) The terms act in
    # the first 0.6 T only.
    relation = results["loss_means"]["relation"]
    assert all(v != 0 for v in relation[:3]) and relation[3:] == [0.0, 0.0]
    svl = results["loss_means"]["anti_visual"][:3]
    if name == "coop":
      assert svl == [0.0, 0.0, 0.0] and skipped in log
    else:
      assert all(v > 0 for v in svl) and skipped not in log
  else:
    assert set(results["loss_means"]) >= {"vlm"}
    assert skipped not in log


# Each job compiles its own programs (tens of seconds on a small CPU): the
# batch-size and kill checks each cover both learners and both variants
# once between them (tests/test_prompt_engine.py checks batch 1 vs 4 in the
# engine for all four).
@pytest.mark.parametrize("name,variant", [("coop", "none"),
                                          ("maple", "svl_ra")])
def test_prompt_job_episodes_per_batch_does_not_change_results(
    jobs, name, variant, tmp_path):
  ref = jobs(name, variant)
  tm.run_job(tmp_path, "--config.episodes_per_batch=1",
             *flags(name, variant), cache=jobs.cache, data_dir=jobs.data)
  tm._assert_same_episodes(reports.load_results(ref)["episodes"],
                           reports.load_results(tmp_path)["episodes"])


def _state_step_appeared(work, step):
  # An Orbax step folder of the run state, temporary or final.
  folder = work / "state"
  return folder.is_dir() and any(
      p.name.split(".")[0] == str(step) for p in folder.iterdir())


@pytest.mark.parametrize("name,variant,when", [
    ("coop", "svl_ra", "progress_line"), ("maple", "none", "state_folder")])
def test_prompt_job_killed_resumes_to_identical_results(jobs, name, variant,
                                                        when, tmp_path):
  ref = jobs(name, variant)
  work = tmp_path / "killed"
  extra = flags(name, variant)
  if when == "state_folder":
    trigger = dict(ready=lambda: _state_step_appeared(work, tr.PER_BATCH))
  else:
    trigger = dict(line=f"episodes {tr.PER_BATCH}/{tm.EPISODES} |")
  rc, log, sent = tr.run_and_signal(work, cache=jobs.cache, data=jobs.data,
                                    flags=extra, **trigger)
  assert sent and rc == -signal.SIGKILL, (rc, log[-3000:])
  assert not (work / "results.json").exists()
  done = (tr.saved_steps(work, "state") or [0])[-1]
  assert done in (0, tr.PER_BATCH), done
  proc = tm.run_job(work, *tm.REFERENCE, *extra, cache=jobs.cache,
                    data_dir=jobs.data)
  if done:
    assert f"Resuming: {done} episode(s) already done" in proc.stderr
  tr.assert_same_as_reference(work, ref, [(name, variant, when, done)])


def test_maple_deeper_than_the_model_is_one_error_line(tmp_path):
  """The demo model has 2 blocks per tower; MaPLe's default depth is 9."""
  work = tmp_path / "work"
  args, env = tm.job_command(work, "--config.trainable=maple", cache="off")
  # Only the demo config and the flag: the depth check needs no data.
  args = [a for a in args if not a.startswith("--config.model.vision_depth")]
  proc = subprocess.run(args, capture_output=True, text=True, timeout=200,
                        cwd=tm.REPO, env=env)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [x for x in proc.stderr.splitlines() if x.startswith("ERROR:")]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert "maple.depth=9" in errors[0] and "2" in errors[0], errors
  assert "Traceback" not in proc.stderr
  assert not work.exists()
