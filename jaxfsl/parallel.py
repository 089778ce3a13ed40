"""Data parallelism over devices and hosts: the mesh, shardings, put and
gather.

Every program jaxfsl runs has the same layout: one shared, replicated
backbone (and, in the few-shot trainer, replicated adapters and optimizer
state) and a leading data axis on everything else, sharded over the first
axis of a device mesh. In the episodic protocol that axis holds E episodes;
in the few-shot protocol it holds the B rows of a minibatch
(``shard_batch``). On one host the caller passes numpy arrays with the whole
axis. On several hosts (``jax.distributed.initialize()``) each host passes
only its own share (``put_episodes`` assembles the global arrays) and
receives the results of all (``gather``).

This is the only module that builds shardings or moves data arrays between
hosts; the episode engine, the eval-only path, the few-shot trainer and the
benchmark use it.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

EPISODE_AXIS = "episodes"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: every device of every host)
  whose axis ``EPISODE_AXIS`` carries episodes."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (EPISODE_AXIS,))


def device_memory_stat(devices: Iterable[jax.Device] | None,
                       key: str) -> list[int]:
  """``key`` of ``Device.memory_stats()`` (e.g. "bytes_limit",
  "peak_bytes_in_use"), one int per device of ``devices`` (default: this
  host's) that reports it; empty where none does (CPU, or a backend whose
  ``memory_stats`` raises or returns None)."""
  values = []
  for device in jax.local_devices() if devices is None else devices:
    try:
      stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory stats raise.
      stats = {}
    if key in stats:
      values.append(int(stats[key]))
  return values


def episode_axis(mesh: Mesh) -> str:
  """The mesh axis episodes are sharded over: its first one."""
  return mesh.axis_names[0]


def data_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Array axis ``axis`` split over the mesh's first (data) axis, every
  other axis replicated: episodes, minibatch rows, or (``axis=1``) the rows
  of each chunk of a chunked computation."""
  return NamedSharding(mesh, PartitionSpec(*([None] * axis),
                                           episode_axis(mesh)))


def episode_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over the episode axis, the rest replicated."""
  return data_sharding(mesh)


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full array on every device (the shared backbone)."""
  return NamedSharding(mesh, PartitionSpec())


def episodes_per_host_multiple(mesh: Mesh) -> int:
  """This host's episode count must be a multiple of this (its devices on
  the episode axis)."""
  return max(1, mesh.shape[episode_axis(mesh)] // jax.process_count())


def check_episode_count(num_episodes: int, mesh: Mesh) -> None:
  """Raises ValueError if this host's ``num_episodes`` cannot be split."""
  devices = episodes_per_host_multiple(mesh)
  if num_episodes % devices:
    raise ValueError(
        f"a batch of {num_episodes} episodes cannot be split over {devices} "
        "devices; use a multiple (pad the last batch)")


def jit_episodes(fn: Callable[..., Any], mesh: Mesh, shared: Sequence[bool],
                 *, donate_argnums: Sequence[int] = (),
                 compiler_options: dict | None = None) -> Callable[..., Any]:
  """``jax.jit(fn)`` with the episode layout.

  Args:
    fn: a function of ``len(shared)`` positional arguments whose outputs
      all have a leading episode axis.
    mesh: the device mesh.
    shared: per argument, True for a replicated one (the backbone, a step
      index), False for one with a leading episode axis.
    donate_argnums: forwarded to ``jax.jit``.
    compiler_options: forwarded to ``jax.jit``.

  Returns:
    The jitted function (call it with ``put_episodes``' arrays on several
    hosts, with numpy arrays or device arrays on one).
  """
  episodes, full = episode_sharding(mesh), replicated(mesh)
  return jax.jit(fn, in_shardings=tuple(full if s else episodes
                                        for s in shared),
                 out_shardings=episodes, donate_argnums=tuple(donate_argnums),
                 compiler_options=compiler_options)


def _placed(x: Any, sharding: NamedSharding) -> bool:
  """Whether ``x`` is already a global episode array (``put_episodes`` /
  ``device_put_episodes``), to be passed on without a host round trip."""
  if not isinstance(x, jax.Array) or jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key):
    return False
  if jax.process_count() > 1:
    return not x.is_fully_addressable
  return x.sharding.is_equivalent_to(sharding, x.ndim)


def _host_array(x: Any) -> Any:
  dtype = getattr(x, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)  # typed keys travel as their raw data
  return np.asarray(x)


