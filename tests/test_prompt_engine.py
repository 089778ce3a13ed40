"""CoOp and MaPLe through the episode engine (tiny model, synthetic data):
losses fall, accuracy moves off zero-shot, RA reaches the prompts, SVL is
skipped for CoOp (image features fixed), batch 1 equals batch 4 (to Adam's
float drift over 20 steps)."""

import jax
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
