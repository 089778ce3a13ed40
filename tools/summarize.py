r"""One markdown table of datasets x methods from several job workdirs.

  python tools/summarize.py ~/runs/*_1shot ~/runs/*_5shot [--out table.md]

Each argument is a workdir (or its results.json); a folder holding no
results.json is searched one level down. Prints one table per way/shot in
the paper's layout (ISIC / EuroSAT / CropDisease / ChestX, then others, and
the average when every row has every dataset), cells "mean ± 95% CI (n=
episodes)"; incomplete runs are marked with *. Rows are labelled with the
method and every setting that differs between runs of one dataset (model,
trainable, T, seed, other config keys).

A multi-seed job (``--config.seeds=1,2,3``: one ``seed_<s>`` workdir per
seed) is one row: the cell is the mean over seeds, and a table per job
gives each seed's mean ± 95% CI over episodes.

Few-shot jobs (``protocol: fewshot``, configs/fewshot/) found among them
are printed after that as the datasets x shots table of
``jaxfsl.protocols.fewshot.table`` (one per model and variant, mean test
top-1 over the seeds found).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

try:
  import jaxfsl.io.reports  # noqa: F401
except ImportError:  # Run from a checkout without `pip install -e .`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxfsl.io import reports

SEED_DIR = re.compile(r"seed_(-?\d+)$")


def _seed_results(p: Path) -> list[Path]:
  return sorted(f for f in p.glob("seed_*/results.json")
                if SEED_DIR.match(f.parent.name))


def _job_results(p: Path) -> list[Path]:
  """A job workdir's results: its seeds' for a multi-seed job (whose own
  results.json, if any, is not a per-seed result), else its own."""
  seeds = _seed_results(p)
  if seeds:
    return seeds
  return [p / "results.json"] if (p / "results.json").is_file() else []


def _not_results(path: Path) -> str | None:
  """Why the file ``path`` is not a results.json (None when it is one)."""
  try:
    obj = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, ValueError) as e:
    return f"not a results.json ({type(e).__name__}: {e})"
  return None if isinstance(obj, dict) else "not a results.json (no object)"


def find_results(paths: list[str]) -> list[Path]:
  """results.json files named by ``paths`` (workdirs, files, folders of
  workdirs, multi-seed workdirs holding ``seed_<s>/``), in order, without
  duplicates."""
  found: list[Path] = []
  for p in map(Path, paths):
    p = p.expanduser()
    if p.is_file():
      # A stray file among ``~/runs/*`` (a .log, a note) is skipped, named.
      reason = _not_results(p)
      if reason:
        print(f"warning: skipping {p}: {reason}; pass job workdirs or "
              "their results.json", file=sys.stderr)
        continue
      candidates = [p]
    elif p.is_dir():
      candidates = _job_results(p) or [
          f for child in sorted(p.iterdir()) if child.is_dir()
          for f in _job_results(child)]
    else:
      candidates = []
    if not candidates:
      print(f"warning: no results.json in {p}", file=sys.stderr)
    for c in candidates:
      if c.resolve() not in {f.resolve() for f in found}:
        found.append(c)
  return found


def group_seeds(files: list[Path]) -> list[dict[str, Any]]:
  """Loads the results; those in ``seed_<s>`` folders of one parent become
  one ``reports.seed_group`` entry (in the place of the first). Raises
  ValueError (naming the folder) when such runs are not one job."""
  groups: dict[Path, list[dict[str, Any]]] = {}
  order: list[Path | dict[str, Any]] = []
  for f in files:
    results = reports.load_results(f)
    if SEED_DIR.match(f.parent.name):
      parent = f.parent.parent
      if parent not in groups:
        groups[parent] = []
        order.append(parent)
      groups[parent].append(results)
    else:
      order.append(results)
  out = []
  for item in order:
    if isinstance(item, Path):
      try:
        out.append(reports.seed_group(groups[item]))
      except ValueError as e:
        raise ValueError(f"{item}: {e}") from None
    else:
      out.append(item)
  return out


def split_fewshot(files: list[Path]) -> tuple[list[Path], list[dict]]:
  """(episodic results files, loaded few-shot results): few-shot jobs have
  no episodes and go to their own table."""
  episodic, fewshot = [], []
  for f in files:
    results = reports.load_results(f)
    if results.get("protocol") == "fewshot":
      fewshot.append(results)
    else:
      episodic.append(f)
  return episodic, fewshot


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", help="job workdirs")
  parser.add_argument("--out", default=None, help="also write the table here")
  parser.add_argument("--digits", type=int, default=2)
  args = parser.parse_args(argv)
  files = find_results(args.workdirs)
  if not files:
    print(f"ERROR: no results.json found in {' '.join(args.workdirs)}; "
          "pass job workdirs or their results.json", file=sys.stderr)
    return 1
  files, fewshot = split_fewshot(files)
  tables = []
  if files:
    try:
      runs = group_seeds(files)
    except ValueError as e:
      print(f"ERROR: {e}", file=sys.stderr)
      return 1
    tables.append(reports.comparison_table(runs, digits=args.digits))
  if fewshot:
    from jaxfsl.protocols.fewshot.table import fewshot_table

    tables.append(fewshot_table(fewshot))
  table = "\n".join(tables)
  print(table)
  if args.out:
    reports.write_text_atomic(args.out, table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
