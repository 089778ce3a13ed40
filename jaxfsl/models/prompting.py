"""Prompt learners inside the towers: CoOp's and MaPLe's prompted forwards.

A prompt learner's trainable pytree is its own variable collection
(``PromptLayout.collection``, default ``"prompts"``) beside the frozen
``"params"``; ``TwoTowers(..., prompt_layout=layout)`` reads it and hands the
towers the per-call hooks built here (``TextPrompt``, ``VisionPrompt``). A tower
called without hooks runs exactly as before, so a model without prompts is
bit-identical to the backbone. Tree layout (float32)::

  ctx        [n, Wt]  (unified)  or  [C, n, Wt]  (class-specific, CoOp CSC)
  deep_ctx   [J-1, n, Wt]        MaPLe: text prompts of text layers 1..J-1
  proj       {kernel [Wt, Wv], bias [Wv]}            MaPLe: ctx -> vision
  deep_proj  {kernel [J-1, Wt, Wv], bias [J-1, Wv]}  MaPLe: one per depth

Semantics (public references: CoOp, Zhou et al., IJCV 2022,
``KaiyangZhou/CoOp`` ``trainers/coop.py``; MaPLe, Khattak et al., CVPR 2023,
``muzairkhattak/multimodal-prompt-learning`` ``trainers/maple.py`` and
``clip/model.py``; details in the session spec ``prompt_learners.md``):

* Text, ids: the towers are given the plain prompts' ids (``[SOS] a photo
  of a name . [EOT]``, what zero-shot encodes); with ``prefix_ids`` set they
  are first rewritten into the learner's own prompt (``relayout_ids``).
* Text, layer 0: the tokenised placeholder prompt ``[SOS] X..X name . [EOT]``
  is embedded; the ``n`` context vectors replace the embeddings of the
  placeholder tokens (``start .. start+n``), or are moved around the class
  name for ``position`` middle / front; then the position embeddings are
  added. The end-of-text position is unchanged, so the tower pools where it
  pools for the placeholder prompt (EOT for CLIP, the last position for
  SigLIP).
* Text, MaPLe: before block ``i`` (1 <= i < J) the hidden states at
  ``start .. start+n`` are replaced by ``deep_ctx[i-1]`` (no position
  embedding).
* Vision, MaPLe: ``proj(ctx)`` ([n, Wv]) is appended after the image tokens
  once the position embeddings are added (before CLIP's ln_pre); before block
  ``i`` (1 <= i < J) the last ``n`` tokens are replaced by
  ``deep_proj_i(deep_ctx[i-1])``. The image feature is read where the family
  reads it: CLIP's class token; the attention-pooling heads of SigLIP and
  PE-Core see the image tokens only (class token included for PE-Core; the
  prompts are dropped after the last block; our choice, as MaPLe's
  class-token readout ignores them too).
* Vision, RoPE (PE-Core): the prompts get the identity rotation (angle 0:
  cos 1, sin 0), as PE-Core's own class token does. They have no spatial
  position (no position embedding either); as for the class token, a RoPE
  score depends on the angle difference, so a patch's score against a
  prompt depends on the patch's own angle only (``VisionPrompt.rope_angles``).

``start`` is 1 for tokenizers that put a start-of-text token first (CLIP,
PE-Core) and 0 for those that do not (SigLIP): the context begins where the
text does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Position = Literal["end", "middle", "front"]

PROMPT_COLLECTION = "prompts"
POSITIONS = ("end", "middle", "front")


@dataclasses.dataclass(frozen=True)
class PromptLayout:
  """Static description of a prompt learner (a hashable module attribute).

  Attributes:
    n_ctx: number of context vectors n.
    start: token index of the first context vector (1 after a start-of-text
      token, 0 without one).
    position: where the class name goes relative to the context: "end"
      (``[SOS] ctx name . [EOT]``), "middle" (``[SOS] ctx[:n//2] name
      ctx[n//2:] . [EOT]``) or "front" (``[SOS] name ctx . [EOT]``).
    eos_id: end-of-text token id used to find the class name's extent for
      middle / front (None: the largest id of the row, OpenAI's convention).
    n_suffix: tokens between the class name and the end-of-text token (1 for
      CLIP's "."; 0 for SigLIP, whose tokenizer drops punctuation).
    depth: J, the number of text (and, with ``vision``, image) layers that
      receive learned prompts; 1 is CoOp's shallow prompt.
    vision: MaPLe's coupled vision prompts.
    collection: the variable collection holding the tree.
    prefix_ids: None: the token ids given to the text tower are already the
      learner's prompts. Otherwise they are plain template prompts (e.g. "a
      photo of a {name}.", whose prefix has ``template_prefix_len`` tokens)
      and the tower first rewrites them (``relayout_ids``) into the
      learner's, with these ids as the prefix (its first ``n_ctx`` are the
      learned positions): the engine and the zero-shot baseline then share
      one set of token ids.
    template_prefix_len: tokens of the plain template's prefix.
  """

  n_ctx: int
  start: int = 1
  position: Position = "end"
  eos_id: int | None = None
  n_suffix: int = 1
  depth: int = 1
  vision: bool = False
  collection: str = PROMPT_COLLECTION
  prefix_ids: tuple[int, ...] | None = None
  template_prefix_len: int = 0

  def __post_init__(self):
    errors = []
    if self.prefix_ids is not None:
      object.__setattr__(self, "prefix_ids",
                         tuple(int(i) for i in self.prefix_ids))
      if len(self.prefix_ids) < self.n_ctx:
        errors.append(f"prefix_ids has {len(self.prefix_ids)} tokens, fewer "
                      f"than n_ctx={self.n_ctx}")
    if self.template_prefix_len < 0:
      errors.append(f"template_prefix_len={self.template_prefix_len} "
                    "(expected >= 0)")
    if self.n_ctx < 1:
      errors.append(f"n_ctx={self.n_ctx} (expected >= 1)")
    if self.start < 0:
      errors.append(f"start={self.start} (expected >= 0)")
    if self.position not in POSITIONS:
      errors.append(f"position={self.position!r} (expected one of "
                    f"{POSITIONS})")
    if self.n_suffix < 0:
      errors.append(f"n_suffix={self.n_suffix} (expected >= 0)")
    if self.depth < 1:
      errors.append(f"depth={self.depth} (expected >= 1)")
    if self.depth > 1 and self.position != "end":
      errors.append(f"deep prompts (depth={self.depth}) need position='end', "
                    f"got {self.position!r}")
    if errors:
      raise ValueError("invalid PromptLayout: " + "; ".join(errors))

  def text_prompt(self, tree: Mapping[str, Any]) -> TextPrompt:
    """The text hooks for the collection ``tree`` (see the module doc)."""
    return TextPrompt(self, tree["ctx"], tree.get("deep_ctx"))

  def vision_prompt(self, tree: Mapping[str, Any]) -> VisionPrompt | None:
    """MaPLe's vision hooks, None for a text-only learner (CoOp)."""
    if not self.vision:
      return None
    shallow = couple(tree["ctx"], tree["proj"]["kernel"], tree["proj"]["bias"])
    deep = None
    if "deep_ctx" in tree:
      deep = couple(tree["deep_ctx"], tree["deep_proj"]["kernel"],
                    tree["deep_proj"]["bias"])
    return VisionPrompt(shallow, deep)


def couple(ctx: Array, kernel: Array, bias: Array) -> Array:
  """MaPLe's text->vision coupling: ``ctx @ kernel + bias`` per depth.

  Args:
    ctx: [n, Wt] or [D, n, Wt] text prompts.
    kernel: [Wt, Wv] or [D, Wt, Wv] (PyTorch Linear weight transposed).
    bias: [Wv] or [D, Wv].

  Returns:
    float32 [n, Wv] or [D, n, Wv].
  """
  if ctx.ndim == 2:
    return ctx @ kernel + bias
  return jnp.einsum("dnt,dtv->dnv", ctx, kernel) + bias[:, None, :]


def eot_positions(token_ids: Array, eos_id: int | None) -> Array:
  """int32 [N]: index of the first ``eos_id`` (or of the largest id)."""
  if eos_id is None:
    return jnp.argmax(token_ids, axis=-1)
  return jnp.argmax(token_ids == eos_id, axis=-1)


def relayout_ids(token_ids: Array, layout: PromptLayout) -> Array:
  """Plain template prompts -> the learner's prompts, token for token.

  ``[SOS] t_1..t_m name suffix [EOT] pad..`` (m = template_prefix_len)
  becomes ``[SOS] p_1..p_k name suffix [EOT] pad..`` (p = prefix_ids), what
  the tokenizer gives for ``"<prefix> <name><suffix>"`` when the prefix
  tokenises on its own: the tail shifts by k - m; positions freed at the end
  repeat the row's last id (padding); a row pushed past the context keeps
  its end-of-text token last, as the tokenizers truncate. (A plain row that
  was itself truncated stays so: its lost tokens cannot come back.)

  Args:
    token_ids: int [N, L] plain prompts.
    layout: start, prefix_ids, template_prefix_len, eos_id.

  Returns:
    int [N, L] (``token_ids``' dtype); unchanged when ``prefix_ids`` is None.
  """
  if layout.prefix_ids is None:
    return token_ids
  length = token_ids.shape[1]
  s, k, m = layout.start, len(layout.prefix_ids), layout.template_prefix_len
  p = jnp.arange(length)[None, :]
  src = p - k + m
  shifted = jnp.take(token_ids, jnp.clip(src[0], 0, length - 1), axis=1)
  shifted = jnp.where(src < length, shifted, token_ids[:, -1:])
  prefix = jnp.asarray(layout.prefix_ids, token_ids.dtype)
  in_prefix = (p >= s) & (p < s + k)
  out = jnp.where(in_prefix, prefix[jnp.clip(p - s, 0, k - 1)], shifted)
  out = jnp.where(p < s, token_ids, out)
  eot = eot_positions(token_ids, layout.eos_id)
  eot_id = jnp.take_along_axis(token_ids, eot[:, None], axis=1)
  pushed_out = (eot - m + k >= length)[:, None]
  return jnp.where(pushed_out & (p == length - 1), eot_id, out)


def insert_context(embeds: Array, token_ids: Array, ctx: Array,
                   layout: PromptLayout) -> Array:
  """CoOp's layer-0 prompt: context vectors in place of the placeholders.

  Args:
    embeds: [N, L, W] token embeddings of the placeholder prompts ``[SOS]
      X*n name suffix [EOT] pad..`` (before the position embeddings).
    token_ids: int [N, L] those prompts' ids (for middle / front: where the
      name ends).
    ctx: [n, W] unified or [N, n, W] per-row (class-specific) context.
    layout: n_ctx, start, position, eos_id, n_suffix.

  Returns:
    [N, L, W] in ``embeds``' dtype: the same multiset of positions, the n
    placeholder rows replaced by ``ctx`` and, for middle / front, the name
    moved; positions from the end-of-text token on are untouched.

  Raises:
    ValueError: ctx's width or n differ from the layout / embeddings, or a
      class-specific context has a row count other than N.
  """
  n_rows, length, width = embeds.shape
  n, s = layout.n_ctx, layout.start
  problems = []
  if ctx.shape[-2:] != (n, width):
    problems.append(f"ctx trailing shape {tuple(ctx.shape[-2:])} != "
                    f"(n_ctx={n}, width={width})")
  if ctx.ndim == 3 and ctx.shape[0] != n_rows:
    problems.append(f"class-specific ctx has {ctx.shape[0]} classes but the "
                    f"prompts have {n_rows} rows")
  if ctx.ndim not in (2, 3):
    problems.append(f"ctx must be [n, W] or [C, n, W], got {ctx.shape}")
  if s + n >= length:
    problems.append(f"start + n_ctx = {s + n} leaves no room in a context of "
                    f"{length} tokens")
  if problems:
    raise ValueError("insert_context: " + "; ".join(problems))
  ctx = jnp.broadcast_to(ctx.astype(embeds.dtype), (n_rows, n, width))
  if layout.position == "end":
    return jax.lax.dynamic_update_slice_in_dim(embeds, ctx, s, axis=1)
  # middle / front: a per-row gather from [ctx ; embeds] ([N, n + L, W]).
  # The class name occupies s+n .. s+n+k in the placeholder prompt, where k
  # is what lies between the context and the suffix + end-of-text token.
  k = (eot_positions(token_ids, layout.eos_id) - s - n - layout.n_suffix)
  k = jnp.maximum(k, 0)[:, None]
  p = jnp.arange(length)[None, :]
  src = n + p  # the placeholder prompt's own token (ctx rows come first)
  if layout.position == "front":
    name = (p >= s) & (p < s + k)
    in_ctx = (p >= s + k) & (p < s + k + n)
    src = jnp.where(name, n + p + n, src)
    src = jnp.where(in_ctx, p - s - k, src)
  else:
    h = n // 2
    first = (p >= s) & (p < s + h)
    name = (p >= s + h) & (p < s + h + k)
    second = (p >= s + h + k) & (p < s + n + k)
    src = jnp.where(first, p - s, src)
    src = jnp.where(name, n + p - h + n, src)
    src = jnp.where(second, p - s - k, src)
  pool = jnp.concatenate([ctx, embeds], axis=1)
  return jnp.take_along_axis(pool, src[:, :, None], axis=1)


def replace_context(x: Array, ctx: Array, start: int) -> Array:
  """MaPLe's deep text prompt: hidden states ``start .. start+n`` <- ctx.

  Args:
    x: [N, L, W] hidden states entering a text block.
    ctx: [n, W] that depth's prompt (no position embedding).
    start: index of the first context token.
  """
  ctx = jnp.broadcast_to(ctx.astype(x.dtype), (x.shape[0],) + ctx.shape)
  return jax.lax.dynamic_update_slice_in_dim(x, ctx, start, axis=1)


def append_prompts(x: Array, prompts: Array) -> Array:
  """[N, T, W] image tokens + [n, W] prompts -> [N, T + n, W]."""
  prompts = jnp.broadcast_to(prompts.astype(x.dtype),
                             (x.shape[0],) + prompts.shape)
  return jnp.concatenate([x, prompts], axis=1)


def replace_last(x: Array, prompts: Array) -> Array:
  """MaPLe's deep vision prompt: the last n tokens of [N, T, W] <- [n, W]."""
  prompts = jnp.broadcast_to(prompts.astype(x.dtype),
                             (x.shape[0],) + prompts.shape)
  return jnp.concatenate([x[:, :-prompts.shape[1]], prompts], axis=1)


class TextPrompt:
  """Hooks a ``TextTower`` calls when given a prompt (built per call).

  Attributes:
    layout: the static layout.
    ctx: [n, Wt] or [C, n, Wt] layer-0 context.
    deep_ctx: optional [J-1, n, Wt] prompts of layers 1..J-1.
  """

  def __init__(self, layout: PromptLayout, ctx: Array,
               deep_ctx: Array | None = None):
    self.layout, self.ctx, self.deep_ctx = layout, ctx, deep_ctx

  def token_ids(self, token_ids: Array) -> Array:
    """The ids the tower embeds and pools by (see ``relayout_ids``)."""
    return relayout_ids(token_ids, self.layout)

  def embed(self, embeds: Array, token_ids: Array) -> Array:
    """Token embeddings [N, L, W] of the ``token_ids(...)`` ids -> prompted
    embeddings (before the position embeddings)."""
    return insert_context(embeds, token_ids, self.ctx, self.layout)

  def before_block(self, index: int, x: Array) -> Array:
    """Hidden states entering block ``index`` (0-based)."""
    if self.deep_ctx is None or not 1 <= index <= self.deep_ctx.shape[0]:
      return x
    return replace_context(x, self.deep_ctx[index - 1], self.layout.start)


class VisionPrompt:
  """Hooks an image tower (``vit.VisionTower``, ``pe.PeVisionTower``) calls
  when given MaPLe's vision prompts.

  Attributes:
    shallow: [n, Wv] prompts appended after the image tokens.
    deep: optional [J-1, n, Wv] prompts of layers 1..J-1.
  """

  def __init__(self, shallow: Array, deep: Array | None = None):
    self.shallow, self.deep = shallow, deep

  @property
  def n_ctx(self) -> int:
    return self.shallow.shape[0]

  def embed(self, x: Array) -> Array:
    """[N, T, W] tokens with position embeddings -> [N, T + n, W]."""
    return append_prompts(x, self.shallow)

  def before_block(self, index: int, x: Array) -> Array:
    if self.deep is None or not 1 <= index <= self.deep.shape[0]:
      return x
    return replace_last(x, self.deep[index - 1])

  def strip(self, x: Array) -> Array:
    """[N, T + n, W] -> [N, T, W]: the image tokens only."""
    return x[:, :-self.n_ctx]

  def rope_angles(self, angles: np.ndarray) -> np.ndarray:
    """Rotary angles of the image tokens [T, D] -> [T + n, D]: the appended
    prompts get zero angles (cos 1, sin 0), the identity rotation.

    Why: the prompts carry no position (no position embedding, MaPLe) and
    stand for no grid cell, so they take the rotation of the one token that
    has no grid cell either, PE-Core's class token (unrotated in
    perception_models ``rope.py``). RoPE scores depend on the angle
    difference, so a patch's score against a prompt (and a prompt's against
    a patch) depends on the patch's own angle only, exactly as for the
    class token.
    """
    pad = np.zeros((self.n_ctx,) + angles.shape[1:], angles.dtype)
    return np.concatenate([angles, pad], axis=0)
