"""parallel.process_rows: each process keeps its own block of a global
batch; parallel.device_memory_stat: one key of the devices' memory_stats."""

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


class _Device:
  platform, device_kind = "gpu", "Fake GPU"

  def __init__(self, stats):
    self._stats = stats

  def memory_stats(self):
    if isinstance(self._stats, Exception):
      raise self._stats
    return self._stats


def test_device_memory_stat_skips_devices_without_it(monkeypatch):
  devices = [_Device({"bytes_limit": 8, "peak_bytes_in_use": 3}),
             _Device(None), _Device(NotImplementedError("no stats")),
             _Device({"bytes_limit": 6.0})]
  assert parallel.device_memory_stat(devices, "bytes_limit") == [8, 6]
  assert parallel.device_memory_stat(devices, "peak_bytes_in_use") == [3]
  assert parallel.device_memory_stat(devices[1:3], "bytes_limit") == []
  monkeypatch.setattr(jax, "local_devices", lambda: devices)
  assert parallel.device_memory_stat(None, "bytes_limit") == [8, 6]


def test_memory_readers_share_device_memory_stat(monkeypatch):
  """The benchmark's peak memory and the engine's memory budget both read
  Device.memory_stats() through parallel.device_memory_stat."""
  from jaxfsl.benchmarking import measure
  from jaxfsl.protocols.episodic import engine

  asked = []

  def fake(devices, key):
    asked.append(key)
    return {"bytes_limit": [12, 10], "peak_bytes_in_use": [4, 5]}[key]

  monkeypatch.setattr(parallel, "device_memory_stat", fake)
  assert measure.peak_memory_bytes() == (9, "device_peak_bytes_in_use")
  assert engine.device_memory_budget()[0] == 10
  assert asked == ["peak_bytes_in_use", "bytes_limit"]
