"""LoRA adapters <-> a PEFT adapter folder for transformers' CLIPModel /
SiglipModel.

The folder is what ``PeftModel.save_pretrained`` writes, so that::

  model = peft.PeftModel.from_pretrained(transformers.CLIPModel(...), OUT)

adapts the same projections with the same weights:

* ``adapter_config.json``: ``peft_type`` LORA, ``r`` = our rank,
  ``lora_alpha`` = our alpha, ``use_rslora`` true, ``lora_dropout``,
  ``target_modules`` a regular expression (PEFT full-matches it against
  module names) naming exactly the tuned ``{vision_model|text_model}.
  encoder.layers.{i}.self_attn.{q_proj|k_proj|v_proj|out_proj}``.
* ``adapter_model.safetensors``: ``base_model.model.<module>.lora_A.weight``
  float32 [r, W] = ``a``^T and ``...lora_B.weight`` [W, r] = ``b``^T
  (PEFT computes ``scaling * lora_B(lora_A(dropout(x)))``, PEFT
  ``tuners/lora/layer.py``).

Scaling. jaxfsl (as the release, ``loralib/layers.py``: ``lora_alpha /
math.sqrt(r)``) scales the branch by alpha / sqrt(r); PEFT by alpha / r
unless ``use_rslora`` (rank-stabilised LoRA, Kalajdzievski 2023), which is
alpha / sqrt(r). Writing ``use_rslora: true`` with r and alpha unchanged is
the faithful encoding: the same formula and the same two numbers, so the
file reads back to the identical LoraConfig. (The equivalent ``lora_alpha =
alpha * sqrt(r)`` without rsLoRA would change alpha and make it irrational
for most ranks.) ``use_rslora`` exists since PEFT 0.7.0; older PEFT would
ignore it and scale by alpha / r, so this needs peft >= 0.7.

Reading accepts both encodings (with or without ``use_rslora``) and
``adapter_model.bin`` (torch, ``weights_only``), and rejects what jaxfsl's
LoRA cannot express (DoRA, LoRA biases, per-module rank/alpha patterns,
modules outside the attention projections), naming every offending key.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxfsl.interop import common
from jaxfsl.interop.common import InteropError
from jaxfsl.paths import user_path
from jaxfsl.trainables.lora import Adapters

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TORCH_WEIGHTS_FILE = "adapter_model.bin"
PREFIX = "base_model.model."
PROJ = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
_FROM_PROJ = {v: k for k, v in PROJ.items()}
_HF_TOWER = {v: k for k, v in common.TOWER_HF.items()}
_KEY = re.compile(
    r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.self_attn\."
    r"(q_proj|k_proj|v_proj|out_proj)\.lora_([AB])(?:\.[A-Za-z0-9_]+)?"
    r"\.weight$")


def module_name(tower: str, block: int, target: str) -> str:
  """The transformers module adapted for (tower, block, target)."""
  return (f"{common.TOWER_HF[tower]}.encoder.layers.{block}.self_attn."
          f"{PROJ[target]}")


def target_regex(items: list[common.Entry]) -> str:
  """A regex full-matching exactly the adapted modules of ``items``."""
  towers: dict[str, set[int]] = {}
  targets = set()
  for e in items:
    towers.setdefault(e.tower, set()).add(e.block)
    targets.add(e.target)
  parts = [f"{common.TOWER_HF[t]}\\.encoder\\.layers\\.("
           + "|".join(str(b) for b in sorted(blocks)) + ")"
           for t, blocks in sorted(towers.items())]
  projs = "|".join(PROJ[t] for t in ("q", "k", "v", "o") if t in targets)
  return f"({'|'.join(parts)})\\.self_attn\\.({projs})"


def peft_config(adapters: Adapters, items: list[common.Entry],
                base_model_name_or_path: str | None = None
                ) -> dict[str, Any]:
  """The ``adapter_config.json`` dict (keys PEFT's LoraConfig reads)."""
  c = adapters.config
  return {
      "peft_type": "LORA",
      "task_type": None,
      "base_model_name_or_path": base_model_name_or_path,
      "r": c.rank,
      "lora_alpha": common.json_number(c.alpha),
      "use_rslora": True,
      "lora_dropout": c.dropout,
      "target_modules": target_regex(items),
      "bias": "none",
      "fan_in_fan_out": False,
      "use_dora": False,
      "init_lora_weights": True,
      "inference_mode": True,
      "modules_to_save": None,
      "rank_pattern": {},
      "alpha_pattern": {},
  }


def export_peft(adapters: Adapters, out: str | os.PathLike[str], *,
                base_model_name_or_path: str | None = None,
                model: Any = None) -> Path:
  """Writes ``adapters`` as a PEFT LoRA folder (see the module docstring).

  Args:
    adapters: one episode's LoRA adapters (no leading episode axis).
    out: the folder to write (created; existing files are replaced).
    base_model_name_or_path: recorded in adapter_config.json.
    model: when given, the adapters are checked against it first.

  Returns:
    The folder.

  Raises:
    InteropError: the tree is not a LoRA tree, or does not fit ``model``,
      or ``model`` is not a CLIP / SigLIP (no transformers module names).
  """
  from safetensors.numpy import save_file

  out = user_path(out)
  items = common.entries(adapters)
  common.check_entries(items, adapters.config.rank, "adapters")
  if model is not None:
    family = model.config.family
    if family not in ("clip", "siglip"):
      raise InteropError(
          f"PEFT export names transformers' CLIPModel / SiglipModel modules; "
          f"model {getattr(model, 'name', '')!r} is a {family!r} model "
          "(export it as npz instead)")
    common.check_against_model(adapters, model, "adapters")
  if not items:
    raise InteropError("adapters: the tree holds no LoRA weights")
  tensors = {}
  for e in items:
    name = PREFIX + module_name(e.tower, e.block, e.target)
    tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(e.a.T)
    tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(e.b.T)
  out.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
  (out / CONFIG_FILE).write_text(json.dumps(
      peft_config(adapters, items, base_model_name_or_path), indent=2) + "\n")
  return out


def _read_tensors(folder: Path) -> tuple[dict[str, np.ndarray], str]:
  if (folder / WEIGHTS_FILE).is_file():
    from safetensors.numpy import load_file

    path = folder / WEIGHTS_FILE
    try:
      return load_file(str(path)), str(path)
    except Exception as e:  # safetensors raises its own error types.
      raise InteropError(f"{path}: not a readable safetensors file: {e}"
                         ) from None
  if (folder / TORCH_WEIGHTS_FILE).is_file():
    from jaxfsl.interop.release import torch_load

    path = folder / TORCH_WEIGHTS_FILE
    state = torch_load(path)
    if not isinstance(state, dict):
      raise InteropError(f"{path}: expected a state dict, got "
                         f"{type(state).__name__}")
    return {k: np.asarray(v, np.float32) for k, v in state.items()}, str(
        path)
  raise InteropError(
      f"{folder}: no {WEIGHTS_FILE} or {TORCH_WEIGHTS_FILE} (a PEFT adapter "
      f"folder has one beside {CONFIG_FILE})")


def read_peft(folder: str | os.PathLike[str],
              depths: dict[str, int] | None = None) -> Adapters:
  """A PEFT LoRA folder for CLIPModel / SiglipModel -> jaxfsl Adapters.

  Args:
    folder: holds adapter_config.json and adapter_model.safetensors (or
      adapter_model.bin).
    depths: blocks per tower ({"img": n, "txt": m}) to name a block preset
      in the returned LoraConfig; None gives explicit block indices.

  Returns:
    Adapters whose scaling equals PEFT's for this config.

  Raises:
    InteropError: unsupported PEFT settings, unexpected or missing tensors,
      shape mismatches; every problem found is listed with the file.
  """
  folder = user_path(folder)
  cfg_path = folder / CONFIG_FILE
  if not cfg_path.is_file():
    raise InteropError(f"{folder}: not a PEFT adapter folder (no "
                       f"{CONFIG_FILE})")
  try:
    cfg = json.loads(cfg_path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise InteropError(f"{cfg_path}: not valid JSON: {e}") from None
  problems = []
  if cfg.get("peft_type") != "LORA":
    problems.append(f"peft_type={cfg.get('peft_type')!r} (expected 'LORA')")
  for key, ok in (("use_dora", False), ("fan_in_fan_out", False)):
    if bool(cfg.get(key, ok)) != ok:
      problems.append(f"{key}={cfg.get(key)!r} is not supported")
  if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
    problems.append(f"bias={cfg.get('bias')!r}, lora_bias="
                    f"{cfg.get('lora_bias')!r}: jaxfsl's LoRA has no biases")
  for key in ("rank_pattern", "alpha_pattern"):
    if cfg.get(key):
      problems.append(f"{key}={cfg[key]!r}: jaxfsl uses one rank and alpha")
  if cfg.get("modules_to_save"):
    problems.append(f"modules_to_save={cfg['modules_to_save']!r}: jaxfsl "
                    "fine-tunes LoRA weights only")
  rank, alpha = cfg.get("r"), cfg.get("lora_alpha")
  if not isinstance(rank, int) or rank < 1:
    problems.append(f"r={rank!r} (expected a positive integer)")
  if not isinstance(alpha, (int, float)):
    problems.append(f"lora_alpha={alpha!r} (expected a number)")
  if problems:
    raise InteropError(f"{cfg_path}: " + "; ".join(problems))
  if cfg.get("use_rslora", False):
    our_alpha = float(alpha)
  else:
    # PEFT scales by alpha / r; ours alpha' / sqrt(r) equals it when
    # alpha' = alpha / sqrt(r).
    our_alpha = float(alpha) / math.sqrt(rank)

  tensors, source = _read_tensors(folder)
  pairs: dict[tuple[str, int, str], dict[str, np.ndarray]] = {}
  unexpected = []
  for key, value in tensors.items():
    name = key[len(PREFIX):] if key.startswith(PREFIX) else key
    m = _KEY.match(name)
    if m is None:
      unexpected.append(key)
      continue
    tower, block, proj, which = m.groups()
    slot = pairs.setdefault((_HF_TOWER[tower], int(block), _FROM_PROJ[proj]),
                            {})
    slot[which] = np.asarray(value, np.float32)
  missing = [f"{PREFIX}{module_name(*k)}.lora_{w}.weight"
             for k, slot in sorted(pairs.items()) for w in "AB"
             if w not in slot]
  if unexpected or missing:
    parts = []
    if unexpected:
      parts.append(f"unexpected tensor(s) {sorted(unexpected)} (jaxfsl's LoRA "
                   "adapts the encoder layers' self_attn q/k/v/out_proj only)")
    if missing:
      parts.append(f"missing tensor(s) {missing}")
    raise InteropError(f"{source}: " + "; ".join(parts))
  items = []
  problems = []
  for (tower, block, target), slot in sorted(pairs.items()):
    a, b = slot["A"], slot["B"]
    name = f"{PREFIX}{module_name(tower, block, target)}"
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
      problems.append(f"{name}: lora_A {a.shape}, lora_B {b.shape}; expected "
                      f"lora_A [r={rank}, in], lora_B [out, r={rank}]")
      continue
    items.append(common.Entry(tower, block, target, a.T.copy(), b.T.copy()))
  if problems:
    raise InteropError(f"{source}: " + "; ".join(problems))
  return common.build_adapters(
      items, rank=rank, alpha=our_alpha,
      dropout=float(cfg.get("lora_dropout", 0.0)), depths=depths,
      source=source)
