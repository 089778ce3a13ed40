"""Aggregating episode results: per-episode records, means and 95% intervals.

Pure functions over plain Python / numpy data, no JAX: the job runner
(``jaxfsl.protocols.episodic.runner``), the reports (``jaxfsl.io.reports``) and
``tools/summarize.py`` all build on them.

Units: accuracies are percentages (0-100, as the paper reports them); the
analysis metrics are the engine's raw values (cosines, distances, gradient
norms). The 95% interval is the CDFSL benchmark's ``1.96 * std / sqrt(n)``
with the population standard deviation (``np.std``, ddof=0), as the release
computes it.

An episode record (``episode_records``; one entry of ``results.json``'s
``episodes`` list and one row of ``results.csv``)::

  index                 int        the episode index (a pure function of
                                   (seed, index) gives its data and keys)
  accuracy              float      query accuracy after T steps, %
  stage_accuracies      [5] float  accuracy at 1/5, ..., 5/5 of T, %
  zero_shot_accuracy    float      accuracy before any step, %
  stages                {metric: [5] float}  analysis metrics per stage
  zero_shot             {metric: float}       the same before training
  losses                {term: [5] float}     mean loss parts per segment
  first_nonfinite_step  int        -1 unless the loss became NaN/inf

Records from ``eval_only`` runs have no ``stages`` history: their
``stage_accuracies`` and metric lists hold one value (the final adapters).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

NUM_STAGES = 5
# Analysis metrics the engine reports per stage (besides accuracy), in the
# order the reports show them.
STAGE_METRICS = ("modality_gap", "intra_class_cosine", "inter_class_cosine",
                 "visual_grad_norm", "cross_modal_grad_norm")
LOSS_TERMS = ("vlm", "anti_visual", "relation", "visual", "total")
STAGE_LABELS = ("1/5 T", "2/5 T", "3/5 T", "4/5 T", "T")
# Accuracies are k / Q (Q = way * query queries) computed in float32; four
# decimals of a percentage remove the float32 noise (20.000002 -> 20.0) and
# keep distinct values distinct for any Q < 10^5 (steps of 100 / Q).
_ACC_DECIMALS = 4

Record = dict[str, Any]


def percent(fraction: Any) -> float:
  """A float32 fraction in [0, 1] as a percentage rounded to 4 decimals."""
  return round(100.0 * float(fraction), _ACC_DECIMALS)


def mean_ci95(values: Iterable[float]) -> tuple[float, float]:
  """Mean and 95% half-interval ``1.96 * std / sqrt(n)`` (std with ddof=0).

  Args:
    values: n >= 1 numbers.

  Returns:
    (mean, half-width) as Python floats; (nan, nan) for no values.
  """
  x = np.asarray(list(values), np.float64)
  if x.size == 0:
    return math.nan, math.nan
  return float(np.mean(x)), float(1.96 * np.std(x) / math.sqrt(x.size))


def episode_records(outputs: Mapping[str, Any],
                    indices: Sequence[int]) -> list[Record]:
  """Per-episode records from the engine's batch outputs.

  Args:
    outputs: ``EpisodeEngine.run_batch``'s numpy dict with a leading E axis:
      ``stages`` {metric: [E, 5]}, ``zero_shot`` {metric: [E]}, ``losses``
      {term: [E, 5]}, ``first_nonfinite_step`` int [E].
    indices: the E episode indices.

  Returns:
    E records (see the module docstring), in the order of ``indices``.
  """
  stages, zero_shot = outputs["stages"], outputs["zero_shot"]
  losses = outputs.get("losses", {})
  nonfinite = outputs.get("first_nonfinite_step")
  records = []
  for e, index in enumerate(indices):
    stage_acc = [percent(a) for a in np.asarray(stages["accuracy"][e])]
    records.append({
        "index": int(index),
        "accuracy": stage_acc[-1],
        "stage_accuracies": stage_acc,
        "zero_shot_accuracy": percent(zero_shot["accuracy"][e]),
        "stages": {m: [float(v) for v in np.asarray(stages[m][e])]
                   for m in STAGE_METRICS if m in stages},
        "zero_shot": {m: float(zero_shot[m][e])
                      for m in STAGE_METRICS if m in zero_shot},
        "losses": {k: [float(v) for v in np.asarray(losses[k][e])]
                   for k in LOSS_TERMS if k in losses},
        "first_nonfinite_step": (-1 if nonfinite is None
                                 else int(nonfinite[e])),
    })
  return records


def concat_outputs(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Concatenates engine output trees along their leading episode axis."""
  if not parts:
    raise ValueError("concat_outputs needs at least one output tree")

  def cat(values):
    if isinstance(values[0], Mapping):
      return {k: cat([v[k] for v in values]) for k in values[0]}
    return np.concatenate([np.asarray(v) for v in values], axis=0)

  return cat(list(parts))


