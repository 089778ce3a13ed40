"""tools/summarize.py on few-shot workdirs: the datasets x shots table (mean
over seeds), alone and beside episodic jobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _fake_results import fake_results

from jaxfsl.io import reports

REPO = Path(__file__).resolve().parents[1]


def _fewshot_job(path: Path, dataset: str, shot: int, seed: int,
                 accuracy: float) -> None:
  path.mkdir(parents=True)
  (path / "results.json").write_text(json.dumps({
      "protocol": "fewshot", "dataset": dataset, "shot": shot, "seed": seed,
      "variant": "none", "model": "clip-vit-b16", "test_accuracy": accuracy}))


def _summarize(*args):
  return subprocess.run(
      [sys.executable, str(REPO / "tools" / "summarize.py"), *map(str, args)],
      capture_output=True, text=True, timeout=120, check=False)


def test_fewshot_table_means_over_seeds(tmp_path):
  for seed, acc in ((1, 0.90), (2, 0.92), (3, 0.94)):
    _fewshot_job(tmp_path / f"caltech101_16shot_s{seed}", "caltech101", 16,
                 seed, acc)
  _fewshot_job(tmp_path / "eurosat_1shot_s1", "eurosat", 1, 1, 0.25)
  out = tmp_path / "table.md"
  proc = _summarize(tmp_path, "--out", out)
  assert proc.returncode == 0, proc.stderr
  assert "### clip-vit-b16, variant none" in proc.stdout
  assert "| dataset | 1-shot | 16-shot |" in proc.stdout
  assert "| caltech101 |  | 92.00 |" in proc.stdout
  assert "| eurosat | 25.00 (n=1) |  |" in proc.stdout
  assert proc.stdout == out.read_text() + "\n"


def test_fewshot_beside_episodic_jobs(tmp_path):
  episodic = fake_results()
  episodic["run"] = {"workdir": str(tmp_path / "episodic")}
  reports.write_json(tmp_path / "episodic" / "results.json",
                     reports.json_results(episodic))
  _fewshot_job(tmp_path / "fewshot", "oxford_pets", 4, 1, 0.5)
  proc = _summarize(tmp_path)
  assert proc.returncode == 0, proc.stderr
  episodic_rows = [ln for ln in proc.stdout.splitlines()
                   if ln.startswith("| CLIP-LoRA")]
  assert len(episodic_rows) == 1
  assert "| oxford_pets | 50.00 (n=1) |" in proc.stdout
  # The episodic table comes first, the few-shot one after it.
  assert proc.stdout.index("| CLIP-LoRA") < proc.stdout.index("oxford_pets")
