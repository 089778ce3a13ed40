"""JAX's persistent compilation cache, on by default for jaxfsl jobs.

An episode program compiles for tens of seconds on a CPU and minutes for
large backbones on accelerators; a resumed or repeated job with the same
model, episode shape and devices finds the compiled executable on disk and
starts training at once. jaxfsl caches every program whatever its compile
time or size (jax's defaults skip programs compiling in under a second,
which includes the CPU programs of small models).

The cache directory, first that applies:
  1. ``directory`` given to ``enable`` (e.g. ``config.jax_cache_dir``);
  2. the environment variable ``JAXFSL_CACHE_DIR`` (``off`` disables it);
  3. ``<workdir>/jax_cache`` when a workdir is given;
  4. none (the cache stays off).
Entries are keyed by the program, the compile options, the devices and the
jax/jaxlib versions, so a stale entry is never used for another setup.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from jaxfsl.paths import user_path

CACHE_ENV = "JAXFSL_CACHE_DIR"
OFF = ("off", "none", "0", "false")

# jax.monitoring events (jax/_src/compiler.py, jax/_src/dispatch.py).
HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHED_REQUEST_EVENT = "/jax/compilation_cache/compile_requests_use_cache"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def cache_dir(directory: str | os.PathLike | None = None,
              workdir: str | os.PathLike | None = None) -> Path | None:
  """The cache directory ``enable`` would use (see the module docstring),
  or None for no cache."""
  for value in (directory, os.environ.get(CACHE_ENV)):
    if value is not None and str(value) != "":
      if str(value).lower() in OFF:
        return None
      return user_path(value)
  if workdir is not None and str(workdir) != "":
    return user_path(workdir) / "jax_cache"
  return None


def enable(directory: str | os.PathLike | None = None,
           workdir: str | os.PathLike | None = None) -> Path | None:
  """Turns on JAX's persistent compilation cache for every program.

  Call it before the first compilation of the job (later calls also work:
  jax's cache object is reset to the new directory).

  Args:
    directory: the cache directory (created); see the module docstring for
      the defaults.
    workdir: the job's work directory; the cache goes to
      ``<workdir>/jax_cache`` when neither ``directory`` nor
      ``JAXFSL_CACHE_DIR`` is set.

  Returns:
    The directory in use, or None when the cache is off.

  Raises:
    OSError: the directory cannot be created (names it).
  """
  path = cache_dir(directory, workdir)
  if path is None:
    return None
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OSError(f"compilation cache directory {str(path)!r} cannot be "
                  f"created ({e}); set {CACHE_ENV} to another directory or "
                  f"to 'off'") from e
  jax.config.update("jax_compilation_cache_dir", str(path))
  # Cache every program: jax's defaults (1 s, filesystem-chosen size) skip
  # the small CPU programs that tests and demos compile.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  # jax initialises its cache object once, at the first compilation: make
  # it pick up this directory even if something was compiled already.
  _reset_jax_cache()
  return path


def _reset_jax_cache() -> None:
  """jax's ``reset_cache()``, only where jax has initialised a cache object
  (a compilation ran with a cache directory set): otherwise the next
  compilation reads the directory anyway, and the reset would only log
  "Resetting cache at <empty>"."""
  from jax._src import compilation_cache as jax_cache

  # Unknown jax internals (another version): reset, as before.
  if (getattr(jax_cache, "_cache", object()) is None
      and not getattr(jax_cache, "_cache_initialized", True)):
    return
  from jax.experimental.compilation_cache import compilation_cache

  compilation_cache.reset_cache()


class CompileMonitor:
  """Counts XLA compilations and persistent-cache hits while active (a
  context manager over ``jax.monitoring`` events; for logs and tests).

  Attributes:
    compiles: backend compilations requested (cache hits included: a hit
      replaces XLA's compile by a read).
    seconds: their total wall time, seconds.
    cache_requests: those that consulted the persistent cache.
    cache_hits: those served from it.
  """

  def __init__(self):
    self.compiles = 0
    self.seconds = 0.0
    self.cache_requests = 0
    self.cache_hits = 0
    self._active = False

  def _event(self, event: str, **_) -> None:
    if self._active:
      if event == HIT_EVENT:
        self.cache_hits += 1
      elif event == CACHED_REQUEST_EVENT:
        self.cache_requests += 1

  def _duration(self, event: str, duration: float, **_) -> None:
    if self._active and event == COMPILE_EVENT:
      self.compiles += 1
      self.seconds += float(duration)

  def __enter__(self) -> CompileMonitor:
    self._active = True
    jax.monitoring.register_event_listener(self._event)
    jax.monitoring.register_event_duration_secs_listener(self._duration)
    return self

  def __exit__(self, *exc) -> None:
    self._active = False
    jax.monitoring.unregister_event_listener(self._event)
    jax.monitoring.unregister_event_duration_listener(self._duration)


def disable() -> None:
  """Turns the persistent compilation cache off again (tests)."""
  jax.config.update("jax_compilation_cache_dir", None)
  _reset_jax_cache()