def take_outputs(outputs: Mapping[str, Any], rows: Any) -> dict[str, Any]:
  """Selects episodes (rows of the leading axis) of an output tree."""
  if isinstance(outputs, Mapping):
    return {k: take_outputs(v, rows) for k, v in outputs.items()}
  return np.asarray(outputs)[rows]


def dedupe(records: Iterable[Record]) -> list[Record]:
  """Records sorted by index; for a repeated index the last one wins."""
  by_index = {}
  for r in records:
    by_index[int(r["index"])] = r
  return [by_index[i] for i in sorted(by_index)]


def _column_means(rows: list[list[float]]) -> list[float]:
  if not rows:
    return []
  return [float(v) for v in np.mean(np.asarray(rows, np.float64), axis=0)]


def summarize(records: Sequence[Record]) -> dict[str, Any]:
  """Mean and 95% interval of the accuracy, per-stage means of everything.

  Args:
    records: episode records (any order).

  Returns:
    dict with ``num_episodes``; ``accuracy_mean`` / ``accuracy_ci95`` (final
    accuracy, %); ``stage_accuracy_mean`` / ``stage_accuracy_ci95`` ([5]
    lists, %); ``zero_shot_accuracy_mean`` / ``_ci95``; ``stage_means``
    {metric: [5]}; ``zero_shot_means`` {metric}; ``loss_means`` {term: [5]};
    ``num_nonfinite`` (episodes whose loss became NaN/inf).
  """
  records = list(records)
  acc_mean, acc_ci = mean_ci95(r["accuracy"] for r in records)
  zs_mean, zs_ci = mean_ci95(r["zero_shot_accuracy"] for r in records)
  num_stages = len(records[0]["stage_accuracies"]) if records else 0
  stage_mean, stage_ci = [], []
  for k in range(num_stages):
    m, c = mean_ci95(r["stage_accuracies"][k] for r in records)
    stage_mean.append(m)
    stage_ci.append(c)
  metrics = [m for m in STAGE_METRICS
             if records and m in records[0].get("stages", {})]
  terms = [t for t in LOSS_TERMS if records and t in records[0].get("losses",
                                                                      {})]
  return {
      "num_episodes": len(records),
      "accuracy_mean": acc_mean,
      "accuracy_ci95": acc_ci,
      "stage_accuracy_mean": stage_mean,
      "stage_accuracy_ci95": stage_ci,
      "zero_shot_accuracy_mean": zs_mean,
      "zero_shot_accuracy_ci95": zs_ci,
      "stage_means": {m: _column_means([r["stages"][m] for r in records])
                      for m in metrics},
      "zero_shot_means": {
          m: float(np.mean([r["zero_shot"][m] for r in records]))
          for m in metrics if m in records[0].get("zero_shot", {})},
      "loss_means": {t: _column_means([r["losses"][t] for r in records])
                     for t in terms},
      "num_nonfinite": sum(1 for r in records
                           if r.get("first_nonfinite_step", -1) >= 0),
  }


def discriminability(stage_means: Mapping[str, Sequence[float]]
                     ) -> list[float]:
  """Visual discriminability per stage: intra- minus inter-class cosine."""
  intra = stage_means.get("intra_class_cosine", [])
  inter = stage_means.get("inter_class_cosine", [])
  return [float(a - b) for a, b in zip(intra, inter, strict=True)]


def format_mean_ci(mean: float, ci: float, digits: int = 2) -> str:
  """``"38.12 ± 0.95"``; ``"-"`` for a missing (nan) mean."""
  if mean is None or (isinstance(mean, float) and math.isnan(mean)):
    return "-"
  return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def format_duration(seconds: float) -> str:
  """``"1:02:03"`` (h:mm:ss); ``"?"`` when unknown."""
  if seconds is None or not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}:{m:02d}:{s:02d}"


def progress_line(done: int, total: int, accuracies: Sequence[float],
                  episodes_per_hour: float | None) -> str:
  """One progress log line: episodes done, running mean ± CI, speed, ETA.

  Args:
    done: episodes finished so far (including earlier runs of this job).
    total: episodes of the job.
    accuracies: final accuracies (%) of the finished episodes.
    episodes_per_hour: measured speed of this process, or None.
  """
  mean, ci = mean_ci95(accuracies)
  if episodes_per_hour and episodes_per_hour > 0:
    speed = f"{episodes_per_hour:.1f} episodes/h"
    eta = format_duration((total - done) / episodes_per_hour * 3600.0)
  else:
    speed, eta = "? episodes/h", "?"
  return (f"episodes {done}/{total} | accuracy {format_mean_ci(mean, ci)} % "
          f"(95% CI) | {speed} | ETA {eta}")
