"""Episodic sampler: shapes, labels, determinism (across processes too) and
construction errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxfsl import data
from jaxfsl.data import augment

_REPO = Path(__file__).resolve().parents[1]
WAY, SHOT, QUERY, SIZE = 4, 2, 3, 40


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("episodes")
  data.prepare_dataset("synthetic", root, synthetic_classes=6,
                       synthetic_images_per_class=8, synthetic_image_size=24,
                       progress=False, num_workers=1)
  return root


@pytest.fixture(scope="module")
def dataset(dataset_dir):
  return data.load_dataset("synthetic", dataset_dir)


@pytest.fixture(scope="module")
def sampler(dataset):
  return data.EpisodeSampler(dataset, way=WAY, shot=SHOT, query=QUERY,
                             seed=3, image_size=SIZE)


def _assert_same(a: dict, b: dict) -> None:
  assert a.keys() == b.keys()
  for key in a:
    if isinstance(a[key], np.ndarray):
      assert a[key].dtype == b[key].dtype, key
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    else:
      assert a[key] == b[key], key


def test_episode_layout(sampler, dataset):
  ep = sampler.episode(5)
  n_s, n_q = WAY * SHOT, WAY * QUERY
  expect = {
      "support_views": ((5, n_s, SIZE, SIZE, 3), np.uint8),
      "support": ((n_s, SIZE, SIZE, 3), np.uint8),
      "support_labels": ((n_s,), np.int32),
      "query": ((n_q, SIZE, SIZE, 3), np.uint8),
      "query_labels": ((n_q,), np.int32),
      "class_ids": ((WAY,), np.int32),
      "support_ids": ((n_s,), np.int64),
      "query_ids": ((n_q,), np.int64),
  }
  for key, (shape, dtype) in expect.items():
    assert ep[key].shape == shape and ep[key].dtype == dtype, key
  assert ep["index"] == 5
  np.testing.assert_array_equal(ep["support_labels"],
                                np.arange(n_s) // SHOT)
  np.testing.assert_array_equal(ep["query_labels"], np.arange(n_q) // QUERY)
  np.testing.assert_array_equal(ep["support"], ep["support_views"][0])
  # Classes distinct; names in label order; images of the right class,
  # without replacement and disjoint between support and query.
  assert len(set(ep["class_ids"].tolist())) == WAY
  assert ep["class_names"] == [dataset.prompt_names[c]
                               for c in ep["class_ids"]]
  labels = dataset.labels
  np.testing.assert_array_equal(labels[ep["support_ids"]],
                                ep["class_ids"][ep["support_labels"]])
  np.testing.assert_array_equal(labels[ep["query_ids"]],
                                ep["class_ids"][ep["query_labels"]])
  ids = np.concatenate([ep["support_ids"], ep["query_ids"]])
  assert len(set(ids.tolist())) == len(ids)
  # The clean support and the queries are the resized images (view 0).
  for j in (0, n_s - 1):
    want = augment.to_array(augment.resize(
        dataset.image(ep["support_ids"][j]), SIZE))
    np.testing.assert_array_equal(ep["support"][j], want)
  want = augment.to_array(augment.resize(dataset.image(ep["query_ids"][4]),
                                         SIZE))
  np.testing.assert_array_equal(ep["query"][4], want)


def test_support_views_follow_the_plan(sampler, dataset):
  ep, plan = sampler.episode(2), sampler.plan(2)
  v = plan.views
  assert v.angles.shape == (WAY * SHOT, 2)
  for j in (0, 3):
    image = augment.resize(dataset.image(ep["support_ids"][j]), SIZE)
    views = augment.support_views(image, v.angles[j], v.jitter[j], v.flips[j])
    for k in range(5):
      np.testing.assert_array_equal(ep["support_views"][k, j],
                                    augment.to_array(views[k]))


def test_episode_37_alone_equals_37_of_a_sequence(sampler, dataset):
  sequence = [sampler.episode(i) for i in range(38)]
  fresh = data.EpisodeSampler(dataset, way=WAY, shot=SHOT, query=QUERY,
                              seed=3, image_size=SIZE)
  _assert_same(fresh.episode(37), sequence[37])
  # Different episodes and different seeds differ.
  assert any(not np.array_equal(sequence[i]["query_ids"],
                                sequence[37]["query_ids"]) for i in range(37))
  other = data.EpisodeSampler(dataset, way=WAY, shot=SHOT, query=QUERY,
                              seed=4, image_size=SIZE)
  assert not np.array_equal(other.episode(37)["support_views"],
                            sequence[37]["support_views"])


_CHILD = """
import sys
import numpy as np
from jaxfsl import data
ds = data.load_dataset("synthetic", sys.argv[1])
s = data.EpisodeSampler(ds, way={way}, shot={shot}, query={query}, seed=3,
                        image_size={size})
