"""Model-ready episode batches: ``EpisodeBatch`` and ``make_batches``.

``make_batches`` turns the data layer's episodes (``jaxfsl.data``: an
``EpisodeSampler`` and its ordered batch iterator) into what the engine
runs: pixels at the model's input size and the class prompts tokenised by
the model's tokenizer::

  model = jaxfsl.build("tiny-clip")
  sampler = jaxfsl.data.EpisodeSampler(
      dataset, way=5, shot=1, query=15,
      image_size=model.config.vision.image_size)
  engine = EpisodeEngine(model, EngineConfig(shot=1, steps=50))
  for indices, valid, batch in make_batches(model, sampler, range(8), 4):
    out = engine.run_batch(batch, episode_keys(seed, host_slice(indices)))

Shapes (E episodes on this host, V views, M = way * shot support images,
Q = way * query queries, S the model's image side, L its text context):
see ``EpisodeBatch``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import numpy as np

from jaxfsl.data.augment import NUM_VIEWS

# The fields of an episode batch, in a fixed order.
BATCH_KEYS = ("support_views", "support", "support_labels", "query",
              "query_labels", "text_ids")
DEFAULT_PROMPT = "a photo of a {}."


@flax.struct.dataclass
class EpisodeBatch:
  """E episodes' arrays, a pytree (each field a leaf; vmap over axis 0).

  Attributes:
    support_views: uint8 [E, V, M, S, S, 3], the fixed augmented views of
      the support images (view 0: identity), pixels 0..255.
    support: uint8 [E, M, S, S, 3], the clean support images.
    support_labels: int32 [E, M] in [0, way), class-major.
    query: uint8 [E, Q, S, S, 3].
    query_labels: int32 [E, Q].
    text_ids: int32 [E, way, L], the tokenised prompt of each class.

  Inside the engine's per-episode program the same class holds one
  episode (no E axis).
  """

  support_views: Any
  support: Any
  support_labels: Any
  query: Any
  query_labels: Any
  text_ids: Any

  @classmethod
  def from_mapping(cls, batch: Mapping[str, Any]) -> EpisodeBatch:
    """From a mapping with (at least) ``BATCH_KEYS``.

    Raises:
      KeyError: naming the missing keys.
    """
    if isinstance(batch, EpisodeBatch):
      return batch
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
      raise KeyError(f"episode batch lacks {missing}; expected keys "
                     f"{BATCH_KEYS}")
    return cls(**{k: batch[k] for k in BATCH_KEYS})

  def __getitem__(self, key: str) -> Any:
    if key not in BATCH_KEYS:
      raise KeyError(key)
    return getattr(self, key)

  def keys(self) -> tuple[str, ...]:
    return BATCH_KEYS

  def as_dict(self) -> dict[str, Any]:
    return {k: getattr(self, k) for k in BATCH_KEYS}

  @property
  def num_episodes(self) -> int:
    return int(np.shape(self.support)[0])


class PromptTokens:
  """Tokenised class prompts, cached per class name.

  Args:
    model: gives ``tokenize`` (list[str] -> int32 [N, L]).
    template: e.g. "a photo of a {}.".
  """

  def __init__(self, model: Any, template: str = DEFAULT_PROMPT):
    if "{}" not in template:
      raise ValueError(f"prompt {template!r} has no '{{}}' for the class "
                       "name")
    self.model = model
    self.template = template
    self._cache: dict[str, np.ndarray] = {}

  def __call__(self, class_names: Sequence[Sequence[str]]) -> np.ndarray:
    """E lists of ``way`` names -> int32 [E, way, L]."""
    missing = sorted({n for names in class_names for n in names}
                     - set(self._cache))
    if missing:
      ids = self.model.tokenize([self.template.format(n) for n in missing])
      self._cache.update(zip(missing, ids, strict=True))
    return np.stack([np.stack([self._cache[n] for n in names])
                     for names in class_names]).astype(np.int32)


def to_episode_batch(episodes: Mapping[str, Any], prompts: PromptTokens
                     ) -> EpisodeBatch:
  """A stacked batch from ``jaxfsl.data.iterate_batches`` (with
  ``class_names``) -> ``EpisodeBatch`` with the prompts tokenised."""
  return EpisodeBatch(
      support_views=np.asarray(episodes["support_views"]),
      support=np.asarray(episodes["support"]),
      support_labels=np.asarray(episodes["support_labels"], np.int32),
      query=np.asarray(episodes["query"]),
      query_labels=np.asarray(episodes["query_labels"], np.int32),
      text_ids=prompts(episodes["class_names"]))


def plan_batches(indices: Sequence[int], episodes_per_batch: int
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Splits ``indices`` into batches of ``episodes_per_batch``.

  The last batch is padded to full size by repeating its last episode.

  Returns:
    [(global episode indices int64 [E], valid bool [E])], padding invalid.
  """
  if episodes_per_batch < 1:
    raise ValueError(f"episodes_per_batch must be >= 1, got "
                     f"{episodes_per_batch}")
  indices = [int(i) for i in indices]
  plan = []
  for start in range(0, len(indices), episodes_per_batch):
    chunk = np.asarray(indices[start:start + episodes_per_batch], np.int64)
    pad = episodes_per_batch - len(chunk)
    plan.append((np.concatenate([chunk, np.repeat(chunk[-1:], pad)]),
                 np.arange(episodes_per_batch) < len(chunk)))
  return plan


