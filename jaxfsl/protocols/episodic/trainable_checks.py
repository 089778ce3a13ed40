"""How a job's trainable relates to the rest of its config, checked without
building anything: the random-init model a trainable will meet
(``preset_model_config``, for MaPLe's depth), what a prompt learner's
settings make of that model's tokenizer (``bind_problems``) and the keys of
the other trainables' blocks that the job sets but never reads
(``inert_keys``).
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from jaxfsl.configs.base import TRAINABLE_BLOCKS
from jaxfsl.configs.base import get_config as default_config


def preset_model_config(model: ConfigDict, strict: bool = False) -> Any:
  """The ``ModelConfig`` of a random-init job: ``model.init`` with the
  ``model.image_size`` / ``model.vision_depth`` overrides (what
  ``inputs.load_model`` builds), or None for a checkpoint or an unknown
  preset.

  Overrides the architecture rejects (e.g. an image size that is not a
  multiple of the patch) give None, left to other checks to report, or
  with ``strict`` raise the dataclass's ValueError / TypeError.
  """
  import dataclasses

  from jaxfsl.models.config import PRESETS  # No JAX: plain dataclasses.

  if not model.init or model.init not in PRESETS:
    return None
  arch = PRESETS[model.init]
  changes = {k: v for k, v in (("image_size", model.image_size),
                               ("depth", model.vision_depth)) if v > 0}
  try:
    return dataclasses.replace(
        arch, vision=dataclasses.replace(arch.vision, **changes))
  except (ValueError, TypeError):
    if strict:
      raise
    return None


def bind_problems(trainable: Any, model_config: Any, config: ConfigDict
                  ) -> list[str]:
  """What ``trainable.bind`` (prompt learners) refuses against a random-init
  model's tokenizer (``n_ctx`` or ``ctx_init`` that leaves no room for a
  class name, MaPLe's ``n_ctx`` beyond its init phrase, ...), reported before
  anything is written; empty for trainables without ``bind``.
  """
  if not hasattr(trainable, "bind"):
    return []
  import types

  from jaxfsl.models.model import random_init_tokenizer
  from jaxfsl.trainables.base import TrainableConfigError

  # bind reads the model's config and tokenizer only: no parameters.
  model = types.SimpleNamespace(config=model_config,
                                tokenizer=random_init_tokenizer(model_config))
  try:
    trainable.bind(model, config.way, template=config.prompt)
  except TrainableConfigError as e:
    return [str(e)]
  return []


def inert_keys(config: ConfigDict) -> list[str]:
  """Keys set away from their defaults (``jaxfsl/configs/base.py``) in the
  block of a trainable this job does not use: they have no effect, e.g.
  ``lora.rank`` with ``trainable='coop'``. The runner warns about them.

  Returns:
    ``["lora.rank=4", ...]`` in schema order; empty when none.
  """
  # config.py re-exports this module: import its flatten when called.
  from jaxfsl.protocols.episodic.config import flatten

  defaults = flatten(default_config())
  out = []
  for key, value in flatten(config).items():
    block = key.split(".", 1)[0]
    if (block in TRAINABLE_BLOCKS and block != config.get("trainable")
        and key in defaults and _plain(value) != _plain(defaults[key])):
      out.append(f"{key}={value!r}")
  return out


def _plain(value: Any) -> Any:
  # A tuple default overridden from the command line can come back a list.
  return tuple(value) if isinstance(value, list) else value
