"""``tools/prepare_data.py`` support for the few-shot datasets.

    python tools/prepare_data.py --dataset caltech101 \
        --manual_dir ~/DATA/caltech-101 --data_dir ~/jaxfsl_data
    python tools/prepare_data.py --dataset fewshot/eurosat --manual_dir ...

``fewshot/<name>`` always names a few-shot dataset; the bare name works where
it does not clash with a CDFSL dataset (``eurosat`` is the CDFSL one).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jaxfsl.data.errors import DataError
from jaxfsl.data.fewshot import layouts


def choices(taken: Sequence[str]) -> tuple[str, ...]:
  """The ``--dataset`` values that mean a few-shot dataset."""
  bare = tuple(n for n in layouts.NAMES if n not in taken)
  return bare + tuple(f"fewshot/{n}" for n in layouts.NAMES)


def dataset_name(choice: str) -> str:
  return choice.removeprefix("fewshot/")


def summary(ds) -> str:
  """Images per split, classes, and the skipped inputs."""
  lines = [f"fewshot/{ds.name} prepared at {ds.path}: {ds.num_classes} "
           "classes; " + ", ".join(f"{s} {len(ds.split(s))}"
                                   for s in ds.splits) + " images."]
  skipped = ds.metadata.get("skipped", [])
  if skipped:
    lines.append(f"SKIPPED {len(skipped)} bad input(s):")
    lines += [f"  {s['reason']}" for s in skipped]
  return "\n".join(lines)


def prepare_from_args(args: argparse.Namespace) -> int:
  """Runs ``prepare_fewshot`` from prepare_data.py's arguments; prints the
  summary (stdout) or the error (stderr). Returns the exit status."""
  from jaxfsl.data.fewshot.builders import prepare_fewshot

  if not args.manual_dir:
    print(f"ERROR: --manual_dir is required for {args.dataset}:\n" +
          layouts.SPECS[dataset_name(args.dataset)].instructions(),
          file=sys.stderr)
    return 1
  try:
    ds = prepare_fewshot(dataset_name(args.dataset), args.data_dir,
                         args.manual_dir, skip_corrupt=args.skip_corrupt,
                         overwrite=args.overwrite,
                         num_workers=args.num_workers,
                         progress=not args.no_progress)
  except (DataError, ValueError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 1
  print(summary(ds))
  return 0
