"""Host pipeline: episode batches prepared ahead of the device, on grain.

    for batch in iterate_batches(sampler, range(800), episodes_per_batch=4):
      ...  # batch["support_views"]: uint8 [4, 5, way*shot, S, S, 3]

The episodes form a ``grain.MapDataset`` over the episode indices (episode
i is a pure function of (seed, i), so any index can be read in any order and
a run resumes from any index: pass ``range(start, n)``); grain's
``to_iter_dataset`` builds them ahead on ``num_workers`` threads and returns
them in the order of ``episode_indices`` whatever the thread timing, and its
``batch`` stacks them. Threads rather than grain's worker processes: the
work is Pillow decoding / resizing / rotating / enhancing, which releases
the GIL, and processes would pickle every episode (~30 MB) back. An
exception in a worker is raised in the consumer, at that episode's turn, as
``EpisodeError`` naming the episode index.

A batch stacks every array of an episode on a new leading axis E; in
addition ``class_names`` becomes a list of E lists, ``index`` an int64 [E]
array, and ``valid`` a bool [E] mask. The last batch holds the remaining
episodes (E smaller than ``episodes_per_batch``), or with ``pad_last=True``
is padded to full size by repeating its last episode, with ``valid`` False
and ``index`` -1 on the padding (fixed shapes for a jitted step).

Memory: at most ``num_workers + prefetch * episodes_per_batch`` episodes
are built ahead (one 5-way 5-shot 224x224 episode is ~30 MB of uint8), plus
the batch being stacked.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from jaxfsl.data.episodes import EpisodeSampler
from jaxfsl.data.errors import EpisodeError


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


class _BuildEpisode:
  """Episode ``index`` of the sampler; a failure names the episode."""

  def __init__(self, sampler: EpisodeSampler, image_size: int | None):
    self.sampler = sampler
    self.image_size = image_size

  def __call__(self, index: int) -> dict[str, Any]:
    try:
      return self.sampler.episode(index, self.image_size)
    except Exception as e:
      raise EpisodeError(index, e) from e


def episode_dataset(sampler: EpisodeSampler, episode_indices: Sequence[int],
                    image_size: int | None = None) -> Any:
  """The episodes as a ``grain.MapDataset``: element k is episode
  ``episode_indices[k]`` (random access, a pure function of the index).

  Raises (when an element is read):
    EpisodeError: building the episode failed (naming its index).
  """
  import grain  # Imports JAX (~1 s): only when batches are asked for.

  return grain.MapDataset.source(list(episode_indices)).map(
      _BuildEpisode(sampler, image_size))


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
      ``range(start, 800)`` to resume); a finite iterable.
    episodes_per_batch: episodes stacked per batch (E).
    image_size: overrides ``sampler.image_size``.
    num_workers: threads building episodes; 0 builds them in the calling
      thread (no threads, for debugging).
    prefetch: batches prepared ahead (>= 1): the read-ahead is
      ``num_workers + prefetch * episodes_per_batch`` episodes.
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
  indices = [int(i) for i in episode_indices]
  if not indices:
    return
  import grain

  batches = episode_dataset(sampler, indices, image_size).to_iter_dataset(
      grain.ReadOptions(
          num_threads=num_workers,
          prefetch_buffer_size=num_workers + prefetch * episodes_per_batch)
  ).batch(episodes_per_batch, batch_fn=functools.partial(
      stack_episodes, pad_to=episodes_per_batch if pad_last else None))
  iterator = iter(batches)
  try:
    yield from iterator
  finally:
    # Cancels the episodes not started yet; the threads end once the ones
    # under way are done.
    iterator.close()
