"""What CoOp and MaPLe share: the class prompt's tokens (``PromptText``),
settings parsing, and the ``PromptLearner`` base of both Trainables.

A prompt learner is bound to a model (``bind``) before use: its tokenizer
says where the text starts, which id ends it and how the init phrase and the
placeholders tokenise (``PromptText.resolve``); the bound learner gives the
towers a ``jaxfsl.models.prompting.PromptLayout`` (``module_kwargs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxfsl.models.prompting import PROMPT_COLLECTION, PromptLayout
from jaxfsl.trainables.base import Trainable, TrainableConfigError

# The plain class prompt whose token ids the engine passes by default
# (config.prompt; EngineConfig.prompt).
DEFAULT_TEMPLATE = "a photo of a {}."


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


def takes_prompts(tower_config: Any) -> bool:
  """Whether a tower's module takes prompt hooks: the shared ``TextTower`` /
  ``VisionTower`` (config class without ``TOWER``) do, and a family's own
  module does when its config class says ``PROMPT_HOOKS = True`` (PE-Core's
  vision tower; not the stand-in text tower of a vision-only checkpoint)."""
  cls = type(tower_config)
  return (not getattr(cls, "TOWER", None)
          or bool(getattr(cls, "PROMPT_HOOKS", False)))


def prompt_tower_problems(model_config: Any, towers: Sequence[str],
                          key: str) -> list[str]:
  """The ``towers`` ("vision", "text") whose module takes no prompt hooks
  (``takes_prompts``), as one message naming each tower's config class; a
  tower the checkpoint lacks (its stand-in config has a ``reason``) is
  reported with that reason instead."""
  bad = [t for t in towers if not takes_prompts(getattr(model_config, t))]
  if not bad:
    return []
  # A stand-in for a tower the checkpoint lacks (a vision-only PE-Core's
  # text tower) carries the loader's reason: say that, not "no hooks".
  absent = [getattr(model_config, t).reason for t in bad
            if getattr(getattr(model_config, t), "reason", None)]
  if absent:
    return [f"{key}: {absent[0]}"]
  named = " and ".join(
      f"{t} ({type(getattr(model_config, t)).__name__})" for t in bad)
  return [f"{key}: the {named} tower(s) of this "
          f"{getattr(model_config, 'family', '?')} model are the family's "
          "own modules, which take no prompt hooks (jaxfsl.models.prompting)"]


def check_prompt_towers(model_config: Any, towers: Sequence[str],
                        key: str) -> None:
  """Raises TrainableConfigError with ``prompt_tower_problems``."""
  problems = prompt_tower_problems(model_config, towers, key)
  if problems:
    raise TrainableConfigError(problems[0])


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
      TrainableConfigError: no tokenizer / eos_id, a phrase shorter than
        n_ctx (MaPLe), no placeholder string tokenising to n_ctx tokens, or
        a template without one "{}" or whose prefix does not tokenise on
        its own.
    """
    text = cls._resolve(tokenizer, n_ctx, ctx_init,
                        phrase_sets_n_ctx=phrase_sets_n_ctx, key=key)
    if template.count("{}") != 1:
      raise TrainableConfigError(
          f"{key}: prompt template {template!r} must contain '{{}}' once "
          "(the class name)")
    head, tail = template.split("{}")
    head_ids = _content(np.asarray(tokenizer([head.strip()]))[0], text.start,
                        text.eos_id) if head.strip() else []
    n_suffix = len(_content(np.asarray(tokenizer([tail]))[0], text.start,
                            text.eos_id)) if tail.strip() else 0
    probe = _content(np.asarray(tokenizer([template.format("object")]))[0],
                     text.start, text.eos_id)
    if probe[:len(head_ids)] != head_ids:
      raise TrainableConfigError(
          f"{key}: the prompt template {template!r} does not start with the "
          f"tokens of {head.strip()!r} once a class name is filled in")
    return dataclasses.replace(text, n_suffix=n_suffix,
                               template_prefix_len=len(head_ids))

  @classmethod
  def _resolve(cls, tokenizer: Any, n_ctx: int, ctx_init: str, *,
               phrase_sets_n_ctx: bool, key: str) -> PromptText:
    eos_id = getattr(tokenizer, "eos_id", None)
    if tokenizer is None or eos_id is None:
      raise TrainableConfigError(
          f"{key}: prompt learners need the model's tokenizer (with an eos_id "
          f"attribute); got {tokenizer!r}. Load the checkpoint with its "
          "tokenizer (jaxfsl.load_model(path, tokenizer=...))")
    empty = np.asarray(tokenizer([""]))[0]
    hits = np.flatnonzero(empty == eos_id)
    if not len(hits):
      raise TrainableConfigError(
          f"{key}: the tokenizer's empty prompt {empty.tolist()} has no "
          f"end-of-text id {eos_id}")
    start = int(hits[0])
    n_suffix = len(_content(np.asarray(tokenizer(["."]))[0], start, eos_id))
    phrase = ctx_init.replace("_", " ").strip()
    # Room for the context, one class-name token and the end-of-text token.
    if not phrase and start + n_ctx + 2 > len(empty):
      raise TrainableConfigError(
          f"{key}.n_ctx={n_ctx} does not fit in the model's text context of "
          f"{len(empty)} tokens with a class name (at most "
          f"{len(empty) - start - 2})")
    if phrase:
      ids = _content(np.asarray(tokenizer([phrase]))[0], start, eos_id)
      # The whole phrase stays in the prompt (CoOp: all of it is learned;
      # MaPLe: the rest is fixed text), so it needs the same room. A phrase
      # the tokenizer truncated fills the context and fails here too.
      if start + len(ids) + 2 > len(empty):
        raise TrainableConfigError(
            f"{key}.ctx_init={ctx_init!r} tokenises to {len(ids)} tokens "
            f"(or more: truncated), which leaves no room for a class name "
            f"in the model's text context of {len(empty)} tokens; expected "
            f"at most {len(empty) - start - 2} tokens")
      if phrase_sets_n_ctx:
        if n_ctx != len(ids):
          logging.info("%s.n_ctx=%d overridden to %d, the token count of "
                       "%s.ctx_init=%r", key, n_ctx, len(ids), key, ctx_init)
        n_ctx = len(ids)
      elif n_ctx > len(ids):
        raise TrainableConfigError(
            f"{key}.n_ctx={n_ctx} exceeds the {len(ids)} tokens of "
            f"{key}.ctx_init={ctx_init!r}; use a longer phrase, a smaller "
            f"n_ctx, or ctx_init='' for a random init")
      return cls(phrase, tuple(ids), n_ctx, start, eos_id, n_suffix, True)
    for candidate in (" ".join(["X"] * n_ctx), "X" * n_ctx):
      ids = _content(np.asarray(tokenizer([candidate]))[0], start, eos_id)
      if len(ids) == n_ctx:
        return cls(candidate, tuple(ids), n_ctx, start, eos_id, n_suffix,
                   False)
    raise TrainableConfigError(
        f"{key}.n_ctx={n_ctx}: found no placeholder string that the "
        "tokenizer splits into exactly n_ctx tokens ('X X ..' or 'XX..')")

  def text_ids(self, tokenizer: Any, class_names: Sequence[str]
               ) -> np.ndarray:
    """int32 [C, L]: the tokenised placeholder prompts, checked.

    Raises:
      TrainableConfigError: listing every class whose prompt does not start
        with the prefix's tokens or leaves no room after them (merged or
        truncated).
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
      raise TrainableConfigError(
          f"class prompts {bad}: the tokenised prompt does not keep the "
          f"{k} tokens of {self.prefix!r} followed by the class name (the "
          "tokenizer merged across them, or the prompt was truncated)")
    return ids



class PromptLearner(Trainable):
  """The part of CoOp and MaPLe that is the same: settings from a config
  block (``config_class``, key ``name``), the bound ``PromptText``, the
  layout given to the towers, and the init phrase's token embeddings.

  Subclasses set ``name``, ``config_class``, ``towers``, ``layout``,
  ``bind`` and ``init``, and keep the bound ``PromptText`` in
  ``prompt_text``.
  """

  collection = PROMPT_COLLECTION
  config_class: ClassVar[type]
  prompt_text: PromptText | None

  @classmethod
  def from_config(cls, block: Any) -> PromptLearner:
    """From the settings dataclass, a mapping / ConfigDict (``config.coop``,
    ``config.maple``) or None (defaults)."""
    return cls(config_from_block(cls.config_class, block, cls.name))

  def model_problems(self, model_config: Any) -> list[str]:
    """Towers without prompt hooks (subclasses add their own checks)."""
    return prompt_tower_problems(model_config, sorted(self.towers),
                                 self.name)

  def check_model(self, model_config: Any) -> None:
    """Raises TrainableConfigError listing ``model_problems``."""
    problems = self.model_problems(model_config)
    if problems:
      raise TrainableConfigError("; ".join(problems))

  def _bound(self) -> PromptText:
    if self.prompt_text is None:
      raise RuntimeError(f"{type(self).__name__} is not bound to a model's "
                         "tokenizer; call trainable.bind(model) first")
    return self.prompt_text

  @property
  def layout(self) -> PromptLayout:
    """Where the towers put the prompts (``jaxfsl.models.prompting``)."""
    raise NotImplementedError

  def _layout(self, **fields: Any) -> PromptLayout:
    # The tokenizer's facts, common to both learners, plus their own fields.
    t = self._bound()
    return PromptLayout(n_ctx=t.n_ctx, start=t.start, eos_id=t.eos_id,
                        n_suffix=t.n_suffix, collection=self.collection,
                        prefix_ids=t.prefix_ids,
                        template_prefix_len=t.template_prefix_len, **fields)

  @property
  def prompt_template(self) -> str:
    """The learner's own class prompt ("X X .. X {}." or the init
    phrase's "a photo of a {}.")."""
    return self._bound().template

  def text_ids(self, tokenizer: Any, class_names: Sequence[str]
               ) -> np.ndarray:
    """int32 [C, L]: the learner's own prompts tokenised and checked (what
    the text tower's rewrite of the plain prompts equals; for inspection)."""
    return self._bound().text_ids(tokenizer, class_names)

  def cut_class_names(self, tokenizer: Any, class_names: Sequence[str],
                      template: str = DEFAULT_TEMPLATE) -> dict[str, int]:
    """The class names that this learner's prompts cut, each with how many
    tokens its prompt is over the text context: the plain prompt
    ``template.format(name)`` (what the engine tokenises) rewritten with
    this learner's prefix would not fit, so the text tower would see part
    of the name (or none), and two classes can get the same prompt (e.g.
    "green square" and "green circle" both "green"). Empty when all fit."""
    t = self._bound()
    ids = np.asarray(tokenizer([template.format(n) for n in class_names]))
    length = ids.shape[1]
    grow = len(t.prefix_ids) - t.template_prefix_len
    out = {}
    for name, row in zip(class_names, ids, strict=True):
      # A plain row that was itself cut fills the context: counted as full.
      over = (t.start + len(_content(row, t.start, t.eos_id)) + grow + 1
              - length)
      if over > 0:
        out[name] = over
    return out

  def phrase_context(self, backbone_params: dict) -> jax.Array:
    """float32 [n_ctx, Wt]: the init phrase's first n_ctx token embeddings
    (the frozen ``txt/token_embed`` table, never copied otherwise)."""
    t = self._bound()
    table = backbone_params["txt"]["token_embed"]
    return jnp.take(table, jnp.asarray(t.init_ids), axis=0).astype(
        jnp.float32)

  def module_kwargs(self) -> dict[str, Any]:
    return {"prompt_layout": self.layout}
