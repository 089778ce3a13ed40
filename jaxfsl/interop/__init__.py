"""Adapters that leave jaxfsl, and adapters trained elsewhere.

Formats (see each module's docstring for the exact layout):

* ``peft``: a PEFT LoRA folder for transformers' CLIPModel / SiglipModel
  (``peft.PeftModel.from_pretrained(model, OUT)``); ``peft_folder``.
* ``release``: the ``.pt`` of the release's / CLIP-LoRA's ``save_lora``,
  read by their ``load_lora``; ``release``.
* ``npz``: any trainable pytree as ``NAME.npz`` + ``NAME.json`` sidecar
  (LoRA settings, backbone fingerprint); ``npz``.

Only LoRA exports to ``peft`` / ``release``; every trainable exports to npz.
::

  from jaxfsl import interop
  interop.export_adapters(adapters, "out_peft", "peft", model=model)
  adapters = interop.import_adapters("lora_weights.pt", model)

A job's saved adapters (``config.save_adapters=True``) are read with
``interop.workdir.load_saved_adapters(WORKDIR, episode)`` (what
``tools/export_adapters.py`` uses); imported adapters are evaluated on a
job's episodes by ``interop.workdir.install_for_eval`` + ``eval_only``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jaxfsl.interop import common
from jaxfsl.interop.common import InteropError, backbone_fingerprint
from jaxfsl.interop.npz import export_npz, load_tree, read_npz, save_tree
from jaxfsl.interop.peft_folder import export_peft, read_peft
from jaxfsl.interop.release import (
    export_release,
    read_release,
    release_state,
)
from jaxfsl.paths import user_path
from jaxfsl.trainables.lora import Adapters

FORMATS = ("peft", "release", "npz")


def export_adapters(adapters: Adapters, out: str | os.PathLike[str],
                    format: str, *, model: Any = None,
                    base_model_name_or_path: str | None = None,
                    position: str | None = None) -> Path:
  """Writes one episode's LoRA adapters in ``format``.

  Args:
    adapters: LoRA adapters (tree + LoraConfig), no episode axis.
    out: a folder (peft), a ``.pt`` file (release) or ``NAME[.npz]`` (npz).
    format: "peft", "release" or "npz".
    model: the backbone; checks the adapters fit it and, for npz, records
      its fingerprint.
    base_model_name_or_path: peft only, recorded in adapter_config.json.
    position: release only, the release's ``--position`` (needed when the
      adapters tune explicit block indices).

  Returns:
    The folder or file written (the .npz for npz; its .json lies beside).

  Raises:
    InteropError: unknown format, or the format's own errors.
  """
  if format == "peft":
    return export_peft(adapters, out, model=model,
                       base_model_name_or_path=base_model_name_or_path)
  if format == "release":
    return export_release(adapters, out, position=position, model=model)
  if format == "npz":
    return export_npz(adapters, out, model=model)[0]
  raise InteropError(f"export format {format!r}: expected one of {FORMATS}")


def import_adapters(path: str | os.PathLike[str], model: Any) -> Adapters:
  """Adapters trained elsewhere, ready for ``model`` (e.g. eval_only).

  Args:
    path: a PEFT adapter folder (adapter_config.json), a release /
      CLIP-LoRA ``.pt`` (``save_lora``; read with weights_only), or a jaxfsl
      ``.npz`` export.
    model: the jaxfsl ``Model`` they will run on (block counts place the
      release's layers; widths are checked).

  Returns:
    ``Adapters``: the LoRA tree ({img|txt}/blocks_<i>/attn/<t>/{a [W, r],
    b [r, W]}, float32) and its ``LoraConfig`` (``.config``).

  Raises:
    InteropError: an unrecognised path, or any problem of the file (named,
      with every offending key), or adapters that do not fit ``model``.
  """
  p = user_path(path)
  depths = {"img": model.config.vision.depth, "txt": model.config.text.depth}
  if p.is_dir():
    adapters = read_peft(p, depths)
  elif p.suffix in (".pt", ".pth", ".bin"):
    adapters = read_release(p, depths)
  elif p.suffix in (".npz", ".json"):
    return read_npz(p.with_suffix(".npz"), model)
  elif not p.exists():
    raise InteropError(f"{p}: no such file or folder")
  else:
    raise InteropError(
        f"{p}: unrecognised adapter file; expected a PEFT folder (with "
        "adapter_config.json), a release / CLIP-LoRA .pt, or a jaxfsl .npz")
  common.check_against_model(adapters, model, str(p))
  return adapters


__all__ = [
    "FORMATS", "InteropError", "backbone_fingerprint", "export_adapters",
    "export_npz", "export_peft", "export_release", "import_adapters",
    "load_tree", "read_npz", "read_peft", "read_release", "release_state",
    "save_tree",
]
