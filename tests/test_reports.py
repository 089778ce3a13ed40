"""Reports (jaxfsl.io.reports, markdown, plots, metric_writer) and
tools/summarize.py on hand-made results: what the files say, not pixels.
No JAX, no training."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from _fake_results import fake_results, legacy_results

from jaxfsl.io import aggregate, markdown, metric_writer, plots, reports

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def loss_table(md):
  """{row label: [floats]} of summary.md's loss-term table."""
  lines = md.split("## Loss terms")[1].splitlines()
  rows = {}
  for line in lines[4:]:
    if not line.startswith("| "):
      break
    cells = [c.strip() for c in line.strip("|").split("|")]
    rows[cells[0]] = [float(c) for c in cells[1:]]
  return rows


# ---------------------------------------------------------------------------
# summary.md
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["svl_ra", "svl", "ra", "visual"])
def test_summary_loss_parts_sum_to_total(variant):
  r = fake_results(variant=variant)
  rows = loss_table(markdown.summary_markdown(r))
  parts = [v for k, v in rows.items() if k != "total"]
  assert len(parts) >= 2
  for k, total in enumerate(rows["total"]):
    # Four decimals per cell: at most 0.5e-4 rounding per row.
    assert sum(p[k] for p in parts) == pytest.approx(
        total, abs=0.5e-4 * (len(parts) + 1))
  assert "so the parts sum to `total`" in markdown.summary_markdown(r)


def test_summary_has_no_rows_for_terms_not_in_the_loss():
  md = markdown.summary_markdown(fake_results(variant="none", method="FT"))
  assert list(loss_table(md)) == ["L_vlm", "total"]
  assert "L_ra" not in md and "w_v" not in md and "KL" not in md
  # Older runs logged a zero `visual` row for every variant: not shown.
  md = markdown.summary_markdown(legacy_results())
  assert "w_v * L_v" not in loss_table(md)
  assert "RA: w_ra * L_ra" in loss_table(md)


def test_summary_flags_unweighted_parts_of_older_runs():
  md = markdown.summary_markdown(legacy_results())
  assert "do not sum to `total`" in md
  assert "so the parts sum" not in md


def test_summary_explains_negative_relation_term():
  r = fake_results(variant="ra")
  assert min(r["loss_means"]["relation"]) < 0  # The fake's RA goes below 0.
  md = markdown.summary_markdown(r)
  assert "can be negative" in md and "raw cosine" in md
  assert "no step-0 value" in md


def test_summary_labels_segments_by_steps_and_window():
  md = markdown.summary_markdown(fake_results(steps=22))
  # The release's integer rules at T = 22: evaluations after 4, 8, 12, 16,
  # 22; extra terms in steps 1-12.
  assert "| term | steps 1-4 | steps 5-8 | steps 9-12 | steps 13-16 | " \
         "steps 17-22 |" in md
  assert "1/5 T (step 4)" in md and "T (step 22)" in md
  assert "active in steps 1-12" in md


def test_schedule_fallback_for_results_without_it():
  r = legacy_results(steps=22)
  assert "eval_steps" not in r and "window" not in r
  assert aggregate.evaluation_steps(r) == [4, 8, 12, 16, 22]
  assert aggregate.extra_terms_window(r) == (0, 12)
  r["config"]["method"]["timing"] = "last"
  assert aggregate.extra_terms_window(r) == (10, 22)
  r["variant"] = "none"
  assert aggregate.extra_terms_window(r) is None
  assert aggregate.evaluation_steps({"steps": 0}) == []


# ---------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------


def _axes_of(fig):
  return [a for a in fig.axes if a.get_visible()]


def _legend_texts(ax):
  legend = ax.get_legend()
  return [t.get_text() for t in legend.get_texts()] if legend else []


def _vertical_lines(ax):
  return [line.get_xdata()[0] for line in ax.get_lines()
          if len(set(np.asarray(line.get_xdata(), float))) == 1
          and len(line.get_xdata()) == 2]


def test_plots_label_every_axis():
  r = fake_results()
  builders = [plots.accuracy_figure, plots.analysis_figure,
              plots.gradient_figure, plots.distribution_figure,
              plots.losses_figure]
  for build in builders:
    fig = build(r)
    try:
      for ax in _axes_of(fig):
        assert ax.get_xlabel(), (build.__name__, ax.get_title())
        assert ax.get_ylabel(), (build.__name__, ax.get_title())
    finally:
      plt.close(fig)


