"""One job over several seeds: ``config.seeds = "1,2,3"``.

The few-shot literature reports means over seeds (1, 2, 3). Each seed runs
as an ordinary job (``runner.run``) with ``config.seed`` set, in its own
workdir ``WORKDIR/seed_<s>`` (so each is resumable on its own, and a killed
multi-seed job rerun with the same command continues where it stopped), then
``jaxfsl.io.reports.write_seeds_summary`` writes ``WORKDIR/seeds.json`` and
``WORKDIR/summary.md`` (``jaxfsl.io.aggregate.over_seeds``):

* per seed: the mean final accuracy over its episodes ± the 95% interval
  (``1.96 std / sqrt(n)``), the same for the zero-shot accuracy, the
  episode count, whether it completed;
* over seeds: the mean of the per-seed means (final and zero-shot) and the
  sample std (ddof=1) of the per-seed final accuracies.

With ``eval_only`` the summary of the re-evaluated seeds goes to
``WORKDIR/eval_only/``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from absl import logging

from jaxfsl.io import aggregate, reports
from jaxfsl.paths import user_path
from jaxfsl.protocols.episodic import runner

SUMMARY_JSON = reports.SEEDS_FILE
SUMMARY_MD = "summary.md"


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
    ``aggregate.over_seeds`` of the seeds' results (what ``seeds.json``
    holds beside the job description).

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
  out = workdir / "eval_only" if config.eval_only else workdir
  runs = [results for _, _, results in per_seed]
  summary = aggregate.over_seeds(runs)
  if jax.process_index() == 0:
    reports.write_seeds_summary(out, runs)
  std = summary["accuracy_std_over_seeds"]
  logging.info("seeds %s: accuracy %s %%%s", list(seeds),
               f"{summary['accuracy_mean']:.2f}",
               "" if std is None else f" (sample std over seeds {std:.2f})")
  return summary
