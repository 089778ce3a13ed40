"""The checkpoint loaders' error and warning types, and message helpers."""

from __future__ import annotations

from collections.abc import Iterable

# How many names an error message lists before it says "and N more".
_MAX_LISTED = 12


class CheckpointError(ValueError):
  """A checkpoint that cannot be turned into a jaxfsl model.

  The message names the file, the offending tensor(s) or config field, and
  what was expected (e.g. shape expected vs. found).
  """


class CheckpointWarning(UserWarning):
  """A checkpoint entry was ignored on purpose (e.g. ``position_ids``)."""


def listing(names: Iterable[str], limit: int = _MAX_LISTED) -> str:
  """'a, b, c and 7 more' for error messages."""
  names = list(names)
  shown = ", ".join(names[:limit])
  if len(names) > limit:
    shown += f" and {len(names) - limit} more"
  return shown


def first_line(e: BaseException) -> str:
  """The first line of an exception's message (or its type's name)."""
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__
