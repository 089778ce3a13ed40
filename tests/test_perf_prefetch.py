"""parallel.prefetch_to_device: batches reach the device ahead of use, in
order, and the engine takes them without a host round trip."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxfsl import parallel


def test_prefetch_places_ahead_in_order():
  mesh = parallel.make_mesh()
  produced = []

  def items():
    for i in range(4):
      produced.append(i)
      yield (i, {"x": np.full((1, 3), i, np.float32)})

  it = parallel.prefetch_to_device(items(), mesh, size=1, part=1)
  first = next(it)
  # Item 1's copy is in flight while item 0 is in use.
  assert produced == [0, 1]
  assert first[0] == 0 and isinstance(first[1]["x"], jax.Array)
  assert first[1]["x"].sharding == parallel.episode_sharding(mesh)
  rest = list(it)
  assert [i for i, _ in rest] == [1, 2, 3]
  np.testing.assert_array_equal(rest[-1][1]["x"], np.full((1, 3), 3))
  # Placed arrays pass put_episodes unchanged (no copy back to the host).
  placed = rest[0][1]
  assert parallel.put_episodes(placed, mesh)["x"] is placed["x"]
  with pytest.raises(ValueError, match="prefetch size must be >= 1, got 0"):
    next(parallel.prefetch_to_device(items(), mesh, size=0))
