"""Compile-time figures: cold and warm-cache compile seconds of a step and
XLA's static memory analysis of the compiled program."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any, Protocol

import jax


class Compilable(Protocol):
  """A step that lowers and compiles itself (``JaxStep``)."""

  def compile(self) -> float:
    """Compiles; returns the seconds it took."""


def compiled_memory(compiled: Any) -> dict[str, int]:
  """XLA's static buffer sizes of a ``jax.stages.Compiled`` (bytes):
  ``temp_size_in_bytes``, ``argument_size_in_bytes``,
  ``output_size_in_bytes``, ``alias_size_in_bytes`` where the backend
  reports them; {} where it does not."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it.
    return {}
  if stats is None:
    return {}
  out = {}
  for name in ("temp_size_in_bytes", "argument_size_in_bytes",
               "output_size_in_bytes", "alias_size_in_bytes"):
    value = getattr(stats, name, None)
    if value is not None:
      out[name] = int(value)
  return out


def compile_cold_and_warm(step: Compilable, cache_dir: str | None,
                          log: Callable[[str], None]
                          ) -> tuple[float, float | None, bool | None]:
  """Compiles ``step`` with an empty persistent cache, then again (in-memory
  caches cleared) from that cache.

  Args:
    step: what to compile.
    cache_dir: the persistent cache directory; None: a fresh temporary one
      (so the first compile is a cold one); "off" (``compile_cache.OFF``):
      one compile, no warm figure.
    log: progress messages.

  Returns:
    (cold seconds, warm seconds or None with ``cache_dir="off"``, whether
    the warm compile was served by the cache).
  """
  from jaxfsl import compile_cache

  if cache_dir is not None and str(cache_dir).lower() in compile_cache.OFF:
    log("compiling the step")
    seconds = step.compile()
    log(f"compiled in {seconds:.1f} s")
    return seconds, None, None
  temporary = None
  if cache_dir is None:
    temporary = tempfile.TemporaryDirectory(prefix="jaxfsl_bench_cache_")
    cache_dir = temporary.name
  compile_cache.enable(cache_dir)
  try:
    log(f"compiling the step (cold; cache {cache_dir})")
    cold = step.compile()
    jax.clear_caches()
    with compile_cache.CompileMonitor() as monitor:
      warm = step.compile()
    log(f"compiled in {cold:.1f} s cold, {warm:.1f} s from the cache")
  finally:
    compile_cache.disable()
    if temporary is not None:
      temporary.cleanup()
  return cold, warm, monitor.cache_hits > 0
