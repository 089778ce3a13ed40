r"""One markdown table of datasets x methods from several job workdirs.

  python tools/summarize.py ~/runs/*_1shot ~/runs/*_5shot [--out table.md]

Each argument is a workdir (or its results.json); a folder holding no
results.json is searched one level down. Prints one table per way/shot in
the paper's layout (ISIC / EuroSAT / CropDisease / ChestX, then others, and
the average when every row has every dataset), cells "mean ± 95% CI";
incomplete runs are marked with *.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
  import jaxfsl.io.reports  # noqa: F401
except ImportError:  # Run from a checkout without `pip install -e .`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxfsl.io import reports


def find_results(paths: list[str]) -> list[Path]:
  """results.json files named by ``paths`` (workdirs, files, or folders of
  workdirs), in order, without duplicates."""
  found: list[Path] = []
  for p in map(Path, paths):
    p = p.expanduser()
    if p.is_file():
      candidates = [p]
    elif (p / "results.json").is_file():
      candidates = [p / "results.json"]
    elif p.is_dir():
      candidates = sorted(p.glob("*/results.json"))
    else:
      candidates = []
    if not candidates:
      print(f"warning: no results.json in {p}", file=sys.stderr)
    for c in candidates:
      if c.resolve() not in {f.resolve() for f in found}:
        found.append(c)
  return found


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", help="job workdirs")
  parser.add_argument("--out", default=None, help="also write the table here")
  parser.add_argument("--digits", type=int, default=2)
  args = parser.parse_args(argv)
  files = find_results(args.workdirs)
  if not files:
    print("ERROR: no results.json found", file=sys.stderr)
    return 1
  table = reports.comparison_table(
      [reports.load_results(f) for f in files], digits=args.digits)
  print(table)
  if args.out:
    reports.write_text_atomic(args.out, table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