def test_plots_label_error_bars_and_bands_as_95_ci():
  r = fake_results()
  fig = plots.accuracy_figure(r)
  try:
    (ax,) = _axes_of(fig)
    texts = _legend_texts(ax)
    assert any("95% CI" in t and f"n={r['num_episodes']}" in t
               for t in texts), texts
  finally:
    plt.close(fig)
  fig = plots.losses_figure(r)
  try:
    axes = _axes_of(fig)
    assert [a.get_title() for a in axes] == [
        "L_vlm", "SVL: w_ad * L_ad", "RA: w_ra * L_ra", "total"]
    assert any("95% CI" in t for t in _legend_texts(axes[0]))
    for ax in axes:
      (band,) = ax.collections
      assert band.get_label() == plots.CI_LABEL
      (line,) = [ln for ln in ax.get_lines()
                 if ln.get_label() == "mean over episodes"]
      assert len(line.get_xdata()) == r["steps"]  # One point per step.
  finally:
    plt.close(fig)


@pytest.mark.parametrize("timing,expected", [("begin", [12]),
                                             ("last", [10])])
def test_plots_mark_where_extra_terms_switch(timing, expected):
  r = fake_results(steps=22, timing=timing)
  fig = plots.accuracy_figure(r)
  try:
    (ax,) = _axes_of(fig)
    assert _vertical_lines(ax) == expected
    assert any("extra terms" in t for t in _legend_texts(ax))
  finally:
    plt.close(fig)
  fig = plots.losses_figure(r)
  try:  # Between the last step with the terms and the first without.
    assert _vertical_lines(_axes_of(fig)[0]) == [expected[0] + 0.5]
  finally:
    plt.close(fig)
  fig = plots.accuracy_figure(fake_results(variant="none", method="FT"))
  try:
    assert _vertical_lines(_axes_of(fig)[0]) == []
  finally:
    plt.close(fig)


def test_plots_do_not_exaggerate_small_changes():
  r = fake_results()
  # A 0.3-point change over training.
  r["zero_shot_accuracy_mean"], r["zero_shot_accuracy_ci95"] = 50.0, 0.05
  r["stage_accuracy_mean"] = [50.1, 50.2, 50.3, 50.3, 50.3]
  r["stage_accuracy_ci95"] = [0.05] * 5
  r["stage_means"]["modality_gap"] = [0.81, 0.811, 0.812, 0.812, 0.812]
  r["zero_shot_means"]["modality_gap"] = 0.81
  fig = plots.accuracy_figure(r)
  try:
    lo, hi = _axes_of(fig)[0].get_ylim()
    assert hi - lo >= plots.ACCURACY_MIN_SPAN and 0 <= lo and hi <= 100
  finally:
    plt.close(fig)
  fig = plots.analysis_figure(r)
  try:
    lo, hi = _axes_of(fig)[0].get_ylim()
    assert hi - lo >= plots.COSINE_MIN_SPAN - 1e-12
  finally:
    plt.close(fig)
  # Near the top of the scale the span stays inside [0, 100].
  r["stage_accuracy_mean"] = [99.0, 99.5, 99.9, 99.9, 99.9]
  fig = plots.accuracy_figure(r)
  try:
    lo, hi = _axes_of(fig)[0].get_ylim()
    assert hi == 100.0 and hi - lo >= plots.ACCURACY_MIN_SPAN
  finally:
    plt.close(fig)


def test_plots_of_older_results_without_step_losses(tmp_path):
  r = legacy_results()
  written = plots.write_plots(tmp_path, r)
  assert [p.name for p in written] == list(plots.PLOT_FILES)
  fig = plots.losses_figure(r)
  try:
    texts = _legend_texts(_axes_of(fig)[0])
    assert any("no per-step losses" in t for t in texts)
  finally:
    plt.close(fig)


# ---------------------------------------------------------------------------
# TensorBoard.
# ---------------------------------------------------------------------------


def read_scalars(logdir):
  """{tag: [(step, value)]} from the event files: the TFRecord framing
  (uint64 length, uint32 CRC, payload, uint32 CRC) with tensorboardX's
  Event proto (neither TensorFlow nor tensorboard is installed)."""
  from tensorboardX.proto import event_pb2

  scalars = {}
  for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
  return scalars


