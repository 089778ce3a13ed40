"""Episodic sampler: episode i is a pure function of (seed, i, dataset).

    sampler = EpisodeSampler(dataset, way=5, shot=1, query=15, seed=0,
                             image_size=224)
    ep = sampler.episode(37)   # same arrays whatever ran before, any process

Episode ``i`` uses its own generator,
``np.random.default_rng(np.random.SeedSequence([seed, i]))``, so a resumed
run, a worker thread or another process computes the same episode. Draw
order from that generator (fixed, documented because it defines the
benchmark episodes):

  1. the ``way`` classes: a uniformly random permutation of the eligible
     classes (argsort of ``rng.random``), first ``way`` kept; label k is the
     k-th class drawn;
  2. for each drawn class, in label order: shot + query of its images,
     without replacement, the same way; the first ``shot`` are the support,
     the others the queries;
  3. the support view parameters (``augment.sample_view_params``).

Only ``rng.random`` is used, so episodes also survive NumPy upgrades that
change ``Generator.choice`` / ``permutation``.

Classes with fewer than shot + query images are an error at construction
(naming them and their counts), as in the benchmark where every class can
fill an episode; pass ``exclude_small_classes=True`` to leave them out of the
draw instead (they are then listed in ``excluded_classes``).

One episode (S = image size, n_s = way * shot, n_q = way * query):

  support_views   uint8 [5, n_s, S, S, 3]  view-major; image j of a view has
                                          label j // shot (class-major)
  support         uint8 [n_s, S, S, 3]     clean resized support (= view 0)
  support_labels  int32 [n_s]
  query           uint8 [n_q, S, S, 3]     resized queries (identity only)
  query_labels    int32 [n_q]              image j has label j // query
  class_names     list[str] [way]          prompt names, in label order
  class_ids       int32 [way]              dataset labels of the classes
  support_ids     int64 [n_s]              dataset record of each support image
  query_ids       int64 [n_q]              dataset record of each query
  index           int                      the episode index
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from jaxfsl.data import augment


class EpisodeSource(Protocol):
  """What the sampler needs from a dataset (``Dataset``, ``InMemoryDataset``).
  """
  labels: np.ndarray          # int [N]
  class_names: Sequence[str]
  prompt_names: Sequence[str]

  def image(self, index: int) -> Image.Image:
    ...


@dataclasses.dataclass(frozen=True)
class EpisodePlan:
  """Everything random about one episode (no pixels).

  Attributes:
    index: the episode index.
    class_ids: int32 [way] dataset labels of the drawn classes, label order.
    support_ids: int64 [way * shot] dataset records, class-major.
    query_ids: int64 [way * query] dataset records, class-major.
    views: the support view parameters (``augment.ViewParams``, n = way*shot).
  """
  index: int
  class_ids: np.ndarray
  support_ids: np.ndarray
  query_ids: np.ndarray
  views: augment.ViewParams


def _check_count(name: str, value: Any, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name}={value!r}; expected an int.")
  if value < low:
    raise ValueError(f"{name}={value}; expected an int >= {low}.")
  return int(value)


class EpisodeSampler:
  """Draws N-way K-shot episodes from a dataset.

  Args:
    dataset: a ``Dataset`` / ``InMemoryDataset`` (``EpisodeSource``).
    way: classes per episode (>= 1).
    shot: support images per class (>= 1).
    query: query images per class (>= 1).
    seed: non-negative int; with the episode index it fixes the episode.
    image_size: side S of the output images: the model's input size
      (``model.image_size``). Required, with no default: a wrong size would
      only surface later as a shape error or as silently rescaled inputs
      (``make_batches`` checks it against the model).
    exclude_small_classes: leave classes with fewer than shot + query images
      out of the draw instead of raising.

  Raises:
    TypeError: ``image_size`` missing or not an int.
    ValueError: way / shot / query / image_size < 1, a class too small for
      shot + query (naming it and its count), or way larger than the number
      of classes.
  """

  def __init__(self, dataset: EpisodeSource, *, image_size: int,
               way: int = 5, shot: int = 1, query: int = 15, seed: int = 0,
               exclude_small_classes: bool = False):
    self.dataset = dataset
    self.way = _check_count("way", way, 1)
    self.shot = _check_count("shot", shot, 1)
    self.query = _check_count("query", query, 1)
    self.seed = _check_count("seed", seed, 0)
    self.image_size = _check_count("image_size", image_size, 1)
    labels = np.asarray(dataset.labels)
    num_classes = len(dataset.class_names)
    if len(dataset.prompt_names) != num_classes:
      raise ValueError(f"{num_classes} class names but "
                       f"{len(dataset.prompt_names)} prompt names.")
    # Record indices of each class, ascending: the draw indexes into these.
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=num_classes)
    self._class_records = np.split(order.astype(np.int64),
                                   np.cumsum(counts)[:-1])
    need = self.shot + self.query
    small = [c for c in range(num_classes) if counts[c] < need]
    self.excluded_classes: list[str] = [dataset.class_names[c] for c in small]
    if small and not exclude_small_classes:
      detail = ", ".join(f"{dataset.class_names[c]!r} (label {c}) has "
                         f"{counts[c]}" for c in small)
      raise ValueError(
          f"{len(small)} class(es) have fewer than shot + query = {need} "
          f"images: {detail}. Lower shot/query, or leave them out of the "
          "draw: --config.dataset.exclude_small_classes=True on the command "
          "line (EpisodeSampler(..., exclude_small_classes=True) in "
          "Python).")
    if small:
      logging.warning("Excluding %d class(es) with fewer than %d images: %s",
                      len(small), need, self.excluded_classes)
    self._eligible = np.array([c for c in range(num_classes)
                               if counts[c] >= need], np.int32)
    if self.way > len(self._eligible):
      raise ValueError(
          f"way={self.way} but the dataset has only {len(self._eligible)} "
          f"class(es) with at least {need} images"
          + (f" ({num_classes} in all)." if small else "."))

  def __repr__(self) -> str:
    return (f"EpisodeSampler({getattr(self.dataset, 'name', 'dataset')!r}, "
            f"way={self.way}, shot={self.shot}, query={self.query}, "
            f"seed={self.seed}, image_size={self.image_size})")

  @property
  def eligible_classes(self) -> np.ndarray:
    """int32 [C'] dataset labels that can be drawn."""
    return self._eligible.copy()

  def rng(self, index: int) -> np.random.Generator:
    """The generator of episode ``index`` (fresh every call)."""
    index = _check_count("episode index", index, 0)
    return np.random.default_rng(np.random.SeedSequence([self.seed, index]))

  def plan(self, index: int) -> EpisodePlan:
    """Classes, images and view parameters of episode ``index`` (cheap: no
    image is read)."""
    rng = self.rng(index)
    pick = np.argsort(rng.random(len(self._eligible)), kind="stable")
    class_ids = self._eligible[pick[:self.way]]
    support, query = [], []
    for c in class_ids:
      records = self._class_records[c]
      chosen = records[np.argsort(rng.random(len(records)), kind="stable")
                       [:self.shot + self.query]]
      support.append(chosen[:self.shot])
      query.append(chosen[self.shot:])
    views = augment.sample_view_params(rng, self.way * self.shot)
    return EpisodePlan(index=int(index), class_ids=class_ids.astype(np.int32),
                       support_ids=np.concatenate(support),
                       query_ids=np.concatenate(query), views=views)

  def _resized(self, record: int, size: int) -> Image.Image:
    return augment.resize(self.dataset.image(int(record)), size)

  def episode(self, index: int, image_size: int | None = None
              ) -> dict[str, Any]:
    """Episode ``index`` as numpy arrays (see the module docstring).

    Args:
      index: episode index (>= 0).
      image_size: overrides the sampler's image size (same random draws).
    """
    size = self.image_size if image_size is None else _check_count(
        "image_size", image_size, 1)
    plan = self.plan(index)
    n_s, n_q = len(plan.support_ids), len(plan.query_ids)
    support_views = np.empty((augment.NUM_VIEWS, n_s, size, size, 3),
                             np.uint8)
    v = plan.views
    for j, record in enumerate(plan.support_ids):
      views = augment.support_views(self._resized(record, size),
                                    v.angles[j], v.jitter[j], v.flips[j])
      for k, view in enumerate(views):
        support_views[k, j] = augment.to_array(view)
    query = np.empty((n_q, size, size, 3), np.uint8)
    for j, record in enumerate(plan.query_ids):
      query[j] = augment.to_array(self._resized(record, size))
    return {
        "support_views": support_views,
        "support": support_views[0].copy(),
        "support_labels": np.repeat(np.arange(self.way, dtype=np.int32),
                                    self.shot),
        "query": query,
        "query_labels": np.repeat(np.arange(self.way, dtype=np.int32),
                                  self.query),
        "class_names": [self.dataset.prompt_names[c] for c in plan.class_ids],
        "class_ids": plan.class_ids,
        "support_ids": plan.support_ids,
        "query_ids": plan.query_ids,
        "index": plan.index,
    }

  __call__ = episode
