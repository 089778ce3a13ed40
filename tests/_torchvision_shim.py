"""A stand-in for ``torchvision`` so that open_clip and timm import without it.

Why: the parity tests build reference PE-Core models with ``open_clip_torch``
(whose PE-Core vision tower is a ``timm`` model). Both packages import
torchvision at import time (open_clip ``utils.py`` / ``transform.py``, timm
``layers/create_norm.py`` / ``layers/norm_act.py`` / ``data/transforms.py``)
although building a model and running its forward pass never calls it; only
their image transforms (unused here: the tests feed tensors) do. This project
never installs torchvision (a second torch-version-pinned binary), so
``install()`` puts importable dummy modules in ``sys.modules`` for
``torchvision`` and any of its submodules before open_clip / timm are
imported. Every attribute of a dummy module is a dummy class whose own
attributes are strings (``InterpolationMode.BICUBIC == "stub_BICUBIC"``),
except ``FrozenBatchNorm2d``, which is ``torch.nn.BatchNorm2d`` (timm maps
norm-layer names to it). Using a transform through the shim is a bug in the
test: the dummies do nothing and return nothing useful.

If a real torchvision is importable, ``install()`` leaves it alone.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types


class _StubMeta(type):

  def __getattr__(cls, name: str):
    if name.startswith("__"):
      raise AttributeError(name)
    return f"stub_{name}"


class _Stub(metaclass=_StubMeta):
  """A dummy torchvision class: constructible, subclassable, inert."""

  def __init__(self, *args, **kwargs):
    del args, kwargs


class _StubModule(types.ModuleType):

  def __getattr__(self, name: str):
    if name.startswith("__"):
      raise AttributeError(name)
    if name == "FrozenBatchNorm2d":
      import torch
      return torch.nn.BatchNorm2d
    value = _StubMeta(name, (_Stub,), {"__module__": self.__name__})
    setattr(self, name, value)
    return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    if fullname == "torchvision" or fullname.startswith("torchvision."):
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    module = _StubModule(spec.name)
    module.__path__ = []
    module.__version__ = "0.0.0+jaxfsl-test-shim"
    return module

  def exec_module(self, module):
    del module


def install() -> None:
  """Makes ``import torchvision[.x.y]`` succeed with dummies (idempotent)."""
  if any(isinstance(f, _Finder) for f in sys.meta_path):
    return
  if "torchvision" not in sys.modules and importlib.util.find_spec(
      "torchvision") is not None:
    return  # a real installation: use it
  sys.meta_path.append(_Finder())