def test_tensorboard_has_per_step_loss_scalars(tmp_path):
  r = fake_results(steps=22)
  with metric_writer.TensorBoard(tmp_path, enabled=True) as tb:
    tb.batch({"records": r["episodes"][:2], "done": 2, "rate": 10.0},
             [e["accuracy"] for e in r["episodes"][:2]])
    tb.final(r)
  scalars = read_scalars(tmp_path)
  for term in ("vlm", "anti_visual", "relation", "total"):
    got = scalars[f"loss/{term}"]
    assert [s for s, _ in got] == list(range(1, 23))
    np.testing.assert_allclose([v for _, v in got],
                               r["step_loss_mean"][term], rtol=1e-6,
                               atol=1e-7)
  # Accuracies at the evaluation steps (0 = zero-shot).
  assert [s for s, _ in scalars["final/accuracy"]] == [0, 4, 8, 12, 16, 22]
  assert scalars["running/accuracy_mean"][0][0] == 2
  assert {s for s, _ in scalars["episode/accuracy"]} == {0, 1}


def test_tensorboard_segment_losses_for_older_results(tmp_path):
  r = legacy_results(steps=22)
  with metric_writer.TensorBoard(tmp_path, enabled=True) as tb:
    tb.final(r)
  scalars = read_scalars(tmp_path)
  assert not any(t.startswith("loss/") for t in scalars)
  assert [s for s, _ in scalars["segment_loss/total"]] == [4, 8, 12, 16, 22]


def test_tensorboard_writes_nothing_off_the_main_process(tmp_path):
  tb = metric_writer.TensorBoard(tmp_path / "tb", enabled=False)
  tb.batch({"records": [], "done": 0}, [])
  tb.final(fake_results())
  tb.close()
  assert not (tmp_path / "tb").exists()
  assert metric_writer.is_main_process()  # A single process.


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------


@pytest.fixture
def no_plots(monkeypatch):
  """write_all without the PNGs (seconds each on a busy CPU), for tests of
  the other files."""
  monkeypatch.setattr(reports, "write_plots", lambda *args: [])


def test_per_step_losses_go_to_npz_not_json(tmp_path, no_plots):
  r = fake_results(n=5, steps=22)
  reports.write_all(tmp_path, r)
  loaded = reports.load_results(tmp_path)
  assert all("step_losses" not in e for e in loaded["episodes"])
  assert len(loaded["step_loss_mean"]["total"]) == 22
  arrays = reports.load_step_losses(tmp_path)
  np.testing.assert_array_equal(arrays["index"], np.arange(5))
  assert arrays["relation"].shape == (5, 22)
  assert arrays["relation"].dtype == np.float32
  np.testing.assert_array_equal(arrays["total"][3],
                                r["episodes"][3]["step_losses"]["total"])
  np.testing.assert_allclose(arrays["total"].mean(0),
                             loaded["step_loss_mean"]["total"], rtol=1e-6)
  # A rewrite without per-step losses removes the stale file.
  reports.write_all(tmp_path, legacy_results(n=5))
  assert not (tmp_path / reports.STEP_LOSSES_FILE).exists()


def test_rerun_of_finished_job_keeps_wall_time(tmp_path, no_plots):
  r = fake_results(n=4)
  r["run"] = {"wall_seconds_this_process": 3600.0, "devices": 1}
  reports.write_all(tmp_path, r)
  rerun = dict(r, run={"wall_seconds_this_process": 2.5, "devices": 1})
  written = reports.write_all(tmp_path, rerun, keep_existing_wall_time=True)
  run = reports.load_results(tmp_path)["run"]
  assert run["wall_seconds_this_process"] == 3600.0
  assert run["wall_seconds_rerun"] == 2.5
  assert written["run"] == run
  # New episodes: the time is this run's.
  more = fake_results(n=6)
  more["run"] = {"wall_seconds_this_process": 60.0}
  reports.write_all(tmp_path, more, keep_existing_wall_time=True)
  assert reports.load_results(tmp_path)["run"] == {
      "wall_seconds_this_process": 60.0}
  # Without the switch the file is simply rewritten.
  reports.write_all(tmp_path, rerun)
  assert reports.load_results(tmp_path)["run"]["wall_seconds_this_process"] \
      == 2.5


# ---------------------------------------------------------------------------
# Tables over jobs and tools/summarize.py.
# ---------------------------------------------------------------------------