out = {{}}
for i in (37, 0):
  ep = s.episode(i)
  for k, v in ep.items():
    out[f"{{i}}/{{k}}"] = np.asarray(v)
np.savez(sys.argv[2], **out)
"""


def test_same_episode_in_another_process(sampler, dataset_dir, tmp_path):
  out = tmp_path / "child.npz"
  code = _CHILD.format(way=WAY, shot=SHOT, query=QUERY, size=SIZE)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(_REPO), os.environ.get("PYTHONPATH", "")]),
             PYTHONHASHSEED="123")
  subprocess.run([sys.executable, "-c", code, str(dataset_dir), str(out)],
                 check=True, env=env, timeout=120)
  child = np.load(out)
  for i in (37, 0):
    ep = sampler.episode(i)
    for key, value in ep.items():
      np.testing.assert_array_equal(child[f"{i}/{key}"], np.asarray(value),
                                    err_msg=f"episode {i} {key}")


def test_classes_drawn_uniformly(sampler):
  counts = np.zeros(6, int)
  first = np.zeros(6, int)
  for i in range(600):
    ids = sampler.plan(i).class_ids
    counts[ids] += 1
    first[ids[0]] += 1
  # 600 * 4 / 6 = 400 per class, 100 as label 0: loose bounds (the draws are
  # seeded, so this cannot flake).
  assert counts.min() > 340 and counts.max() < 460, counts
  assert first.min() > 60 and first.max() < 140, first


def _memory_dataset(counts, names=None):
  labels = np.repeat(np.arange(len(counts)), counts)
  images = np.zeros((len(labels), 8, 8, 3), np.uint8)
  names = names or [f"class{c}" for c in range(len(counts))]
  return data.InMemoryDataset(images, labels, names)


def test_construction_errors():
  ds = _memory_dataset([5, 5, 3], ["ant", "bee", "cat"])
  with pytest.raises(ValueError, match=r"'cat' \(label 2\) has 3") as e:
    data.EpisodeSampler(ds, way=2, shot=1, query=3, image_size=8)
  # The command-line spelling of the switch (the job's config key).
  assert "--config.dataset.exclude_small_classes=True" in str(e.value)
  with pytest.raises(ValueError, match="shot=0"):
    data.EpisodeSampler(ds, way=2, shot=0, query=1, image_size=8)
  with pytest.raises(ValueError, match="query=0"):
    data.EpisodeSampler(ds, way=2, shot=1, query=0, image_size=8)
  with pytest.raises(ValueError, match="way=4 but the dataset has only 3"):
    data.EpisodeSampler(ds, way=4, shot=1, query=1, image_size=8)
  with pytest.raises(ValueError, match="seed=-1"):
    data.EpisodeSampler(ds, way=2, shot=1, query=1, seed=-1, image_size=8)
  # The image size is the model's: no silent 224 px default.
  with pytest.raises(TypeError, match="image_size"):
    data.EpisodeSampler(ds, way=2, shot=1, query=1)
  with pytest.raises(ValueError, match="image_size=0"):
    data.EpisodeSampler(ds, way=2, shot=1, query=1, image_size=0)
  # Excluding the small class instead: never drawn.
  s = data.EpisodeSampler(ds, way=2, shot=1, query=3,
                          exclude_small_classes=True, image_size=8)
  assert s.excluded_classes == ["cat"]
  assert all(2 not in s.plan(i).class_ids for i in range(50))
  with pytest.raises(ValueError, match="way=3 but the dataset has only 2"):
    data.EpisodeSampler(ds, way=3, shot=1, query=3,
                        exclude_small_classes=True, image_size=8)
  with pytest.raises(ValueError, match="episode index=-1"):
    s.plan(-1)
