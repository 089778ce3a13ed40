"""Markdown reports: one job's ``summary.md`` and tables over many jobs.

Reads results dicts (``results.json`` contents, see ``jaxfsl.io.reports``);
computes nothing but labels, sums for checking, and over-seed means through
``jaxfsl.io.aggregate``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxfsl.configs.base import RENAMED_KEYS, TRAINABLE_BLOCKS
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
LOSS_LABELS = {
    "vlm": "L_vlm",
    "anti_visual": "SVL: w_ad * L_ad",
    "relation": "RA: w_ra * L_ra",
    "visual": "w_v * L_v",
    "total": "total",
}
# |sum of parts - total| above this (relative to |total|, plus an absolute
# floor for totals near 0) marks a table logged by an older jaxfsl, whose
# parts were unweighted.
_SUM_RTOL, _SUM_ATOL = 1e-4, 1e-5


def dataset_label(name: str) -> str:
  """``"isic2018"`` -> ``"ISIC"``; ``"image_folder/x"`` -> ``"Image folder
  (x)"``; unknown names unchanged."""
  base, _, sub = name.partition("/")
  label = DATASET_LABELS.get(base, base)
  return f"{label} ({sub})" if sub and base == "image_folder" else label


def _fmt(value: float | None, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return f"{value:.{digits}f}"


def stage_labels(num_stages: int) -> list[str]:
  """Column labels of the per-stage numbers: ``1/5 T`` .. ``T``."""
  if num_stages == aggregate.NUM_STAGES:
    return list(aggregate.STAGE_LABELS)
  return ["T"] * num_stages


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]
                   ) -> str:
  """A Markdown table: ``header`` cells, a ``---`` rule, one line per row.

  Cells are written as given (no escaping of ``|``); no trailing newline.
  """
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def loss_rows(loss_means: Mapping[str, Sequence[float]]
              ) -> dict[str, list[float]]:
  """The loss terms worth a row: every term with a nonzero value, and
  ``total``. A term that is zero in every segment never entered the loss
  (older runs logged e.g. ``visual`` as zeros for variants without it)."""
  return {t: list(v) for t, v in loss_means.items()
          if t == "total" or any(x != 0.0 for x in v)}


def parts_sum_to_total(rows: Mapping[str, Sequence[float]]) -> bool:
  """Whether the non-``total`` rows add up to ``total`` in every segment."""
  if "total" not in rows:
    return False
  parts = [v for t, v in rows.items() if t != "total"]
  for k, total in enumerate(rows["total"]):
    s = sum(p[k] for p in parts)
    if not abs(s - total) <= _SUM_ATOL + _SUM_RTOL * abs(total):
      return False
  return True


def _segment_labels(results: Mapping[str, Any], num: int) -> list[str]:
  """``steps 1-4`` .. ``steps 17-22`` (steps counted from 1)."""
  ends = aggregate.evaluation_steps(results)
  if len(ends) != num:
    return stage_labels(num)
  starts = [0, *ends[:-1]]
  return [f"steps {a + 1}-{b}" for a, b in zip(starts, ends, strict=True)]


def _loss_section(results: Mapping[str, Any]) -> list[str]:
  rows = loss_rows(results["loss_means"])
  num = len(next(iter(rows.values())))
  lines = ["", "## Loss terms (mean over each evaluation segment)", ""]
  lines.append(markdown_table(["term", *_segment_labels(results, num)],
                      [[LOSS_LABELS.get(t, t)] + [_fmt(v) for v in values]
                       for t, values in rows.items()]))
  lines.append("")
  if parts_sum_to_total(rows):
    lines.append("Each term as it entered the loss: weighted, and 0 in the "
                 "steps where it was inactive, so the parts sum to `total`.")
  else:
    lines.append("**These terms were logged unweighted by an older jaxfsl: "
                 "they do not sum to `total`.**")
  window = aggregate.extra_terms_window(results)
  if window is not None and len(rows) > 2:
    lines.append(f"The extra terms are active in steps {window[0] + 1}-"
                 f"{window[1]} (counted from 1).")
  if "relation" in rows:
    lines.append(
        "RA's term is the release's \"KL\": PyTorch `kl_div(A_v, F, "
        "log_target=True)` applied to raw cosine matrices, which are not "
        "log-probabilities, so it is not a true KL divergence and can be "
        "negative (docs/method.md, L_ra). It is reported as the release "
        "computes it; there is no step-0 value (no previous A_v yet).")
  return lines


