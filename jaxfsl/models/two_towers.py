"""The two-tower vision-language model as one Flax module."""

from __future__ import annotations

import importlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfsl.models.config import ModelConfig
from jaxfsl.models.prompting import PromptLayout, TextPrompt, VisionPrompt
from jaxfsl.models.text import TextTower
from jaxfsl.models.tower import Tower
from jaxfsl.models.vit import VisionTower

Array = jax.Array


def _call(fn: Any, *args: Any, prompt: Any = None) -> Array:
  # Towers without prompt support (a family's own tower) are called exactly
  # as before; only a prompt learner's hooks need the keyword.
  if prompt is None:
    return fn(*args)
  return fn(*args, prompt=prompt)


class TwoTowers(Tower):
  """Image tower ``img``, text tower ``txt``, and the learned logit scale/bias.

  Apply with ``{"params": backbone}`` or ``{"params": backbone, "lora":
  adapters}``; methods ``encode_image``, ``embed_image``,
  ``encode_image_tokens`` and ``encode_text`` run one tower.

  With ``prompt_layout`` set (a prompt learner: CoOp, MaPLe), the learner's
  tree is read from the ``prompt_layout.collection`` variable collection when
  the variables hold it (see ``jaxfsl.models.prompting``); without it the
  towers run plain.
  """

  config: ModelConfig  # The towers' settings (``Tower``) apply to both.
  prompt_layout: PromptLayout | None = None

  def setup(self):
    kw = dict(dtype=self.dtype, lora_scaling=self.lora_scaling,
              lora_dropout=self.lora_dropout, remat=self.remat,
              lora_dropout_masks=self.lora_dropout_masks)
    self.img = _tower(self.config.vision, VisionTower)(self.config.vision,
                                                      **kw)
    self.txt = _tower(self.config.text, TextTower)(self.config.text, **kw)
    self.logit_scale = self.param(
        "logit_scale", nn.initializers.constant(self.config.logit_scale_init),
        (), jnp.float32)
    if self.config.logit_bias_init is not None:
      self.logit_bias = self.param(
          "logit_bias", nn.initializers.constant(self.config.logit_bias_init),
          (), jnp.float32)

  def _prompt_tree(self) -> dict | None:
    layout = self.prompt_layout
    if layout is None or not self.has_variable(layout.collection, "ctx"):
      return None
    return self.variables[layout.collection]

  def _vision_prompt(self) -> VisionPrompt | None:
    tree = self._prompt_tree()
    return None if tree is None else self.prompt_layout.vision_prompt(tree)

  def _text_prompt(self) -> TextPrompt | None:
    tree = self._prompt_tree()
    return None if tree is None else self.prompt_layout.text_prompt(tree)

  def encode_image(self, pixels: Array, deterministic: bool = True) -> Array:
    """float [N, S, S, 3] normalised pixels -> float32 [N, E] features."""
    return _call(self.img, pixels, deterministic, prompt=self._vision_prompt())

  def embed_image(self, pixels: Array) -> Array:
    """float [N, S, S, 3] -> [N, P, W] frozen patch tokens."""
    return self.img.embed(pixels)

  def encode_image_tokens(self, tokens: Array,
                          deterministic: bool = True) -> Array:
    """[N, P, W] patch tokens -> float32 [N, E] features."""
    return _call(self.img.encode_tokens, tokens, deterministic,
                 prompt=self._vision_prompt())

  def encode_text(self, token_ids: Array, deterministic: bool = True) -> Array:
    """int32 [N, L] -> float32 [N, E] features."""
    return _call(self.txt, token_ids, deterministic,
                 prompt=self._text_prompt())

  def __call__(self, pixels: Array, token_ids: Array,
               deterministic: bool = True) -> tuple[Array, Array]:
    return (self.encode_image(pixels, deterministic),
            self.encode_text(token_ids, deterministic))


def _tower(config: Any, default: type) -> type:
  """The Flax module of a tower config: ``default``, or the one its class
  names as ``TOWER = "module:Class"`` (a family's own tower, e.g. PE-Core's
  RoPE ViT; imported here so that config modules stay free of JAX)."""
  spec = getattr(type(config), "TOWER", None)
  if spec is None:
    return default
  module, name = spec.split(":")
  return getattr(importlib.import_module(module), name)


def init_params(config: ModelConfig, rng: jax.Array) -> dict:
  """Random float32 backbone parameters for ``config`` (tests, the demo)."""
  module = TwoTowers(config)
  s = config.vision.image_size
  pixels = jnp.zeros((1, s, s, 3), jnp.float32)
  ids = jnp.zeros((1, config.text.context_length), jnp.int32)
  return jax.jit(module.init)(rng, pixels, ids)["params"]
