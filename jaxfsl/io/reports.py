"""Writing a job's results: JSON, CSV, markdown, PNG plots, TensorBoard.

Everything here reads the results dict built by ``jaxfsl.protocols.episodic.runner`` (the
content of ``results.json``: the ``jaxfsl.aggregate.summarize`` keys, the job
description, ``config`` and the per-episode ``episodes`` records) and writes
files; nothing computes results. Files are written to a temporary name and
renamed, so a killed job never leaves a half-written report.

  results.json              the results dict (floats exact: repr round-trips)
  results.csv               one row per episode (``csv_columns``)
  summary.md                the paper's table layout, then per-stage tables
  plots/accuracy_stages.png accuracy (mean ± 95% CI) at zero-shot, 1/5..T
  plots/gap_discriminability.png  modality gap and visual discriminability
  plots/gradient_parts.png  visual vs cross-modal parts of dL_vlm
  plots/accuracy_distribution.png histogram of episode accuracies
  tensorboard/              scalars (``TensorBoard``)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxfsl.io import aggregate

# The paper's column order (Table 1: ISIC / EuroSAT / CropDisease / ChestX).
DATASET_ORDER = ("isic2018", "eurosat", "crop_disease", "chestx")
DATASET_LABELS = {
    "isic2018": "ISIC", "eurosat": "EuroSAT", "crop_disease": "CropDisease",
    "chestx": "ChestX", "synthetic": "Synthetic (demo)",
    "image_folder": "Image folder",
}
METRIC_LABELS = {
    "modality_gap": "modality gap",
    "intra_class_cosine": "intra-class cosine",
    "inter_class_cosine": "inter-class cosine",
    "discriminability": "visual discriminability (intra - inter)",
    "visual_grad_norm": "norm of the visual part of dL_vlm",
    "cross_modal_grad_norm": "norm of the cross-modal part of dL_vlm",
}
PLOT_FILES = ("accuracy_stages.png", "gap_discriminability.png",
              "gradient_parts.png", "accuracy_distribution.png")


def dataset_label(name: str) -> str:
  """``"isic2018"`` -> ``"ISIC"``; ``"synthetic/c10..."`` -> its label."""
  base, _, sub = name.partition("/")
  label = DATASET_LABELS.get(base, base)
  return f"{label} ({sub})" if sub and base == "image_folder" else label


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
  """Writes ``text`` to a temporary file beside ``path``, then renames it."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
  """Atomic JSON (floats written with repr, so they read back exactly)."""
  return write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
  """Reads a ``results.json`` (or the workdir holding one)."""
  path = Path(path)
  if path.is_dir():
    path = path / "results.json"
  return json.loads(path.read_text())


def csv_columns(records: Sequence[Mapping[str, Any]]) -> list[str]:
  """The CSV header for these records: index, accuracy, zero-shot accuracy,
  per-stage accuracies ``accuracy_s1..``, then each analysis metric per stage
  (``modality_gap_s1..``) and at zero-shot (``zero_shot_modality_gap``), the
  loss parts per segment (``loss_vlm_s1..``), ``first_nonfinite_step`` and,
  for eval-only records, ``train_accuracy``."""
  if not records:
    return ["index", "accuracy", "zero_shot_accuracy"]
  first = records[0]
  stages = range(1, len(first["stage_accuracies"]) + 1)
  cols = ["index", "accuracy", "zero_shot_accuracy"]
  cols += [f"accuracy_s{k}" for k in stages]
  for m in first.get("stages", {}):
    cols += [f"{m}_s{k}" for k in stages]
  cols += [f"zero_shot_{m}" for m in first.get("zero_shot", {})]
  for t, values in first.get("losses", {}).items():
    cols += [f"loss_{t}_s{k}" for k in range(1, len(values) + 1)]
  cols.append("first_nonfinite_step")
  if "train_accuracy" in first:
    cols.append("train_accuracy")
  return cols


def csv_row(record: Mapping[str, Any]) -> dict[str, Any]:
  """One record flattened to ``csv_columns``' names."""
  row = {"index": record["index"], "accuracy": record["accuracy"],
         "zero_shot_accuracy": record["zero_shot_accuracy"],
         "first_nonfinite_step": record.get("first_nonfinite_step", -1)}
  for k, a in enumerate(record["stage_accuracies"], 1):
    row[f"accuracy_s{k}"] = a
  for m, values in record.get("stages", {}).items():
    for k, v in enumerate(values, 1):
      row[f"{m}_s{k}"] = v
  for m, v in record.get("zero_shot", {}).items():
    row[f"zero_shot_{m}"] = v
  for t, values in record.get("losses", {}).items():
    for k, v in enumerate(values, 1):
      row[f"loss_{t}_s{k}"] = v
  if "train_accuracy" in record:
    row["train_accuracy"] = record["train_accuracy"]
  return row