def summary_markdown(results: Mapping[str, Any]) -> str:
  """The one-job summary: the paper's table (method x dataset, mean ± CI),
  then accuracy and the analysis metrics at every fifth of training, and the
  loss terms per evaluation segment as they entered the loss."""
  r = results
  label = dataset_label(r["dataset"])
  lines = [f"# {r['method']} on {label}: {r['way']}-way {r['shot']}-shot"]
  if r.get("eval_only"):
    lines[0] += " (eval_only: saved adapters re-evaluated)"
  lines.append("")
  if r.get("demo"):
    lines += [f"> **{r['note']}**", ""]
  if r["num_episodes"] >= 2:
    lines.append(
        f"{r['way']}-way {r['shot']}-shot accuracy (%), mean ± 95% CI "
        f"(1.96 std / sqrt(n)) over {r['num_episodes']} episodes:")
  else:  # results.json's *_ci95 are null: one value has no interval.
    lines.append(
        f"{r['way']}-way {r['shot']}-shot accuracy (%) over "
        f"{r['num_episodes']} episode (no 95% CI with fewer than 2):")
  lines.append("")
  lines.append(markdown_table(
      ["Method", label],
      [[r["method"], aggregate.format_mean_ci(r["accuracy_mean"],
                                              r["accuracy_ci95"])],
       ["zero-shot (no fine-tuning)", aggregate.format_mean_ci(
           r["zero_shot_accuracy_mean"], r["zero_shot_accuracy_ci95"])]]))
  status = "complete" if r.get("complete") else "INCOMPLETE"
  lines += ["", f"Model: {r['model']} · T = {r['steps']} steps · "
            f"{r['query']} queries per class · seed {r['seed']} · episodes "
            f"{r['num_episodes']}/{r['episodes_expected']} ({status})"]
  if "anti_visual" in (r.get("inert_terms") or []):
    lines.append(f"SVL (L_ad) was inert: trainable {r.get('trainable')!r} "
                 "leaves the image features fixed, so L_ad has no gradient "
                 "and was skipped.")
  if r.get("num_nonfinite"):
    lines.append(f"**{r['num_nonfinite']} episode(s) had a non-finite "
                 "loss.**")
  if r.get("max_abs_diff_vs_training") is not None:
    lines.append("Max |re-evaluated - training accuracy| per episode: "
                 f"{r['max_abs_diff_vs_training']:.4f} points.")

  num_stages = len(r["stage_accuracy_mean"])
  steps = aggregate.evaluation_steps(r)
  header = ["", "zero-shot", *stage_labels(num_stages)]
  if len(steps) == num_stages and num_stages == aggregate.NUM_STAGES:
    header[2:] = [f"{s} (step {n})" for s, n in zip(header[2:], steps,
                                                    strict=True)]
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
  lines.append(markdown_table(header, rows))

  if r.get("loss_means"):
    lines += _loss_section(r)
  if not r.get("eval_only"):
    from jaxfsl.io import plots  # The file names only; matplotlib is lazy.

    lines += ["", "Plots: " + ", ".join(f"plots/{p}"
                                        for p in plots.PLOT_FILES)]
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Tables over several jobs (tools/summarize.py).
# ---------------------------------------------------------------------------

# Settings shown in a row label when they differ between runs of one
# dataset, in this order; results' top-level keys (``steps`` is the
# resolved T).
_LABEL_KEYS = ("model", "trainable", "steps", "seed")
# Config keys never used to tell runs apart: paths, machine and bookkeeping
# settings, and keys already covered by the top-level ones above.
_IGNORED_CONFIG = ("dataset.", "model.checkpoint", "model.tokenizer",
                   "jax_cache_dir", "restart", "multihost", "save_adapters",
                   "episodes_per_batch", "eval_only", "seeds", "seed",
                   "steps", "epochs", "shot", "way", "method.variant",
                   "demo", "episodes")
