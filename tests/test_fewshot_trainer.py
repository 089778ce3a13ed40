"""The few-shot trainer: schedule, terms per variant, chunked text, 1 vs 4
devices."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfsl.models import PRESETS, build
from jaxfsl.optim import OptimConfig
from jaxfsl.protocols.fewshot import trainer as T

NUM_CLASSES = 5
BATCH = 8


def tiny_model():
  arch = PRESETS["tiny-clip"]
  arch = dataclasses.replace(arch, vision=dataclasses.replace(
      arch.vision, image_size=32, depth=1))
  return build(arch, seed=0)


def text_ids(model):
  return model.tokenize([f"a photo of a class {c}." for c in
                         range(NUM_CLASSES)])


def batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"images": rng.integers(0, 255, (BATCH, 32, 32, 3), np.uint8),
          "clean": rng.integers(0, 255, (BATCH, 32, 32, 3), np.uint8),
          "labels": rng.integers(0, NUM_CLASSES, (BATCH,)).astype(np.int32)}


@pytest.fixture(scope="module")
def model():
  return tiny_model()


def test_defaults_are_clip_lora():
  cfg = T.TrainerConfig(steps=8000)
  assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.min_lr,
          cfg.batch_size,
          cfg.logit_scale) == (2e-4, 1e-2, 1e-6, 32, 100.0)
  assert cfg.lora.rank == 2 and cfg.lora.alpha == 1.0
  assert cfg.lora.towers == "both" and cfg.lora.targets == ("q", "k", "v")
  assert cfg.window_end == 4800
  with pytest.raises(ValueError, match="variant"):
    T.TrainerConfig(steps=1, variant="visual")


def test_schedule_is_torch_cosine_annealing():
  cfg = T.TrainerConfig(steps=100,
                        optim=OptimConfig(lr=2e-4, min_lr=1e-6))
  tx = T.make_optimizer(cfg)
  params = {"w": jnp.ones(())}
  state = tx.init(params)
  # With zero gradients AdamW's update is -lr_k * wd * w: read lr_k off it.
  for k in (0, 1, 50, 99):
    st = state
    for _ in range(k):
      _, st = tx.update({"w": jnp.zeros(())}, st, params)
    upd, _ = tx.update({"w": jnp.zeros(())}, st, params)
    lr = -float(upd["w"]) / cfg.optim.weight_decay
    torch_lr = 1e-6 + (2e-4 - 1e-6) * (1 + math.cos(math.pi * k / 100)) / 2
    assert lr == pytest.approx(torch_lr, rel=1e-5)


@pytest.fixture(scope="module")
def parts_by_variant(model):
  """Loss parts at iteration 5 of 10 (inside the 0.6 T window, p = 1/6)."""
  out = {}
  b = {k: jnp.asarray(v) for k, v in batch().items()}
  for variant in T.VARIANTS:
    cfg = T.TrainerConfig(steps=10, batch_size=BATCH, variant=variant)
    tr = T.FewshotTrainer(model, cfg, text_ids(model))
    params = tr.init_state(jax.random.PRNGKey(0)).params
    # Non-zero B so that the adapters matter.
    params = jax.tree_util.tree_map(lambda x: x + 0.01, params)
    fn = jax.jit(lambda p, tr=tr: tr.loss_terms(
        p, tr.backbone, tr.text_ids, tr.frozen_text, b,
        jax.random.PRNGKey(3), jnp.asarray(5), True))
    total, parts = fn(params)
    out[variant] = (float(total), {k: float(v) for k, v in parts.items()})
  return out


def test_each_variant_uses_exactly_its_terms(parts_by_variant):
  for variant, (total, parts) in parts_by_variant.items():
    svl = variant in ("svl", "svl_ra")
    ra = variant in ("ra", "svl_ra")
    assert (parts["anti_visual"] != 0) == svl, variant
    assert (parts["relation"] != 0) == ra, variant
    expected = (parts["vlm"] + 0.1 * parts["anti_visual"] +
                3.0 * parts["relation"])
    assert total == pytest.approx(expected, rel=1e-6), variant
  # Same rng, same adapters: the shared L_vlm is identical across variants.
  vlms = {v: p["vlm"] for v, (_, p) in parts_by_variant.items()}
  assert len(set(vlms.values())) == 1, vlms


@pytest.fixture(scope="module")
def svl_ra_trainer(model):
  cfg = T.TrainerConfig(steps=12, batch_size=BATCH, variant="svl_ra",
                        optim=OptimConfig(lr=5e-3))
  return T.FewshotTrainer(model, cfg, text_ids(model))


def test_training_reduces_the_loss(svl_ra_trainer):
  tr = svl_ra_trainer
  state = tr.init_state(jax.random.PRNGKey(0))
  b = batch()
  vlm = []
  for k in range(tr.config.steps):
    state, parts = tr.train_step(state, b, jax.random.PRNGKey(k))
    vlm.append(float(parts["vlm"]))
  assert np.mean(vlm[-3:]) < 0.7 * np.mean(vlm[:3]), vlm


def test_extra_terms_stop_after_the_window(svl_ra_trainer):
  tr, cfg = svl_ra_trainer, svl_ra_trainer.config
  state = tr.init_state(jax.random.PRNGKey(0))
  b = batch()
  state, inside = tr.train_step(state, b, jax.random.PRNGKey(1))
  assert float(inside["anti_visual"]) > 0
  state = state.replace(step=jnp.asarray(cfg.window_end, state.step.dtype))
  state, after = tr.train_step(state, b, jax.random.PRNGKey(1))
  assert float(after["anti_visual"]) == 0 and float(after["relation"]) == 0
  assert float(after["total"]) == float(after["vlm"])
  assert int(state.step) == cfg.window_end + 1


def test_chunked_text_equals_one_chunk(model):
  ids = jnp.asarray(text_ids(model))
  one = T.FewshotTrainer(model, T.TrainerConfig(steps=1, batch_size=BATCH,
                                                text_chunk=128), ids)
  two = T.FewshotTrainer(model, T.TrainerConfig(steps=1, batch_size=BATCH,
                                                text_chunk=2), ids)
  params = one.init_state(jax.random.PRNGKey(0)).params
  params = jax.tree_util.tree_map(lambda x: x + 0.01, params)
  a = one._text_feats(one.backbone, params, ids)
  b = two._text_feats(two.backbone, params, ids)
  assert a.shape == (NUM_CLASSES, model.config.text.embed_dim)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


SHARDED_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import jax, numpy as np
from test_fewshot_trainer import tiny_model, text_ids, batch, BATCH
from jaxfsl import parallel
from jaxfsl.protocols.fewshot import trainer as T
model = tiny_model()
from jaxfsl.optim import OptimConfig
cfg = T.TrainerConfig(steps=6, batch_size=BATCH, variant="svl_ra",
                      optim=OptimConfig(lr=1e-3))
out = {{"devices": jax.device_count()}}
for name, devices in (("one", jax.devices()[:1]), ("four", jax.devices())):
  mesh = parallel.make_mesh(devices)
  tr = T.FewshotTrainer(model, cfg, text_ids(model), mesh)
  state = tr.init_state(jax.random.PRNGKey(0))
  totals = []
  for k in range(3):
    state, parts = tr.train_step(state, batch(k), jax.random.PRNGKey(k))
    totals.append(float(parts["total"]))
  leaves = jax.tree_util.tree_leaves(jax.device_get(state.params))
  out[name] = {{"totals": totals,
               "params": [np.asarray(x).ravel()[:50].tolist()
                          for x in leaves]}}
print(json.dumps(out))
"""


def test_four_devices_equal_one():
  """The minibatch sharded over 4 simulated CPU devices (a subprocess: the
  device count is fixed when JAX starts) equals the same trainer on one
  device of that process, to float rounding."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=4")
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
       env.get("PYTHONPATH", "")])
  script = SHARDED_SCRIPT.format(tests=os.path.dirname(__file__))
  result = subprocess.run([sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=900,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4
  np.testing.assert_allclose(out["four"]["totals"], out["one"]["totals"],
                             rtol=1e-5)
  for a, b in zip(out["four"]["params"], out["one"]["params"], strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
