"""The episode engine: batching, sharding, determinism, learning, errors."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxfsl.models import build
from jaxfsl.protocols.episodic.engine import (
  EngineConfig,
  EpisodeEngine,
  MethodConfig,
  OptimConfig,
  episode_keys,
)
from jaxfsl.trainables import LoraConfig

WAY, SHOT, QUERY, SIZE = 5, 1, 4, 32
NUM_EPISODES = 4  # a multiple of the 4 simulated devices of the sharded test


def tiny_model():
  from jaxfsl.models.config import clip_config

  config = clip_config(vision_width=32, vision_depth=2, vision_heads=2,
                       patch_size=16, image_size=SIZE, text_width=32,
                       text_depth=1, text_heads=2, embed_dim=16,
                       vocab_size=300, context_length=32)
  return build(config, seed=0)


def make_batch(model, num_episodes, seed=0, shot=SHOT, query=QUERY):
  """Episodes whose classes are learnable: each class has its own colour."""
  rng = np.random.RandomState(seed)
  m, q = WAY * shot, WAY * query

  def images(labels, colours):
    noise = rng.randint(-25, 25, labels.shape + (SIZE, SIZE, 3))
    return np.clip(colours[labels][..., None, None, :] + noise, 0,
                   255).astype(np.uint8)

  batch = {k: [] for k in ("support_views", "support", "support_labels",
                           "query", "query_labels", "text_ids")}
  for _ in range(num_episodes):
    colours = rng.randint(0, 255, (WAY, 3))
    support_labels = np.repeat(np.arange(WAY), shot).astype(np.int32)
    query_labels = np.repeat(np.arange(WAY), query).astype(np.int32)
    support = images(support_labels, colours)
    views = np.stack([support] + [images(support_labels, colours)
                                  for _ in range(4)])
    batch["support_views"].append(views)
    batch["support"].append(support)
    batch["support_labels"].append(support_labels)
    batch["query"].append(images(query_labels, colours))
    batch["query_labels"].append(query_labels)
    batch["text_ids"].append(
        model.tokenize([f"a photo of a class {i}." for i in range(WAY)]))
  assert m == batch["support"][0].shape[0] and q == len(query_labels)
  return {k: np.stack(v) for k, v in batch.items()}


def config(**kw):
  base = dict(way=WAY, shot=SHOT, query=QUERY, steps=5,
              method=MethodConfig(variant="svl_ra"),
              optim=OptimConfig(lr=1e-3), lora=LoraConfig(rank=4))
  base.update(kw)
  return EngineConfig(**base)


@pytest.fixture(scope="module")
def model():
  return tiny_model()


@pytest.fixture(scope="module")
def batch(model):
  return make_batch(model, NUM_EPISODES)


@pytest.fixture(scope="module")
def engine(model):
  # Shared so that its compiled programs are reused across tests.
  return EpisodeEngine(model, config())


@pytest.fixture(scope="module")
def together(engine, batch):
  return engine.run_batch(batch, episode_keys(0, np.arange(NUM_EPISODES)),
                          return_adapters=True)


def test_batched_equals_one_by_one(engine, batch, together):
  keys = episode_keys(0, np.arange(NUM_EPISODES))
  for e in range(NUM_EPISODES):
    single = {k: v[e:e + 1] for k, v in batch.items()}
    alone = engine.run_batch(single, keys[e:e + 1], return_adapters=True)
    np.testing.assert_allclose(alone["stages"]["accuracy"][0],
                               together["stages"]["accuracy"][e], atol=1e-5)
    np.testing.assert_allclose(alone["losses"]["total"][0],
                               together["losses"]["total"][e], rtol=1e-4,
                               atol=1e-5)
    a = jax.tree_util.tree_leaves(alone["adapters"])
    b = jax.tree_util.tree_leaves(together["adapters"])
    for x, y in zip(a, b, strict=True):
      np.testing.assert_allclose(x[0], y[e], atol=1e-5)


def test_same_seed_same_results_and_other_seed_differs(model, engine, batch,
                                                       together):
  first = together
  again = engine.run_batch(batch, episode_keys(0, np.arange(NUM_EPISODES)))
  other = engine.run_batch(batch, episode_keys(1, np.arange(NUM_EPISODES)))
  np.testing.assert_array_equal(first["losses"]["total"],
                                again["losses"]["total"])
  np.testing.assert_array_equal(first["stages"]["accuracy"],
                                again["stages"]["accuracy"])
  assert not np.array_equal(first["losses"]["total"], other["losses"]["total"])


def test_finetuning_learns(model, batch):
  engine = EpisodeEngine(model, config(
      steps=30, method=MethodConfig(variant="none"),
      optim=OptimConfig(lr=5e-3)))
  out = engine.run_batch(batch, episode_keys(0, np.arange(NUM_EPISODES)))
  vlm = out["losses"]["vlm"]
  assert np.all(vlm[:, -1] < vlm[:, 0]), vlm
  final = out["stages"]["accuracy"][:, -1]
  zero_shot = out["zero_shot"]["accuracy"]
  assert final.mean() > zero_shot.mean() + 0.2, (final, zero_shot)


@pytest.mark.parametrize("variant", ["none", "svl", "ra", "visual"])
def test_variants_run_and_use_their_terms(model, batch, variant):
  cfg = config(method=MethodConfig(variant=variant))
  out = EpisodeEngine(model, cfg).run_batch(
      {k: v[:1] for k, v in batch.items()}, episode_keys(0, [0]))
  losses, steps = out["losses"], out["step_losses"]
  # Only the terms the variant uses are reported, as they entered the loss.
  assert set(losses) == set(steps) == set(cfg.terms) | {"total"}
  assert cfg.terms == MethodConfig(variant=variant).terms
  stage1 = slice(0, 3)  # segments fully inside the 0.6 T window
  for term in set(cfg.terms) - {"vlm"}:
    assert np.abs(losses[term][0, stage1]).sum() > 0, term
    assert np.all(steps[term][0, cfg.window_end:] == 0), term
  # The parts sum to the total, step by step and per segment.
  parts = sum(steps[t] for t in cfg.terms)
  np.testing.assert_allclose(parts, steps["total"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(sum(losses[t] for t in cfg.terms),
                             losses["total"], rtol=1e-5, atol=1e-6)
  # Outside the window the loss is L_vlm alone.
  np.testing.assert_allclose(losses["total"][0, 3:], losses["vlm"][0, 3:],
                             rtol=1e-6)
  if variant == "ra":
    assert steps["relation"][0, 0] == 0  # no previous A_v at step 0


def test_segment_losses_are_means_of_step_losses_any_t(model, batch):
  """T = 22 (not a multiple of 5): the release's integer rules."""
  cfg = config(steps=22)
  assert cfg.window == (0, 12) and cfg.evaluation_steps == (4, 8, 12, 16, 22)
  out = EpisodeEngine(model, cfg).run_batch(
      {k: v[:1] for k, v in batch.items()}, episode_keys(0, [0]))
  steps = out["step_losses"]
  assert steps["total"].shape == (1, 22)
  bounds = (0,) + cfg.evaluation_steps
  for term in cfg.terms + ("total",):
    want = [steps[term][0, a:b].mean() for a, b in
            zip(bounds[:-1], bounds[1:], strict=True)]
    np.testing.assert_allclose(out["losses"][term][0], want, rtol=1e-5,
                               atol=1e-6)
  # The extra terms stop at step 12 = 3 * int(22 / 5).
  assert np.all(steps["anti_visual"][0, :12] > 0)
  assert np.all(steps["anti_visual"][0, 12:] == 0)
  assert np.all(steps["relation"][0, 12:] == 0)
  assert steps["relation"][0, 0] == 0 and np.all(steps["relation"][0, 1:12])


