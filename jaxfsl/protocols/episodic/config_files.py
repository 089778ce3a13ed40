"""Finding and loading job config files (no JAX at import).

A config file is a Python file with ``get_config()`` returning an
``ml_collections.ConfigDict`` built on ``jaxfsl/configs/base.py``. Names
resolve as given (relative to the current directory, ``~`` expanded), then
among the config files shipped with jaxfsl, so ``--config episodic/isic.py``
works from any directory and from an installed wheel.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from pathlib import Path

import ml_collections

from jaxfsl import configs as _configs_pkg
from jaxfsl.paths import user_path
from jaxfsl.protocols.episodic.errors import ConfigError

ConfigDict = ml_collections.ConfigDict

# The config files shipped with jaxfsl (``configs`` in a clone is a link to
# it).
CONFIG_DIR = Path(_configs_pkg.__file__).resolve().parent
BASE_FILE = CONFIG_DIR / "base.py"


def shipped_configs() -> list[str]:
  """The config files shipped with jaxfsl, relative to ``CONFIG_DIR``."""
  return sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.py")
                if p.name != "__init__.py")


def find_config(path: str | os.PathLike[str]) -> Path:
  """The config file ``path`` names: as given (``~`` expanded, relative to
  the current directory), else relative to the shipped configs (with or
  without a leading ``configs/``).

  Raises:
    ConfigError: no such file; lists where it looked and the shipped configs.
  """
  given = user_path(path)
  if given.is_file():
    return given.resolve()
  tried = [given.absolute()]
  if not given.is_absolute():
    parts = given.parts
    rel = Path(*parts[1:]) if parts and parts[0] == "configs" else given
    for candidate in dict.fromkeys((CONFIG_DIR / given, CONFIG_DIR / rel)):
      if candidate.is_file():
        return candidate.resolve()
      tried.append(candidate)
  raise ConfigError(
      f"config file {str(path)!r} not found (looked at "
      f"{', '.join(str(t) for t in tried)}); pass a config file, e.g. one of "
      f"the shipped configs: {', '.join(shipped_configs())}")


def load_config(path: str | os.PathLike[str], arg: str | None = None
                ) -> ConfigDict:
  """Loads a config file's ``get_config()`` (``"file.py:arg"`` passes arg).

  Args:
    path: a config file (see ``find_config`` for how names resolve).
    arg: passed to ``get_config``.

  Returns:
    The config (not yet checked: see ``validate``).

  Raises:
    ConfigError: the file does not exist, is not Python (line and reason),
      fails when run, has no ``get_config``, or ``get_config`` raises or
      returns something other than a ConfigDict; one line naming the file.
  """
  path = str(path)
  if arg is None and ":" in path and not user_path(path).exists():
    path, arg = path.rsplit(":", 1)
  file = find_config(path)
  name = f"jaxfsl_config_{file.stem}_{abs(hash(str(file)))}"
  # Any file name is read as Python, as ml_collections' --config flag does
  # (spec_from_file_location gives no loader for e.g. README.md).
  loader = importlib.machinery.SourceFileLoader(name, str(file))
  module = importlib.util.module_from_spec(
      importlib.util.spec_from_loader(name, loader))
  try:
    loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(
        f"{file}: line {e.lineno}: {e.msg}; a config file is Python "
        f"defining get_config() (e.g. {CONFIG_DIR / 'episodic' / 'demo.py'})"
    ) from None
  except Exception as e:  # noqa: BLE001 (any error of the user's file)
    raise ConfigError(f"{file}: running it raised {type(e).__name__}: {e}"
                      ) from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(
        f"{file} defines no get_config(); a config file defines "
        "get_config() returning an ml_collections.ConfigDict (e.g. "
        f"{CONFIG_DIR / 'episodic' / 'demo.py'})")
  try:
    config = get_config(arg) if arg else get_config()
  except ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 (any error of the user's file)
    raise ConfigError(f"{file}: get_config() raised {type(e).__name__}: {e}"
                      ) from None
  if not isinstance(config, ConfigDict):
    raise ConfigError(
        f"{file}: get_config() must return an ml_collections.ConfigDict, "
        f"got {type(config).__name__}")
  return config


def default_config() -> ConfigDict:
  """Every key with its type and default: ``jaxfsl/configs/base.py``."""
  from jaxfsl.configs import base

  return base.get_config()
