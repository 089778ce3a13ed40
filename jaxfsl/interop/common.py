"""What every adapter format shares: a flat view of a LoRA tree, the naming
of towers/targets, shape checks against a model, and a backbone fingerprint.

jaxfsl's LoRA tree (``jaxfsl.trainables.lora``) holds, per tuned tower
(``img``/``txt``), block ``i`` and target ``t`` in q, k, v, o::

  {tower}/blocks_{i}/attn/{t}/a   float32 [W, r]
  {tower}/blocks_{i}/attn/{t}/b   float32 [r, W]

and the projection becomes ``x @ W + alpha / sqrt(r) * x @ a @ b``. PyTorch
LoRA layers (PEFT, the release's ``LinearLoRA``) store ``A`` [r, in] and
``B`` [out, r] and compute ``scaling * x @ A^T @ B^T``; hence ``A = a^T``,
``B = b^T`` in every torch format.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxfsl.trainables.lora import (
    BLOCK_PRESETS,
    Adapters,
    LoraConfig,
    block_indices,
)

# Our tower keys <-> the tower names of every format (HF module names and the
# release's ``encoder`` values).
TOWER_HF = {"img": "vision_model", "txt": "text_model"}
TOWER_NAME = {"img": "vision", "txt": "text"}
TOWERS_SETTING = {("img",): "vision", ("txt",): "text",
                  ("img", "txt"): "both"}


class InteropError(ValueError):
  """An adapter file that cannot be read, written or matched to a model.

  The message names the file and, where it applies, every offending key.
  """


@dataclasses.dataclass(frozen=True)
class Entry:
  """One adapted projection, in jaxfsl's orientation.

  Attributes:
    tower: "img" or "txt".
    block: block index.
    target: "q", "k", "v" or "o".
    a: float32 [W, r].
    b: float32 [r, W].
  """

  tower: str
  block: int
  target: str
  a: np.ndarray
  b: np.ndarray


def entries(adapters: Adapters) -> list[Entry]:
  """The adapted projections of ``adapters``, ordered (tower, block, target).

  Raises:
    InteropError: a path of the tree is not ``{tower}/blocks_{i}/attn/{t}``
      with leaves ``a`` and ``b`` (every bad path is listed).
  """
  out, bad = [], []
  order = {t: i for i, t in enumerate(("q", "k", "v", "o"))}
  for tower, blocks in adapters.params.items():
    if tower not in TOWER_HF or not isinstance(blocks, Mapping):
      bad.append(str(tower))
      continue
    for name, block in blocks.items():
      index = name[len("blocks_"):] if name.startswith("blocks_") else ""
      attn = block.get("attn") if isinstance(block, Mapping) else None
      if not index.isdigit() or not isinstance(attn, Mapping):
        bad.append(f"{tower}/{name}")
        continue
      for target, ab in attn.items():
        if (target not in order or not isinstance(ab, Mapping)
            or set(ab) != {"a", "b"}):
          bad.append(f"{tower}/{name}/attn/{target}")
          continue
        out.append(Entry(tower, int(index), target,
                         np.asarray(ab["a"], np.float32),
                         np.asarray(ab["b"], np.float32)))
  if bad:
    raise InteropError(
        f"not a jaxfsl LoRA tree: unexpected path(s) {bad}; expected "
        "{img|txt}/blocks_<i>/attn/{q|k|v|o}/{a,b}")
  out.sort(key=lambda e: (e.tower, e.block, order[e.target]))
  return out


def check_entries(items: Iterable[Entry], rank: int, source: str) -> None:
  """Every ``a`` is [W, rank] and ``b`` [rank, W] with one W per tower.

  Raises:
    InteropError: naming ``source`` and every mis-shaped projection.
  """
  problems, widths = [], {}
  for e in items:
    name = f"{e.tower}/blocks_{e.block}/attn/{e.target}"
    if e.a.ndim != 2 or e.b.ndim != 2:
      problems.append(f"{name}: a {e.a.shape}, b {e.b.shape} are not "
                      "matrices")
      continue
    width = widths.setdefault(e.tower, e.a.shape[0])
    if e.a.shape != (width, rank) or e.b.shape != (rank, width):
      problems.append(f"{name}: a {e.a.shape}, b {e.b.shape}; expected a "
                      f"{(width, rank)}, b {(rank, width)}")
  if problems:
    raise InteropError(f"{source}: " + "; ".join(problems))


def blocks_setting(blocks: Mapping[str, Iterable[int]],
                   depths: Mapping[str, int] | None
                   ) -> str | tuple[int, ...]:
  """``LoraConfig.blocks`` for the tuned block indices of each tower.

  A preset name when one gives exactly these blocks in every tower (needs
  ``depths``), else the explicit indices when every tower has the same.

  Raises:
    InteropError: the towers have different blocks that no preset explains
      (``LoraConfig`` has one block setting for both towers).
  """
  sets = {t: tuple(sorted(set(b))) for t, b in blocks.items()}
  if depths is not None:
    for preset in BLOCK_PRESETS:
      if all(block_indices(preset, depths[t]) == s for t, s in sets.items()):
        return preset
  distinct = set(sets.values())
  if len(distinct) != 1:
    raise InteropError(
        "the towers are tuned in different blocks ("
        + ", ".join(f"{TOWER_NAME[t]}: {list(s)}" for t, s in sets.items())
        + "); jaxfsl's LoraConfig has one block setting for both towers")
  return distinct.pop()


def build_adapters(items: list[Entry], *, rank: int, alpha: float,
                   dropout: float, depths: Mapping[str, int] | None,
                   source: str) -> Adapters:
  """Adapters (tree + LoraConfig) from entries of one uniform layout.

  Raises:
    InteropError: no entries; blocks with different target sets (LoraConfig
      has one target list); shapes inconsistent with ``rank``.
  """
  if not items:
    raise InteropError(f"{source}: holds no LoRA weights")
  check_entries(items, rank, source)
  targets_of: dict[tuple[str, int], set[str]] = {}
  for e in items:
    targets_of.setdefault((e.tower, e.block), set()).add(e.target)
  target_sets = {frozenset(s) for s in targets_of.values()}
  if len(target_sets) != 1:
    detail = ", ".join(f"{TOWER_NAME[t]} block {b}: {sorted(s)}"
                       for (t, b), s in sorted(targets_of.items()))
    raise InteropError(
        f"{source}: blocks adapt different projections ({detail}); jaxfsl's "
        "LoraConfig has one target list for every block")
  order = ("q", "k", "v", "o")
  tuned = target_sets.pop()
  targets = tuple(t for t in order if t in tuned)
  towers = tuple(sorted({e.tower for e in items}))
  blocks: dict[str, list[int]] = {}
  for tower, block in targets_of:
    blocks.setdefault(tower, []).append(block)
  try:
    setting = blocks_setting(blocks, depths)
  except InteropError as e:
    raise InteropError(f"{source}: {e}") from None
  config = LoraConfig(rank=rank, alpha=float(alpha), dropout=float(dropout),
                      targets=targets, towers=TOWERS_SETTING[towers],
                      blocks=setting)
  params: dict = {}
  for e in items:
    params.setdefault(e.tower, {}).setdefault(
        f"blocks_{e.block}", {"attn": {}})["attn"][e.target] = {
            "a": e.a, "b": e.b}
  return Adapters(params=params, config=config)


def model_depths(model: Any) -> dict[str, int]:
  return {"img": model.config.vision.depth, "txt": model.config.text.depth}


def check_against_model(adapters: Adapters, model: Any, source: str) -> None:
  """The adapters fit ``model`` (towers, block indices, widths).

  Raises:
    InteropError: naming ``source`` and every projection that does not fit.
  """
  cfg = model.config
  widths = {"img": cfg.vision.width, "txt": cfg.text.width}
  depths = model_depths(model)
  problems = []
  for e in entries(adapters):
    name = f"{TOWER_NAME[e.tower]} block {e.block} {e.target}"
    if e.block >= depths[e.tower]:
      problems.append(f"{name}: the model's {TOWER_NAME[e.tower]} tower has "
                      f"{depths[e.tower]} blocks")
      continue
    w, r = widths[e.tower], adapters.config.rank
    if e.a.shape != (w, r) or e.b.shape != (r, w):
      problems.append(f"{name}: a {e.a.shape}, b {e.b.shape}; the model "
                      f"needs a {(w, r)}, b {(r, w)} (width {w})")
  if problems:
    raise InteropError(
        f"{source} does not fit model {getattr(model, 'name', '')!r} "
        f"({cfg.family}): " + "; ".join(problems))


def backbone_fingerprint(model: Any) -> dict[str, Any]:
  """What identifies the frozen backbone the adapters were trained on.

  Returns:
    JSON-able dict: family, name, both towers' width/depth, image size and
    ``sha256``, a hash over every parameter (path, dtype, shape, bytes in
    path order), so that two loads of the same checkpoint agree and any
    changed weight shows.
  """
  import jax

  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(model.params)[0]
  for path, leaf in sorted(leaves, key=lambda x: jax.tree_util.keystr(x[0])):
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
  cfg = model.config
  return {
      "family": cfg.family,
      "name": getattr(model, "name", ""),
      "image_size": cfg.vision.image_size,
      "vision": {"width": cfg.vision.width, "depth": cfg.vision.depth},
      "text": {"width": cfg.text.width, "depth": cfg.text.depth},
      "sha256": digest.hexdigest(),
  }


def lora_metadata(config: LoraConfig) -> dict[str, Any]:
  """A LoraConfig as JSON (``lora_config`` reads it back)."""
  return {
      "rank": config.rank, "alpha": config.alpha, "dropout": config.dropout,
      "scaling": config.scaling, "targets": list(config.targets),
      "towers": config.towers,
      "blocks": (config.blocks if isinstance(config.blocks, str)
                 else list(config.blocks)),
  }


def lora_config(meta: Mapping[str, Any], source: str) -> LoraConfig:
  """The LoraConfig of ``lora_metadata``'s dict.

  Raises:
    InteropError: a key is missing or a value is invalid (named).
  """
  missing = [k for k in ("rank", "alpha", "dropout", "targets", "towers",
                         "blocks") if k not in meta]
  if missing:
    raise InteropError(f"{source}: lora metadata lacks {missing}")
  try:
    return LoraConfig(rank=int(meta["rank"]), alpha=float(meta["alpha"]),
                      dropout=float(meta["dropout"]),
                      targets=tuple(meta["targets"]), towers=meta["towers"],
                      blocks=meta["blocks"])
  except (TypeError, ValueError) as e:
    raise InteropError(f"{source}: bad lora metadata: {e}") from None


def json_number(x: float) -> int | float:
  """An int when integral (the release's argparse types alpha as int)."""
  return int(x) if float(x).is_integer() else float(x)
