"""LoRA adapters as their own pytree, beside the frozen backbone.

The adapter tree mirrors the backbone's module paths down to each targeted
attention module and holds, per target projection ``t`` in q, k, v, o::

  {tower}/blocks_{i}/attn/{t}/a   float32 [W, r]  ~ U(-1/sqrt(W), 1/sqrt(W))
  {tower}/blocks_{i}/attn/{t}/b   float32 [r, W]  zeros

(tower ``img`` or ``txt``). ``LoraTrainable`` (``config.trainable = "lora"``)
is its ``jaxfsl.trainables.base.Trainable``. It is passed to
``TwoTowers.apply`` as the ``"lora"`` collection; the projection becomes
``x @ W + scaling * dropout(x) @ a @ b``. Blocks and towers not in the tree run
frozen. Nothing here copies the backbone: a batch of episodes is a tree with a
leading episode axis on every leaf, vmapped against one shared backbone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp

from jaxfsl.models.config import ModelConfig
from jaxfsl.models.layers import (
  DROPOUT_MASKS,
  LORA_COLLECTION,
  LORA_TARGETS,
  packed_draw_bits,
)
from jaxfsl.trainables.base import Trainable, register

Towers = Literal["vision", "text", "both"]
BLOCK_PRESETS = ("all", "bottom", "mid", "up", "half-up", "half-bottom")
_TOWER_KEYS = {"vision": ("img",), "text": ("txt",), "both": ("img", "txt")}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Where adapters go and how they behave (release defaults).

  Attributes:
    rank: r.
    alpha: the branch is scaled by alpha / sqrt(rank) (the release: 8/4 = 2).
    dropout: dropout rate on the LoRA branch input, train mode only.
    targets: any of "q", "k", "v", "o".
    towers: "vision", "text" or "both".
    blocks: a preset (all, bottom, mid, up, half-up, half-bottom: thirds and
      halves of the depth, as CLIP-LoRA's positions for 12 blocks) or explicit
      block indices.
    dropout_masks: how the dropout masks are drawn: "bernoulli" (default,
      ``jax.random.bernoulli``) or "packed" (opt-in: 8-bit draws, four per
      random word; exact for a ``dropout`` that is a multiple of 1/256, or of
      1/65536 with 16-bit draws; other rates are refused). "packed" masks
      are Bernoulli(1 - dropout) as well but differ from "bernoulli"'s for
      the same key, so results differ beyond rounding. See
      ``jaxfsl.models.layers.dropout_keep_mask``.
  """

  rank: int = 16
  alpha: float = 8.0
  dropout: float = 0.25
  targets: tuple[str, ...] = ("q", "k", "v")
  towers: Towers = "vision"
  blocks: str | tuple[int, ...] = "all"
  dropout_masks: str = "bernoulli"

  def __post_init__(self):
    # Lists (from a CLI or YAML) become tuples: the config is static pytree
    # metadata of Adapters and must stay hashable and compare equal to its
    # tuple spelling.
    object.__setattr__(self, "targets", tuple(self.targets))
    if not isinstance(self.blocks, str):
      object.__setattr__(self, "blocks", tuple(int(i) for i in self.blocks))
    errors = []
    if isinstance(self.rank, bool) or not isinstance(self.rank, int) or (
        self.rank < 1):
      errors.append(f"lora.rank {self.rank!r}: expected an integer >= 1")
    if not isinstance(self.alpha, (int, float)) or not math.isfinite(
        self.alpha) or self.alpha <= 0:
      errors.append(f"lora.alpha {self.alpha!r}: expected a number > 0")
    if not isinstance(self.dropout, (int, float)) or not (
        0.0 <= self.dropout < 1.0):
      errors.append(f"lora.dropout {self.dropout!r}: expected a number in "
                    "[0, 1)")
    bad = [t for t in self.targets if t not in LORA_TARGETS]
    if bad or not self.targets:
      errors.append(f"lora.targets {tuple(self.targets)!r}: expected a "
                    f"non-empty subset of {LORA_TARGETS}")
    if self.towers not in _TOWER_KEYS:
      errors.append(f"lora.towers {self.towers!r}: expected vision, text or "
                    "both")
    if isinstance(self.blocks, str) and self.blocks not in BLOCK_PRESETS:
      errors.append(f"lora.blocks {self.blocks!r}: expected one of "
                    f"{BLOCK_PRESETS} or a list of block indices")
    if self.dropout_masks not in DROPOUT_MASKS:
      errors.append(f"lora.dropout_masks {self.dropout_masks!r}: expected "
                    f"one of {DROPOUT_MASKS}")
    elif (self.dropout_masks == "packed" and isinstance(
        self.dropout, (int, float)) and 0.0 < self.dropout < 1.0 and
          packed_draw_bits(1.0 - self.dropout) is None):
      errors.append(
          f"lora.dropout {self.dropout!r} with lora.dropout_masks 'packed': "
          "expected a multiple of 1/256 (or of 1/65536), which 8-bit (16-bit) "
          "draws keep exactly, e.g. 0.25; or dropout_masks 'bernoulli'")
    if errors:
      raise ValueError("; ".join(errors))

  @property
  def scaling(self) -> float:
    return self.alpha / math.sqrt(self.rank)


