"""``Model``: a two-tower backbone with its tokenizer and preprocessing."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfsl.models import families
from jaxfsl.models.config import ModelConfig
from jaxfsl.models.two_towers import TwoTowers, init_params
from jaxfsl.preprocess import Preprocessing

if TYPE_CHECKING:  # trainables import models: no runtime cycle.
  from jaxfsl.trainables.lora import Adapters

Tokenizer = Callable[[Sequence[str]], np.ndarray]


@dataclasses.dataclass
class Model:
  """A loaded (or random-init) vision-language model.

  Attributes:
    config: architecture.
    params: frozen float32 backbone parameters (the TwoTowers param tree).
    tokenizer: list[str] -> int32 [N, L]; L = config.text.context_length.
    preprocessing: image size and normalisation of this checkpoint.
    dtype: compute dtype of the matmuls (parameters stay float32).
    name: where it came from (a path or a preset), for logs.
  """

  config: ModelConfig
  params: dict
  tokenizer: Tokenizer | None
  preprocessing: Preprocessing
  dtype: Any = jnp.float32
  name: str = ""

  def module(self, adapters: Adapters | None = None,
             remat: bool = False) -> TwoTowers:
    """The Flax module, configured for ``adapters``' scaling and dropout."""
    if adapters is None:
      return TwoTowers(self.config, dtype=self.dtype, remat=remat)
    return TwoTowers(self.config, dtype=self.dtype,
                     lora_scaling=adapters.config.scaling,
                     lora_dropout=adapters.config.dropout, remat=remat,
                     lora_dropout_masks=adapters.config.dropout_masks)

  def variables(self, adapters: Adapters | None = None) -> dict:
    if adapters is None:
      return {"params": self.params}
    return {"params": self.params, "lora": adapters.params}

  def preprocess(self, images) -> np.ndarray:
    """uint8 [N, H, W, 3] or PIL images -> float32 [N, S, S, 3]."""
    return self.preprocessing(images)

  def tokenize(self, texts: Sequence[str]) -> np.ndarray:
    """list[str] -> int32 [N, L] padded/truncated as the reference tokenizer."""
    if self.tokenizer is None:
      raise ValueError(
          f"model {self.name!r} has no tokenizer; pass token ids, or load the "
          "checkpoint with tokenizer=PATH")
    if isinstance(texts, str):
      raise TypeError("tokenize expects a list of strings, got one str")
    return np.asarray(self.tokenizer(list(texts)), np.int32)

  def encode_image(self, pixels, lora: Adapters | None = None, *,
                   train: bool = False, rng: jax.Array | None = None
                   ) -> jax.Array:
    """Normalised float32 [N, S, S, 3] -> float32 [N, E] (not normalised).

    ``train=True`` enables LoRA dropout and needs ``rng``.
    """
    return _apply(self.module(lora), self.variables(lora), "encode_image",
                  jnp.asarray(pixels, jnp.float32), train, rng)

  def encode_text(self, texts_or_ids, lora: Adapters | None = None, *,
                  train: bool = False, rng: jax.Array | None = None
                  ) -> jax.Array:
    """str, list[str] or int32 [N, L] -> float32 [N, E] (not normalised).

    One string is one text (N = 1), as in ``encode_text("a photo of a cat.")``.

    Raises:
      TypeError: token ids that are not integers.
      ValueError: texts for a model without a tokenizer.
    """
    if isinstance(texts_or_ids, str):
      texts_or_ids = [texts_or_ids]
    if isinstance(texts_or_ids, (list, tuple)):
      ids = self.tokenize(texts_or_ids)
    else:
      ids = np.asarray(texts_or_ids)
      if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"token ids must be integers, got {ids.dtype}")
    return _apply(self.module(lora), self.variables(lora), "encode_text",
                  jnp.asarray(ids, jnp.int32), train, rng)

  @property
  def logit_scale(self) -> float:
    """The multiplier of cosine logits, exp(learned log-scale)."""
    return float(np.exp(np.asarray(self.params["logit_scale"])))

  @property
  def logit_bias(self) -> float | None:
    if "logit_bias" not in self.params:
      return None
    return float(np.asarray(self.params["logit_bias"]))


@functools.partial(jax.jit, static_argnums=(0, 2, 4))
def _apply_jit(module, variables, method, inputs, train, rng):
  rngs = {"dropout": rng} if train else {}
  return module.apply(variables, inputs, not train, method=method, rngs=rngs)


def _apply(module, variables, method, inputs, train, rng):
  if train and rng is None:
    raise ValueError("train=True needs an rng for LoRA dropout")
  if rng is None:
    rng = jax.random.PRNGKey(0)
  return _apply_jit(module, variables, method, inputs, bool(train), rng)


def random_init_tokenizer(config: ModelConfig) -> Tokenizer:
  """The tokenizer ``build`` attaches when given none: the family's default
  (``Family.default_tokenizer``), else a deterministic byte-level tokenizer
  sized to the config's vocabulary. Needs no parameters (the job's config
  checks use it before building anything)."""
  family = families.get(config.family)
  tokenizer = None
  if family.default_tokenizer is not None:
    tokenizer = family.default_tokenizer(config.text)
  if tokenizer is None:
    from jaxfsl.tokenizers import ByteTokenizer
    tokenizer = ByteTokenizer(config.text.vocab_size,
                              config.text.context_length)
  return tokenizer


def build(config: ModelConfig | str, seed: int = 0,
          tokenizer: Tokenizer | None = None, dtype: Any = jnp.float32
          ) -> Model:
  """A random-init model from a config or a preset name (see
  ``jaxfsl.models.PRESETS``), with its family's preprocessing.

  Without a tokenizer, the family's default (``Family.default_tokenizer``)
  or else a deterministic byte-level tokenizer sized to the config's
  vocabulary is attached, so class names can be encoded.

  Raises:
    ValueError: unknown preset or family.
  """
  name = config if isinstance(config, str) else "custom"
  if isinstance(config, str):
    if config not in families.PRESETS:
      raise ValueError(f"unknown model preset {config!r}; expected one of "
                       f"{sorted(families.PRESETS)}")
    config = families.PRESETS[config]
  family = families.get(config.family)
  params = init_params(config, jax.random.PRNGKey(seed))
  if tokenizer is None:
    tokenizer = random_init_tokenizer(config)
  return Model(config=config, params=params, tokenizer=tokenizer,
               preprocessing=family.preprocessing(config.vision.image_size),
               dtype=dtype, name=f"random-init:{name}")
