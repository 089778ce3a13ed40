"""Multi-host start-up: ``jax.distributed`` from the standard environment.

A job runs on several processes (a TPU pod slice's hosts, GPU nodes of a
SLURM job, or two local CPU processes in the tests) when
``--config.multihost=True`` or the environment variable ``JAXFSL_MULTIHOST=1``
is set on every process. Each process then calls ``initialize`` before
anything touches a JAX backend; afterwards ``jax.devices()`` lists the
devices of all processes and the episode engine shards episodes over all of
them (each process feeds its own slice of every batch).

Where the coordinator is, how many processes there are and which one this
is come from, in this order:

1. ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
   ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, when set;
2. otherwise JAX's cluster auto-detection (Cloud TPU VMs, SLURM, Open MPI,
   Kubernetes; see ``jax.distributed.initialize``), which also fills in
   whichever of the three is unset.

Only process 0 writes shared files (results, reports, TensorBoard, the
log); Orbax coordinates the run state's saves itself (every process calls
``save``; the primary host writes). ``is_main_process`` is the test for it.

Nothing here imports JAX at module import time, so that the CLI can decide
before JAX creates its backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

# Set to 1 (or config.multihost=True) on every process of a multi-host job.
MULTIHOST_ENV = "JAXFSL_MULTIHOST"
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"

_TRUE = ("1", "true", "yes")
_FALSE = ("", "0", "false", "no")


class MultihostError(ValueError):
  """The multi-host settings of the environment are unusable (every problem
  is listed, with the variable, its value and what was expected)."""


def requested(multihost: bool = False,
              environ: Mapping[str, str] | None = None) -> bool:
  """Whether this job should start ``jax.distributed``.

  Args:
    multihost: ``config.multihost``.
    environ: the environment (default ``os.environ``).

  Returns:
    ``multihost`` or ``JAXFSL_MULTIHOST`` set to 1/true/yes.

  Raises:
    MultihostError: ``JAXFSL_MULTIHOST`` is set to something else than
      1/true/yes or 0/false/no/empty.
  """
  environ = os.environ if environ is None else environ
  value = environ.get(MULTIHOST_ENV, "").strip().lower()
  if value not in _TRUE + _FALSE:
    raise MultihostError(
        f"{MULTIHOST_ENV}={environ[MULTIHOST_ENV]!r}: expected 1 (start "
        "jax.distributed) or 0 / empty (a single process)")
  return bool(multihost) or value in _TRUE


def settings_from_env(environ: Mapping[str, str] | None = None
                      ) -> dict[str, Any]:
  """``jax.distributed.initialize`` keyword arguments from the environment.

  Unset variables are left out, so that JAX's cluster auto-detection fills
  them in.

  Args:
    environ: the environment (default ``os.environ``).

  Returns:
    A subset of {"coordinator_address": str ``host:port``,
    "num_processes": int >= 1, "process_id": int in [0, num_processes)}.

  Raises:
    MultihostError: listing every malformed variable (an address without a
      port, a count or id that is not a non-negative integer, an id not
      below the count).
  """
  environ = os.environ if environ is None else environ
  out: dict[str, Any] = {}
  problems = []
  address = environ.get(COORDINATOR_ENV, "").strip()
  if address:
    host, sep, port = address.rpartition(":")
    if not (sep and host and port.isdigit()):
      problems.append(f"{COORDINATOR_ENV}={address!r}: expected host:port "
                      "of process 0, e.g. 10.0.0.2:8476")
    else:
      out["coordinator_address"] = address
  for name, key, low in ((NUM_PROCESSES_ENV, "num_processes", 1),
                         (PROCESS_ID_ENV, "process_id", 0)):
    raw = environ.get(name, "").strip()
    if not raw:
      continue
    try:
      value = int(raw)
    except ValueError:
      value = None
    if value is None or value < low:
      problems.append(f"{name}={raw!r}: expected an integer >= {low}")
    else:
      out[key] = value
  if ("num_processes" in out and "process_id" in out
      and out["process_id"] >= out["num_processes"]):
    problems.append(
        f"{PROCESS_ID_ENV}={out['process_id']} is not below "
        f"{NUM_PROCESSES_ENV}={out['num_processes']} (ids count from 0)")
  if problems:
    raise MultihostError("multi-host settings:\n  " + "\n  ".join(problems))
  return out


def initialize(multihost: bool = False,
               environ: Mapping[str, str] | None = None,
               **kwargs: Any) -> bool:
  """Starts ``jax.distributed`` when asked (module docstring); idempotent.

  Call it before anything creates a JAX backend (``jax.devices()``, the
  first array): JAX raises ``RuntimeError`` otherwise.

  Args:
    multihost: ``config.multihost``.
    environ: the environment (default ``os.environ``).
    **kwargs: passed to ``jax.distributed.initialize`` and taking
      precedence over the environment (e.g. ``initialization_timeout``).

  Returns:
    Whether this is a multi-host job (``jax.distributed`` running).

  Raises:
    MultihostError: malformed settings (``settings_from_env``), or neither
      the environment nor a detected cluster says where the coordinator
      is / how many processes there are / which one this is.
  """
  if not requested(multihost, environ):
    return False
  import jax

  if jax.distributed.is_initialized():
    return True
  settings = settings_from_env(environ)
  settings.update(kwargs)
  try:
    jax.distributed.initialize(**settings)
  except ValueError as e:
    # JAX's message names its arguments; ours names the variables too.
    raise MultihostError(
        f"{MULTIHOST_ENV}=1 / config.multihost=True but jax.distributed "
        f"could not start: {str(e).rstrip('.')}. Set {COORDINATOR_ENV} "
        f"(host:port of process 0), {NUM_PROCESSES_ENV} and "
        f"{PROCESS_ID_ENV} on every process, or run inside a cluster JAX "
        "detects (Cloud TPU, SLURM, Open MPI, Kubernetes).") from e
  logging.info("jax.distributed: process %d of %d, %d local of %d devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def is_main_process() -> bool:
  """Whether this process writes shared files: JAX process 0 (always true
  in a single-process job)."""
  import jax

  return jax.process_index() == 0


_barriers: dict[str, int] = {}


def sync(name: str, timeout_s: int = 3600) -> None:
  """Waits until every process reaches ``sync(name)`` (no-op on one).

  A barrier of the coordination service (Orbax's ``get_barrier_sync_fn``),
  not a device collective: on CPU, gloo gives up on a collective whose
  processes arrive more than 30 s apart, and a process may well wait longer
  than that here (e.g. for process 0 to generate a dataset).

  Args:
    name: the barrier's name; the n-th call with a name in each process
      meets the n-th call with that name in the others.
    timeout_s: seconds to wait before raising.
  """
  import jax

  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost

  count = _barriers[name] = _barriers.get(name, 0) + 1
  multihost.get_barrier_sync_fn()(key=f"jaxfsl:{name}:{count}",
                                  timeout_ms=timeout_s * 1000)


@contextlib.contextmanager
def main_process_first(name: str) -> Iterator[None]:
  """Runs the body on process 0 first, then on the others.

  For work whose result other processes reuse from a shared file system
  (preparing a dataset, creating a workdir): process 0 does it, the others
  find it done; on separate file systems each does its own.

  Args:
    name: a label unique to this call site (the barrier's name).
  """
  main = is_main_process()
  if not main:
    sync(f"{name}:main_done")
  try:
    yield
  finally:
    if main:
      sync(f"{name}:main_done")
