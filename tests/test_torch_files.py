"""torch stays optional: one module of jaxfsl imports it, lazily."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

from jaxfsl.checkpoints import readers, torch_files
from jaxfsl.checkpoints.errors import CheckpointError
from jaxfsl.interop import release

PACKAGE = Path(__file__).resolve().parents[1] / "jaxfsl"
ALLOWED = {"jaxfsl/checkpoints/torch_files.py"}
# Modules that import torch themselves when imported.
TORCH_MODULES = ("torch", "torchvision", "safetensors.torch", "open_clip",
                 "transformers", "peft", "timm")


def _imports_torch(tree: ast.AST) -> list[int]:
  """Lines of every import of a torch-importing module, at any depth."""
  def heavy(name: str | None) -> bool:
    return bool(name) and any(name == m or name.startswith(m + ".")
                              for m in TORCH_MODULES)

  lines = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import) and any(heavy(a.name) for a in node.names):
      lines.append(node.lineno)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and (
        heavy(node.module) or any(
            heavy(f"{node.module}.{a.name}") for a in node.names)):
      lines.append(node.lineno)
    elif isinstance(node, ast.Call) and node.args and isinstance(
        node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
      func = node.func
      name = func.attr if isinstance(func, ast.Attribute) else getattr(
          func, "id", "")
      if name in ("import_module", "__import__") and heavy(
          node.args[0].value):
        lines.append(node.lineno)
  return lines


def test_only_torch_files_imports_torch():
  offenders = []
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE.parent).as_posix()
    lines = _imports_torch(ast.parse(path.read_text(), filename=rel))
    if lines and rel not in ALLOWED:
      offenders.append(f"{rel}:{','.join(map(str, lines))}")
  assert not offenders, (
      "torch may be imported only in jaxfsl/checkpoints/torch_files.py; "
      f"found: {offenders}")
  # The checker itself sees every spelling, and the allowed module uses one.
  for source in ("import torch", "def f():\n  import torch.nn as nn",
                 "from torch import nn", "from safetensors import torch",
                 "from safetensors.torch import load_file",
                 "importlib.import_module('torch')", "__import__('torch')"):
    assert _imports_torch(ast.parse(source)), source
  assert not _imports_torch(ast.parse("import torchx\nfrom x import torch"))
  assert _imports_torch(ast.parse(
      (PACKAGE / "checkpoints" / "torch_files.py").read_text()))


def test_round_trip_and_dtypes(tmp_path):
  path = tmp_path / "w.pt"
  tree = {"weights": {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                      "h": np.ones(2, np.float16)},
          "metadata": {"r": 2, "params": ["q", "v"], "alpha": 1.5}}
  torch_files.save_torch_state_dict(path, tree, "writing a test file")
  raw = torch.load(str(path), weights_only=True)
  assert isinstance(raw["weights"]["a"], torch.Tensor)
  back = torch_files.load_torch_state_dict(path)
  np.testing.assert_array_equal(back["weights"]["a"], tree["weights"]["a"])
  assert back["weights"]["h"].dtype == np.float16
  assert back["metadata"] == tree["metadata"]
  # bfloat16 comes back as float32, exactly.
  x = torch.tensor([1.0, 2.5, -3.0078125], dtype=torch.bfloat16)
  torch.save({"x": x, "shape": x.shape}, tmp_path / "b.pt")
  back = torch_files.load_torch_state_dict(tmp_path / "b.pt")
  assert back["x"].dtype == np.float32
  np.testing.assert_array_equal(back["x"], x.float().numpy())
  assert back["shape"] == (3,)
  # What numpy can hold but torch cannot is the caller's to convert.
  with pytest.raises(TypeError):
    torch_files.save_torch_state_dict(
        tmp_path / "c.pt", {"x": np.ones(2, ml_dtypes.bfloat16)}, "x")


def test_errors_name_the_file(tmp_path):
  garbage = tmp_path / "garbage.pt"
  garbage.write_bytes(b"\x00not a torch file at all")
  with pytest.raises(CheckpointError, match="garbage.pt"):
    torch_files.load_torch_state_dict(garbage)
  with pytest.raises(CheckpointError, match="garbage.pt"):
    torch_files.load_torchscript_state_dict(garbage)
  with pytest.raises(release.InteropError, match="garbage.pt"):
    release.torch_load(garbage)


def test_missing_torch_says_how_to_install(tmp_path, monkeypatch):
  torch.save({"a": torch.zeros(1)}, tmp_path / "w.pt")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
  expected = r"w\.pt: reading PyTorch weights needs torch.*torch==2\.13\.0"
  with pytest.raises(torch_files.TorchMissingError, match=expected):
    torch_files.load_torch_state_dict(tmp_path / "w.pt")
  with pytest.raises(CheckpointError, match=expected):
    readers.read_torch(tmp_path / "w.pt")
  with pytest.raises(release.InteropError, match=expected):
    release.torch_load(tmp_path / "w.pt")
  with pytest.raises(torch_files.TorchMissingError,
                     match=r"o\.pt: writing x needs torch.*torch==2\.13\.0"):
    torch_files.save_torch_state_dict(tmp_path / "o.pt", {}, "writing x")
  assert not (tmp_path / "o.pt").exists()