# Config keys (exact names) that the top-level ``model`` already tells
# apart: a random-init run's model is "random-init <model.init>". (Not a
# prefix: model.init_seed is not in the model's name.)
_COVERED_CONFIG = ("model.init",)


def seeds_count(n: int) -> str:
  """ "1 seed", "3 seeds"."""
  return f"{n} seed" + ("" if n == 1 else "s")


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _settings(r: Mapping[str, Any]) -> dict[str, Any]:
  """The settings that may tell this run from another, in label order
  (without the blocks of the trainables it does not use)."""
  config = r.get("config") or {}
  out = {k: r.get(k, config.get(k)) for k in _LABEL_KEYS}
  trainable = out["trainable"] or "lora"  # Runs from before trainables.
  # A trainable reads only its own block: a CoOp row's lora.* keys tell it
  # from nothing.
  unused = tuple(f"{b}." for b in TRAINABLE_BLOCKS if b != trainable)
  for k, v in _flat(config).items():
    k = RENAMED_KEYS.get(k, k)  # A run saved before a key was renamed.
    if (k not in out and k not in _COVERED_CONFIG
        and not k.startswith(_IGNORED_CONFIG) and not k.startswith(unused)):
      out[k] = tuple(v) if isinstance(v, list) else v
  return out


def _short(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, tuple):
    return ",".join(map(str, value))
  return str(value)


def row_labels(runs: Sequence[Mapping[str, Any]]) -> list[str]:
  """Row labels for runs sharing a table: the method, then every setting
  (model, trainable, T, seed, then other config keys) that differs between
  two runs of the same dataset, e.g. ``CLIP-LoRA + SVL + RA (steps=20,
  seed=2)``; the workdir name is added when that still leaves two runs of
  one dataset on one row."""
  settings = [_settings(r) for r in runs]
  by_dataset: dict[str, list[int]] = {}
  for i, r in enumerate(runs):
    by_dataset.setdefault(r["dataset"], []).append(i)
  differing = []
  # Every row's keys (a CoOp row has no lora.* ones), compared between the
  # rows that have them and shown on those.
  for key in dict.fromkeys(k for s in settings for k in s):
    for members in by_dataset.values():
      if len({repr(settings[i][key]) for i in members
              if key in settings[i]}) > 1:
        differing.append(key)
        break
  labels = []
  for r, s in zip(runs, settings, strict=True):
    shown = ", ".join(f"{k}={_short(s[k])}" for k in differing if k in s)
    labels.append(r["method"] + (f" ({shown})" if shown else ""))
  keys = [(n, r["dataset"]) for n, r in zip(labels, runs, strict=True)]
  if len(set(keys)) < len(keys):
    labels = [f"{n} [{Path((r.get('run') or {}).get('workdir', '?')).name}]"
              for n, r in zip(labels, runs, strict=True)]
  keys = [(n, r["dataset"]) for n, r in zip(labels, runs, strict=True)]
  if len(set(keys)) < len(keys):
    labels = [f"{n} #{i}" for i, n in enumerate(labels)]
  return labels


def _dataset_key(d: str) -> tuple[int, str]:
  return (DATASET_ORDER.index(d) if d in DATASET_ORDER
          else len(DATASET_ORDER), d)


def _cell(r: Mapping[str, Any], digits: int) -> str:
  if "per_seed" in r:  # An over_seeds group.
    cell = f"{r['accuracy_mean']:.{digits}f} ({seeds_count(r['num_seeds'])})"
  else:
    cell = aggregate.format_mean_ci(r["accuracy_mean"], r["accuracy_ci95"],
                                    digits)
    cell += f" (n={r['num_episodes']})"
  return cell + ("" if r.get("complete", True) else " *")


