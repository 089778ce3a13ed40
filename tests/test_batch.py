"""jaxfsl.protocols.episodic.batch: model-ready episode batches."""

import jax
import numpy as np
import pytest

from jaxfsl import data
from jaxfsl.models import build
from jaxfsl.protocols.episodic.batch import (
  BATCH_KEYS,
  NUM_VIEWS,
  EpisodeBatch,
  make_batches,
  plan_batches,
)

WAY, SHOT, QUERY = 3, 1, 2


@pytest.fixture(scope="module")
def model():
  return build("tiny-clip")


@pytest.fixture(scope="module")
def sampler():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 5)
  images = rng.integers(0, 256, (len(labels), 20, 20, 3), dtype=np.uint8)
  names = ["red circle", "blue square", "green ring", "white cross"]
  dataset = data.InMemoryDataset(images, labels, names)
  # The sampler's own image size (224) is not the model's: make_batches
  # delivers the model's.
  return data.EpisodeSampler(dataset, way=WAY, shot=SHOT, query=QUERY,
                             seed=3, image_size=224)


def test_plan_pads_last_batch_by_repeating():
  plan = plan_batches(range(5), 2)
  assert [p.tolist() for p, _ in plan] == [[0, 1], [2, 3], [4, 4]]
  assert [v.tolist() for _, v in plan] == [[True, True], [True, True],
                                            [True, False]]
  with pytest.raises(ValueError, match="episodes_per_batch"):
    plan_batches(range(3), 0)


def test_make_batches_model_ready(model, sampler):
  out = list(make_batches(model, sampler, [4, 7, 9], 2,
                          prompt="an image of a {}.", num_workers=0))
  assert len(out) == 2
  (idx0, valid0, b0), (idx1, valid1, b1) = out
  assert idx0.tolist() == [4, 7] and valid0.all()
  assert idx1.tolist() == [9, 9] and valid1.tolist() == [True, False]
  s = model.config.vision.image_size
  m, q = WAY * SHOT, WAY * QUERY
  length = model.config.text.context_length
  assert isinstance(b0, EpisodeBatch)
  assert b0.support_views.shape == (2, NUM_VIEWS, m, s, s, 3)
  assert b0.support.shape == (2, m, s, s, 3) and b0.query.shape == (2, q, s,
                                                                    s, 3)
  assert b0.support_views.dtype == np.uint8
  assert b0.support_labels.dtype == np.int32 and b0.support_labels.shape == (
      2, m)
  assert b0.query_labels.shape == (2, q)
  assert b0.text_ids.shape == (2, WAY, length) and b0.text_ids.dtype == (
      np.int32)
  # The prompts are the model's tokenisation of the episode's class names.
  names = sampler.episode(4)["class_names"]
  want = model.tokenize([f"an image of a {n}." for n in names])
  np.testing.assert_array_equal(b0.text_ids[0], want)
  # The padding repeats the last episode.
  np.testing.assert_array_equal(b1.query[0], b1.query[1])
  # Same pixels as the sampler at the model's size.
  np.testing.assert_array_equal(b0.query[1],
                                sampler.episode(7, s)["query"])
  assert set(b0.keys()) == set(BATCH_KEYS)
  assert len(jax.tree_util.tree_leaves(b0)) == len(BATCH_KEYS)


def test_from_mapping_names_missing_keys():
  with pytest.raises(KeyError, match="query_labels.*text_ids"):
    EpisodeBatch.from_mapping({"support_views": 0, "support": 0,
                               "support_labels": 0, "query": 0})
