"""Never recompile what was compiled: the persistent compilation cache serves
a second identical job, and a run whose episode count is not a multiple of
the batch compiles one program (the last batch is padded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from test_finetune import config, make_batch, tiny_model

from jaxfsl import compile_cache
from jaxfsl.protocols.episodic.batch import plan_batches
from jaxfsl.protocols.episodic.engine import EpisodeEngine, episode_keys

JOB = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_finetune import config, make_batch, tiny_model
    from jaxfsl import compile_cache
    from jaxfsl.protocols.episodic.engine import EpisodeEngine, episode_keys
    path = compile_cache.enable(workdir={workdir!r})
    model = tiny_model()
    with compile_cache.CompileMonitor() as monitor:
      out = EpisodeEngine(model, config(steps=2)).run_batch(
          make_batch(model, 1), episode_keys(0, np.arange(1)))
    print(json.dumps({{"dir": str(path), "hits": monitor.cache_hits,
                      "requests": monitor.cache_requests,
                      "compiles": monitor.compiles,
                      "accuracy": out["stages"]["accuracy"].tolist()}}))
""")


def _job(tmp_path) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k != compile_cache.CACHE_ENV}
  script = JOB.format(tests=os.path.dirname(__file__),
                      workdir=str(tmp_path))
  result = subprocess.run([sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=900,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_second_identical_job_hits_the_cache(tmp_path):
  first = _job(tmp_path)
  assert first["dir"] == str(tmp_path / "jax_cache")
  entries = sorted(p.name for p in (tmp_path / "jax_cache").iterdir())
  assert first["requests"] >= 1 and first["hits"] == 0, first
  assert entries, "the first job wrote no cache entry"
  second = _job(tmp_path)
  # Every program of the second job (the episode program included) is read
  # back; nothing new is written.
  assert second["hits"] == second["requests"] >= 1, second
  assert sorted(p.name for p in (tmp_path / "jax_cache").iterdir()) \
      == entries
  assert second["accuracy"] == first["accuracy"]


def test_cache_dir_resolution(tmp_path, monkeypatch):
  monkeypatch.delenv(compile_cache.CACHE_ENV, raising=False)
  assert compile_cache.cache_dir() is None
  assert compile_cache.cache_dir(workdir=tmp_path) == tmp_path / "jax_cache"
  monkeypatch.setenv(compile_cache.CACHE_ENV, str(tmp_path / "env"))
  assert compile_cache.cache_dir(workdir=tmp_path) == tmp_path / "env"
  assert compile_cache.cache_dir(tmp_path / "given") == tmp_path / "given"
  monkeypatch.setenv(compile_cache.CACHE_ENV, "off")
  assert compile_cache.cache_dir(workdir=tmp_path) is None
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(OSError, match="file/sub.*JAXFSL_CACHE_DIR"):
    compile_cache.enable(blocker / "sub")


def test_padded_last_batch_compiles_one_program():
  """5 episodes in batches of 2: three batches, the last padded; the
  episode program compiles once."""
  model = tiny_model()
  engine = EpisodeEngine(model, config(steps=2))
  episodes = make_batch(model, 5)
  plan = plan_batches(range(5), 2)
  assert [v.tolist() for _, v in plan][-1] == [True, False]
  keys = [episode_keys(0, indices) for indices, _ in plan]
  with compile_cache.CompileMonitor() as monitor:
    for (indices, _), rngs in zip(plan, keys, strict=True):
      engine.run_batch({k: v[indices] for k, v in episodes.items()}, rngs,
                       episode_ids=indices)
  assert engine._batch_fn(False)._cache_size() == 1
  assert monitor.compiles == 1, monitor.compiles
  assert monitor.seconds > 0


RESETS = textwrap.dedent("""
    import logging
    import jax, jax.numpy as jnp
    logging.basicConfig(level=logging.INFO)
    from jaxfsl import compile_cache
    compile_cache.enable({a!r})  # Nothing compiled yet: nothing to reset.
    jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()
    compile_cache.enable({b!r})  # jax's cache is at a: reset to b.
    jax.jit(lambda x: x * 3)(jnp.ones(3)).block_until_ready()
    compile_cache.disable()
    compile_cache.disable()  # Already reset: nothing to reset.
""")


def test_cache_reset_only_when_jax_holds_a_cache(tmp_path):
  """No "Resetting cache at <empty>" log line: enable/disable reset jax's
  cache object only where one was initialised (and each directory still
  receives its programs)."""
  a, b = tmp_path / "a", tmp_path / "b"
  env = {k: v for k, v in os.environ.items()
         if k != compile_cache.CACHE_ENV}
  result = subprocess.run(
      [sys.executable, "-c", RESETS.format(a=str(a), b=str(b))], env=env,
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  resets = [line for line in result.stderr.splitlines()
            if "Resetting cache" in line]
  assert "<empty>" not in result.stderr, resets
  assert len(resets) == 2, resets  # enable(b) and the first disable().
  assert list(a.iterdir()) and list(b.iterdir())
