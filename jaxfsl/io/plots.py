"""PNG plots of one job's results (matplotlib, Agg backend).

  accuracy_stages.png        accuracy, mean ± 95% CI, at zero-shot and after
                             the evaluation steps
  gap_discriminability.png   modality gap, intra/inter-class cosines and
                             visual discriminability
  gradient_parts.png         visual vs cross-modal parts of dL_vlm
  accuracy_distribution.png  histogram of episode accuracies
  losses.png                 each loss term per step (as it entered the
                             loss), mean over episodes ± 95% CI

Each figure has a builder returning the matplotlib ``Figure`` (so tests and
notebooks can inspect it) and ``write_plots`` saves them. Steps are counted
from 1 (step n is the n-th update); accuracies are evaluated after the steps
``aggregate.evaluation_steps`` gives; a dotted vertical line marks where the
variant's extra loss terms switch off (and on, for ``timing = "last"``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxfsl.io import aggregate
from jaxfsl.io.markdown import (
  LOSS_LABELS,
  dataset_label,
  loss_rows,
  parts_sum_to_total,
)

PLOT_FILES = ("accuracy_stages.png", "gap_discriminability.png",
              "gradient_parts.png", "accuracy_distribution.png",
              "losses.png")
CI_LABEL = "95% CI over episodes"

# Minimum y spans, so that autoscaling never blows a change that is small on
# the metric's own scale up to the full height of the axis:
# - accuracy: 10 points. The effects the paper reports are 1-5 points and
#   5-way accuracies spread over tens of points, so a 0.2-point wiggle stays
#   small while a real gain still shows; an axis from 0 would flatten the
#   gains of interest (ChestX sits near 20-25%).
# - cosines and the modality gap (unit features: cosines in [-1, 1],
#   centroid distance in [0, 2]): 0.2.
# - discriminability (a difference of cosines, typically 0.05-0.3): 0.1.
# Gradient norms and losses start at (or include) 0 instead: they are
# magnitudes, read as proportions.
ACCURACY_MIN_SPAN = 10.0
COSINE_MIN_SPAN = 0.2
DISCRIMINABILITY_MIN_SPAN = 0.1


def _finite(values: Sequence[float]) -> list[float]:
  return [float(v) for v in values
          if v is not None and math.isfinite(float(v))]


def set_min_span(ax: Any, values: Sequence[float], span: float,
                 floor: float | None = None,
                 ceil: float | None = None) -> None:
  """Y limits covering ``values`` (with a 5% margin) and at least ``span``
  wide, centred on the data and kept inside [floor, ceil]."""
  vals = _finite(values)
  if not vals:
    return
  lo, hi = min(vals), max(vals)
  margin = 0.05 * (hi - lo)
  lo, hi = lo - margin, hi + margin
  if hi - lo < span:
    mid = (lo + hi) / 2
    lo, hi = mid - span / 2, mid + span / 2
  if floor is not None and lo < floor:
    lo, hi = floor, max(hi, floor + span)
  if ceil is not None and hi > ceil:
    lo, hi = min(lo, ceil - span), ceil
    if floor is not None:
      lo = max(lo, floor)
  ax.set_ylim(lo, hi)


def _include_zero(ax: Any) -> None:
  lo, hi = ax.get_ylim()
  ax.set_ylim(min(lo, 0.0), max(hi, 0.0))


def _title(r: Mapping[str, Any]) -> str:
  suffix = " (pipeline check)" if r.get("demo") else ""
  return (f"{r['method']} · {dataset_label(r['dataset'])} · "
          f"{r['way']}-way {r['shot']}-shot{suffix}")


def _stage_x(r: Mapping[str, Any]) -> tuple[list[float], list[str], str]:
  """x positions (training step) of zero-shot and each evaluation, their
  tick labels and the x-axis label."""
  num = len(r["stage_accuracy_mean"])
  steps = aggregate.evaluation_steps(r)
  if len(steps) == num and len(set(steps)) == num:
    xs = [0.0, *map(float, steps)]
    return xs, ["0\nzero-shot", *map(str, steps)], "training step"
  xs = list(range(num + 1))  # T unknown: evenly spaced stages.
  labels = ["zero-shot", *aggregate.STAGE_LABELS[-num:]]
  return xs, labels, "training progress"


def mark_window(ax: Any, r: Mapping[str, Any], offset: float = 0.0) -> None:
  """Dotted lines where the extra terms switch on (if not at step 0) and
  off (if before T). ``offset`` 0.5 puts them between two steps' points
  (per-step plots); 0 puts them at the evaluation after that step."""
  window = aggregate.extra_terms_window(r)
  steps = aggregate.evaluation_steps(r)
  if window is None or not steps:
    return
  start, end = window
  total = steps[-1]
  if 0 < start < total:
    ax.axvline(start + offset, color="0.4", linestyle=":",
               label=f"extra terms on after step {start}")
  if 0 < end < total:
    ax.axvline(end + offset, color="0.4", linestyle="--",
               label=f"extra terms off after step {end}")


def accuracy_figure(r: Mapping[str, Any]) -> Any:
  """Accuracy (mean ± 95% CI over episodes) at zero-shot and after each
  evaluation step."""
  import matplotlib.pyplot as plt

  xs, ticks, xlabel = _stage_x(r)
  fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
  means = [r["zero_shot_accuracy_mean"], *r["stage_accuracy_mean"]]
  # No interval (null) with fewer than 2 episodes: no error bars.
  cis = [0.0 if c is None else c for c in
         [r["zero_shot_accuracy_ci95"], *r["stage_accuracy_ci95"]]]
  label = (f"mean ± {CI_LABEL} (n={r['num_episodes']})" if any(cis)
           else f"mean (n={r['num_episodes']}, no {CI_LABEL})")
  ax.errorbar(xs, means, yerr=cis if any(cis) else None, marker="o",
              capsize=4, label=label)
  mark_window(ax, r)
  ax.set_xticks(xs, ticks)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("query accuracy (%)")
  set_min_span(ax, [m + s * c for m, c in zip(means, cis, strict=True)
                    for s in (-1, 1)], ACCURACY_MIN_SPAN, 0.0, 100.0)
  ax.set_title(_title(r), fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return fig


def analysis_figure(r: Mapping[str, Any]) -> Any | None:
  """Modality gap, mean intra/inter-class cosines and discriminability
  (means over episodes); None without analysis metrics."""
  import matplotlib.pyplot as plt

  sm, zm = r.get("stage_means", {}), r.get("zero_shot_means", {})
  if not sm:
    return None
  xs, ticks, xlabel = _stage_x(r)
  fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
  if "modality_gap" in sm:
    gap = [zm.get("modality_gap", math.nan), *sm["modality_gap"]]
    a1.plot(xs, gap, marker="o", color="tab:red", label="mean over episodes")
    set_min_span(a1, gap, COSINE_MIN_SPAN, 0.0, 2.0)
  a1.set_ylabel("distance of image and text centroids")
  a1.set_title("modality gap", fontsize=9)
  if "intra_class_cosine" in sm and "inter_class_cosine" in sm:
    intra = [zm.get("intra_class_cosine", math.nan),
             *sm["intra_class_cosine"]]
    inter = [zm.get("inter_class_cosine", math.nan),
             *sm["inter_class_cosine"]]
    a2.plot(xs, intra, marker="o", label="intra-class")
    a2.plot(xs, inter, marker="s", label="inter-class")
    set_min_span(a2, intra + inter, COSINE_MIN_SPAN, -1.0, 1.0)
    # Its own axis: the difference is small next to the cosines.
    disc = [a - b for a, b in zip(intra, inter, strict=True)]
    a3.plot(xs, disc, marker="o", color="tab:green",
            label="mean over episodes")
    set_min_span(a3, disc, DISCRIMINABILITY_MIN_SPAN, -2.0, 2.0)
  a2.set_ylabel("mean cosine of query features")
  a2.set_title("mean cosine of query features", fontsize=9)
  a3.set_ylabel("intra-class - inter-class cosine")
  a3.set_title("visual discriminability", fontsize=9)
  for a in (a1, a2, a3):
    mark_window(a, r)
    a.set_xticks(xs, ticks)
    a.set_xlabel(xlabel)
    a.grid(alpha=0.3)
    if a.get_legend_handles_labels()[0]:
      a.legend(fontsize=8)
  fig.suptitle(_title(r), fontsize=9)
  return fig


def gradient_figure(r: Mapping[str, Any]) -> Any | None:
  """Norms of the visual-learning and cross-modal parts of dL_vlm / df
  (means over episodes); None when not measured."""
  import matplotlib.pyplot as plt

  sm, zm = r.get("stage_means", {}), r.get("zero_shot_means", {})
  if "visual_grad_norm" not in sm or "cross_modal_grad_norm" not in sm:
    return None
  xs, ticks, xlabel = _stage_x(r)
  fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
  ax.plot(xs, [zm.get("visual_grad_norm", math.nan),
               *sm["visual_grad_norm"]], marker="o",
          label="visual-learning part")
  ax.plot(xs, [zm.get("cross_modal_grad_norm", math.nan),
               *sm["cross_modal_grad_norm"]], marker="s",
          label="cross-modal part")
  mark_window(ax, r)
  ax.set_xticks(xs, ticks)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("mean norm of the part of dL_vlm / df")
  ax.set_ylim(bottom=0.0)
  ax.set_title(_title(r), fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return fig


def distribution_figure(r: Mapping[str, Any]) -> Any:
  """Histogram of the episodes' final and zero-shot accuracies."""
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
  acc = [e["accuracy"] for e in r["episodes"]]
  zs = [e["zero_shot_accuracy"] for e in r["episodes"]]
  bins = min(30, max(5, int(math.sqrt(len(acc))) * 2))
  ax.hist(zs, bins=bins, range=(0, 100), alpha=0.5, label="zero-shot")
  ax.hist(acc, bins=bins, range=(0, 100), alpha=0.7, label="fine-tuned")
  ax.axvline(r["accuracy_mean"], color="k", linestyle="--",
             label=f"mean {r['accuracy_mean']:.2f}%")
  ax.set_xlabel("episode accuracy (%)")
  ax.set_ylabel("episodes")
  ax.set_title(_title(r), fontsize=9)
  ax.legend(fontsize=8)
  return fig


