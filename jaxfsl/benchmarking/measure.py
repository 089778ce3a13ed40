"""What every benchmark measures the same way: wall time of JAX calls, bytes
and peak memory, and the machine the figures were taken on."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxfsl import parallel

# ------------------------------------------------------------------ timing


def timed(fn: Callable[[], Any]) -> float:
  """Seconds taken by ``fn()``, its JAX outputs waited for."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int
                ) -> dict[str, list[float]]:
  """Times each of ``fns`` ``repeats`` times, alternating between them.

  On a shared machine the load changes from second to second; alternating
  the contenders and comparing medians keeps them under the same conditions.

  Returns:
    name -> list of seconds, one per repeat.
  """
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(timed(fn))
  return times


def median(xs: Sequence[float]) -> float:
  return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> dict:
  """min, max and the interquartile range of ``xs`` (for ratios/timings)."""
  xs = sorted(float(x) for x in xs)
  if len(xs) == 1:
    return {"min": xs[0], "max": xs[0], "iqr": 0.0}
  q = statistics.quantiles(xs, n=4, method="inclusive")
  return {"min": xs[0], "max": xs[-1], "iqr": q[2] - q[0]}


# ------------------------------------------------------------------ memory


def tree_bytes(tree) -> int:
  """Bytes of every array in a pytree."""
  return int(sum(x.size * x.dtype.itemsize
                 for x in jax.tree_util.tree_leaves(tree)))


def max_rss_bytes() -> int:
  """This process's peak resident set size (Linux reports KiB)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(rss if sys.platform == "darwin" else rss * 1024)


def peak_memory_bytes() -> tuple[int, str]:
  """(peak bytes, what was measured): the accelerator's peak bytes in use
  where ``memory_stats`` reports it (summed over local devices), else the
  process's peak RSS."""
  peaks = parallel.device_memory_stat(None, "peak_bytes_in_use")
  if peaks:
    return sum(peaks), "device_peak_bytes_in_use"
  return max_rss_bytes(), "process_max_rss"


# ----------------------------------------------------------------- machine


def load_average() -> list[float] | None:
  """The 1/5/15-minute load averages (the machine's other work), or None
  where the platform has none."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def machine() -> dict[str, Any]:
  """The report fields naming where a figure was taken: ``device_kind``,
  ``device_count``, ``platform``, ``xla_flags`` (the environment's
  ``XLA_FLAGS``), ``jax_version``."""
  devices = jax.devices()
  return {"device_kind": devices[0].device_kind,
          "device_count": len(devices),
          "platform": devices[0].platform,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "jax_version": jax.__version__}
