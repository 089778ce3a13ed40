"""Aggregating episode results: per-episode records, means and 95% intervals.

Pure functions over plain Python / numpy data, no JAX: the job runner
(``jaxfsl.protocols.episodic.runner``), the reports (``jaxfsl.io.reports``) and
``tools/summarize.py`` all build on them.

Units: accuracies are percentages (0-100, as the paper reports them); the
analysis metrics are the engine's raw values (cosines, distances, gradient
norms). The 95% interval is the CDFSL benchmark's ``1.96 * std / sqrt(n)``
with the population standard deviation (``np.std``, ddof=0), as the release
computes it; with fewer than 2 episodes there is no interval (None, null in
results.json).

An episode record (``episode_records``; one entry of ``results.json``'s
``episodes`` list and one row of ``results.csv``)::

  index                 int        the episode index (a pure function of
                                   (seed, index) gives its data and keys)
  accuracy              float      query accuracy after T steps, %
  stage_accuracies      [5] float  accuracy at 1/5, ..., 5/5 of T, %
  zero_shot_accuracy    float      accuracy before any step, %
  stages                {metric: [5] float}  analysis metrics per stage
  zero_shot             {metric: float}       the same before training
  losses                {term: [5] float}     mean of each loss term over
                                   each evaluation segment, as it entered
                                   the loss (weighted; 0 where inactive);
                                   the parts sum to ``total``
  step_losses           {term: float32 [T]}   the same per step (numpy;
                                   absent in older runs; not written to
                                   results.json, see ``jaxfsl.io.reports``)
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


def _terms(losses: Mapping[str, Any]) -> list[str]:
  """The loss terms present, in ``LOSS_TERMS`` order, then any others (a
  term the engine adds later is kept, not dropped), ``total`` last."""
  known = [t for t in LOSS_TERMS if t in losses and t != "total"]
  other = sorted(t for t in losses if t not in LOSS_TERMS)
  return known + other + (["total"] if "total" in losses else [])


def percent(fraction: Any) -> float:
  """A float32 fraction in [0, 1] as a percentage rounded to 4 decimals."""
  return round(100.0 * float(fraction), _ACC_DECIMALS)


def mean_ci95(values: Iterable[float]) -> tuple[float, float | None]:
  """Mean and 95% half-interval ``1.96 * std / sqrt(n)`` (std with ddof=0).

  Args:
    values: numbers.

  Returns:
    (mean, half-width) as Python floats. The half-width is None (null in
    results.json) for n < 2: the std of one value is 0, and "± 0.00" would
    claim a certainty one episode does not give. The mean is nan for no
    values.
  """
  x = np.asarray(list(values), np.float64)
  if x.size == 0:
    return math.nan, None
  if x.size < 2:
    return float(np.mean(x)), None
  return float(np.mean(x)), float(1.96 * np.std(x) / math.sqrt(x.size))


def episode_records(outputs: Mapping[str, Any],
                    indices: Sequence[int]) -> list[Record]:
  """Per-episode records from the engine's batch outputs.

  Args:
    outputs: ``EpisodeEngine.run_batch``'s numpy dict with a leading E axis:
      ``stages`` {metric: [E, 5]}, ``zero_shot`` {metric: [E]}, ``losses``
      {term: [E, 5]}, optionally ``step_losses`` {term: [E, T]},
      ``first_nonfinite_step`` int [E].
    indices: the E episode indices.

  Returns:
    E records (see the module docstring), in the order of ``indices``.
  """
  stages, zero_shot = outputs["stages"], outputs["zero_shot"]
  losses = outputs.get("losses", {})
  step_losses = outputs.get("step_losses", {})
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
                   for k in _terms(losses)},
        "first_nonfinite_step": (-1 if nonfinite is None
                                 else int(nonfinite[e])),
    })
    if step_losses:
      records[-1]["step_losses"] = {
          k: np.asarray(step_losses[k][e], np.float32)
          for k in _terms(step_losses)}
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
    ``step_loss_mean`` / ``step_loss_ci95`` {term: [T]} (per step, over
    episodes; empty when the records have no ``step_losses``). Every
    ``*_ci95`` is None (JSON null) with fewer than 2 episodes;
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
  terms = _terms(records[0].get("losses", {})) if records else []
  step_terms = (_terms(records[0].get("step_losses", {})) if records
                and all("step_losses" in r for r in records) else [])
  step_mean, step_ci = {}, {}
  for t in step_terms:
    # [N, T] float64: mean and 95% interval over episodes, per step.
    x = np.stack([np.asarray(r["step_losses"][t], np.float64)
                  for r in records])
    step_mean[t] = [float(v) for v in x.mean(axis=0)]
    step_ci[t] = ([float(v) for v in
                   1.96 * x.std(axis=0) / math.sqrt(x.shape[0])]
                  if x.shape[0] >= 2 else None)  # As mean_ci95.
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
      "step_loss_mean": step_mean,
      "step_loss_ci95": step_ci,
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
  if ci is None or (isinstance(ci, float) and math.isnan(ci)):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def format_over_episodes(mean: float, ci: float, n: int,
                         digits: int = 2) -> str:
  """``"38.12 ± 0.95 % over 40 episodes"``; with one episode no ± (a 95%
  interval of one value is undefined): ``"8.00 % over 1 episode"``."""
  text = format_mean_ci(mean, ci if n >= 2 else None, digits)
  return f"{text} % over {n} episode{'' if n == 1 else 's'}"


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
  # One episode has no 95% interval: its accuracy alone, no "± 0.00".
  acc = (f"{format_mean_ci(mean, ci)} % (95% CI)" if len(accuracies) >= 2
         else f"{format_mean_ci(mean, None)} %")
  return f"episodes {done}/{total} | accuracy {acc} | {speed} | ETA {eta}"


# Settings that must agree between the seeds of one multi-seed job.
_SEED_GROUP_KEYS = ("dataset", "way", "shot", "variant", "model", "steps")


def over_seeds(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Combines the results of one job run with several seeds.

  The few-shot literature reports the mean over seeds; the spread within
  each seed is the usual 95% interval over its episodes (issue 16).

  Args:
    runs: results dicts (``results.json`` contents), one per seed, of the
      same job (same ``dataset``, ``way``, ``shot``, ``variant``, ``model``
      and ``steps`` where present).

  Returns:
    dict with ``seeds`` (sorted), ``num_seeds``, ``accuracy_mean`` and
    ``zero_shot_accuracy_mean`` (means over seeds of the per-seed means, %),
    ``accuracy_std_over_seeds`` (sample std, ddof=1, of the per-seed
    means: the spread of the method over independent runs; None for one
    seed),
    ``num_episodes`` (sum), ``complete`` (every seed complete) and
    ``per_seed``: one dict per seed with ``seed``, ``accuracy_mean``,
    ``accuracy_ci95``, ``zero_shot_accuracy_mean``,
    ``zero_shot_accuracy_ci95``, ``num_episodes``, ``complete``.

  Raises:
    ValueError: no runs, a repeated seed, or runs that differ in a setting
      other than the seed (every difference listed).
  """
  if not runs:
    raise ValueError("over_seeds needs at least one results dict")
  problems = []
  for key in _SEED_GROUP_KEYS:
    values = sorted({repr(r.get(key)) for r in runs})
    if len(values) > 1:
      problems.append(f"{key}: {', '.join(values)}")
  seeds = [r.get("seed") for r in runs]
  repeated = sorted({repr(s) for s in seeds if seeds.count(s) > 1})
  if repeated:
    problems.append(f"seed repeated: {', '.join(repeated)}")
  if problems:
    raise ValueError("over_seeds: the runs are not one job over several "
                     "seeds; they differ in\n  " + "\n  ".join(problems))
  keys = ("accuracy_mean", "accuracy_ci95", "zero_shot_accuracy_mean",
          "zero_shot_accuracy_ci95", "num_episodes")
  per_seed = sorted(
      ({"seed": r.get("seed"), **{k: r.get(k, math.nan) for k in keys},
        "complete": bool(r.get("complete", True))} for r in runs),
      key=lambda p: (p["seed"] is None, p["seed"]))
  acc = np.asarray([p["accuracy_mean"] for p in per_seed], np.float64)
  zs = np.asarray([p["zero_shot_accuracy_mean"] for p in per_seed],
                  np.float64)
  return {
      "seeds": [p["seed"] for p in per_seed],
      "num_seeds": len(per_seed),
      "accuracy_mean": float(acc.mean()),
      "accuracy_std_over_seeds": (float(acc.std(ddof=1)) if acc.size >= 2
                                  else None),
      "zero_shot_accuracy_mean": float(zs.mean()),
      "num_episodes": int(sum(p["num_episodes"] for p in per_seed)),
      "complete": all(p["complete"] for p in per_seed),
      "per_seed": per_seed,
  }


