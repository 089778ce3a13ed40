"""LoRA adapters <-> the ``.pt`` file of the release's (and CLIP-LoRA's)
``save_lora`` / ``load_lora``.

Layout, from the public code (``loralib/utils.py`` and ``loralib/layers.py``
of zhenyuZ-HUST/CVPR26-Mind-the-Discriminability-Trap, identical in
MaxZanella/CLIP-LoRA)::

  {"weights": {"layer_<j>": {"q_proj"|"k_proj"|"v_proj"|"proj": {
       "w_lora_A": tensor [r, W], "w_lora_B": tensor [W, r]}}},
   "metadata": {"r": int, "alpha": int, "encoder": "vision"|"text"|"both",
                "params": ["q", "k", "v"], "position": "all"}}

* ``layer_<j>`` counts the adapted attention modules in ``apply_lora``'s
  order: the text tower's tuned blocks first (ascending), then the vision
  tower's; ``j`` is the position in that list, not the block index.
* target ``o`` is the module named ``proj`` (``q_proj``... for q, k, v).
* ``LinearLoRA`` adds ``x @ (B @ A)^T * lora_alpha / sqrt(r)``: ``w_lora_A`` =
  our ``a``^T, ``w_lora_B`` = our ``b``^T, same scaling as jaxfsl.
* ``load_lora`` refuses a file whose metadata differ from its command line
  (r, alpha, encoder, params, position) and places layers by ``position``, a
  name from its tables (``INDEX_POSITIONS_TEXT`` / ``_VISION``): bottom,
  mid, up, half-up, half-bottom, all (thirds / halves of 12 blocks, as
  jaxfsl's presets), top1-3 / top (the last blocks).

jaxfsl writes one extra metadata key, ``dropout_rate`` (ignored by
``load_lora``; read back here; files without it import with the release's
0.25). Files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxfsl.checkpoints import torch_files
from jaxfsl.checkpoints.errors import CheckpointError
from jaxfsl.interop import common
from jaxfsl.interop.common import InteropError
from jaxfsl.paths import user_path
from jaxfsl.trainables.lora import BLOCK_PRESETS, Adapters, block_indices

PROJ = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}
_FROM_PROJ = {v: k for k, v in PROJ.items()}
# The release's positions beyond jaxfsl's presets: the last n blocks.
_TOP = {"top": 1, "top1": 1, "top2": 2, "top3": 3}
POSITIONS = (*BLOCK_PRESETS, *_TOP)
# The release's default dropout (run_utils.py --dropout_rate).
DEFAULT_DROPOUT = 0.25
# apply_lora's order of towers.
_TOWER_ORDER = ("txt", "img")


def position_blocks(position: str, depth: int) -> tuple[int, ...]:
  """Block indices of a release ``position`` for a tower of ``depth`` blocks.

  Raises:
    InteropError: an unknown position.
  """
  if position in _TOP:
    return tuple(range(max(0, depth - _TOP[position]), depth))
  if position in BLOCK_PRESETS:
    return block_indices(position, depth)
  raise InteropError(f"release position {position!r}: expected one of "
                     f"{POSITIONS}")


def _position(adapters: Adapters, position: str | None) -> str:
  if position is None:
    if isinstance(adapters.config.blocks, str):
      return adapters.config.blocks
    raise InteropError(
        f"adapters tune explicit blocks {list(adapters.config.blocks)}; the "
        "release's load_lora places layers by a position name, so pass "
        f"position= one of {POSITIONS} (what its --position will be)")
  if position not in POSITIONS:
    raise InteropError(f"release position {position!r}: expected one of "
                       f"{POSITIONS}")
  return position


def release_state(adapters: Adapters, position: str | None = None,
                  model: Any = None) -> dict[str, Any]:
  """The release's save_lora dict, with numpy arrays instead of tensors.

  Args:
    adapters: one episode's LoRA adapters.
    position: the release's ``--position`` (default: the adapters' block
      preset; required for explicit block indices).
    model: when given, the adapters are checked against it and the position
      against the tuned blocks.

  Raises:
    InteropError: not a LoRA tree, no position for explicit blocks, a
      position that does not give the tuned blocks, or blocks adapting
      different targets.
  """
  items = common.entries(adapters)
  common.check_entries(items, adapters.config.rank, "adapters")
  position = _position(adapters, position)
  if model is not None:
    common.check_against_model(adapters, model, "adapters")
    depths = common.model_depths(model)
    wrong = []
    for tower in {e.tower for e in items}:
      tuned = tuple(sorted({e.block for e in items if e.tower == tower}))
      if tuned != position_blocks(position, depths[tower]):
        wrong.append(f"{common.TOWER_NAME[tower]}: tuned {list(tuned)}, "
                     f"position gives "
                     f"{list(position_blocks(position, depths[tower]))}")
    if wrong:
      raise InteropError(f"release position {position!r} does not match the "
                         "adapters: " + "; ".join(wrong))
  targets = list(adapters.config.targets)
  weights: dict[str, dict] = {}
  problems = []
  j = 0
  for tower in _TOWER_ORDER:
    for block in sorted({e.block for e in items if e.tower == tower}):
      layer = {}
      for e in items:
        if e.tower == tower and e.block == block:
          layer[PROJ[e.target]] = {"w_lora_A": np.ascontiguousarray(e.a.T),
                                   "w_lora_B": np.ascontiguousarray(e.b.T)}
      have = sorted(_FROM_PROJ[p] for p in layer)
      if have != sorted(targets):
        problems.append(f"{common.TOWER_NAME[tower]} block {block} adapts "
                        f"{have}, the config says {targets}")
      weights[f"layer_{j}"] = layer
      j += 1
  if problems:
    raise InteropError("adapters: " + "; ".join(problems))
  c = adapters.config
  metadata = {"r": c.rank, "alpha": common.json_number(c.alpha),
              "encoder": c.towers, "params": targets, "position": position,
              "dropout_rate": c.dropout}
  return {"weights": weights, "metadata": metadata}


def export_release(adapters: Adapters, path: str | os.PathLike[str], *,
                   position: str | None = None, model: Any = None) -> Path:
  """Writes the release's ``.pt`` (``torch.save`` of ``release_state``).

  Raises:
    InteropError: torch is not installed, or see ``release_state``.
  """
  state = release_state(adapters, position, model)
  path = user_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  try:
    torch_files.save_torch_state_dict(
        path, state, "writing the release's .pt format")
  except torch_files.TorchMissingError as e:
    raise InteropError(f"{e}; the npz and peft formats do not need torch"
                       ) from None
  return path


def torch_load(path: Path) -> Any:
  """``torch.load(path, weights_only=True)`` on CPU, tensors as numpy.

  Returns:
    The stored object, every tensor an ``np.ndarray``
    (``torch_files.load_torch_state_dict``).

  Raises:
    InteropError: torch missing (with the install command), or the file is
      unreadable / holds objects other than tensors and plain containers;
      the message names the file.
  """
  try:
    return torch_files.load_torch_state_dict(path)
  except CheckpointError as e:
    raise InteropError(str(e)) from None


def adapters_from_state(state: Any, depths: Mapping[str, int], source: str
                        ) -> Adapters:
  """The release's save_lora dict (tensors or arrays) -> Adapters.

  Args:
    state: {"weights": ..., "metadata": ...} as ``save_lora`` writes.
    depths: blocks per tower of the model, {"img": n, "txt": m}, to place
      ``layer_<j>`` by the metadata's position.
    source: the file, for messages.

  Raises:
    InteropError: missing keys, unknown encoder/params/position, a layer
      count that differs from the position's, mis-shaped matrices; every
      problem is listed.
  """
  if not isinstance(state, Mapping) or not {"weights", "metadata"} <= set(
      state):
    keys = sorted(state) if isinstance(state, Mapping) else type(state)
    raise InteropError(f"{source}: expected save_lora's dict with 'weights' "
                       f"and 'metadata', found {keys}")
  meta, weights = state["metadata"], state["weights"]
  problems = []
  missing = [k for k in ("r", "alpha", "encoder", "params", "position")
             if k not in meta]
  if missing:
    raise InteropError(f"{source}: metadata lacks {missing}")
  rank, alpha = meta["r"], meta["alpha"]
  encoder, params, position = (meta["encoder"], list(meta["params"]),
                               meta["position"])
  towers = {"vision": ("img",), "text": ("txt",), "both": ("txt", "img")}
  if encoder not in towers:
    problems.append(f"metadata encoder={encoder!r} (expected vision, text "
                    "or both)")
  bad_params = [p for p in params if p not in PROJ]
  if bad_params or not params:
    problems.append(f"metadata params={params!r} (expected a non-empty "
                    "subset of q, k, v, o)")
  if position not in POSITIONS:
    problems.append(f"metadata position={position!r} (expected one of "
                    f"{POSITIONS})")
  if not isinstance(rank, int) or rank < 1:
    problems.append(f"metadata r={rank!r} (expected a positive integer)")
  if problems:
    raise InteropError(f"{source}: " + "; ".join(problems))
  slots = [(tower, block) for tower in towers[encoder]
           for block in position_blocks(position, depths[tower])]
  layer_names = [f"layer_{j}" for j in range(len(slots))]
  extra = sorted(set(weights) - set(layer_names))
  absent = [n for n in layer_names if n not in weights]
  if extra or absent:
    raise InteropError(
        f"{source}: encoder={encoder!r}, position={position!r} on a model "
        f"with {depths['img']} vision / {depths['txt']} text blocks means "
        f"{len(slots)} layers (layer_0..layer_{len(slots) - 1}); "
        f"missing {absent}, unexpected {extra}")
  items = []
  for name, (tower, block) in zip(layer_names, slots, strict=True):
    layer = weights[name]
    for p in params:
      proj = PROJ[p]
      ab = layer.get(proj) if isinstance(layer, Mapping) else None
      if not isinstance(ab, Mapping) or not {"w_lora_A", "w_lora_B"} <= set(
          ab):
        problems.append(f"weights/{name}/{proj}: missing (needs w_lora_A and "
                        "w_lora_B)")
        continue
      a, b = (_numpy(ab[k]) for k in ("w_lora_A", "w_lora_B"))
      if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or (
          b.shape[1] != rank):
        problems.append(f"weights/{name}/{proj}: w_lora_A {a.shape}, "
                        f"w_lora_B {b.shape}; expected [r={rank}, W] and "
                        f"[W, r={rank}]")
        continue
      items.append(common.Entry(tower, block, p, a.T.copy(), b.T.copy()))
    if isinstance(layer, Mapping):
      unknown = sorted(set(layer) - {PROJ[p] for p in params})
      if unknown:
        problems.append(f"weights/{name}: unexpected {unknown} (metadata "
                        f"params={params})")
  if problems:
    raise InteropError(f"{source}: " + "; ".join(problems))
  return common.build_adapters(
      items, rank=rank, alpha=float(alpha),
      dropout=float(meta.get("dropout_rate", DEFAULT_DROPOUT)),
      depths=depths, source=source)


def _numpy(x: Any) -> np.ndarray:
  return np.asarray(x, np.float32)  # e.g. a float16 file.


def read_release(path: str | os.PathLike[str], depths: Mapping[str, int]
                 ) -> Adapters:
  """Reads a release / CLIP-LoRA ``.pt`` LoRA file (``weights_only``).

  Raises:
    InteropError: see ``torch_load`` and ``adapters_from_state``.
  """
  path = user_path(path)
  if not path.is_file():
    raise InteropError(f"{path}: no such file")
  return adapters_from_state(torch_load(path), depths, str(path))
