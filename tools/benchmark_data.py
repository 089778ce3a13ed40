r"""Episodes prepared per second by the host pipeline (synthetic data).

  python tools/benchmark_data.py [--episodes 64] [--num_workers 8]

Builds (once) a synthetic dataset of --source_size images, then times
``jaxfsl.data.iterate_batches`` on 5-way 1-shot and 5-shot episodes (15
queries per class) at --image_size, and prints one JSON line per shot.
Decoding, resizing and the 5 support views are all included; normalisation
is not (it runs on device).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

try:
  import jaxfsl.data  # noqa: F401
except ImportError:  # Run from a checkout without `pip install -e .`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxfsl.data import EpisodeSampler, iterate_batches
from jaxfsl.data.prepare import prepare_dataset
from jaxfsl.paths import user_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--episodes", type=int, default=64,
                 help="episodes timed per shot (after one warm-up batch)")
  p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
  p.add_argument("--way", type=int, default=5)
  p.add_argument("--query", type=int, default=15)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--source_size", type=int, default=256,
                 help="side of the stored synthetic images")
  p.add_argument("--num_classes", type=int, default=20)
  p.add_argument("--images_per_class", type=int, default=40)
  p.add_argument("--num_workers", type=int, default=min(8, os.cpu_count()
                                                        or 1))
  p.add_argument("--episodes_per_batch", type=int, default=1)
  p.add_argument("--prefetch", type=int, default=2)
  p.add_argument("--data_dir", default=None,
                 help="where to build the synthetic dataset (default: a "
                 "temporary folder)")
  return p.parse_args(argv)


def run(args: argparse.Namespace, data_dir: str) -> list[dict[str, object]]:
  dataset = prepare_dataset(
      "synthetic", data_dir, synthetic_classes=args.num_classes,
      synthetic_images_per_class=args.images_per_class,
      synthetic_image_size=args.source_size, progress=False).dataset
  results = []
  for shot in args.shots:
    sampler = EpisodeSampler(dataset, way=args.way, shot=shot,
                             query=args.query, image_size=args.image_size)
    batches = lambda start, n, s=sampler: iterate_batches(
        s, range(start, start + n), args.episodes_per_batch,
        num_workers=args.num_workers, prefetch=args.prefetch)
    # Warm-up (threads, file handles) on episodes that are not timed.
    for _ in batches(10**6, args.episodes_per_batch):
      pass
    start = time.perf_counter()
    count = sum(len(b["index"]) for b in batches(0, args.episodes))
    seconds = time.perf_counter() - start
    results.append({
        "way": args.way, "shot": shot, "query": args.query,
        "image_size": args.image_size, "source_size": args.source_size,
        "num_workers": args.num_workers,
        "episodes_per_batch": args.episodes_per_batch, "episodes": count,
        "seconds": round(seconds, 3),
        "episodes_per_s": round(count / seconds, 2),
        "cpus": os.cpu_count(),
    })
  return results


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  if args.data_dir:
    results = run(args, str(user_path(args.data_dir)))
  else:
    with tempfile.TemporaryDirectory(prefix="jaxfsl_bench_") as tmp:
      results = run(args, tmp)
  for r in results:
    print(json.dumps(r), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
