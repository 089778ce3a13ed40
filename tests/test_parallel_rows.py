"""parallel.process_rows: each process keeps its own block of a global batch."""

import jax
import numpy as np
import pytest

from jaxfsl import parallel


def test_one_process_keeps_everything():
  batch = {"x": np.arange(8).reshape(4, 2)}
  assert parallel.process_rows(batch) is batch


@pytest.mark.parametrize("index", [0, 1, 2])
def test_blocks_in_process_order(monkeypatch, index):
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  monkeypatch.setattr(jax, "process_index", lambda: index)
  batch = {"image": np.arange(12).reshape(6, 2), "label": np.arange(6)}
  got = parallel.process_rows(batch)
  np.testing.assert_array_equal(got["label"], [2 * index, 2 * index + 1])
  np.testing.assert_array_equal(got["image"],
                                batch["image"][2 * index:2 * index + 2])


def test_uneven_batch_names_sizes(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 4)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  with pytest.raises(ValueError, match="6 rows cannot be split over 4"):
    parallel.process_rows({"x": np.zeros((6, 1))})
