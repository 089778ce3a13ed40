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
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxfsl.models.config import ModelConfig
from jaxfsl.models.prompting import POSITIONS, PROMPT_COLLECTION, PromptLayout
from jaxfsl.trainables.base import Trainable, register

# The plain class prompt whose token ids the engine passes (config.prompt).
DEFAULT_TEMPLATE = "a photo of a {}."

# The originals' optimiser (Dassl defaults + configs/trainers/CoOp/vit_b16*:
# SGD lr 0.002, momentum 0.9, weight decay 5e-4, cosine per epoch, 1 warmup
# epoch at a constant 1e-5). Recorded for reference; jaxfsl's episodes use
# the release's AdamW schedule (``jaxfsl.optim``) unless configured otherwise.
ORIGINAL_OPTIM = dict(optimizer="sgd", lr=2e-3, momentum=0.9,
                      weight_decay=5e-4, warmup_lr=1e-5)


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


def config_from_block(cls: type, block: Any, key: str) -> Any:
  """A settings dataclass from itself, a mapping / ConfigDict, or None.

  Raises:
    TypeError: another type. ValueError: unknown keys (all of them, named
    ``key.name``) or bad values.
  """
  if block is None:
    return cls()
  if isinstance(block, cls):
    return block
  if hasattr(block, "to_dict"):
    block = block.to_dict()
  if not isinstance(block, Mapping):
    raise TypeError(f"{key} settings must be a {cls.__name__} or a mapping, "
                    f"got {type(block).__name__}")
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(block) - known)
  if unknown:
    raise ValueError(f"unknown {key} keys {[f'{key}.{k}' for k in unknown]}; "
                     f"expected {sorted(known)}")
  return cls(**dict(block))


def check_prompt_towers(model_config: Any, towers: Sequence[str],
                        key: str) -> None:
  """Raises ValueError when a tower is a family's own module (its config
  class names one as ``TOWER``): only the shared ``TextTower`` /
  ``VisionTower`` take prompt hooks."""
  bad = [t for t in towers
         if getattr(type(getattr(model_config, t)), "TOWER", None)]
  if bad:
    raise ValueError(
        f"{key}: the {' and '.join(bad)} tower(s) of this "
        f"{getattr(model_config, 'family', '?')} model are the family's own "
        "modules, which take no prompt hooks (jaxfsl.models.prompting)")


def _content(row: np.ndarray, start: int, eos_id: int) -> list[int]:
  """The ids between the leading special tokens and the end-of-text."""
  ends = np.flatnonzero(row == eos_id)
  end = int(ends[0]) if len(ends) else len(row)
  return [int(t) for t in row[start:end]]