def _config(**kw):
  cfg = {"seed": 1, "trainable": "lora", "lora": {"rank": 16},
         "dataset": {"name": "x", "data_dir": "/d"},
         "method": {"variant": "svl_ra", "timing": "begin"}}
  for k, v in kw.items():
    if "." in k:
      a, b = k.split(".")
      cfg[a] = dict(cfg[a], **{b: v})
    else:
      cfg[k] = v
  return cfg


def test_row_labels_show_the_settings_that_differ():
  runs = [fake_results("eurosat", steps=20, config=_config()),
          fake_results("eurosat", steps=40, config=_config()),
          fake_results("eurosat", steps=20, config=_config(**{
              "lora.rank": 4})),
          fake_results("eurosat", steps=20, run_seed=2,
                       config=_config(seed=2))]
  labels = markdown.row_labels(runs)
  assert len(set(labels)) == 4, labels
  assert labels[1].startswith("CLIP-LoRA + SVL + RA (")
  assert "steps=40" in labels[1] and "steps=20" in labels[0]
  assert "lora.rank=4" in labels[2] and "seed=2" in labels[3]
  # Paths and settings that differ only between datasets (T from each
  # dataset's epochs) do not split a method's row.
  runs = [fake_results("eurosat", steps=250, config=_config(**{
              "dataset.data_dir": "/a"})),
          fake_results("chestx", steps=500, config=_config(**{
              "dataset.data_dir": "/b"}))]
  assert markdown.row_labels(runs) == ["CLIP-LoRA + SVL + RA"] * 2


def test_row_labels_name_a_random_init_model_once():
  # "model=random-init tiny-clip" already names the preset: the label did
  # not need "model.init=tiny-clip" after it. model.init_seed still shows.
  def run(init, init_seed=0):
    return fake_results("eurosat", model=f"random-init {init}",
                        config=_config(model={"init": init,
                                              "init_seed": init_seed}))
  labels = markdown.row_labels([run("tiny-clip"), run("pe-core-tiny")])
  assert labels == [
      "CLIP-LoRA + SVL + RA (model=random-init tiny-clip)",
      "CLIP-LoRA + SVL + RA (model=random-init pe-core-tiny)"], labels
  labels = markdown.row_labels([run("tiny-clip"), run("tiny-clip", 3)])
  assert labels == ["CLIP-LoRA + SVL + RA (model.init_seed=0)",
                    "CLIP-LoRA + SVL + RA (model.init_seed=3)"], labels


def test_comparison_table_shows_episode_count():
  r = fake_results("eurosat", n=7)
  table = reports.comparison_table([r])
  cell = aggregate.format_mean_ci(r["accuracy_mean"], r["accuracy_ci95"])
  assert f"{cell} (n=7)" in table


def test_over_seeds_is_the_mean_of_seed_means():
  runs = [fake_results(seed=s, run_seed=s) for s in (3, 1, 2)]
  g = aggregate.over_seeds(runs)
  assert g["seeds"] == [1, 2, 3]
  assert g["accuracy_mean"] == pytest.approx(
      np.mean([r["accuracy_mean"] for r in runs]))
  assert g["num_episodes"] == 36
  assert [p["accuracy_ci95"] for p in g["per_seed"]] == [
      runs[1]["accuracy_ci95"], runs[2]["accuracy_ci95"],
      runs[0]["accuracy_ci95"]]
  # The spread over independent runs: the sample std (ddof=1), so named.
  means = [r["accuracy_mean"] for r in runs]
  assert np.std(means, ddof=1) != pytest.approx(np.std(means))
  assert g["accuracy_std_over_seeds"] == pytest.approx(np.std(means, ddof=1))
  table = markdown.seeds_table(markdown.seed_group(runs))
  assert f"(sample std {np.std(means, ddof=1):.2f})" in table
  one = aggregate.over_seeds(runs[:1])
  assert one["accuracy_std_over_seeds"] is None
  assert "std" not in markdown.seeds_table(markdown.seed_group(runs[:1]))


def test_over_seeds_lists_every_mismatch():
  a = fake_results(run_seed=1)
  b = fake_results(run_seed=1, steps=40, model="other")
  with pytest.raises(ValueError) as e:
    aggregate.over_seeds([a, b])
  msg = str(e.value)
  assert "steps: 22, 40" in msg and "model:" in msg and "seed repeated" in msg


def _write_job(path, **kwargs):
  r = fake_results(**kwargs)
  r["run"] = {"workdir": str(path)}
  reports.write_json(path / "results.json", reports.json_results(r))
  return r