def block_indices(blocks: str | Sequence[int], depth: int) -> tuple[int, ...]:
  """Resolves a block preset or explicit list against a tower's depth."""
  if isinstance(blocks, str):
    third, half = depth // 3, depth // 2
    ranges = {
        "all": range(depth),
        "bottom": range(third),
        "mid": range(third, 2 * third),
        "up": range(2 * third, depth),
        "half-up": range(half, depth),
        "half-bottom": range(half),
    }
    if blocks not in ranges:
      raise ValueError(f"unknown block preset {blocks!r}; expected one of "
                       f"{tuple(ranges)}")
    return tuple(ranges[blocks])
  indices = tuple(int(i) for i in blocks)
  bad = [i for i in indices if not 0 <= i < depth]
  if bad:
    raise ValueError(f"lora block indices {bad} out of range for depth {depth}")
  return indices


@flax.struct.dataclass
class Adapters:
  """A LoRA tree with the static settings needed to apply it.

  ``params`` is the only pytree data (what the optimizer trains and what
  ``jax.vmap`` batches); ``config`` travels as static metadata.
  """

  params: dict
  config: LoraConfig = flax.struct.field(pytree_node=False)


def init_lora(rng: jax.Array, backbone: dict, config: LoraConfig,
              model_config: ModelConfig | None = None) -> Adapters:
  """Fresh adapters for ``backbone`` (the frozen param tree).

  Args:
    rng: PRNG key.
    backbone: the model's float32 ``params`` tree (read for shapes only).
    config: where and how to adapt.
    model_config: unused; accepted for symmetry with ``build``.

  Returns:
    Adapters whose ``a`` matrices are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (as
    PyTorch's kaiming_uniform(a=sqrt(5)) on a Linear) and ``b`` zeros, so the
    adapted model starts exactly at the backbone.
  """
  del model_config
  params: dict = {}
  for tower in _TOWER_KEYS[config.towers]:
    tower_params = backbone[tower]
    depth = sum(1 for k in tower_params if k.startswith("blocks_"))
    for i in block_indices(config.blocks, depth):
      attn = tower_params[f"blocks_{i}"]["attn"]
      width = attn["out"]["kernel"].shape[0]
      entry = {}
      for target in config.targets:
        rng, key = jax.random.split(rng)
        bound = 1.0 / math.sqrt(width)
        entry[target] = {
            "a": jax.random.uniform(key, (width, config.rank), jnp.float32,
                                    -bound, bound),
            "b": jnp.zeros((config.rank, width), jnp.float32),
        }
      params.setdefault(tower, {})[f"blocks_{i}"] = {"attn": entry}
  return Adapters(params=params, config=config)


