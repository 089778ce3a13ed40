"""MaPLe (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023;
public code ``muzairkhattak/multimodal-prompt-learning`` ``trainers/maple.py``
and ``clip/model.py``) as a Trainable.

The trainable pytree (collection ``"prompts"``, float32; Wt / Wv are the text
and vision widths from the model config, J the prompt depth)::

  ctx        [n, Wt]              "a photo" of "a photo of a" (token embeds)
  deep_ctx   [J-1, n, Wt]         N(0, 0.02): text prompts of layers 1..J-1
  proj       {kernel [Wt, Wv], bias [Wv]}      text -> vision coupling
  deep_proj  {kernel [J-1, Wt, Wv], bias [J-1, Wv]}  one coupling per depth

The couplings start as PyTorch's ``nn.Linear`` default (U(+-1/sqrt(Wt)) for
weight and bias); the J-1 deep couplings start identical, as MaPLe clones one
layer. The class prompt keeps the whole init phrase ("a photo of a
{name}."): only its first n tokens are learned, the rest stays fixed text
(the engine's plain prompt ids are rewritten to it when the template
differs, as for CoOp).
Where the prompts enter the towers: ``jaxfsl.models.prompting``. Both towers
depend on the tree, so SVL and RA both have a gradient path.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxfsl.models.config import ModelConfig
from jaxfsl.models.prompting import PromptLayout
from jaxfsl.trainables.base import register
from jaxfsl.trainables.coop import ORIGINAL_OPTIM as COOP_OPTIM
from jaxfsl.trainables.prompt_learner import (
    DEFAULT_TEMPLATE,
    PromptLearner,
    PromptText,
)

# The original's optimiser (configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx:
# SGD lr 0.0035, momentum 0.9, weight decay 5e-4, 5 epochs, batch 4, cosine,
# 1 warmup epoch at 1e-5): CoOp's Dassl settings with MaPLe's LR, used with
# ``optim.name = "trainable"``.
ORIGINAL_OPTIM = dict(COOP_OPTIM, lr=3.5e-3)


@dataclasses.dataclass(frozen=True)
class MapleConfig:
  """MaPLe's settings (config block ``maple.*``; defaults as MaPLe's).

  Attributes:
    n_ctx: learned prompt tokens per layer (the first n of ``ctx_init``).
    ctx_init: init phrase of the layer-0 text prompts; "" draws N(0,
      init_std) with placeholder tokens in the class prompt.
    depth: J, the number of layers (from the first, in both towers) with
      learned prompts; at most the shallower tower's depth.
    init_std: standard deviation of the random prompts.
  """

  n_ctx: int = 2
  ctx_init: str = "a photo of a"
  depth: int = 9
  init_std: float = 0.02

  def __post_init__(self):
    errors = []
    for key in ("n_ctx", "depth"):
      value = getattr(self, key)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        errors.append(f"maple.{key} {value!r}: expected an integer >= 1")
    if not isinstance(self.ctx_init, str):
      errors.append(f"maple.ctx_init {self.ctx_init!r}: expected a string")
    if not isinstance(self.init_std, (int, float)) or not self.init_std > 0:
      errors.append(f"maple.init_std {self.init_std!r}: expected a number > 0")
    if errors:
      raise ValueError("; ".join(errors))


def _linear_init(rng: jax.Array, fan_in: int, fan_out: int
                 ) -> dict[str, jax.Array]:
  """PyTorch ``nn.Linear``'s default init, kernel stored [in, out]."""
  bound = 1.0 / math.sqrt(fan_in)
  k1, k2 = jax.random.split(rng)
  return {"kernel": jax.random.uniform(k1, (fan_in, fan_out), jnp.float32,
                                       -bound, bound),
          "bias": jax.random.uniform(k2, (fan_out,), jnp.float32, -bound,
                                     bound)}


@register("maple")
class MapleTrainable(PromptLearner):
  """MaPLe's coupled text and vision prompts as a ``Trainable``.

  ``bind(model)`` reads the tokenizer and checks the depth against both
  towers; ``init`` / ``module_kwargs`` / ``text_ids`` need it bound.
  """

  name = "maple"
  config_class = MapleConfig

  def __init__(self, config: MapleConfig | None = None,
               prompt_text: PromptText | None = None):
    self.config = MapleConfig() if config is None else config
    self.prompt_text = prompt_text

  @property
  def towers(self) -> frozenset[str]:
    return frozenset({"vision", "text"})

  def optim_overrides(self) -> dict[str, Any]:
    return dict(ORIGINAL_OPTIM)

  def model_problems(self, model_config: Any) -> list[str]:
    """Towers without prompt hooks, and ``maple.depth`` deeper than a
    tower's blocks (prompts are replaced at layers 1..depth-1 of both
    towers)."""
    problems = super().model_problems(model_config)
    depths = {"text": model_config.text.depth,
              "vision": model_config.vision.depth}
    if self.config.depth <= min(depths.values()):
      return problems
    return problems + [
        f"maple.depth={self.config.depth} exceeds the model's blocks (text "
        f"tower {depths['text']}, vision tower {depths['vision']}); "
        f"expected maple.depth <= {min(depths.values())}"]

  def bind(self, model: Any, num_classes: int | None = None,
           template: str = DEFAULT_TEMPLATE) -> MapleTrainable:
    """A copy resolved against ``model`` (tokenizer, tower depths) and the
    plain prompt template of the engine's token ids (``config.prompt``).

    Raises:
      TrainableConfigError: ``maple.depth`` deeper than a tower, a tower
        without prompt hooks, or see ``PromptText.resolve``.
    """
    del num_classes  # MaPLe's prompts are shared by all classes.
    c = self.config
    self.check_model(model.config)
    text = PromptText.resolve(model.tokenizer, c.n_ctx, c.ctx_init,
                              phrase_sets_n_ctx=False, key="maple",
                              template=template)
    return MapleTrainable(c, text)

  @property
  def layout(self) -> PromptLayout:
    return self._layout(position="end", depth=self.config.depth,
                        vision=True)

  def init(self, rng: jax.Array, backbone_params: dict,
           model_config: ModelConfig) -> dict:
    """A fresh MaPLe tree (module doc) for one episode."""
    t, c = self._bound(), self.config
    wt, wv = model_config.text.width, model_config.vision.width
    k_ctx, k_deep, k_proj, k_deep_proj = jax.random.split(rng, 4)
    if t.from_phrase:
      ctx = self.phrase_context(backbone_params)
    else:
      ctx = c.init_std * jax.random.normal(k_ctx, (t.n_ctx, wt))
    tree = {"ctx": ctx.astype(jnp.float32),
            "proj": _linear_init(k_proj, wt, wv)}
    if c.depth > 1:
      deep = c.depth - 1
      tree["deep_ctx"] = c.init_std * jax.random.normal(
          k_deep, (deep, t.n_ctx, wt), jnp.float32)
      single = _linear_init(k_deep_proj, wt, wv)
      tree["deep_proj"] = jax.tree.map(
          lambda x: jnp.broadcast_to(x, (deep,) + x.shape), single)
    return tree