def _summarize(*args):
  return subprocess.run(
      [sys.executable, str(REPO / "tools" / "summarize.py"), *map(str, args)],
      capture_output=True, text=True, timeout=120)


def test_summarize_tool_labels_differing_configs_and_shows_n(tmp_path):
  a = _write_job(tmp_path / "a", steps=20, n=6, config=_config())
  b = _write_job(tmp_path / "b", steps=40, n=9, config=_config(**{
      "method.timing": "last"}))
  proc = _summarize(tmp_path)
  assert proc.returncode == 0, proc.stderr
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| CLIP")]
  assert len(lines) == 2
  assert "steps=20" in lines[0] and "method.timing=begin" in lines[0]
  assert "steps=40" in lines[1] and "method.timing=last" in lines[1]
  for line, r in zip(lines, (a, b), strict=True):
    assert f"(n={r['num_episodes']})" in line


def test_summarize_tool_groups_seeds(tmp_path):
  job = tmp_path / "job"
  runs = [_write_job(job / f"seed_{s}", seed=s, run_seed=s,
                     config=_config(seed=s)) for s in (1, 2, 3)]
  other = _write_job(tmp_path / "single", dataset="chestx")
  for args in ([job], [tmp_path], list(sorted(job.glob("seed_*")))):
    proc = _summarize(*args)
    assert proc.returncode == 0, proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| CLIP")]
    mean = np.mean([r["accuracy_mean"] for r in runs])
    assert f"{mean:.2f} (3 seeds)" in rows[0], proc.stdout
    assert "per seed" in proc.stdout
    for s, r in zip((1, 2, 3), runs, strict=True):
      cell = aggregate.format_mean_ci(r["accuracy_mean"], r["accuracy_ci95"])
      assert f"| {s} | {cell} |" in proc.stdout
  proc = _summarize(tmp_path)
  assert aggregate.format_mean_ci(other["accuracy_mean"],
                                  other["accuracy_ci95"]) in proc.stdout


def test_summarize_tool_rejects_seed_folders_of_different_jobs(tmp_path):
  _write_job(tmp_path / "job" / "seed_1", run_seed=1)
  _write_job(tmp_path / "job" / "seed_2", run_seed=2, steps=40)
  proc = _summarize(tmp_path / "job")
  assert proc.returncode == 1
  assert "ERROR:" in proc.stderr and "steps: 22, 40" in proc.stderr
  assert "job" in proc.stderr



def test_seeds_summary_numbers_equal_the_per_seed_results(tmp_path):
  runs = [_write_job(tmp_path / f"seed_{s}", seed=s, run_seed=s,
                     config=_config(seed=s)) for s in (1, 2, 3)]
  loaded = [reports.load_results(tmp_path / f"seed_{s}") for s in (1, 2, 3)]
  reports.write_seeds_summary(tmp_path, loaded)
  seeds = json.loads((tmp_path / reports.SEEDS_FILE).read_text())
  assert seeds["seeds"] == [1, 2, 3] and seeds["dataset"] == "eurosat"
  assert seeds["accuracy_mean"] == pytest.approx(
      np.mean([r["accuracy_mean"] for r in runs]), abs=1e-12)
  for p, r in zip(seeds["per_seed"], runs, strict=True):
    assert p["accuracy_mean"] == r["accuracy_mean"]
    assert p["accuracy_ci95"] == r["accuracy_ci95"]
    assert p["num_episodes"] == r["num_episodes"]
  md = (tmp_path / "summary.md").read_text()
  assert f"{seeds['accuracy_mean']:.2f} (3 seeds)" in md
  assert "| 2 | " + aggregate.format_mean_ci(
      runs[1]["accuracy_mean"], runs[1]["accuracy_ci95"]) in md
  with pytest.raises(ValueError, match="seed repeated"):
    reports.write_seeds_summary(tmp_path, [loaded[0], loaded[0]])


def test_seeds_summary_of_one_seed_says_1_seed(tmp_path):
  # --config.seeds=3 (one seed): no "1 seeds" in the title, the cell or
  # the per-seed table; no std.
  run = _write_job(tmp_path / "seed_3", seed=3, run_seed=3,
                   config=_config(seed=3))
  reports.write_seeds_summary(tmp_path,
                              [reports.load_results(tmp_path / "seed_3")])
  md = (tmp_path / "summary.md").read_text()
  assert "1 seeds" not in md, md
  assert md.splitlines()[0].endswith(": 1 seed")
  assert f"{run['accuracy_mean']:.2f} (1 seed) |" in md
  assert "| mean over 1 seed | " in md and "std" not in md