def merge_lora(backbone: dict, adapters: Adapters) -> dict:
  """A copy of ``backbone`` with the adapters folded into the weights.

  For export and inference only: training keeps them apart. The merged
  model run without adapters equals the unmerged one run with them (dropout
  off), to float rounding.
  """
  merged = jax.tree_util.tree_map(lambda x: x, backbone)
  scaling = adapters.config.scaling
  slices = {"q": 0, "k": 1, "v": 2}
  for tower, blocks in adapters.params.items():
    for block_name, block in blocks.items():
      attn = dict(merged[tower][block_name]["attn"])
      for target, ab in block["attn"].items():
        delta = scaling * (ab["a"] @ ab["b"])
        if target == "o":
          out = dict(attn["out"])
          out["kernel"] = out["kernel"] + delta
          attn["out"] = out
        else:
          qkv = dict(attn["qkv"])
          width = delta.shape[1]
          start = slices[target] * width
          qkv["kernel"] = qkv["kernel"].at[:, start:start + width].add(delta)
          attn["qkv"] = qkv
      block_copy = dict(merged[tower][block_name])
      block_copy["attn"] = attn
      tower_copy = dict(merged[tower])
      tower_copy[block_name] = block_copy
      merged = dict(merged)
      merged[tower] = tower_copy
  return merged


def count_params(tree) -> int:
  """Number of scalars in a pytree."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


_TOWER_NAMES = {"vision": frozenset({"vision"}), "text": frozenset({"text"}),
                "both": frozenset({"vision", "text"})}


@register("lora")
class LoraTrainable(Trainable):
  """LoRA as a ``Trainable``: the tree ``init_lora(...).params`` in the
  ``"lora"`` collection, read by the attention layers' q/k/v/o projections.

  Args:
    config: where and how to adapt.
  """

  name = "lora"
  collection = LORA_COLLECTION

  def __init__(self, config: LoraConfig | None = None):
    self.config = LoraConfig() if config is None else config

  @classmethod
  def from_config(cls, block: Any) -> LoraTrainable:
    """From a ``LoraConfig``, a mapping / ConfigDict of its fields (the
    config's ``lora`` block; blocks may be "0,1,2"), or None (defaults)."""
    if block is None or isinstance(block, LoraConfig):
      return cls(block)
    if hasattr(block, "to_dict"):
      block = block.to_dict()
    if not isinstance(block, Mapping):
      raise TypeError(f"lora settings must be a LoraConfig or a mapping, got "
                      f"{type(block).__name__}")
    fields = dict(block)
    unknown = sorted(set(fields) - {f.name for f in
                                    dataclasses.fields(LoraConfig)})
    if unknown:
      raise ValueError(f"unknown lora keys {unknown}")
    blocks = fields.get("blocks")
    if isinstance(blocks, str) and blocks not in BLOCK_PRESETS and (
        blocks.replace(",", "").replace(" ", "").isdigit()):
      fields["blocks"] = tuple(int(i) for i in blocks.split(",") if i.strip())
    return cls(LoraConfig(**fields))

  @property
  def towers(self) -> frozenset[str]:
    return _TOWER_NAMES[self.config.towers]

  def init(self, rng: jax.Array, backbone_params: dict,
           model_config: ModelConfig | None = None) -> dict:
    """``init_lora(rng, backbone_params, config).params``: A uniform, B 0."""
    return init_lora(rng, backbone_params, self.config, model_config).params

  def module_kwargs(self) -> dict[str, Any]:
    kwargs = {"lora_scaling": self.config.scaling,
              "lora_dropout": self.config.dropout}
    if self.config.dropout_masks != "bernoulli":
      # Only when opted in, so that a tower without the field (a family's
      # own) still builds with the default.
      kwargs["lora_dropout_masks"] = self.config.dropout_masks
    return kwargs

  @property
  def stochastic(self) -> bool:
    return self.config.dropout > 0.0
