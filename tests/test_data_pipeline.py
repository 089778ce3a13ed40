"""Threaded host pipeline: order, contents, last batch, error propagation."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from jaxfsl import data


@pytest.fixture(scope="module")
def sampler():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(5), 6)
  images = rng.integers(0, 256, (len(labels), 20, 16, 3), dtype=np.uint8)
  ds = data.InMemoryDataset(images, labels, [f"c{i}" for i in range(5)])
  return data.EpisodeSampler(ds, way=3, shot=2, query=2, seed=11,
                             image_size=12)


def _assert_batches_equal(got, want):
  assert len(got) == len(want)
  for a, b in zip(got, want, strict=True):
    assert a.keys() == b.keys()
    for key in a:
      if isinstance(a[key], np.ndarray):
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
      else:
        assert a[key] == b[key], key


def _sequential(sampler, indices, per_batch):
  batches = []
  for start in range(0, len(indices), per_batch):
    episodes = [sampler.episode(i) for i in indices[start:start + per_batch]]
    batches.append(data.stack_episodes(episodes))
  return batches


@pytest.mark.parametrize("num_workers", [0, 1, 3])
def test_order_and_contents_equal_a_sequential_loop(sampler, num_workers):
  indices = [9, 2, 14, 3, 0, 7, 21]
  got = list(data.iterate_batches(sampler, indices, 3,
                                  num_workers=num_workers, prefetch=1))
  _assert_batches_equal(got, _sequential(sampler, indices, 3))
  assert [b["index"].tolist() for b in got] == [[9, 2, 14], [3, 0, 7], [21]]
  assert got[0]["support_views"].shape == (3, 5, 6, 12, 12, 3)
  assert got[0]["support_views"].dtype == np.uint8
  assert got[-1]["query"].shape == (1, 6, 12, 12, 3)
  assert got[0]["class_names"] == [sampler.episode(i)["class_names"]
                                   for i in (9, 2, 14)]
  assert all(b["valid"].all() for b in got)


def test_pad_last(sampler):
  got = list(data.iterate_batches(sampler, range(5), 4, num_workers=2,
                                  pad_last=True))
  last = got[-1]
  assert last["support"].shape[0] == 4
  assert last["valid"].tolist() == [True, False, False, False]
  assert last["index"].tolist() == [4, -1, -1, -1]
  np.testing.assert_array_equal(last["query"][3], last["query"][0])


class _FailingSampler:
  def __init__(self, sampler, bad):
    self.sampler, self.bad = sampler, bad

  def episode(self, index, image_size=None):
    if index == self.bad:
      raise OSError(f"disk error on a record of episode {index}")
    return self.sampler.episode(index, image_size)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_worker_exception_names_the_episode(sampler, num_workers):
  it = data.iterate_batches(_FailingSampler(sampler, 5), range(12), 2,
                            num_workers=num_workers)
  got = [next(it)["index"].tolist() for _ in range(2)]
  assert got == [[0, 1], [2, 3]]
  with pytest.raises(data.EpisodeError, match="episode 5 failed") as e:
    next(it)
  assert e.value.episode_index == 5
  assert isinstance(e.value.__cause__, OSError)


def test_abandoned_iterator_stops_its_threads(sampler):
  before = threading.active_count()
  it = data.iterate_batches(sampler, range(1000), 2, num_workers=2)
  next(it)
  it.close()
  # Episodes not started are cancelled; one under way may finish first.
  deadline = time.monotonic() + 30
  while threading.active_count() > before and time.monotonic() < deadline:
    time.sleep(0.01)
  assert threading.active_count() <= before


def test_bad_arguments(sampler):
  with pytest.raises(ValueError, match="episodes_per_batch=0"):
    next(data.iterate_batches(sampler, range(3), 0))


def test_resumes_from_any_index(sampler):
  # Episode i is a pure function of (seed, i): the tail of a run equals a
  # run started at that index, whatever came before and however threaded.
  full = list(data.iterate_batches(sampler, range(10), 2, num_workers=2))
  tail = list(data.iterate_batches(sampler, range(6, 10), 2, num_workers=3))
  _assert_batches_equal(tail, full[3:])


def test_episode_dataset_is_random_access(sampler):
  episodes = data.pipeline.episode_dataset(sampler, [7, 3, 7])
  assert len(episodes) == 3
  for k, i in ((2, 7), (1, 3), (0, 7)):
    got, want = episodes[k], sampler.episode(i)
    assert got["index"] == i
    np.testing.assert_array_equal(got["support_views"],
                                  want["support_views"])
  with pytest.raises(data.EpisodeError, match="episode 99 failed"):
    data.pipeline.episode_dataset(_FailingSampler(sampler, 99), [99])[0]


def test_empty_index_list_yields_nothing(sampler):
  assert list(data.iterate_batches(sampler, [], 2)) == []