def test_summarize_tool_skips_stray_files_with_a_warning(tmp_path):
  """``summarize.py ~/runs/*`` where one entry is a log file: that entry is
  one warning line, the table is still printed; nothing usable: ERROR."""
  _write_job(tmp_path / "a", steps=20, n=6, config=_config())
  log = tmp_path / "run.log"
  log.write_text("not json\n")
  proc = _summarize(tmp_path / "a", log)
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr
  warnings = [ln for ln in proc.stderr.splitlines() if "warning:" in ln]
  assert len(warnings) == 1 and str(log) in warnings[0], proc.stderr
  assert any(ln.startswith("| CLIP") for ln in proc.stdout.splitlines())
  proc = _summarize(log)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.count("ERROR:") == 1 and str(log) in proc.stderr


def test_row_labels_ignore_the_blocks_of_unused_trainables():
  """A CoOp row's lora.* keys (and a LoRA row's coop.*) change nothing:
  they do not appear in labels; the used trainable's keys do."""
  def coop(rank, n_ctx):
    return fake_results("eurosat", method="CLIP-CoOp", config=dict(
        _config(**{"lora.rank": rank}), trainable="coop",
        coop={"n_ctx": n_ctx}))
  labels = markdown.row_labels([coop(16, 16), coop(4, 4)])
  assert all("lora.rank" not in n for n in labels), labels
  assert "coop.n_ctx=16" in labels[0] and "coop.n_ctx=4" in labels[1]
  lora = [fake_results("eurosat", config=dict(_config(), coop={"n_ctx": n}))
          for n in (16, 4)]
  labels = markdown.row_labels(lora)
  assert all("coop." not in n for n in labels), labels
  # Mixed: the LoRA rows' rank tells them apart; the CoOp row shows none.
  lora = [fake_results("eurosat", config=_config(**{"lora.rank": r}))
          for r in (16, 4)]
  labels = markdown.row_labels([coop(16, 16), *lora])
  assert "lora." not in labels[0] and "None" not in labels[0], labels
  assert "lora.rank=16" in labels[1] and "lora.rank=4" in labels[2], labels


def test_one_episode_has_null_ci_and_every_reader_copes(tmp_path, no_plots):
  """n = 1: every *_ci95 is null in results.json (a std of one value is no
  95% interval); summary.md, the plots, TensorBoard, tools/summarize.py and
  the seeds table read it without claiming "± 0.00"."""
  r = fake_results(n=1)
  assert r["accuracy_ci95"] is None and r["zero_shot_accuracy_ci95"] is None
  assert r["stage_accuracy_ci95"] == [None] * 5
  assert set(r["step_loss_ci95"].values()) == {None}
  reports.write_all(tmp_path / "job", r)
  text = (tmp_path / "job" / "results.json").read_text()
  assert '"accuracy_ci95": null' in text
  loaded = reports.load_results(tmp_path / "job")
  assert loaded["accuracy_ci95"] is None
  md = markdown.summary_markdown(loaded)
  assert "±" not in md.split("## Loss terms")[0]
  assert f"{r['accuracy_mean']:.2f}" in md
  for figure in (plots.accuracy_figure(loaded), plots.losses_figure(loaded)):
    plt.close(figure)
  with metric_writer.TensorBoard(tmp_path / "tb", enabled=True) as tb:
    tb.batch({"records": r["episodes"], "done": 1},
             [e["accuracy"] for e in r["episodes"]])
    tb.final(r)
  scalars = read_scalars(tmp_path / "tb")
  assert "running/accuracy_mean" in scalars
  assert "running/accuracy_ci95" not in scalars
  _write_job(tmp_path / "runs" / "a", n=1)
  proc = _summarize(tmp_path / "runs")
  assert proc.returncode == 0, proc.stderr
  row = [ln for ln in proc.stdout.splitlines() if ln.startswith("| CLIP")]
  assert len(row) == 1 and "(n=1)" in row[0] and "±" not in row[0]
  group = markdown.seed_group([fake_results(n=1, run_seed=s)
                               for s in (1, 2)])
  rows = markdown.seeds_table(group).splitlines()[2:]
  assert len(rows) == 3 and not any("±" in row for row in rows)
