"""jaxfsl.flops on attention-pooled towers: the pool's MLP width follows
the family (PE-Core: its own ``pool_mlp_dim``, 4 W; SigLIP: the blocks')."""

from __future__ import annotations

import pytest

from jaxfsl.flops import vision_flops
from jaxfsl.models import PRESETS


def _expected_dense(vision, pool_mlp: int) -> int:
  """Dense FLOPs by the module docstring's formula, written out."""
  t, w, f = vision.num_tokens, vision.width, vision.mlp_dim
  blocks = vision.depth * (2 * t * w * 3 * w + 2 * t * w * w
                           + 2 * 2 * t * w * f)
  pool = (2 * w * w  # probe query
          + 2 * t * w * 2 * w  # keys and values of every token
          + 2 * w * w  # output projection
          + 2 * 2 * w * pool_mlp)  # MLP on the pooled token
  proj = 2 * w * vision.embed_dim if vision.proj else 0  # SigLIP: none
  return blocks + pool + proj


def test_pe_core_g_pool_mlp_is_4w_not_the_blocks_width():
  vision = PRESETS["pe-core-g14-448"].vision
  # The preset as PE-Core-G14-448 ships: 32 x 32 patches, no class token,
  # blocks' MLP 8960 wide, the attention pool's 4 * 1536 = 6144.
  assert (vision.num_tokens, vision.mlp_dim, vision.pool_mlp_dim) == (
      1024, 8960, 6144)
  count = vision_flops(vision)
  assert count.dense == _expected_dense(vision, 6144)
  # The blocks' width in the pool would overcount by 2 * 2 * W * 2816.
  assert _expected_dense(vision, 8960) - count.dense == 4 * 1536 * 2816


@pytest.mark.parametrize("name", ["pe-core-b16-224", "siglip-b16"])
def test_pool_mlp_width_where_both_rules_agree(name):
  vision = PRESETS[name].vision
  # PE-Core B: pool_mlp_dim = mlp_dim = 4 W; SigLIP has no pool_mlp_dim
  # and its MAP head uses the blocks' MLP width.
  assert getattr(vision, "pool_mlp_dim", vision.mlp_dim) == vision.mlp_dim
  assert vision_flops(vision).dense == _expected_dense(vision,
                                                       vision.mlp_dim)