def host_slice(values: np.ndarray) -> np.ndarray:
  """This host's part of a batch-length array (E / process_count entries,
  in process order); the whole array on one host."""
  hosts, me = jax.process_count(), jax.process_index()
  if len(values) % hosts:
    raise ValueError(f"a batch of {len(values)} episodes cannot be split "
                     f"over {hosts} hosts")
  per_host = len(values) // hosts
  return values[me * per_host:(me + 1) * per_host]


def make_batches(model: Any, sampler: Any, indices: Sequence[int],
                 episodes_per_batch: int, prompt: str = DEFAULT_PROMPT, *,
                 num_workers: int = 4, prefetch: int = 2
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, EpisodeBatch]]:
  """Model-ready batches of the episodes ``indices``, in order.

  Images come at the model's input size (``model.config.vision.image_size``,
  whatever the sampler's own ``image_size``) and the class prompts are
  tokenised with ``model.tokenize``. The last batch is padded to full size
  by repeating its last episode (the engine needs E to be a multiple of the
  device count). With several hosts each builds only its slice of every
  batch (E / process_count episodes, ``host_slice``), which is what
  ``EpisodeEngine.run_batch`` expects there.

  Args:
    model: a ``jaxfsl.models.Model`` (image size, tokenizer).
    sampler: a ``jaxfsl.data.EpisodeSampler``.
    indices: the episode indices to build (e.g. ``range(start, 800)``).
    episodes_per_batch: E, episodes per batch on all hosts together.
    prompt: the class prompt template.
    num_workers: threads building episodes (0: none).
    prefetch: batches prepared ahead.

  Yields:
    (global episode indices int64 [E] (padding included), valid bool [E],
    this host's ``EpisodeBatch``).

  Raises:
    ValueError: ``episodes_per_batch`` not a multiple of the host count.
    jaxfsl.data.EpisodeError: building an episode failed (names it).
  """
  from jaxfsl import data

  hosts = jax.process_count()
  if episodes_per_batch % hosts:
    raise ValueError(f"episodes_per_batch={episodes_per_batch} is not a "
                     f"multiple of the {hosts} hosts")
  prompts = PromptTokens(model, prompt)
  plan = plan_batches(indices, episodes_per_batch)
  local = [int(i) for padded, _ in plan for i in host_slice(padded)]
  batches = data.iterate_batches(
      sampler, local, episodes_per_batch // hosts,
      image_size=model.config.vision.image_size, num_workers=num_workers,
      prefetch=prefetch)
  try:
    for (padded, valid), episodes in zip(plan, batches, strict=False):
      yield padded, valid, to_episode_batch(episodes, prompts)
  finally:
    batches.close()  # Stops the episode threads early on an error.


__all__ = ["BATCH_KEYS", "DEFAULT_PROMPT", "NUM_VIEWS", "EpisodeBatch",
           "PromptTokens", "host_slice", "make_batches", "plan_batches",
           "to_episode_batch"]