def comparison_table(all_results: Sequence[Mapping[str, Any]],
                     digits: int = 2) -> str:
  """Datasets x methods markdown tables (one per way/shot), paper layout.

  Args:
    all_results: results dicts, or seed groups (``seed_group``: one job
      over several seeds; its cell is the mean over seeds, and a table per
      group below gives each seed's mean ± 95% CI over episodes).
    digits: decimals of the accuracies.

  Columns: datasets in the paper's order (then any others), and "Average"
  when every row covers the same datasets. Rows: methods, labelled with the
  settings that differ between runs of a dataset (``row_labels``). Cells:
  mean ± 95% CI over episodes and the episode count n; a ``*`` marks
  incomplete runs.
  """
  groups: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
  for r in all_results:
    groups.setdefault((r["way"], r["shot"]), []).append(r)
  out = []
  for (way, shot), runs in sorted(groups.items()):
    datasets = sorted({r["dataset"] for r in runs}, key=_dataset_key)
    names = row_labels(runs)
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
        row.append("-" if r is None else _cell(r, digits))
      if full and len(datasets) > 1:
        avg = sum(by_dataset[d]["accuracy_mean"] for d in datasets) / len(
            datasets)
        row.append(f"{avg:.{digits}f}")
      rows.append(row)
    out.append(f"### {way}-way {shot}-shot accuracy (%), mean ± 95% CI "
               "over episodes (n episodes)\n")
    out.append(markdown_table(header, rows))
    notes = []
    if any(not r.get("complete", True) for r in runs):
      notes.append("\\* incomplete run (fewer episodes than planned).")
    if any(r.get("demo") for r in runs):
      notes.append("Demo runs are pipeline checks, not results.")
    if any("per_seed" in r for r in runs):
      notes.append("Cells with seeds: the mean over seeds of each seed's "
                   "mean; each seed below.")
    out += ["", *notes, ""] if notes else [""]
    for name, r in zip(names, runs, strict=True):
      if "per_seed" in r:
        out += [f"#### {name} on {dataset_label(r['dataset'])}: per seed\n",
                seeds_table(r, digits), ""]
  return "\n".join(out)


def seed_group(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """One job's per-seed results as one entry for ``comparison_table``:
  the first run's description (dataset, way, shot, method, ...) and
  ``aggregate.over_seeds``' numbers. Raises its ValueError."""
  combined = aggregate.over_seeds(runs)
  first = dict(runs[0])
  for k in ("episodes", "accuracy_ci95", "zero_shot_accuracy_ci95",
            "stage_accuracy_mean", "stage_accuracy_ci95"):
    first.pop(k, None)
  first.update(combined)
  # Shown as "seed=1,2,3" when row labels need the seed.
  first["seed"] = ",".join(str(s) for s in combined["seeds"])
  return first


def seeds_table(group: Mapping[str, Any], digits: int = 2) -> str:
  """Per-seed table of a ``seed_group`` / ``aggregate.over_seeds`` result:
  one row per seed (mean ± 95% CI over episodes, n), then the mean over
  seeds (and the sample std, ddof=1, of the per-seed means)."""
  rows = [[str(p["seed"]),
           aggregate.format_mean_ci(p["accuracy_mean"], p["accuracy_ci95"],
                                    digits)
           + ("" if p["complete"] else " *"),
           aggregate.format_mean_ci(p["zero_shot_accuracy_mean"],
                                    p["zero_shot_accuracy_ci95"], digits),
           str(p["num_episodes"])] for p in group["per_seed"]]
  std = group["accuracy_std_over_seeds"]  # None for one seed.
  rows.append([f"mean over {seeds_count(group['num_seeds'])}",
               f"{group['accuracy_mean']:.{digits}f}" + (
                   "" if std is None else f" (sample std {std:.{digits}f})"),
               f"{group['zero_shot_accuracy_mean']:.{digits}f}",
               str(group["num_episodes"])])
  return markdown_table(["seed", "accuracy (%), mean ± 95% CI",
                 "zero-shot (%)", "n episodes"], rows)
