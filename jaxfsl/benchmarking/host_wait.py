"""The host-wait fraction: how long the device waits on the episode input
pipeline while whole episodes run."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from jaxfsl import parallel


def synthetic_sampler(config, image_size: int, num_classes: int = 10,
                      per_class: int = 20, seed: int = 0):
  """An ``EpisodeSampler`` over the synthetic dataset (coloured shapes,
  ``jaxfsl.data.synthetic``) held in memory: the real episode pipeline
  (sampling, augmentation, resizing, threads) without a prepared dataset.

  Raises:
    ValueError: too few classes for ``config.way`` or images per class for
      ``shot + query``.
  """
  from jaxfsl import data
  from jaxfsl.data import synthetic

  if num_classes < config.way:
    raise ValueError(f"num_classes {num_classes} < way {config.way}")
  if per_class < config.shot + config.query:
    raise ValueError(f"per_class {per_class} < shot + query "
                     f"{config.shot + config.query}")
  labels = np.repeat(np.arange(num_classes), per_class)
  images = [synthetic.make_image(seed, int(c), i, 64)
            for i, c in enumerate(labels)]
  dataset = data.InMemoryDataset(images, labels,
                                 synthetic.class_names(num_classes))
  return data.EpisodeSampler(dataset, image_size=image_size, way=config.way,
                             shot=config.shot, query=config.query, seed=seed)


def host_wait(engine, num_batches: int, episodes_per_batch: int,
              num_workers: int = 2, prefetch: bool = True,
              log: Callable[[str], None] | None = None) -> dict:
  """The fraction of wall time the device waits on the host.

  Runs ``num_batches`` + 1 batches of whole episodes (``run_batch``) fed
  by the real pipeline (``synthetic_sampler`` -> ``make_batches`` ->
  ``parallel.prefetch_to_device``); the first batch (compilation, pipeline
  start) is not timed. The host-wait time is the time spent blocked in the
  input iterator: the device is idle then, since ``run_batch`` returns only
  when its batch is done.

  Returns:
    {"host_wait_fraction": wait / total, "host_wait_seconds",
    "host_wait_total_seconds", "host_wait_batches",
    "host_wait_episodes_per_batch", "host_wait_steps", "host_wait_prefetch"}.

  Raises:
    ValueError: ``num_batches`` < 1.
  """
  from jaxfsl.protocols.episodic.batch import make_batches
  from jaxfsl.protocols.episodic.engine import episode_keys

  if num_batches < 1:
    raise ValueError(f"num_batches must be >= 1, got {num_batches}")
  log = log or (lambda _: None)
  e = episodes_per_batch
  sampler = synthetic_sampler(engine.config,
                              engine.model.config.vision.image_size)
  items = make_batches(engine.model, sampler, range((num_batches + 1) * e),
                       e, num_workers=num_workers)
  if prefetch:
    items = parallel.prefetch_to_device(items, engine.mesh, part=2)
  items = iter(items)
  indices, _, batch = next(items)
  log("host-wait run: compiling on the first batch")
  engine.run_batch(batch, episode_keys(0, indices), episode_ids=indices)
  wait = 0.0
  start = time.perf_counter()
  for _ in range(num_batches):
    before = time.perf_counter()
    indices, _, batch = next(items)
    wait += time.perf_counter() - before
    engine.run_batch(batch, episode_keys(0, indices), episode_ids=indices)
  total = time.perf_counter() - start
  return {"host_wait_fraction": wait / total,
          "host_wait_seconds": wait,
          "host_wait_total_seconds": total,
          "host_wait_batches": num_batches,
          "host_wait_episodes_per_batch": e,
          "host_wait_steps": engine.config.steps,
          "host_wait_prefetch": prefetch}
