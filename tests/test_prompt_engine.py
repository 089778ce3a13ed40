"""CoOp and MaPLe through the episode engine (tiny model, synthetic data):
losses fall, accuracy moves off zero-shot, RA reaches the prompts, SVL is
skipped for CoOp (image features fixed), batch 1 equals batch 4 (to Adam's
float drift over 20 steps); the job's prompt template reaches the learners,
``optim.name="trainable"`` gives the originals' SGD, a MaPLe depth beyond
the model is refused naming key, value and depths, and validate accepts the
prompt learners on PE-Core."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_finetune import make_batch

from jaxfsl.models import build
from jaxfsl.models.config import clip_config
from jaxfsl.protocols.episodic.engine import (
  EngineConfig,
  EpisodeEngine,
  MethodConfig,
  OptimConfig,
  episode_keys,
)

WAY, SHOT, QUERY = 5, 1, 4
# CoOp from random context vectors: the batch keeps the plain prompts (the
# zero-shot baseline encodes them); the text tower rewrites them.
BLOCKS = {"coop": {"n_ctx": 4}, "maple": {"depth": 2}}


@pytest.fixture(scope="module")
def model():
  return build(clip_config(vision_width=32, vision_depth=2, vision_heads=2,
                           patch_size=16, image_size=32, text_width=32,
                           text_depth=2, text_heads=2, embed_dim=16,
                           vocab_size=300, context_length=32), seed=0)


@pytest.fixture(scope="module")
def batch(model):
  return make_batch(model, 4)


def engine(model, name, variant, steps=20):
  return EpisodeEngine(model, EngineConfig(
      way=WAY, shot=SHOT, query=QUERY, steps=steps,
      method=MethodConfig(variant=variant), optim=OptimConfig(lr=5e-3),
      trainable=name, trainable_config=BLOCKS[name]))


@pytest.mark.parametrize("name", ["coop", "maple"])
@pytest.mark.parametrize("variant", ["none", "svl_ra"])
def test_prompt_learners_train_in_engine(model, batch, name, variant):
  eng = engine(model, name, variant)
  # The batch's prompts are "a photo of a class i." (12 byte tokens before
  # the name); the learners' prompts are "XXXX class i." / MaPLe's own.
  assert eng.trainable.layout.template_prefix_len == 12
  keys = episode_keys(0, np.arange(4))
  out = eng.run_batch(batch, keys, return_adapters=True)
  vlm = out["losses"]["vlm"]
  assert np.all(vlm[:, -1] < vlm[:, 0]), vlm
  assert not np.allclose(out["stages"]["accuracy"][:, -1],
                         out["zero_shot"]["accuracy"])
  if variant == "svl_ra":
    # RA reaches CoOp's text prompts through A_t; SVL is skipped for CoOp.
    assert np.abs(out["losses"]["relation"][:, :3]).sum() > 0
    svl = np.abs(out["losses"]["anti_visual"][:, :3]).sum()
    assert (svl > 0) == (name == "maple")
  one = eng.run_batch({k: v[:1] for k, v in batch.items()}, keys[:1],
                      return_adapters=True)
  np.testing.assert_allclose(one["losses"]["total"][0],
                             out["losses"]["total"][0], rtol=2e-3, atol=1e-5)
  for a, b in zip(jax.tree.leaves(one["adapters"]),
                  jax.tree.leaves(out["adapters"]), strict=True):
    np.testing.assert_allclose(a[0], b[0], atol=2e-4)


def test_job_prompt_template_reaches_the_prompt_learner(model):
  """config.prompt -> EngineConfig.prompt -> bind: CoOp initialised from the
  template's own words ("a satellite photo of", byte tokens) gives, before
  any step, exactly the zero-shot features of the plain prompts. Bound to
  the default template instead, the text tower would rewrite the wrong
  number of leading tokens."""
  from jaxfsl.protocols.episodic import config as config_lib
  from jaxfsl.protocols.episodic.program import EpisodeProgram

  template = "a satellite photo of {}."
  job = config_lib.load_config("episodic/demo.py")
  job.prompt = template
  job.trainable = "coop"
  job.coop.ctx_init = "a satellite photo of"
  cfg = config_lib.engine_config(job)
  assert cfg.prompt == template
  program = EpisodeProgram(model, cfg)
  assert program.trainable.layout.template_prefix_len == len(
      "a satellite photo of")
  ids = jnp.asarray(model.tokenize([template.format(f"class {i}")
                                    for i in range(WAY)]))
  tree = program.trainable.init(jax.random.PRNGKey(0), model.params,
                                model.config)
  plain = program._text_feats(model.params, None, ids)
  prompted = program._text_feats(model.params, tree, ids)
  np.testing.assert_allclose(prompted, plain, atol=1e-5)


def test_optim_trainable_gives_the_originals_sgd(model):
  cfg = EngineConfig(way=WAY, shot=3, query=QUERY, steps=20,
                     optim=OptimConfig(name="trainable", lr=1.0),
                     trainable="maple", trainable_config={"depth": 2})
  o = cfg.optim
  assert (o.name, o.lr, o.momentum, o.weight_decay, o.min_lr,
          o.period_factor, o.warmup_steps, o.warmup_lr) == (
              "sgd", 3.5e-3, 0.9, 5e-4, 0.0, 1.0, 3, 1e-5)
  assert EngineConfig(optim=OptimConfig(name="trainable"), trainable="coop",
                      trainable_config={}).optim.lr == 2e-3
  # LoRA has no optimiser of its own: the release's AdamW.
  assert EngineConfig(optim=OptimConfig(name="trainable")).optim == (
      OptimConfig())
  with pytest.raises(ValueError, match="warmup_steps 3"):
    EngineConfig(shot=3, steps=3, optim=OptimConfig(warmup_steps=-1))
  # The engine's optimiser is that SGD: its first update (warmup LR 1e-5)
  # is -lr * (g + wd * p).
  tx = EpisodeEngine(model, cfg).optimizer
  p, g = {"ctx": jnp.ones((2, 3))}, {"ctx": jnp.full((2, 3), 2.0)}
  update, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(update["ctx"], -1e-5 * (2.0 + 5e-4), rtol=1e-6)


def test_maple_depth_beyond_the_model_names_key_value_and_depth(model):
  from jaxfsl.protocols.episodic import config as config_lib
  from jaxfsl.trainables.base import TrainableConfigError

  with pytest.raises(TrainableConfigError,
                     match=r"maple.depth=3 .*text tower 2, vision tower 2"
                           r".*maple.depth <= 2"):
    EpisodeEngine(model, EngineConfig(trainable="maple",
                                      trainable_config={"depth": 3}))
  job = config_lib.load_config("episodic/demo.py")
  job.trainable = "maple"
  job.model.vision_depth = 1
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(job)
  assert str(e.value) == (
      "maple.depth=9 exceeds the model's blocks (text tower 2, vision tower "
      "1); expected maple.depth <= 1")


def test_prompt_learners_on_pe_core_pass_validate_depth_still_checked():
  # PE-Core's ViT is the family's own module with MaPLe's prompt hooks:
  # validate accepts MaPLe and CoOp on it, and still refuses a depth beyond
  # its blocks before the job builds or writes anything. (A vision-only
  # PE-Core checkpoint's stand-in text tower is still refused:
  # tests/test_maple_pe.py.)
  from jaxfsl.protocols.episodic import config as config_lib

  job = config_lib.load_config("episodic/demo.py")
  job.model.init = "pe-core-tiny"
  job.trainable = "maple"
  job.maple.depth = 2
  config_lib.validate(job)
  job.trainable = "coop"
  config_lib.validate(job)
  job.trainable = "maple"
  job.maple.depth = 3
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(job)
  assert str(e.value) == (
      "maple.depth=3 exceeds the model's blocks (text tower 2, vision tower "
      "2); expected maple.depth <= 2")
