"""Exceptions of the data layer.

Every message names the offending file / row / key / value and says what was
expected, so that a user can fix the input without reading the code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class DataError(Exception):
  """Base class of every error raised by ``jaxfsl.data``."""


class ManualDataError(DataError):
  """The manual-download folder is missing, empty or incomplete.

  The message ends with the dataset's download instructions.
  """


class CorruptInputError(DataError):
  """Raw inputs are unusable: undecodable or truncated images, CSV rows naming
  a missing file, unknown labels, empty class folders.

  Preparing lists every bad input of the pass, not only the first: the
  message gives their count and the first few, ``problems`` all of them,
  and ``report_path`` the file listing them all.

  Attributes:
    file: the first offending file, relative to the manual folder.
    row: the 1-based line of the CSV file naming it (the header is line 1), or
      None when the file was not listed by a CSV.
    reason: what is wrong with it.
    problems: every bad input found (``jaxfsl.data.sources.Problem``).
    report_path: the report listing them all, or None.
    csv_name: the CSV file ``row`` refers to, or None.
    root: the folder the inputs were read from.
    ignored: files that are not part of the dataset (hidden, non-image),
      listed in the report too.
  """

  def __init__(self, message: str, *, file: str = "", row: int | None = None,
               reason: str = "", problems: Sequence[Any] = (),
               report_path: Path | None = None, csv_name: str | None = None,
               root: str = ""):
    super().__init__(message)
    self.file = file
    self.row = row
    self.reason = reason
    self.problems = list(problems)
    self.report_path = report_path
    self.csv_name = csv_name
    self.root = root
    self.ignored: list[Any] = []  # Files ignored on the way (not bad).


class StaleDatasetError(DataError):
  """The dataset was already prepared from a different source (another
  manual folder, files added / removed / changed, other options); the message
  names the differences and the ``--overwrite`` switch."""


class DatasetNotPreparedError(DataError, FileNotFoundError):
  """``load_dataset`` found no prepared dataset; the message gives the exact
  ``python tools/prepare_data.py ...`` command to run."""


class EpisodeError(DataError, RuntimeError):
  """Preparing one episode failed in a pipeline worker.

  Attributes:
    episode_index: the index of the episode that failed.
  """

  def __init__(self, episode_index: int, cause: BaseException):
    super().__init__(
        f"episode {episode_index} failed: {type(cause).__name__}: {cause}")
    self.episode_index = episode_index
    self.__cause__ = cause
