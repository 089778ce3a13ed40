"""The Trainable interface: what is fine-tuned per episode beside the backbone.

The episode engine never knows what it trains. It asks the configured
``Trainable`` for a fresh pytree per episode (``init``), differentiates that
pytree only (the backbone stays frozen and shared by every episode), and
passes it to the towers as one Flax variable collection::

  TwoTowers(model_config, **trainable.module_kwargs()).apply(
      {"params": backbone, trainable.collection: tree}, ...)

An implementation says:

* ``name``: the ``config.trainable`` value that selects it ("lora").
* ``collection``: the variable collection the towers read it from. The
  towers must run unchanged (the pretrained model: the zero-shot reference)
  when that collection is empty or absent.
* ``towers``: which towers' outputs depend on it, a subset of {"vision",
  "text"}. The engine re-encodes the class prompts every step only when
  "text" is in it, and encodes the images with gradient only when "vision"
  is in it (otherwise image features are computed once per episode).
* ``init(rng, backbone_params, model_config)``: a fresh float32 pytree for
  one episode; a pure function of its arguments (it is vmapped over
  episodes, and jitted).
* ``module_kwargs()``: the static fields ``TwoTowers`` needs to apply it
  (LoRA: ``lora_scaling``, ``lora_dropout``).
* ``stochastic``: whether train-mode forward passes draw random numbers
  (dropout) and so need a "dropout" rng.
* ``optim_overrides()`` (optional): ``OptimConfig`` fields of this
  trainable's own optimiser (CoOp / MaPLe: their originals' SGD), used when
  the job sets ``optim.name = "trainable"`` (``jaxfsl.optim``).
* ``model_problems(model_config)`` (optional): what in its settings does not
  fit a model (MaPLe: a prompt depth beyond a tower's blocks), each message
  naming the key, its value and the model's limit. The job checks it before
  anything is written when the model's config is known without loading it
  (random-init presets); ``bind`` raises ``TrainableConfigError`` with it.

Adding one (e.g. CoOp's text-side context vectors, ``towers={"text"}``, or
MaPLe's deep prompts in both towers, ``towers={"vision", "text"}``): a file
under ``jaxfsl/trainables/`` with a ``Trainable`` subclass decorated with
``@register("coop")``, its module listed in ``_BUILTIN_MODULES`` below, and
the towers reading its collection (``jaxfsl.models``). Nothing in the engine
changes: the objective, optimiser, sharding and evaluation all work on
whatever pytree ``init`` returns.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable
from typing import Any, ClassVar

import jax

TOWERS = ("vision", "text")

# name -> module that registers it; imported on first ``get_trainable``.
_BUILTIN_MODULES = {
    "lora": "jaxfsl.trainables.lora",
    "coop": "jaxfsl.trainables.coop",
    "maple": "jaxfsl.trainables.maple",
}
_REGISTRY: dict[str, Callable[[Any], Trainable]] = {}


class TrainableConfigError(ValueError):
  """A trainable's settings do not fit the model (or its tokenizer); the
  message names the config key, its value and what was expected."""


class Trainable(abc.ABC):
  """What an episode fine-tunes (see the module docstring)."""

  name: ClassVar[str]
  collection: ClassVar[str]

  @property
  @abc.abstractmethod
  def towers(self) -> frozenset[str]:
    """The towers whose outputs depend on the trainable pytree."""

  @abc.abstractmethod
  def init(self, rng: jax.Array, backbone_params: dict,
           model_config: Any) -> Any:
    """A fresh pytree of float32 arrays for one episode.

    Args:
      rng: PRNG key.
      backbone_params: the frozen backbone's ``params`` tree (read for
        shapes; never copied into the result).
      model_config: the backbone's ``ModelConfig``.
    """

  def module_kwargs(self) -> dict[str, Any]:
    """Static ``TwoTowers`` fields needed to apply the pytree."""
    return {}

  @property
  def stochastic(self) -> bool:
    """Whether a train-mode pass needs a "dropout" rng."""
    return False

  def optim_overrides(self) -> dict[str, Any]:
    """``OptimConfig`` fields of this trainable's own optimiser, applied
    with ``optim.name = "trainable"`` (default: none, the release's
    AdamW)."""
    return {}

  def model_problems(self, model_config: Any) -> list[str]:
    """Every way these settings do not fit ``model_config`` (a
    ``ModelConfig``), one message each naming key, value and limit
    (default: none)."""
    del model_config
    return []

  @property
  def tunes_vision(self) -> bool:
    return "vision" in self.towers

  @property
  def tunes_text(self) -> bool:
    return "text" in self.towers


def register(name: str) -> Callable[[Callable[[Any], Trainable]],
                                    Callable[[Any], Trainable]]:
  """Class decorator: ``get_trainable(name, block)`` calls ``cls(block)``
  (or ``cls.from_config(block)`` when the class defines it)."""

  def wrap(factory):
    if name in _REGISTRY and _REGISTRY[name] is not factory:
      raise ValueError(f"trainable {name!r} is registered twice")
    _REGISTRY[name] = factory
    return factory

  return wrap


def available() -> tuple[str, ...]:
  """Names ``config.trainable`` may take."""
  return tuple(sorted(set(_BUILTIN_MODULES) | set(_REGISTRY)))


def get_trainable(name: str, config_block: Any = None) -> Trainable:
  """The Trainable selected by ``config.trainable``.

  Args:
    name: e.g. "lora".
    config_block: its settings: the implementation's config dataclass, a
      mapping / ``ConfigDict`` of its fields (``config.lora``), or None for
      its defaults.

  Returns:
    A ``Trainable``.

  Raises:
    ValueError: unknown name (naming ``trainable`` and the known ones), or
      bad settings (naming their keys).
  """
  if name not in _REGISTRY and name in _BUILTIN_MODULES:
    importlib.import_module(_BUILTIN_MODULES[name])
  if name not in _REGISTRY:
    raise ValueError(f"trainable {name!r}: expected one of {available()}")
  factory = _REGISTRY[name]
  build = getattr(factory, "from_config", factory)
  trainable = build(config_block)
  if not isinstance(trainable, Trainable):
    raise TypeError(f"trainable {name!r} built {type(trainable).__name__}, "
                    "not a Trainable")
  bad = set(trainable.towers) - set(TOWERS)
  if bad or not trainable.towers:
    raise ValueError(f"trainable {name!r}: towers {sorted(trainable.towers)} "
                     f"must be a non-empty subset of {TOWERS}")
  return trainable
