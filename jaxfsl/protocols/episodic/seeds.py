"""One job over several seeds: ``config.seeds = "1,2,3"``.

The few-shot literature reports means over seeds (1, 2, 3). Each seed runs
as an ordinary job (``runner.run``) with ``config.seed`` set, in its own
workdir ``WORKDIR/seed_<s>`` (so each is resumable on its own, and a killed
multi-seed job rerun with the same command continues where it stopped), then
``WORKDIR/seeds_summary.json`` and ``seeds_summary.md`` collect:

* per seed: the mean final accuracy over its episodes ± the 95% interval
  (``1.96 std / sqrt(n)``, ``jaxfsl.io.aggregate.mean_ci95``), the same for
  the zero-shot accuracy, the episode count, whether it completed;
* over seeds: the mean of the per-seed means and their standard deviation
  (ddof=0), for the final and zero-shot accuracies.

With ``eval_only`` the summary of the re-evaluated seeds goes to
``WORKDIR/eval_only/``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from jaxfsl.io import aggregate, reports
from jaxfsl.paths import user_path
from jaxfsl.protocols.episodic import runner

SUMMARY_JSON = "seeds_summary.json"
SUMMARY_MD = "seeds_summary.md"
# Copied from each seed's results into the summary's per-seed rows.
_PER_SEED_KEYS = ("num_episodes", "complete", "accuracy_mean",
                  "accuracy_ci95", "zero_shot_accuracy_mean",
                  "zero_shot_accuracy_ci95")
_DESCRIBE_KEYS = ("dataset", "way", "shot", "query", "steps", "variant",
                  "method", "model", "demo", "note")


def parse_seeds(value: Any) -> tuple[int, ...]:
  """``"1,2,3"`` (or an int, or a sequence of ints) -> (1, 2, 3).

  Raises:
    runner.ConfigError: not integers, negative, repeated, or empty.
  """
  if isinstance(value, str):
    parts = [p.strip() for p in value.replace(" ", ",").split(",")
             if p.strip()]
  elif isinstance(value, int):
    parts = [value]
  elif isinstance(value, Sequence):
    parts = list(value)
  else:
    raise runner.ConfigError(
        f"seeds={value!r}: expected a comma-separated list like '1,2,3'")
  seeds, bad = [], []
  for p in parts:
    try:
      s = int(p)
    except (TypeError, ValueError):
      bad.append(p)
      continue
    if s < 0 or (isinstance(p, float) and not p.is_integer()):
      bad.append(p)
    else:
      seeds.append(s)
  if bad or not seeds:
    raise runner.ConfigError(
        f"seeds={value!r}: expected non-negative integers like '1,2,3'"
        + (f"; not valid: {bad}" if bad else ""))
  repeated = sorted({s for s in seeds if seeds.count(s) > 1})
  if repeated:
    raise runner.ConfigError(f"seeds={value!r}: seed(s) {repeated} repeated")
  return tuple(seeds)


def seed_workdir(workdir: str | os.PathLike[str], seed: int) -> Path:
  return user_path(workdir) / f"seed_{seed}"


def seed_config(config: runner.ConfigDict, seed: int) -> runner.ConfigDict:
  """A copy of ``config`` for one seed (``seeds`` cleared)."""
  c = copy.deepcopy(config)
  c.seed = int(seed)
  c.seeds = ""
  return c


def summarize(per_seed: Sequence[tuple[int, Path, dict[str, Any]]]
              ) -> dict[str, Any]:
  """The seeds summary from (seed, workdir, results dict) per seed.

  Returns:
    dict: the job description (dataset, way, shot, method, ...), ``seeds``,
    ``per_seed`` rows (seed, workdir and ``_PER_SEED_KEYS`` copied from each
    seed's results), ``accuracy_mean`` / ``accuracy_std`` and
    ``zero_shot_accuracy_mean`` / ``_std`` over the seeds' means (%),
    ``complete`` (every seed complete).
  """
  rows = []
  for seed, workdir, results in per_seed:
    row = {"seed": int(seed), "workdir": str(workdir)}
    row.update({k: results.get(k) for k in _PER_SEED_KEYS})
    rows.append(row)
  first = per_seed[0][2] if per_seed else {}
  summary = {k: first[k] for k in _DESCRIBE_KEYS if k in first}
  summary["seeds"] = [r["seed"] for r in rows]
  for key in ("accuracy", "zero_shot_accuracy"):
    means = [r[f"{key}_mean"] for r in rows
             if r[f"{key}_mean"] is not None
             and not math.isnan(r[f"{key}_mean"])]
    summary[f"{key}_mean"] = (float(np.mean(means)) if means else math.nan)
    summary[f"{key}_std"] = (float(np.std(means)) if means else math.nan)
  summary["complete"] = bool(rows) and all(r["complete"] for r in rows)
  summary["per_seed"] = rows
  return summary


def markdown(summary: dict[str, Any]) -> str:
  """``seeds_summary.md``: one row per seed, then the mean over seeds."""
  fmt = aggregate.format_mean_ci
  title = " ".join(str(summary.get(k, "")) for k in ("method", "dataset"))
  lines = [f"# {title.strip() or 'Seeds'}: {summary.get('way', '?')}-way "
           f"{summary.get('shot', '?')}-shot over seeds "
           f"{', '.join(str(s) for s in summary['seeds'])}", ""]
  if summary.get("note"):
    lines += [f"**{summary['note']}**", ""]
  lines += ["| seed | episodes | accuracy % (mean ± 95% CI) | zero-shot % |",
            "|---:|---:|---:|---:|"]
  for r in summary["per_seed"]:
    done = "" if r["complete"] else " (incomplete)"
    lines.append(
        f"| {r['seed']} | {r['num_episodes']}{done} | "
        f"{fmt(r['accuracy_mean'], r['accuracy_ci95'])} | "
        f"{fmt(r['zero_shot_accuracy_mean'], r['zero_shot_accuracy_ci95'])} |")
  lines += [
      "",
      f"Mean over {len(summary['seeds'])} seeds: accuracy "
      f"{summary['accuracy_mean']:.2f} % (std over seeds "
      f"{summary['accuracy_std']:.2f}), zero-shot "
      f"{summary['zero_shot_accuracy_mean']:.2f} % (std "
      f"{summary['zero_shot_accuracy_std']:.2f}).",
      "",
      "The ± of each seed is the 95% interval over its episodes "
      "(1.96 std / sqrt(n)); the std over seeds is of the seed means.", ""]
  return "\n".join(lines)


def run_seeds(config: runner.ConfigDict, workdir: str | os.PathLike[str], *,
              restart: bool | None = None,
              on_batch: Callable[[dict[str, Any]], None] | None = None
              ) -> dict[str, Any]:
  """Runs (or resumes) the job once per seed of ``config.seeds``.

  Args:
    config: a job config with ``seeds`` set (e.g. "1,2,3"); ``seed`` is
      ignored.
    workdir: the parent folder; seed s runs in ``workdir/seed_<s>``.
    restart: passed to every seed's ``runner.run``.
    on_batch: likewise.

  Returns:
    The summary written to ``seeds_summary.json`` (see ``summarize``).

  Raises:
    runner.ConfigError: bad ``seeds``; and whatever ``runner.run`` raises
      for a seed (the seeds before it keep their finished results).
  """
  import jax

  seeds = parse_seeds(config.seeds)
  workdir = user_path(workdir)
  per_seed = []
  for seed in seeds:
    logging.info("seeds: running seed %d of %s in %s", seed, list(seeds),
                 seed_workdir(workdir, seed))
    results = runner.run(seed_config(config, seed),
                         seed_workdir(workdir, seed), restart=restart,
                         on_batch=on_batch)
    per_seed.append((seed, seed_workdir(workdir, seed), results))
  summary = summarize(per_seed)
  out = workdir / "eval_only" if config.eval_only else workdir
  if config.eval_only:
    summary["eval_only"] = True
  if jax.process_index() == 0:
    reports.write_text_atomic(out / SUMMARY_JSON,
                              json.dumps(summary, indent=2) + "\n")
    reports.write_text_atomic(out / SUMMARY_MD, markdown(summary))
  logging.info("seeds %s: accuracy %.2f %% (std over seeds %.2f)",
               list(seeds), summary["accuracy_mean"], summary["accuracy_std"])
  return summary