def write_csv(path: str | os.PathLike[str],
              records: Sequence[Mapping[str, Any]]) -> Path:
  """One row per episode; floats as ``repr`` (exact)."""
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=csv_columns(records),
                          lineterminator="\n")
  writer.writeheader()
  for r in records:
    writer.writerow({k: repr(v) if isinstance(v, float) else v
                     for k, v in csv_row(r).items()})
  return write_text_atomic(path, buf.getvalue())


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, float]]:
  """Rows of a ``results.csv`` with numeric values."""
  with open(path, encoding="utf-8") as f:
    return [{k: float(v) for k, v in row.items()} for row in
            csv.DictReader(f)]


# ---------------------------------------------------------------------------
# Markdown.
# ---------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return f"{value:.{digits}f}"


def _stage_header(num_stages: int) -> list[str]:
  labels = (aggregate.STAGE_LABELS if num_stages == aggregate.NUM_STAGES
            else ("T",) * num_stages)
  return ["", "zero-shot", *labels]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def summary_markdown(results: Mapping[str, Any]) -> str:
  """The one-job summary: the paper's table (method x dataset, mean ± CI),
  then accuracy and the analysis metrics at every fifth of training, and the
  loss parts per segment."""
  r = results
  label = dataset_label(r["dataset"])
  lines = [f"# {r['method']} on {label}: {r['way']}-way {r['shot']}-shot"]
  if r.get("eval_only"):
    lines[0] += " (eval_only: saved adapters re-evaluated)"
  lines.append("")
  if r.get("demo"):
    lines += [f"> **{r['note']}**", ""]
  lines.append(
      f"{r['way']}-way {r['shot']}-shot accuracy (%), mean ± 95% CI "
      f"(1.96 std / sqrt(n)) over {r['num_episodes']} episodes:")
  lines.append("")
  lines.append(_table(
      ["Method", label],
      [[r["method"], aggregate.format_mean_ci(r["accuracy_mean"],
                                             r["accuracy_ci95"])],
       ["zero-shot (no fine-tuning)", aggregate.format_mean_ci(
           r["zero_shot_accuracy_mean"], r["zero_shot_accuracy_ci95"])]]))
  status = "complete" if r.get("complete") else "INCOMPLETE"
  lines += ["", f"Model: {r['model']} · T = {r['steps']} steps · "
            f"{r['query']} queries per class · seed {r['seed']} · episodes "
            f"{r['num_episodes']}/{r['episodes_expected']} ({status})"]
  if r.get("num_nonfinite"):
    lines.append(f"**{r['num_nonfinite']} episode(s) had a non-finite "
                 "loss.**")
  if r.get("max_abs_diff_vs_training") is not None:
    lines.append("Max |re-evaluated - training accuracy| per episode: "
                 f"{r['max_abs_diff_vs_training']:.4f} points.")

  num_stages = len(r["stage_accuracy_mean"])
  lines += ["", "## Over training (mean over episodes)", ""]
  rows = [["accuracy (%)", aggregate.format_mean_ci(
      r["zero_shot_accuracy_mean"], r["zero_shot_accuracy_ci95"])] +
          [aggregate.format_mean_ci(m, c) for m, c in
           zip(r["stage_accuracy_mean"], r["stage_accuracy_ci95"],
               strict=True)]]
  means = dict(r.get("stage_means", {}))
  zero = dict(r.get("zero_shot_means", {}))
  if "intra_class_cosine" in means and "inter_class_cosine" in means:
    means["discriminability"] = aggregate.discriminability(means)
    if "intra_class_cosine" in zero and "inter_class_cosine" in zero:
      zero["discriminability"] = (zero["intra_class_cosine"]
                                  - zero["inter_class_cosine"])
  for m in ("modality_gap", "intra_class_cosine", "inter_class_cosine",
            "discriminability", "visual_grad_norm", "cross_modal_grad_norm"):
    if m in means:
      rows.append([METRIC_LABELS[m], _fmt(zero.get(m))] +
                  [_fmt(v) for v in means[m]])
  lines.append(_table(_stage_header(num_stages), rows))

  if r.get("loss_means"):
    lines += ["", "## Loss terms (mean over each fifth of training; "
              "unweighted)", ""]
    header = ["term", *aggregate.STAGE_LABELS[-num_stages:]]
    lines.append(_table(header, [[t] + [_fmt(v) for v in values]
                                 for t, values in r["loss_means"].items()]))
  if not r.get("eval_only"):
    lines += ["", "Plots: " + ", ".join(f"plots/{p}" for p in PLOT_FILES)]
  return "\n".join(lines) + "\n"


