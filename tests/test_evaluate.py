"""Aggregation (jaxfsl.io.aggregate), reports (jaxfsl.io.reports) and
tools/summarize.py, on hand-made results: no JAX, no training."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _fake_results import fake_outputs, fake_results

from jaxfsl.io import aggregate, reports

REPO = Path(__file__).resolve().parents[1]


def test_mean_ci95_is_the_benchmark_formula():
  x = [20.0, 40.0, 60.0, 80.0]
  mean, ci = aggregate.mean_ci95(x)
  assert mean == pytest.approx(50.0)
  assert ci == pytest.approx(1.96 * np.std(x) / math.sqrt(4))
  # One value has no interval (null in results.json), not "± 0".
  assert aggregate.mean_ci95([42.0]) == (42.0, None)
  mean, ci = aggregate.mean_ci95([])
  assert math.isnan(mean) and ci is None


def test_records_and_summary():
  out = fake_outputs(6)
  records = aggregate.episode_records(out, [10, 11, 12, 13, 14, 15])
  assert [r["index"] for r in records] == list(range(10, 16))
  r = records[2]
  assert r["accuracy"] == r["stage_accuracies"][-1]
  assert r["accuracy"] == pytest.approx(100 * float(out["stages"]["accuracy"]
                                                    [2, -1]), abs=1e-4)
  # float32 noise removed.
  assert r["accuracy"] == round(r["accuracy"], 4)
  assert set(r["stages"]) == set(aggregate.STAGE_METRICS)
  assert len(r["losses"]["vlm"]) == 5

  s = aggregate.summarize(records)
  accs = [x["accuracy"] for x in records]
  assert s["num_episodes"] == 6
  assert s["accuracy_mean"] == pytest.approx(np.mean(accs))
  assert s["accuracy_ci95"] == pytest.approx(1.96 * np.std(accs) /
                                             math.sqrt(6))
  assert s["stage_accuracy_mean"][-1] == pytest.approx(s["accuracy_mean"])
  assert s["stage_means"]["modality_gap"] == pytest.approx(
      np.mean(out["stages"]["modality_gap"].astype(np.float64), 0))
  assert s["num_nonfinite"] == 0


def test_concat_take_dedupe():
  a, b = fake_outputs(2, 0), fake_outputs(3, 1)
  cat = aggregate.concat_outputs([a, b])
  assert cat["stages"]["accuracy"].shape == (5, 5)
  np.testing.assert_array_equal(cat["stages"]["accuracy"][2:],
                                b["stages"]["accuracy"])
  taken = aggregate.take_outputs(cat, np.array([True, False, True, False,
                                               False]))
  assert taken["zero_shot"]["accuracy"].shape == (2,)
  recs = [{"index": 3, "v": 0}, {"index": 1, "v": 1}, {"index": 3, "v": 2}]
  assert aggregate.dedupe(recs) == [{"index": 1, "v": 1}, {"index": 3, "v": 2}]


def test_progress_line():
  line = aggregate.progress_line(10, 40, [50.0, 60.0], 120.0)
  assert "episodes 10/40" in line and "55.00 ±" in line
  assert "120.0 episodes/h" in line and "ETA 0:15:00" in line
  assert "ETA ?" in aggregate.progress_line(1, 4, [50.0], None)


def test_one_episode_has_no_confidence_interval():
  """A 95% interval of one episode is undefined: no "± 0.00"."""
  line = aggregate.progress_line(1, 4, [8.0], None)
  assert "accuracy 8.00 % |" in line and "±" not in line, line
  assert (aggregate.format_over_episodes(8.0, 0.0, 1)
          == "8.00 % over 1 episode")
  assert (aggregate.format_over_episodes(8.0, 0.5, 2)
          == "8.00 ± 0.50 % over 2 episodes")
  assert aggregate.format_mean_ci(8.0, None) == "8.00"


def test_reports_are_consistent(tmp_path):
  results = fake_results(demo=True)
  reports.write_all(tmp_path, results)
  loaded = reports.load_results(tmp_path)
  # Exact round trip (the per-step losses go to step_losses.npz).
  assert loaded == json.loads(json.dumps(reports.json_results(results)))
  rows = reports.read_csv(tmp_path / "results.csv")
  assert [int(r["index"]) for r in rows] == list(range(12))
  for row, rec in zip(rows, loaded["episodes"], strict=True):
    assert row["accuracy"] == rec["accuracy"]
    assert row["modality_gap_s3"] == rec["stages"]["modality_gap"][2]
    assert row["loss_vlm_s5"] == rec["losses"]["vlm"][4]
  assert np.mean([r["accuracy"] for r in rows]) == pytest.approx(
      loaded["accuracy_mean"], abs=1e-9)
  md = (tmp_path / "summary.md").read_text()
  assert "| Method | EuroSAT |" in md
  assert aggregate.format_mean_ci(results["accuracy_mean"],
                                 results["accuracy_ci95"]) in md
  assert "PIPELINE" not in md and "pipeline check" in md
  for name in reports.PLOT_FILES:
    assert (tmp_path / "plots" / name).stat().st_size > 1000
  assert not list(tmp_path.glob(".*tmp*"))  # Atomic writes cleaned up.


def test_comparison_table_layout():
  runs = [fake_results(d, m, seed=i)
          for i, (d, m) in enumerate([
              ("chestx", "CLIP-LoRA"), ("eurosat", "CLIP-LoRA"),
              ("chestx", "CLIP-LoRA + SVL + RA"),
              ("eurosat", "CLIP-LoRA + SVL + RA")])]
  runs.append(fake_results("isic2018", "CLIP-LoRA", shot=5, complete=False))
  table = reports.comparison_table(runs)
  one_shot, five_shot = table.split("### 5-way 5-shot")
  # The paper's column order: EuroSAT before ChestX; average when complete.
  assert "| Method | EuroSAT | ChestX | Average |" in one_shot
  svl = next(line for line in one_shot.splitlines()
             if line.startswith("| CLIP-LoRA + SVL + RA"))
  avg = (runs[2]["accuracy_mean"] + runs[3]["accuracy_mean"]) / 2
  assert svl.endswith(f"| {avg:.2f} |")
  assert " *" in five_shot and "incomplete" in five_shot


def test_summarize_tool(tmp_path):
  for i, d in enumerate(["isic2018", "crop_disease"]):
    reports.write_all(tmp_path / f"run{i}", fake_results(d, seed=i))
  out = tmp_path / "table.md"
  proc = subprocess.run(
      [sys.executable, str(REPO / "tools" / "summarize.py"), str(tmp_path),
       "--out", str(out)], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "| Method | ISIC | CropDisease | Average |" in proc.stdout
  assert out.read_text() + "\n" == proc.stdout


def test_comparison_table_keeps_clashing_runs_apart():
  a, b = fake_results(seed=0), fake_results(seed=1)
  a["run"], b["run"] = {"workdir": "/x/run_a"}, {"workdir": "/x/run_b"}
  table = reports.comparison_table([a, b])
  assert "[run_a] |" in table and "[run_b] |" in table
