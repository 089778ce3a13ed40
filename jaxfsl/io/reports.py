"""Writing a job's results: JSON, CSV, markdown and plots.

Everything here reads the results dict built by
``jaxfsl.protocols.episodic.runner`` (the content of ``results.json``: the
``jaxfsl.io.aggregate.summarize`` keys, the job description, ``config``,
optionally ``window`` / ``eval_steps`` / ``steps``, and the per-episode
``episodes`` records) and writes files; nothing computes results. Files are
written to a temporary name and renamed, so a killed job never leaves a
half-written report.

  results.json       the results dict (floats exact: repr round-trips),
                     without the records' per-step losses
  results.csv        one row per episode (``csv_columns``)
  step_losses.npz    per-episode per-step loss terms: ``index`` int64 [N]
                     and one float32 [N, T] array per term (only when the
                     records have ``step_losses``)
  summary.md         the paper's table layout, then per-stage tables
                     (``jaxfsl.io.markdown``)
  plots/*.png        ``jaxfsl.io.plots.PLOT_FILES``
  tensorboard/       scalars (``jaxfsl.io.metric_writer.TensorBoard``)

A multi-seed job's parent workdir gets ``seeds.json`` and ``summary.md``
(``write_seeds_summary``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxfsl.io import aggregate

# Re-exported: the runner and tools use them as ``reports.X``.
from jaxfsl.io.markdown import (  # noqa: F401
  DATASET_LABELS,
  DATASET_ORDER,
  METRIC_LABELS,
  comparison_table,
  dataset_label,
  seed_group,
  seeds_count,
  seeds_table,
  summary_markdown,
)
from jaxfsl.io.metric_writer import TensorBoard, is_main_process  # noqa: F401
from jaxfsl.io.plots import PLOT_FILES, write_plots  # noqa: F401

STEP_LOSSES_FILE = "step_losses.npz"


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
  loss terms per segment as they entered the loss (``loss_vlm_s1..``;
  per-step values are in ``step_losses.npz``), ``first_nonfinite_step``
  and, for eval-only records, ``train_accuracy``."""
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


def json_results(results: Mapping[str, Any]) -> dict[str, Any]:
  """The results dict as ``results.json`` holds it: the records' per-step
  losses (numpy [T] per term, up to megabytes per job) left out; they go to
  ``step_losses.npz``, and their per-step means to ``step_loss_mean``."""
  out = dict(results)
  if any("step_losses" in e for e in results.get("episodes", ())):
    out["episodes"] = [{k: v for k, v in e.items() if k != "step_losses"}
                       for e in results["episodes"]]
  return out


def write_step_losses(path: str | os.PathLike[str],
                      records: Sequence[Mapping[str, Any]]) -> Path | None:
  """``step_losses.npz`` (module docstring) from records that all carry
  ``step_losses``; removes a stale file and returns None otherwise."""
  path = Path(path)
  if not records or not all("step_losses" in r for r in records):
    path.unlink(missing_ok=True)
    return None
  arrays = {"index": np.asarray([r["index"] for r in records], np.int64)}
  for term in records[0]["step_losses"]:
    arrays[term] = np.stack([np.asarray(r["step_losses"][term], np.float32)
                             for r in records])
  tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return path


def load_step_losses(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """Reads ``step_losses.npz`` (or the workdir holding one): ``index``
  int64 [N] and each term float32 [N, T]."""
  path = Path(path)
  if path.is_dir():
    path = path / STEP_LOSSES_FILE
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def keep_wall_time(previous: Mapping[str, Any] | None,
                   results: Mapping[str, Any]) -> dict[str, Any]:
  """``results`` with the wall time of ``previous`` when nothing was
  recomputed.

  Rerunning a finished job restores its episodes and rewrites the reports;
  its own wall time (seconds) is then that of the rerun, not of the job.
  When ``previous`` (the ``results.json`` already there) holds the same
  episode indices, its ``run["wall_*"]`` fields are kept and the rerun's
  time is recorded as ``run["wall_seconds_rerun"]``.

  Args:
    previous: the earlier results dict, or None.
    results: the new results dict (not modified).

  Returns:
    A new results dict (``run`` copied).
  """
  out = dict(results)
  if not previous:
    return out
  old_run = previous.get("run") or {}
  new_run = dict(results.get("run") or {})
  same = ([e.get("index") for e in previous.get("episodes", ())]
          == [e.get("index") for e in results.get("episodes", ())])
  kept = {k: v for k, v in old_run.items() if k.startswith("wall_")
          and k != "wall_seconds_rerun"}
  if same and kept:
    rerun = new_run.get("wall_seconds_this_process")
    new_run.update(kept)
    if rerun is not None:
      new_run["wall_seconds_rerun"] = rerun
    out["run"] = new_run
  return out


def write_all(directory: str | os.PathLike[str],
              results: Mapping[str, Any], *,
              keep_existing_wall_time: bool = False) -> dict[str, Any]:
  """results.json, results.csv, step_losses.npz, summary.md and plots/.

  Call it from the main process only (``is_main_process``): every process
  would write the same files.

  Args:
    directory: output folder (created if needed).
    results: the results dict (module docstring).
    keep_existing_wall_time: when ``directory/results.json`` exists and
      holds the same episodes, keep its wall time (``keep_wall_time``);
      for a finished job that is run again.

  Returns:
    The results dict as written (with the kept wall time, if any; records
    keep their ``step_losses``).
  """
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  if keep_existing_wall_time and (directory / "results.json").is_file():
    try:
      previous = load_results(directory)
    except (OSError, ValueError):  # A damaged file: nothing to keep.
      previous = None
    results = keep_wall_time(previous, results)
  write_json(directory / "results.json", json_results(results))
  write_csv(directory / "results.csv", results["episodes"])
  write_step_losses(directory / STEP_LOSSES_FILE, results["episodes"])
  write_text_atomic(directory / "summary.md", summary_markdown(results))
  write_plots(directory / "plots", results)
  return dict(results)


SEEDS_FILE = "seeds.json"


def write_seeds_summary(directory: str | os.PathLike[str],
                        runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The reports of a multi-seed job (``--config.seeds``) in its parent
  workdir, beside the ``seed_<s>/`` workdirs:

    seeds.json   ``aggregate.over_seeds`` of the per-seed results (the mean
                 over seeds and each seed's mean ± 95% CI over episodes)
    summary.md   the comparison table (one row, the mean over seeds) and
                 the per-seed table

  Args:
    directory: the parent workdir.
    runs: the per-seed results dicts (``results.json`` contents).

  Returns:
    The ``seed_group`` entry written (its ``over_seeds`` keys included).

  Raises:
    ValueError: ``aggregate.over_seeds``' errors, prefixed with
      ``directory``.
  """
  directory = Path(directory)
  try:
    group = seed_group(runs)
  except ValueError as e:
    raise ValueError(f"{directory}: {e}") from None
  keys = ("dataset", "way", "shot", "variant", "method", "model", "steps")
  write_json(directory / SEEDS_FILE,
             {**{k: group.get(k) for k in keys},
              **aggregate.over_seeds(runs)})
  title = (f"# {group['method']} on {dataset_label(group['dataset'])}: "
           f"{seeds_count(group['num_seeds'])}\n\n")
  write_text_atomic(directory / "summary.md",
                    title + comparison_table([group]))
  return group