def _row_names(runs: Sequence[Mapping[str, Any]]) -> list[str]:
  """Row labels: the method, then model and seed, then the workdir, as far
  as needed for two runs never to share a row and a dataset."""
  def labels(level):
    out = []
    for r in runs:
      name = r["method"]
      if level >= 1:
        name += f" ({r['model']}, seed {r['seed']})"
      if level >= 2:
        name += f" [{Path(r.get('run', {}).get('workdir', '?')).name}]"
      out.append(name)
    return out

  for level in range(3):
    names = labels(level)
    keys = [(n, r["dataset"]) for n, r in zip(names, runs, strict=True)]
    if len(set(keys)) == len(keys):
      return names
  return [f"{n} #{i}" for i, n in enumerate(labels(2))]


def comparison_table(all_results: Sequence[Mapping[str, Any]],
                     digits: int = 2) -> str:
  """Datasets x methods markdown tables (one per way/shot), paper layout.

  Columns: datasets in the paper's order (then any others), and "Average"
  when every row covers the same datasets. Rows: methods (``method`` label;
  model, seed and workdir added as far as needed when two runs would share
  a row and a column). Cells: mean ± 95% CI, a ``*`` marks incomplete
  runs.
  """
  groups: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
  for r in all_results:
    groups.setdefault((r["way"], r["shot"]), []).append(r)
  out = []
  for (way, shot), runs in sorted(groups.items()):
    datasets = sorted({r["dataset"] for r in runs}, key=lambda d: (
        DATASET_ORDER.index(d) if d in DATASET_ORDER else len(DATASET_ORDER),
        d))
    names = _row_names(runs)
    cells: dict[str, dict[str, Mapping[str, Any]]] = {}
    for name, r in zip(names, runs, strict=True):
      cells.setdefault(name, {})[r["dataset"]] = r
    full = all(set(c) == set(datasets) for c in cells.values())
    header = ["Method"] + [dataset_label(d) for d in datasets]
    if full and len(datasets) > 1:
      header.append("Average")
    rows = []
    for name, by_dataset in cells.items():
      row = [name]
      for d in datasets:
        r = by_dataset.get(d)
        if r is None:
          row.append("-")
          continue
        cell = aggregate.format_mean_ci(r["accuracy_mean"], r["accuracy_ci95"],
                                       digits)
        row.append(cell + ("" if r.get("complete", True) else " *"))
      if full and len(datasets) > 1:
        avg = sum(by_dataset[d]["accuracy_mean"] for d in datasets) / len(
            datasets)
        row.append(f"{avg:.{digits}f}")
      rows.append(row)
    out.append(f"### {way}-way {shot}-shot accuracy (%), mean ± 95% CI\n")
    out.append(_table(header, rows))
    notes = []
    if any(not r.get("complete", True) for r in runs):
      notes.append("\\* incomplete run (fewer episodes than planned).")
    if any(r.get("demo") for r in runs):
      notes.append("Demo runs are pipeline checks, not results.")
    out += ["", *notes, ""] if notes else [""]
  return "\n".join(out)


# ---------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------