@dataclasses.dataclass(frozen=True)
class PromptText:
  """How a prompt learner's class prompts are tokenised (host side).

  Attributes:
    prefix: the words before the class name (placeholders or the init
      phrase).
    prefix_ids: their token ids.
    n_ctx: how many of them (from the first) are learned.
    start: index of the first text token (1 after a start-of-text token).
    eos_id: the end-of-text token id.
    n_suffix: tokens after the class name (the template's suffix, "." by
      default; 0 when the tokenizer drops punctuation).
    from_phrase: whether the prefix is an init phrase (its first ``n_ctx``
      token embeddings initialise the context).
    template_prefix_len: tokens before the class name in the plain template
      whose token ids the engine passes (``DEFAULT_TEMPLATE``); the text
      tower rewrites those ids into this learner's prompts.
  """

  prefix: str
  prefix_ids: tuple[int, ...]
  n_ctx: int
  start: int
  eos_id: int
  n_suffix: int
  from_phrase: bool
  template_prefix_len: int = 0

  @property
  def template(self) -> str:
    """This learner's own class prompt, ``prefix + " {}."``: what the
    rewritten plain prompts spell (with the plain template's suffix)."""
    return self.prefix + " {}."

  @property
  def init_ids(self) -> tuple[int, ...]:
    return self.prefix_ids[:self.n_ctx]

  @classmethod
  def resolve(cls, tokenizer: Any, n_ctx: int, ctx_init: str = "", *,
              phrase_sets_n_ctx: bool, key: str,
              template: str = DEFAULT_TEMPLATE) -> PromptText:
    """Reads the layout facts from ``tokenizer``.

    Args:
      tokenizer: ``list[str] -> int [N, L]`` with an ``eos_id`` attribute
        (``jaxfsl.tokenizers.Tokenizer``).
      n_ctx: learned vectors requested.
      ctx_init: init phrase ("" for placeholders).
      phrase_sets_n_ctx: CoOp: n_ctx becomes the phrase's token count;
        MaPLe: the first n_ctx of the phrase's tokens are learned and the
        rest of the phrase stays fixed text.
      key: config block name for messages ("coop", "maple").
      template: the plain class-prompt template of the token ids the
        towers will be given (``config.prompt``).

    Raises:
      ValueError: no tokenizer / eos_id, a phrase shorter than n_ctx (MaPLe),
        no placeholder string tokenising to n_ctx tokens, or a template
        without one "{}" or whose prefix does not tokenise on its own.
    """
    text = cls._resolve(tokenizer, n_ctx, ctx_init,
                        phrase_sets_n_ctx=phrase_sets_n_ctx, key=key)
    if template.count("{}") != 1:
      raise ValueError(f"{key}: prompt template {template!r} must contain "
                       "'{}' once (the class name)")
    head, tail = template.split("{}")
    head_ids = _content(np.asarray(tokenizer([head.strip()]))[0], text.start,
                        text.eos_id) if head.strip() else []
    n_suffix = len(_content(np.asarray(tokenizer([tail]))[0], text.start,
                            text.eos_id)) if tail.strip() else 0
    probe = _content(np.asarray(tokenizer([template.format("object")]))[0],
                     text.start, text.eos_id)
    if probe[:len(head_ids)] != head_ids:
      raise ValueError(
          f"{key}: the prompt template {template!r} does not start with the "
          f"tokens of {head.strip()!r} once a class name is filled in")
    return dataclasses.replace(text, n_suffix=n_suffix,
                               template_prefix_len=len(head_ids))

  @classmethod
  def _resolve(cls, tokenizer: Any, n_ctx: int, ctx_init: str, *,
               phrase_sets_n_ctx: bool, key: str) -> PromptText:
    eos_id = getattr(tokenizer, "eos_id", None)
    if tokenizer is None or eos_id is None:
      raise ValueError(
          f"{key}: prompt learners need the model's tokenizer (with an eos_id "
          f"attribute); got {tokenizer!r}. Load the checkpoint with its "
          "tokenizer (jaxfsl.load_model(path, tokenizer=...))")
    empty = np.asarray(tokenizer([""]))[0]
    hits = np.flatnonzero(empty == eos_id)
    if not len(hits):
      raise ValueError(f"{key}: the tokenizer's empty prompt {empty.tolist()} "
                       f"has no end-of-text id {eos_id}")
    start = int(hits[0])
    n_suffix = len(_content(np.asarray(tokenizer(["."]))[0], start, eos_id))
    phrase = ctx_init.replace("_", " ").strip()
    # Room for the context, one class-name token and the end-of-text token.
    if not phrase and start + n_ctx + 2 > len(empty):
      raise ValueError(
          f"{key}.n_ctx={n_ctx} does not fit in the model's text context of "
          f"{len(empty)} tokens with a class name (at most "
          f"{len(empty) - start - 2})")
    if phrase:
      ids = _content(np.asarray(tokenizer([phrase]))[0], start, eos_id)
      if phrase_sets_n_ctx:
        if n_ctx != len(ids):
          logging.info("%s.n_ctx=%d overridden to %d, the token count of "
                       "%s.ctx_init=%r", key, n_ctx, len(ids), key, ctx_init)
        n_ctx = len(ids)
      elif n_ctx > len(ids):
        raise ValueError(
            f"{key}.n_ctx={n_ctx} exceeds the {len(ids)} tokens of "
            f"{key}.ctx_init={ctx_init!r}; use a longer phrase, a smaller "
            f"n_ctx, or ctx_init='' for a random init")
      return cls(phrase, tuple(ids), n_ctx, start, eos_id, n_suffix, True)
    for candidate in (" ".join(["X"] * n_ctx), "X" * n_ctx):
      ids = _content(np.asarray(tokenizer([candidate]))[0], start, eos_id)
      if len(ids) == n_ctx:
        return cls(candidate, tuple(ids), n_ctx, start, eos_id, n_suffix,
                   False)
    raise ValueError(
        f"{key}.n_ctx={n_ctx}: found no placeholder string that the "
        "tokenizer splits into exactly n_ctx tokens ('X X ..' or 'XX..')")

  def text_ids(self, tokenizer: Any, class_names: Sequence[str]
               ) -> np.ndarray:
    """int32 [C, L]: the tokenised placeholder prompts, checked.

    Raises:
      ValueError: listing every class whose prompt does not start with the
        prefix's tokens or leaves no room after them (merged or truncated).
    """
    names = [n.replace("_", " ") for n in class_names]
    ids = np.asarray(tokenizer([self.template.format(n) for n in names]),
                     np.int32)
    s, k = self.start, len(self.prefix_ids)
    bad = []
    for name, row in zip(names, ids, strict=True):
      content = _content(row, s, self.eos_id)
      if tuple(content[:k]) != self.prefix_ids or len(content) <= k:
        bad.append(name)
    if bad:
      raise ValueError(
          f"class prompts {bad}: the tokenised prompt does not keep the "
          f"{k} tokens of {self.prefix!r} followed by the class name (the "
          "tokenizer merged across them, or the prompt was truncated)")
    return ids


