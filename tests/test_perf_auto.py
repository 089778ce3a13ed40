"""episodes_per_batch "auto": the chosen batch's compiled program stays
within the memory budget (XLA's memory analysis, nothing is timed or run)."""

from __future__ import annotations

import numpy as np
import pytest
from test_finetune import config, tiny_model

from jaxfsl import compile_cache
from jaxfsl.protocols.episodic.engine import (
  EpisodeEngine,
  auto_episodes_per_batch,
  program_bytes,
)


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
  # The same programs are sized several times (by the test and by
  # auto_episodes_per_batch's own engines): read them back, don't recompile.
  compile_cache.enable(tmp_path_factory.mktemp("jax_cache"))
  yield
  compile_cache.disable()


@pytest.fixture(scope="module")
def model():
  return tiny_model()


@pytest.fixture(scope="module")
def sizes(model):
  engine = EpisodeEngine(model, config())
  return {e: program_bytes(engine, e) for e in (1, 2, 4)}


def test_auto_batch_fits_the_budget_and_is_the_largest(model, sizes):
  # A budget between the 2- and 4-episode programs (with the margin): the
  # choice must be 2 or 3 episodes and its compiled size within budget.
  assert sizes[1] < sizes[2] < sizes[4], sizes
  margin = 0.9
  budget = int((sizes[2] + sizes[4]) / 2 / margin)
  auto = auto_episodes_per_batch(model, config(), budget, margin=margin)
  assert auto.episodes_per_batch in (2, 3), auto
  assert not auto.remat
  assert auto.bytes_per_device <= margin * budget, auto
  engine = EpisodeEngine(model, config())
  assert program_bytes(engine, auto.episodes_per_batch) <= margin * budget
  assert f"-> {auto.episodes_per_batch}" in auto.reason
  # The cap (the job's episode count) wins over a generous budget.
  capped = auto_episodes_per_batch(model, config(), 100 * sizes[4],
                                   max_episodes=3)
  assert capped.episodes_per_batch == 3 and "capped" in capped.reason


def test_auto_batch_falls_back_to_remat_then_fails_naming_sizes(model, sizes):
  remat = program_bytes(EpisodeEngine(model, config(remat=True)), 1)
  if remat < sizes[1]:
    # A budget only the rematerialised program fits.
    budget = (remat + sizes[1]) // 2
    auto = auto_episodes_per_batch(model, config(), budget, margin=1.0)
    assert auto.remat and auto.episodes_per_batch == 1, auto
    assert auto.bytes_per_device <= budget
  with pytest.raises(ValueError, match="not even 1 episode"):
    auto_episodes_per_batch(model, config(), min(remat, sizes[1]) // 2,
                            margin=1.0)
  with pytest.raises(ValueError, match="budget_bytes -1.*margin 2"):
    auto_episodes_per_batch(model, config(), -1, margin=2.0)


def test_cpu_without_budget_takes_one_episode_per_device(model):
  auto = auto_episodes_per_batch(model, config())
  assert auto.episodes_per_batch == 1 and auto.budget_bytes is None
  assert "no bytes_limit" in auto.reason
  assert np.isfinite(auto.bytes_per_device)