def put_episodes(tree: Any, mesh: Mesh) -> Any:
  """This host's episodes -> global arrays sharded over the episode axis.

  One host: numpy copies of the leaves (``jit`` places them). Several
  hosts: ``jax.make_array_from_process_local_data``, each host
  contributing its slice (in process order). Typed PRNG keys are passed as
  their raw key data. Leaves already placed with the episode layout (from
  ``device_put_episodes``) are passed through as they are.

  Args:
    tree: pytree of arrays with a leading (host-local) episode axis.
    mesh: the device mesh.
  """
  sharding = episode_sharding(mesh)
  if jax.process_count() == 1:
    return jax.tree_util.tree_map(
        lambda x: x if _placed(x, sharding) else _host_array(x), tree)
  return jax.tree_util.tree_map(
      lambda x: x if _placed(x, sharding) else
      jax.make_array_from_process_local_data(sharding, _host_array(x)), tree)


def device_put_episodes(tree: Any, mesh: Mesh) -> Any:
  """This host's episodes -> device arrays sharded over the episode axis,
  the copy started asynchronously (``put_episodes``' layout; several hosts:
  the global arrays)."""
  tree = put_episodes(tree, mesh)
  if jax.process_count() > 1:
    return tree  # make_array_from_process_local_data placed them already
  return jax.device_put(tree, episode_sharding(mesh))


def process_rows(tree: Any) -> Any:
  """This process's block of rows of a batch that every process holds whole.

  The few-shot input pipeline is a pure function of (seed, step), so every
  process can build the same global batch; each then passes on only its
  contiguous B / process_count rows, in process order, as ``shard_batch``
  expects. One process: ``tree`` unchanged.

  Args:
    tree: pytree of arrays [B, ...], the same on every process.

  Raises:
    ValueError: B is not a multiple of the process count (names B and it).
  """
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return tree

  def rows(x):
    if x.shape[0] % count:
      raise ValueError(
          f"a batch of {x.shape[0]} rows cannot be split over {count} "
          "processes: make the batch size a multiple of the process count")
    block = x.shape[0] // count
    return x[index * block:(index + 1) * block]

  return jax.tree.map(rows, tree)


def shard_batch(tree: Any, mesh: Mesh) -> Any:
  """A data-parallel minibatch -> device arrays with its rows (leading axis)
  split over the mesh's first axis, the copy started asynchronously.

  The episodes' layout and put (``device_put_episodes``), for the few-shot
  trainer's batches: on one host pass all B rows; on several hosts each
  host passes its own B / process_count rows (in process order) and gets
  the global arrays.

  Args:
    tree: pytree of arrays [rows, ...] (numpy or already placed).
    mesh: the device mesh.
  """
  return device_put_episodes(tree, mesh)


def prefetch_to_device(items: Iterable[Any], mesh: Mesh, size: int = 1,
                       part: int | None = None) -> Iterator[Any]:
  """Yields ``items`` with their episode arrays already on the devices.

  While the caller runs batch i, the host-to-device copies of the next
  ``size`` batches are in flight (``jax.device_put`` returns at once), so
  the device does not wait for the transfer of batch i + 1.

  Args:
    items: e.g. ``make_batches``' (indices, valid, EpisodeBatch) tuples.
    mesh: the device mesh.
    size: batches placed ahead (>= 1); each holds its device memory.
    part: with tuple items, the index of the element to place (the others,
      host-side bookkeeping, pass unchanged); None places the whole item.

  Raises:
    ValueError: ``size`` < 1.
  """
  if size < 1:
    raise ValueError(f"prefetch size must be >= 1, got {size}")

  def place(item):
    if part is None:
      return device_put_episodes(item, mesh)
    item = list(item)
    item[part] = device_put_episodes(item[part], mesh)
    return tuple(item)

  iterator = iter(items)
  try:
    queue = collections.deque(place(x) for x in
                              itertools.islice(iterator, size + 1))
    while queue:
      yield queue.popleft()
      queue.extend(place(x) for x in itertools.islice(iterator, 1))
  finally:
    # Closing this generator early (an error, a stop signal) closes the
    # source too, e.g. stops make_batches' episode threads.
    close = getattr(iterator, "close", None)
    if close is not None:
      close()


def gather(tree: Any) -> Any:
  """Episode-sharded outputs -> numpy with all E episodes, on every host."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


def run_episodes(fn: Callable[..., Any], mesh: Mesh, shared: Any,
                 *episode_args: Any) -> Any:
  """``gather(fn(shared, *put_episodes(episode_args)))``.

  Args:
    fn: from ``jit_episodes(..., shared=(True, False, ...))``.
    mesh: the device mesh.
    shared: the replicated first argument (the backbone).
    *episode_args: pytrees with a leading host-local episode axis.

  Returns:
    numpy outputs with every host's episodes.
  """
  args = put_episodes(episode_args, mesh)
  return gather(fn(shared, *args))