def evaluation_steps(results: Mapping[str, Any]) -> list[int]:
  """The steps after which the queries were evaluated (the x positions of
  the per-stage numbers).

  ``results["eval_steps"]`` when the runner recorded it; for older results
  the release's rule k * int(T / 5), k = 1..4, then T (METHOD.md, "the
  release's integer rules"), from ``results["steps"]``; eval-only results
  (one stage) give ``[T]``. Empty when T is unknown.
  """
  if results.get("eval_steps"):
    return [int(s) for s in results["eval_steps"]]
  steps = int(results.get("steps") or 0)
  if steps <= 0:
    return []
  num_stages = len(results.get("stage_accuracy_mean") or ()) or NUM_STAGES
  if num_stages != NUM_STAGES:
    return [steps] * num_stages
  f = steps // NUM_STAGES
  return [k * f for k in range(1, NUM_STAGES)] + [steps]


def extra_terms_window(results: Mapping[str, Any]) -> tuple[int, int] | None:
  """[start, end) steps where the variant's extra loss terms are active.

  ``results["window"]`` when the runner recorded it; for older results the
  release's rule (3 * int(T / 5) steps at the beginning, or as many at the
  end for ``method.timing = "last"``); None for the plain variant
  (``"none"``) or when T is unknown.
  """
  if results.get("variant") == "none":
    return None
  if results.get("window"):
    start, end = results["window"]
    return int(start), int(end)
  steps = int(results.get("steps") or 0)
  if steps <= 0:
    return None
  length = 3 * (steps // NUM_STAGES)
  timing = (results.get("config") or {}).get("method", {}).get("timing",
                                                                "begin")
  return (steps - length, steps) if timing == "last" else (0, length)
