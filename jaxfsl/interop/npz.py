"""Any trainable pytree <-> ``NAME.npz`` + ``NAME.json`` (no pickle, no JAX
needed to read).

Layout (version 1):

* ``NAME.npz`` (``numpy.savez``): one array per leaf, named by its path in
  the tree, the dict keys joined with ``/`` (e.g. a LoRA tree gives
  ``img/blocks_0/attn/q/a`` float32 [W, r]). The tree must be nested
  mappings with ``str`` keys without ``/`` (all jaxfsl trainables are);
  leaves keep their dtype and shape.
* ``NAME.json``: ``{"format": "jaxfsl.trainable", "version": 1, "kind":
  ..., "leaves": {path: {"shape": [...], "dtype": "float32"}}, ...}`` plus
  the caller's metadata. For LoRA (``kind`` "lora"): ``lora`` (rank, alpha,
  dropout, scaling, targets, towers, blocks: ``LoraConfig``) and ``backbone``
  (``common.backbone_fingerprint``: family, name, widths, depths, image
  size, sha256 of the backbone parameters; null when unknown). Prompt
  learners write their own ``kind`` and settings the same way.

Reading checks that the arrays and the sidecar's ``leaves`` agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxfsl.interop import common
from jaxfsl.interop.common import InteropError
from jaxfsl.paths import user_path
from jaxfsl.trainables.lora import Adapters

FORMAT = "jaxfsl.trainable"
VERSION = 1


def paths(npz: str | os.PathLike[str]) -> tuple[Path, Path]:
  """(NAME.npz, NAME.json) for ``NAME`` or ``NAME.npz``."""
  p = user_path(npz)
  if p.suffix != ".npz":
    p = p.with_name(p.name + ".npz")
  return p, p.with_suffix(".json")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a/b/c": leaf} of a tree of str-keyed mappings.

  Raises:
    InteropError: a key that is not a str or contains "/", or an empty
      mapping (it would not survive the round trip); all are listed.
  """
  out, bad = {}, []

  def walk(node, path):
    if isinstance(node, Mapping):
      if not node:
        bad.append(f"{path or '<root>'}: empty mapping")
      for k, v in node.items():
        if not isinstance(k, str) or "/" in k or not k:
          bad.append(f"{path}/{k!r}: keys must be non-empty str without '/'")
          continue
        walk(v, f"{path}/{k}" if path else k)
    else:
      out[path] = node

  walk(tree, prefix)
  if bad:
    raise InteropError("tree cannot be stored as npz: " + "; ".join(bad))
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = tree
    parts = path.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = leaf
  return tree


def save_tree(npz: str | os.PathLike[str], tree: Mapping[str, Any], *,
              kind: str, metadata: Mapping[str, Any] | None = None
              ) -> tuple[Path, Path]:
  """Writes ``tree`` and its sidecar; returns (npz path, json path).

  Raises:
    InteropError: see ``flatten``; metadata overriding a layout key.
  """
  npz_path, json_path = paths(npz)
  arrays = {k: np.asarray(v) for k, v in flatten(tree).items()}
  meta = dict(metadata or {})
  reserved = {"format", "version", "kind", "leaves"} & set(meta)
  if reserved:
    raise InteropError(f"metadata keys {sorted(reserved)} are reserved")
  sidecar = {"format": FORMAT, "version": VERSION, "kind": kind, **meta,
             "leaves": {k: {"shape": list(a.shape), "dtype": a.dtype.name}
                        for k, a in sorted(arrays.items())}}
  npz_path.parent.mkdir(parents=True, exist_ok=True)
  with open(npz_path, "wb") as f:
    np.savez(f, **arrays)
  json_path.write_text(json.dumps(sidecar, indent=2) + "\n")
  return npz_path, json_path


def load_tree(npz: str | os.PathLike[str]
              ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(tree of numpy arrays, sidecar dict) of ``save_tree``'s files.

  Raises:
    InteropError: a missing file, another format or version, or arrays
      that differ from the sidecar's ``leaves`` (each listed).
  """
  npz_path, json_path = paths(npz)
  for p in (npz_path, json_path):
    if not p.is_file():
      raise InteropError(f"{p}: no such file (a jaxfsl npz export is "
                         "NAME.npz with its sidecar NAME.json)")
  try:
    sidecar = json.loads(json_path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise InteropError(f"{json_path}: not valid JSON: {e}") from None
  if sidecar.get("format") != FORMAT or sidecar.get("version") != VERSION:
    raise InteropError(
        f"{json_path}: format={sidecar.get('format')!r} version="
        f"{sidecar.get('version')!r}; expected {FORMAT!r} version {VERSION}")
  try:
    with np.load(npz_path, allow_pickle=False) as data:
      flat = {k: data[k] for k in data.files}
  except (OSError, ValueError) as e:
    raise InteropError(f"{npz_path}: not a readable npz: {e}") from None
  leaves = sidecar.get("leaves", {})
  problems = [f"{k}: in {json_path.name} but not in {npz_path.name}"
              for k in leaves if k not in flat]
  for k, a in flat.items():
    want = leaves.get(k)
    if want is None:
      problems.append(f"{k}: in {npz_path.name} but not in {json_path.name}")
    elif list(a.shape) != want.get("shape") or a.dtype.name != want.get(
        "dtype"):
      problems.append(f"{k}: {a.dtype.name}{list(a.shape)}, sidecar says "
                      f"{want.get('dtype')}{want.get('shape')}")
  if problems:
    raise InteropError(f"{npz_path}: " + "; ".join(problems))
  return unflatten(flat), sidecar


def export_npz(adapters: Adapters, npz: str | os.PathLike[str], *,
               model: Any = None,
               metadata: Mapping[str, Any] | None = None
               ) -> tuple[Path, Path]:
  """Writes LoRA adapters with ``kind`` "lora", their LoraConfig and, with
  ``model``, the backbone fingerprint (after checking that they fit it)."""
  common.entries(adapters)  # A LoRA tree, or a named error.
  backbone = None
  if model is not None:
    common.check_against_model(adapters, model, "adapters")
    backbone = common.backbone_fingerprint(model)
  meta = {"lora": common.lora_metadata(adapters.config),
          "backbone": backbone, **(metadata or {})}
  return save_tree(npz, adapters.params, kind="lora", metadata=meta)


def read_npz(npz: str | os.PathLike[str], model: Any = None) -> Adapters:
  """LoRA adapters from ``export_npz``'s files.

  With ``model``, the sidecar's backbone fingerprint (when recorded) must
  match it: adapters only mean something on the backbone they were trained
  on.

  Raises:
    InteropError: see ``load_tree``; kind is not "lora"; a fingerprint
      mismatch (naming both hashes); shapes that do not fit ``model``.
  """
  tree, sidecar = load_tree(npz)
  source = str(paths(npz)[0])
  if sidecar.get("kind") != "lora":
    raise InteropError(f"{source}: kind={sidecar.get('kind')!r}; only "
                       "'lora' adapters import as Adapters (use load_tree "
                       "for other trainables)")
  config = common.lora_config(sidecar.get("lora") or {}, source)
  adapters = Adapters(params=tree, config=config)
  common.entries(adapters)
  if model is not None:
    saved = (sidecar.get("backbone") or {}).get("sha256")
    if saved is not None:
      here = common.backbone_fingerprint(model)["sha256"]
      if saved != here:
        raise InteropError(
            f"{source}: trained on backbone sha256 {saved[:16]}..., the "
            f"given model {getattr(model, 'name', '')!r} is {here[:16]}...")
    common.check_against_model(adapters, model, source)
  return adapters
