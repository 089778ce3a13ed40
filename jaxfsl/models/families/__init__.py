"""Model families: one module per family holds its architecture flags,
preprocessing, tokenizer kind and presets (``Family``).

Adding a family: write ``families/<name>.py`` defining ``FAMILY = Family(...)``
and add it to ``_REGISTERED`` below (one line). Checkpoint layouts register
separately in ``jaxfsl.checkpoints`` (``LAYOUTS``).
"""

from __future__ import annotations

from jaxfsl.models.config import ModelConfig
from jaxfsl.models.families import clip, pe_core, siglip
from jaxfsl.models.families.base import Family

# The registry: add a family module's FAMILY here.
_REGISTERED: tuple[Family, ...] = (clip.FAMILY, siglip.FAMILY,
                                   pe_core.FAMILY)

FAMILIES: dict[str, Family] = {f.name: f for f in _REGISTERED}

PRESETS: dict[str, ModelConfig] = {
    name: config for f in _REGISTERED for name, config in f.presets.items()}

clip_config = clip.clip_config
siglip_config = siglip.siglip_config


def get(name: str) -> Family:
  """The registered family called ``name``.

  Raises:
    ValueError: unknown name (the message lists the registered ones).
  """
  if name not in FAMILIES:
    raise ValueError(f"unknown model family {name!r}; registered: "
                     f"{sorted(FAMILIES)} (jaxfsl.models.families)")
  return FAMILIES[name]


__all__ = ["FAMILIES", "PRESETS", "Family", "clip_config", "get",
           "siglip_config"]