def test_evaluate_adapters_reproduces_training(engine, batch, together):
  out = engine.evaluate_adapters(batch, together["adapters"])
  np.testing.assert_allclose(out["final"]["accuracy"],
                             together["stages"]["accuracy"][:, -1], atol=1e-6)
  for name, values in out["zero_shot"].items():
    np.testing.assert_allclose(values, together["zero_shot"][name],
                               rtol=1e-5, atol=1e-6)
  for name, values in out["final"].items():
    np.testing.assert_allclose(values, together["stages"][name][:, -1],
                               rtol=1e-4, atol=1e-5)


def test_skipping_clean_pass_in_stage2_is_exact(model, engine, batch):
  one = {k: v[:1] for k, v in batch.items()}
  keys = episode_keys(0, [0])
  fast = engine.run_batch(one, keys)
  full = EpisodeEngine(model, config(skip_clean_pass_outside_window=False)
                       ).run_batch(one, keys)
  np.testing.assert_allclose(fast["stages"]["accuracy"],
                             full["stages"]["accuracy"], atol=1e-6)
  np.testing.assert_allclose(fast["losses"]["total"], full["losses"]["total"],
                             rtol=1e-5)


def test_text_tower_tuning_changes_text_side(model, batch):
  one = {k: v[:1] for k, v in batch.items()}
  cfg = config(lora=LoraConfig(rank=4, towers="text"), steps=20,
               method=MethodConfig(variant="none"), optim=OptimConfig(lr=5e-3))
  out = EpisodeEngine(model, cfg).run_batch(one, episode_keys(0, [0]),
                                            return_adapters=True)
  assert set(out["adapters"]) == {"txt"}
  assert out["losses"]["vlm"][0, -1] < out["losses"]["vlm"][0, 0]


