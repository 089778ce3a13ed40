"""``Family``: what jaxfsl knows about one model family, in one object."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from jaxfsl.models.config import ModelConfig, TextConfig, VisionConfig
from jaxfsl.preprocess import Preprocessing


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family (CLIP, SigLIP, ...): architecture flags, preprocessing,
  tokenizer kind and named sizes.

  Checkpoint loaders read only *sizes* (widths, depths, patch, context) from a
  checkpoint and ask the family for everything else, so a family's behaviour
  is written down once, here.

  Attributes:
    name: the ``ModelConfig.family`` value.
    vision: ``VisionConfig`` fields fixed by the family (activation, pooling,
      norms, biases, projection, LayerNorm epsilon).
    text: ``TextConfig`` fields fixed by the family (activation, causal mask,
      pooling rule, head bias, LayerNorm epsilon).
    logit_scale_init: initial log temperature of a random-init model.
    logit_bias_init: initial logit bias (SigLIP), None for none.
    mean, std: per-channel input statistics on the [0, 1] scale.
    resample: the resize filter (``jaxfsl.preprocess.RESAMPLE``) used both by
      ``Model.preprocess`` and by the episode pipeline (``jaxfsl.data``).
    tokenizer: the ``family`` argument of ``jaxfsl.tokenizers.from_pretrained``
      (which files to look for and how to call them).
    presets: named random-init configs for ``jaxfsl.build`` and benchmarks.
    vision_config, text_config: the tower config classes ``config`` builds
      (a family with its own tower, e.g. PE-Core's RoPE ViT, names its
      subclass or own dataclass here). A config class may name its own Flax
      module as ``TOWER = "module:Class"`` (``TwoTowers`` imports it).
    default_tokenizer: text config -> the tokenizer to attach when none is
      given (``finalize``, ``build``), or None; for a family whose
      checkpoints ship no tokenizer files (PE-Core's packaged BPE).
  """

  name: str
  vision: Mapping[str, Any]
  text: Mapping[str, Any]
  logit_scale_init: float
  logit_bias_init: float | None
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  resample: str
  tokenizer: str
  presets: Mapping[str, ModelConfig] = dataclasses.field(default_factory=dict)
  vision_config: type = VisionConfig
  text_config: type = TextConfig
  default_tokenizer: Callable[[TextConfig], Any] | None = None

  def config(self, vision: Mapping[str, Any], text: Mapping[str, Any],
             **top: Any) -> ModelConfig:
    """A ``ModelConfig`` of this family.

    Args:
      vision, text: sizes of the towers (``VisionConfig`` / ``TextConfig``
        fields); a field given here overrides the family's flag (only for
        what a checkpoint states itself, e.g. ``act`` or ``norm_eps`` in a
        Hugging Face config.json).
      **top: ``logit_scale_init`` / ``logit_bias_init`` overrides.

    Raises:
      ValueError: inconsistent sizes (from the config dataclasses).
      TypeError: an unknown field.
    """
    return ModelConfig(
        family=self.name,
        vision=self.vision_config(**{**self.vision, **vision}),
        text=self.text_config(**{**self.text, **text}),
        logit_scale_init=top.pop("logit_scale_init", self.logit_scale_init),
        logit_bias_init=top.pop("logit_bias_init", self.logit_bias_init),
        **top)

  def with_presets(self, presets: Mapping[str, ModelConfig]) -> Family:
    """This family with its named sizes (built with ``config``, hence
    declared after the family itself)."""
    return dataclasses.replace(self, presets=dict(presets))

  def preprocessing(self, image_size: int) -> Preprocessing:
    """The family's default preprocessing at ``image_size`` pixels."""
    return Preprocessing(image_size, self.mean, self.std, self.resample)