@register("coop")
class CoopTrainable(Trainable):
  """CoOp's learned text context as a ``Trainable`` (see the module doc).

  ``bind(model, num_classes)`` reads the tokenizer and returns the bound
  trainable that ``init`` / ``module_kwargs`` / ``text_ids`` need.
  """

  name = "coop"
  collection = PROMPT_COLLECTION

  def __init__(self, config: CoopConfig | None = None,
               prompt_text: PromptText | None = None,
               num_classes: int | None = None):
    self.config = CoopConfig() if config is None else config
    self.prompt_text = prompt_text
    self.num_classes = num_classes

  @classmethod
  def from_config(cls, block: Any) -> CoopTrainable:
    """From a ``CoopConfig``, a mapping / ConfigDict (``config.coop``) or
    None (defaults)."""
    return cls(config_from_block(CoopConfig, block, "coop"))

  @property
  def towers(self) -> frozenset[str]:
    return frozenset({"text"})

  @property
  def class_specific(self) -> bool:
    # CoOp's init phrase always gives a unified context.
    return self.config.class_specific and not self.config.ctx_init.strip()

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
      ValueError: see ``PromptText.resolve``; class-specific contexts
        without ``num_classes``; a text tower without prompt hooks.
    """
    c = self.config
    check_prompt_towers(model.config, ("text",), "coop")
    text = PromptText.resolve(model.tokenizer, c.n_ctx, c.ctx_init,
                              phrase_sets_n_ctx=True, key="coop",
                              template=template)
    if self.class_specific and not num_classes:
      raise ValueError("coop.class_specific=True needs the number of classes "
                       "(the episode's way): bind(model, num_classes=way)")
    return CoopTrainable(c, text, num_classes)

  def _bound(self) -> PromptText:
    if self.prompt_text is None:
      raise RuntimeError("CoopTrainable is not bound to a model's tokenizer; "
                         "call trainable.bind(model[, num_classes]) first")
    return self.prompt_text

  @property
  def layout(self) -> PromptLayout:
    t = self._bound()
    return PromptLayout(n_ctx=t.n_ctx, start=t.start,
                        position=self.config.class_token_position,
                        eos_id=t.eos_id, n_suffix=t.n_suffix,
                        collection=self.collection, prefix_ids=t.prefix_ids,
                        template_prefix_len=t.template_prefix_len)

  @property
  def prompt_template(self) -> str:
    """CoOp's own class prompt ("X X .. X {}." or the init phrase's)."""
    return self._bound().template

  def text_ids(self, tokenizer: Any, class_names: Sequence[str]
               ) -> np.ndarray:
    """int32 [C, L]: CoOp's own prompts tokenised and checked (what the
    text tower's rewrite of the plain prompts equals; for inspection)."""
    return self._bound().text_ids(tokenizer, class_names)

  def init(self, rng: jax.Array, backbone_params: dict,
           model_config: ModelConfig) -> dict:
    """{"ctx": float32 [n, Wt] or [C, n, Wt]}: the phrase's token
    embeddings, or N(0, init_std^2)."""
    t = self._bound()
    width = model_config.text.width
    if t.from_phrase:
      table = backbone_params["txt"]["token_embed"]
      ctx = jnp.take(table, jnp.asarray(t.init_ids), axis=0)
      return {"ctx": ctx.astype(jnp.float32)}
    shape = ((self.num_classes, t.n_ctx, width) if self.class_specific
             else (t.n_ctx, width))
    return {"ctx": self.config.init_std * jax.random.normal(rng, shape,
                                                            jnp.float32)}

  def module_kwargs(self) -> dict[str, Any]:
    return {"prompt_layout": self.layout}