def test_nonfinite_loss_names_episode_and_step(model, batch):
  cfg = config(optim=OptimConfig(lr=1e30))
  engine = EpisodeEngine(model, cfg)
  with pytest.raises(FloatingPointError, match=r"episode 7: .* at step \d+"):
    engine.run_batch({k: v[:1] for k, v in batch.items()},
                     episode_keys(0, [7]), episode_ids=np.array([7]))


def test_bad_batch_shapes_are_named(model, batch):
  engine = EpisodeEngine(model, config(shot=2))
  keys = episode_keys(0, np.arange(NUM_EPISODES))
  with pytest.raises(ValueError, match=r"support_views.*expected"):
    engine.run_batch(batch, keys)
  with pytest.raises(KeyError, match="query_labels"):
    engine.run_batch({k: v for k, v in batch.items() if k != "query_labels"},
                     keys)


def test_memory_grows_with_adapters_and_activations_only(model, engine,
                                                         batch):
  """The compiled program holds one backbone whatever the number of episodes."""
  fn = engine._batch_fn(False)
  backbone_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(
      model.params))
  sizes = {}
  for e in (1, 2):
    args = ({k: v[:e] for k, v in batch.items()},)
    compiled = fn.lower(model.params, *args,
                        episode_keys(0, np.arange(e))).compile()
    analysis = compiled.memory_analysis()
    sizes[e] = analysis.argument_size_in_bytes
  input_bytes = sum(v[:1].nbytes for v in batch.values())
  # One more episode adds its inputs (and key), never another backbone.
  assert sizes[2] - sizes[1] < input_bytes + 64, (sizes, input_bytes)
  assert sizes[1] >= backbone_bytes


SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    sys.path.insert(0, {tests!r})
    from test_finetune import NUM_EPISODES, tiny_model, make_batch, config
    from jaxfsl.protocols.episodic.engine import EpisodeEngine, episode_keys
    model = tiny_model()
    batch = make_batch(model, NUM_EPISODES)
    engine = EpisodeEngine(model, config())
    out = engine.run_batch(batch, episode_keys(0, np.arange(NUM_EPISODES)),
                           return_adapters=True)
    evaluated = engine.evaluate_adapters(batch, out["adapters"])
    print(json.dumps({{"devices": jax.device_count(),
                      "accuracy": out["stages"]["accuracy"].tolist(),
                      "total": out["losses"]["total"].tolist(),
                      "evaluated": evaluated["final"]["accuracy"].tolist()}}))
""")


def test_sharded_over_four_devices_equals_one(together):
  """The same batch on 4 simulated CPU devices (a subprocess: the device
  count is fixed when JAX starts) equals this process's single device, for
  training and for evaluate_adapters."""
  assert jax.device_count() == 1
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=4")
  script = SHARDED_SCRIPT.format(tests=os.path.dirname(__file__))
  result = subprocess.run([sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=600,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  four = json.loads(result.stdout.strip().splitlines()[-1])
  assert four["devices"] == 4
  np.testing.assert_allclose(four["accuracy"], together["stages"]["accuracy"],
                             atol=1e-5)
  np.testing.assert_allclose(four["total"], together["losses"]["total"],
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(four["evaluated"],
                             together["stages"]["accuracy"][:, -1], atol=1e-5)


def test_stage_ends_and_window():
  cfg = EngineConfig(steps=250)
  assert config().window == (0, 3) and config().stage_ends == (1, 2, 3, 4, 5)
  assert cfg.stage_ends == (50, 100, 150, 200, 250)
  assert cfg.window == (0, 150) and cfg.window_end == 150
  last = dataclasses.replace(cfg, method=MethodConfig(timing="last"))
  assert last.window == (100, 250)
  for t, end in ((12, 6), (22, 12), (125, 75), (250, 150)):
    assert EngineConfig(steps=t).window == (0, end)
  last22 = EngineConfig(steps=22, method=MethodConfig(timing="last"))
  assert last22.window == (10, 22)
  with pytest.raises(ValueError, match="method.variant"):
    MethodConfig(variant="bogus")
  with pytest.raises(ValueError, match="way.*steps"):
    EngineConfig(way=0, steps=0)