def losses_figure(r: Mapping[str, Any]) -> Any | None:
  """One panel per loss term, as it entered the loss: the per-step mean over
  episodes with its 95% CI band (``step_loss_mean`` / ``_ci95``), or, for
  runs without per-step losses, the per-segment means as steps. None
  without losses."""
  import matplotlib.pyplot as plt

  per_step = r.get("step_loss_mean") or {}
  per_step_ci = r.get("step_loss_ci95") or {}
  segments = r.get("loss_means") or {}
  rows = loss_rows(per_step if per_step else segments)
  terms = list(rows)
  if not terms:
    return None
  ylabel = ("loss term, weighted as in the total"
            if parts_sum_to_total(rows) else "loss term (logged unweighted)")
  fig, axes = plt.subplots(1, len(terms), figsize=(4.2 * len(terms), 3.8),
                           squeeze=False, layout="constrained")
  ends = aggregate.evaluation_steps(r)
  for ax, term in zip(axes[0], terms, strict=True):
    if per_step:
      mean = per_step[term]
      xs = list(range(1, len(mean) + 1))
      ax.plot(xs, mean, lw=1.2, label="mean over episodes")
      ci = per_step_ci.get(term)
      if ci:
        ax.fill_between(xs, [m - c for m, c in zip(mean, ci, strict=True)],
                        [m + c for m, c in zip(mean, ci, strict=True)],
                        alpha=0.3, label=CI_LABEL)
    else:
      values = segments[term]
      bounds = ends if len(ends) == len(values) else list(
          range(1, len(values) + 1))
      # Segment k covers steps bounds[k-1]+1 .. bounds[k] (from 1).
      ax.stairs(values, [0.5, *(b + 0.5 for b in bounds)], baseline=None,
                label="segment mean over episodes (no per-step losses)")
    mark_window(ax, r, offset=0.5)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(LOSS_LABELS.get(term, term), fontsize=9)
    _include_zero(ax)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)  # The same entries in every panel.
  fig.suptitle(_title(r), fontsize=9)
  return fig


def write_plots(directory: str | os.PathLike[str],
                results: Mapping[str, Any]) -> list[Path]:
  """Writes the PNG plots (module docstring) of a results dict.

  Returns:
    The written files (none without episodes; the analysis, gradient and
    loss plots only when their data is present).
  """
  import matplotlib

  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt

  r = results
  if not r.get("episodes"):
    return []
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  written = []
  builders = (accuracy_figure, analysis_figure, gradient_figure,
              distribution_figure, losses_figure)
  for name, build in zip(PLOT_FILES, builders, strict=True):
    fig = build(r)
    if fig is None:
      continue
    path = directory / name
    tmp = directory / f".{name}.tmp{os.getpid()}.png"
    try:
      fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
      plt.close(fig)
    os.replace(tmp, path)
    written.append(path)
  return written
