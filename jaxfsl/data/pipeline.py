"""Host pipeline: episode batches prepared ahead of the device on threads.

    for batch in iterate_batches(sampler, range(800), episodes_per_batch=4):
      ...  # batch["support_views"]: uint8 [4, 5, way*shot, S, S, 3]

Episodes are built by ``num_workers`` threads (Pillow releases the GIL while
decoding, resizing, rotating and enhancing), stacked into batches by a
background thread and handed over through a bounded queue of ``prefetch``
batches; output order is the order of ``episode_indices`` whatever the
thread timing. An exception in a worker is raised in the consumer, at that
episode's turn, as ``EpisodeError`` naming the episode index.

A batch stacks every array of an episode on a new leading axis E; in
addition ``class_names`` becomes a list of E lists, ``index`` an int64 [E]
array, and ``valid`` a bool [E] mask. The last batch holds the remaining
episodes (E smaller than ``episodes_per_batch``), or with ``pad_last=True``
is padded to full size by repeating its last episode, with ``valid`` False
and ``index`` -1 on the padding (fixed shapes for a jitted step).

Memory: at most ``prefetch`` batches wait in the queue, plus one being
assembled and ``num_workers + episodes_per_batch`` episodes in flight
(one 5-way 5-shot 224x224 episode is ~30 MB of uint8).
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from jaxfsl.data.episodes import EpisodeSampler
from jaxfsl.data.errors import EpisodeError

_DONE = object()


def stack_episodes(episodes: Sequence[dict[str, Any]],
                   pad_to: int | None = None) -> dict[str, Any]:
  """Stacks episodes into one batch (see the module docstring).

  Args:
    episodes: E >= 1 episodes of identical shapes.
    pad_to: when larger than E, repeat the last episode up to this many,
      marked ``valid`` False and ``index`` -1.

  Returns:
    The batch dict: arrays [E', ...], ``class_names`` list of E' lists,
    ``index`` int64 [E'], ``valid`` bool [E'].
  """
  if not episodes:
    raise ValueError("stack_episodes needs at least one episode.")
  n = len(episodes)
  padded = list(episodes) + [episodes[-1]] * max(0, (pad_to or 0) - n)
  batch: dict[str, Any] = {}
  for key in episodes[0]:
    if key == "class_names":
      batch[key] = [list(e[key]) for e in padded]
    elif key == "index":
      batch[key] = np.array([e[key] for e in episodes] +
                            [-1] * (len(padded) - n), np.int64)
    else:
      batch[key] = np.stack([e[key] for e in padded])
  batch["valid"] = np.arange(len(padded)) < n
  return batch


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _sequential(sampler: EpisodeSampler, episode_indices: Iterable[int],
                episodes_per_batch: int, image_size: int | None,
                pad_last: bool) -> Iterator[dict[str, Any]]:
  for indices in _batched(episode_indices, episodes_per_batch):
    episodes = []
    for i in indices:
      try:
        episodes.append(sampler.episode(i, image_size))
      except Exception as e:
        raise EpisodeError(i, e) from e
    yield stack_episodes(episodes, episodes_per_batch if pad_last else None)


def iterate_batches(
    sampler: EpisodeSampler,
    episode_indices: Iterable[int],
    episodes_per_batch: int = 1,
    *,
    image_size: int | None = None,
    num_workers: int = 4,
    prefetch: int = 2,
    pad_last: bool = False,
) -> Iterator[dict[str, Any]]:
  """Yields stacked episode batches, in order, prepared on threads.

  Args:
    sampler: the episode sampler.
    episode_indices: the episodes to prepare, in output order (e.g.
      ``range(start, 800)`` to resume).
    episodes_per_batch: episodes stacked per batch (E).
    image_size: overrides ``sampler.image_size``.
    num_workers: threads building episodes; 0 builds them in the calling
      thread (no threads, for debugging).
    prefetch: batches prepared ahead (queue bound, >= 1).
    pad_last: pad the last batch to ``episodes_per_batch`` (``valid`` False
      on the padding) instead of yielding a smaller one.

  Yields:
    Batches (see the module docstring).

  Raises:
    EpisodeError: building an episode failed; ``episode_index`` names it and
      the original exception is its ``__cause__``.
  """
  if episodes_per_batch < 1 or prefetch < 1 or num_workers < 0:
    raise ValueError(
        f"episodes_per_batch={episodes_per_batch}, prefetch={prefetch}, "
        f"num_workers={num_workers}; expected >= 1, >= 1, >= 0.")
  if num_workers == 0:
    yield from _sequential(sampler, episode_indices, episodes_per_batch,
                           image_size, pad_last)
    return

  out: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
  stop = threading.Event()

  def put(item: Any) -> bool:
    # Poll so that an abandoned consumer (stop set) never leaves us blocked.
    while not stop.is_set():
      try:
        out.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def produce() -> None:
    try:
      with concurrent.futures.ThreadPoolExecutor(
          num_workers, thread_name_prefix="jaxfsl-episode") as pool:
        pending: collections.deque[Any] = collections.deque()
        indices = iter(episode_indices)
        max_in_flight = num_workers + episodes_per_batch

        def fill() -> None:
          while len(pending) < max_in_flight and not stop.is_set():
            i = next(indices, None)
            if i is None:
              return
            pending.append((i, pool.submit(sampler.episode, i, image_size)))

        fill()
        batch: list[dict[str, Any]] = []
        try:
          while pending and not stop.is_set():
            i, future = pending.popleft()
            try:
              episode = future.result()
            except Exception as e:  # noqa: BLE001 - handed to the consumer.
              put(EpisodeError(i, e))
              return
            fill()
            batch.append(episode)
            if len(batch) == episodes_per_batch:
              if not put(stack_episodes(batch)):
                return
              batch = []
          if batch and not stop.is_set():
            if not put(stack_episodes(
                batch, episodes_per_batch if pad_last else None)):
              return
        finally:
          for _, future in pending:
            future.cancel()
      put(_DONE)
    except BaseException as e:  # noqa: BLE001 - e.g. a bad index iterable.
      put(e)

  thread = threading.Thread(target=produce, name="jaxfsl-batches",
                            daemon=True)
  thread.start()
  try:
    while True:
      item = out.get()
      if item is _DONE:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    thread.join()
