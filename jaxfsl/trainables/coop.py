"""CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV
2022; public code ``KaiyangZhou/CoOp`` ``trainers/coop.py``) as a Trainable.

The trainable pytree (collection ``"prompts"``, float32)::

  ctx  [n_ctx, Wt]        unified context (default), or
       [C, n_ctx, Wt]     class-specific contexts (``class_specific``)

Wt is the text tower's width (from the model config). The class prompts are
``"<prefix> <name>."`` tokenised by the model's own tokenizer, where the
prefix is ``n_ctx`` one-token placeholders ("X X .. X"), or the ``ctx_init``
phrase, whose token embeddings then initialise the context (and whose token
count replaces ``n_ctx``, as CoOp does; logged when it overrides a different
value). In the text tower the context vectors replace the placeholder
embeddings before the position embeddings are added, and the tower pools
where it pools the placeholder prompt (``jaxfsl.models.prompting``). Only the
text tower depends on it: image features are fixed during an episode, so the
SVL term (a function of image features only) has no gradient with CoOp.

Tokenizer-dependent facts (where the text starts, which token ends it, whether
"." survives tokenisation) are read from the model's tokenizer by
``PromptText.resolve``; ``bind(model)`` does that before ``init``. The engine
keeps passing the plain prompts' token ids ("a photo of a {name}.", what the
zero-shot baseline encodes): the text tower rewrites them into CoOp's prompts
(``jaxfsl.models.prompting.relayout_ids``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxfsl.models.config import ModelConfig
from jaxfsl.models.prompting import POSITIONS, PromptLayout
from jaxfsl.trainables.base import TrainableConfigError, register

# Re-exported: their home is jaxfsl.trainables.prompt_learner.
from jaxfsl.trainables.prompt_learner import (  # noqa: F401 isort:skip
    DEFAULT_TEMPLATE, PromptLearner, PromptText, check_prompt_towers,
    config_from_block, prompt_tower_problems)

# The original's optimiser (Dassl's defaults + configs/trainers/CoOp/vit_b16*:
# SGD lr 0.002, momentum 0.9, weight decay 5e-4, cosine, 1 warmup epoch at a
# constant 1e-5), as ``OptimConfig`` fields: the job uses it with
# ``optim.name = "trainable"`` (the default is the release's AdamW). The
# cosine reaches 0 at the end of the T steps (period_factor 1, as Dassl's
# T_max = the epochs); warmup_steps -1 is one release epoch, ``shot`` steps.
ORIGINAL_OPTIM = dict(name="sgd", lr=2e-3, momentum=0.9, weight_decay=5e-4,
                      min_lr=0.0, period_factor=1.0, warmup_steps=-1,
                      warmup_lr=1e-5)


@dataclasses.dataclass(frozen=True)
class CoopConfig:
  """CoOp's settings (config block ``coop.*``; defaults as CoOp's train.py).

  Attributes:
    n_ctx: number of learned context vectors (ignored with ``ctx_init``: the
      phrase's token count is used).
    ctx_init: phrase whose token embeddings initialise a unified context
      (e.g. "a photo of a"); "" draws N(0, init_std).
    class_specific: one context per class (CoOp's CSC); ignored with
      ``ctx_init`` (CoOp's init phrase always gives a unified context).
    class_token_position: "end", "middle" or "front".
    init_std: standard deviation of the random initialisation.
  """

  n_ctx: int = 16
  ctx_init: str = ""
  class_specific: bool = False
  class_token_position: str = "end"
  init_std: float = 0.02

  def __post_init__(self):
    errors = []
    if isinstance(self.n_ctx, bool) or not isinstance(self.n_ctx, int) or (
        self.n_ctx < 1):
      errors.append(f"coop.n_ctx {self.n_ctx!r}: expected an integer >= 1")
    if not isinstance(self.ctx_init, str):
      errors.append(f"coop.ctx_init {self.ctx_init!r}: expected a string")
    if self.class_token_position not in POSITIONS:
      errors.append(f"coop.class_token_position "
                    f"{self.class_token_position!r}: expected one of "
                    f"{POSITIONS}")
    if not isinstance(self.init_std, (int, float)) or not self.init_std > 0:
      errors.append(f"coop.init_std {self.init_std!r}: expected a number > 0")
    if errors:
      raise ValueError("; ".join(errors))



@register("coop")
class CoopTrainable(PromptLearner):
  """CoOp's learned text context as a ``Trainable`` (see the module doc).

  ``bind(model, num_classes)`` reads the tokenizer and returns the bound
  trainable that ``init`` / ``module_kwargs`` / ``text_ids`` need.
  """

  name = "coop"
  config_class = CoopConfig

  def __init__(self, config: CoopConfig | None = None,
               prompt_text: PromptText | None = None,
               num_classes: int | None = None):
    self.config = CoopConfig() if config is None else config
    self.prompt_text = prompt_text
    self.num_classes = num_classes

  @property
  def towers(self) -> frozenset[str]:
    return frozenset({"text"})

  @property
  def class_specific(self) -> bool:
    # CoOp's init phrase always gives a unified context.
    return self.config.class_specific and not self.config.ctx_init.strip()

  def optim_overrides(self) -> dict[str, Any]:
    return dict(ORIGINAL_OPTIM)

  def bind(self, model: Any, num_classes: int | None = None,
           template: str = DEFAULT_TEMPLATE) -> CoopTrainable:
    """A copy resolved against ``model.tokenizer`` (and the class count for
    class-specific contexts).

    Args:
      model: a ``jaxfsl.models.Model`` (tokenizer).
      num_classes: the episode's way (class-specific contexts only).
      template: the plain prompt template of the token ids the engine
        passes (``config.prompt``); the text tower rewrites them into CoOp's
        prompts, so the zero-shot baseline keeps the plain ones.

    Raises:
      TrainableConfigError: see ``PromptText.resolve``; class-specific
        contexts without ``num_classes``; a text tower without prompt hooks.
    """
    c = self.config
    self.check_model(model.config)
    text = PromptText.resolve(model.tokenizer, c.n_ctx, c.ctx_init,
                              phrase_sets_n_ctx=True, key="coop",
                              template=template)
    if self.class_specific and not num_classes:
      raise TrainableConfigError(
          "coop.class_specific=True needs the number of classes (the "
          "episode's way): bind(model, num_classes=way)")
    return CoopTrainable(c, text, num_classes)

  @property
  def layout(self) -> PromptLayout:
    return self._layout(position=self.config.class_token_position)

  def init(self, rng: jax.Array, backbone_params: dict,
           model_config: ModelConfig) -> dict:
    """{"ctx": float32 [n, Wt] or [C, n, Wt]}: the phrase's token
    embeddings, or N(0, init_std^2)."""
    t = self._bound()
    if t.from_phrase:
      return {"ctx": self.phrase_context(backbone_params)}
    width = model_config.text.width
    shape = ((self.num_classes, t.n_ctx, width) if self.class_specific
             else (t.n_ctx, width))
    return {"ctx": self.config.init_std * jax.random.normal(rng, shape,
                                                            jnp.float32)}