def write_plots(directory: str | os.PathLike[str],
                results: Mapping[str, Any]) -> list[Path]:
  """The PNG plots (see the module docstring) with matplotlib's Agg backend.

  Returns:
    The written files (none without episodes).
  """
  import matplotlib

  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt

  r = results
  if not r.get("episodes"):
    return []
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  num_stages = len(r["stage_accuracy_mean"])
  xs = list(range(num_stages + 1))
  ticks = list(_stage_header(num_stages)[1:])
  suffix = " (pipeline check)" if r.get("demo") else ""
  title = (f"{r['method']} · {dataset_label(r['dataset'])} · "
           f"{r['way']}-way {r['shot']}-shot{suffix}")
  written = []

  def save(fig, name):
    path = directory / name
    tmp = directory / f".{name}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    written.append(path)

  fig, ax = plt.subplots(figsize=(6, 4))
  means = [r["zero_shot_accuracy_mean"], *r["stage_accuracy_mean"]]
  cis = [r["zero_shot_accuracy_ci95"], *r["stage_accuracy_ci95"]]
  ax.errorbar(xs, means, yerr=cis, marker="o", capsize=4)
  ax.set_xticks(xs, ticks)
  ax.set_xlabel("training progress")
  ax.set_ylabel("query accuracy (%)")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  save(fig, "accuracy_stages.png")

  sm, zm = r.get("stage_means", {}), r.get("zero_shot_means", {})
  if sm:
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 4))
    if "modality_gap" in sm:
      a1.plot(xs, [zm.get("modality_gap", math.nan), *sm["modality_gap"]],
              marker="o", color="tab:red")
    a1.set_ylabel("distance of image and text centroids")
    a1.set_title("modality gap", fontsize=9)
    if "intra_class_cosine" in sm and "inter_class_cosine" in sm:
      intra = [zm.get("intra_class_cosine", math.nan),
               *sm["intra_class_cosine"]]
      inter = [zm.get("inter_class_cosine", math.nan),
               *sm["inter_class_cosine"]]
      a2.plot(xs, intra, marker="o", label="intra-class")
      a2.plot(xs, inter, marker="s", label="inter-class")
      a2.legend(fontsize=8)
      # Its own axis: the difference is small next to the cosines.
      a3.plot(xs, [a - b for a, b in zip(intra, inter, strict=True)],
              marker="o",
              color="tab:green")
    a2.set_title("mean cosine of query features", fontsize=9)
    a3.set_title("visual discriminability (intra - inter)", fontsize=9)
    for a in (a1, a2, a3):
      a.set_xticks(xs, ticks)
      a.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    save(fig, "gap_discriminability.png")

    if "visual_grad_norm" in sm and "cross_modal_grad_norm" in sm:
      fig, ax = plt.subplots(figsize=(6, 4))
      ax.plot(xs, [zm.get("visual_grad_norm", math.nan),
                   *sm["visual_grad_norm"]], marker="o",
              label="visual-learning part")
      ax.plot(xs, [zm.get("cross_modal_grad_norm", math.nan),
                   *sm["cross_modal_grad_norm"]], marker="s",
              label="cross-modal part")
      ax.set_xticks(xs, ticks)
      ax.set_ylabel("mean norm of the part of dL_vlm / df")
      ax.set_title(title, fontsize=9)
      ax.legend(fontsize=8)
      ax.grid(alpha=0.3)
      save(fig, "gradient_parts.png")

  fig, ax = plt.subplots(figsize=(6, 4))
  acc = [e["accuracy"] for e in r["episodes"]]
  zs = [e["zero_shot_accuracy"] for e in r["episodes"]]
  bins = min(30, max(5, int(math.sqrt(len(acc))) * 2))
  ax.hist(zs, bins=bins, range=(0, 100), alpha=0.5, label="zero-shot")
  ax.hist(acc, bins=bins, range=(0, 100), alpha=0.7, label="fine-tuned")
  ax.axvline(r["accuracy_mean"], color="k", linestyle="--",
             label=f"mean {r['accuracy_mean']:.2f}%")
  ax.set_xlabel("episode accuracy (%)")
  ax.set_ylabel("episodes")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  save(fig, "accuracy_distribution.png")
  return written


# ---------------------------------------------------------------------------
# TensorBoard.
# ---------------------------------------------------------------------------


class TensorBoard:
  """TensorBoard scalars of a job (tensorboardX).

  Per episode (step = episode index): ``episode/accuracy``,
  ``episode/zero_shot_accuracy``. Per batch (step = episodes done):
  ``running/accuracy_mean``, ``running/accuracy_ci95``,
  ``speed/episodes_per_hour``. At the end (step = stage 0..5, 0 being
  zero-shot): ``final/accuracy`` and every analysis metric.
  """

  def __init__(self, logdir: str | os.PathLike[str]):
    from tensorboardX import SummaryWriter

    self.writer = SummaryWriter(str(logdir))

  def batch(self, progress: Mapping[str, Any],
            accuracies: Sequence[float]) -> None:
    w = self.writer
    for rec in progress["records"]:
      w.add_scalar("episode/accuracy", rec["accuracy"], rec["index"])
      w.add_scalar("episode/zero_shot_accuracy", rec["zero_shot_accuracy"],
                   rec["index"])
    mean, ci = aggregate.mean_ci95(accuracies)
    done = progress["done"]
    w.add_scalar("running/accuracy_mean", mean, done)
    w.add_scalar("running/accuracy_ci95", ci, done)
    if progress.get("rate"):
      w.add_scalar("speed/episodes_per_hour", progress["rate"], done)
    w.flush()

  def final(self, results: Mapping[str, Any]) -> None:
    w = self.writer
    if not results.get("episodes"):
      return
    w.add_scalar("final/accuracy", results["zero_shot_accuracy_mean"], 0)
    for k, v in enumerate(results["stage_accuracy_mean"], 1):
      w.add_scalar("final/accuracy", v, k)
    for m, values in results.get("stage_means", {}).items():
      if m in results.get("zero_shot_means", {}):
        w.add_scalar(f"final/{m}", results["zero_shot_means"][m], 0)
      for k, v in enumerate(values, 1):
        w.add_scalar(f"final/{m}", v, k)
    w.flush()

  def close(self) -> None:
    self.writer.close()


def write_all(directory: str | os.PathLike[str],
              results: Mapping[str, Any]) -> None:
  """results.json, results.csv, summary.md and plots/ in ``directory``."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  write_json(directory / "results.json", results)
  write_csv(directory / "results.csv", results["episodes"])
  write_text_atomic(directory / "summary.md", summary_markdown(results))
  write_plots(directory / "plots", results)
