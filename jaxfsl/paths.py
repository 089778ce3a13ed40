"""One resolver for every user-facing path (CLI flags, config keys, library
arguments), so ``~`` and ``$VARS`` mean the same everywhere.

The shell does not expand ``~`` after ``=`` (``--config.model.tokenizer=~/x``),
so jaxfsl does it itself.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_path(path: str | os.PathLike[str]) -> Path:
  """``path`` with ``~``, ``~user`` and ``$VAR`` / ``${VAR}`` expanded.

  Relative paths stay relative (to the current directory); nothing is
  checked for existence here.

  Args:
    path: a path as the user typed it.

  Returns:
    The expanded ``Path``.

  Raises:
    TypeError: ``path`` is not a str or os.PathLike.
  """
  if not isinstance(path, (str, os.PathLike)):
    raise TypeError(f"expected a path (str or os.PathLike), got "
                    f"{type(path).__name__}: {path!r}")
  return Path(os.path.expandvars(os.path.expanduser(os.fspath(path))))
