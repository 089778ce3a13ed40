"""Exceptions of the data layer.

Every message names the offending file / row / key / value and says what was
expected, so that a user can fix the input without reading the code.
"""

from __future__ import annotations


class DataError(Exception):
  """Base class of every error raised by ``jaxfsl.data``."""


class ManualDataError(DataError):
  """The manual-download folder is missing, empty or incomplete.

  The message ends with the dataset's download instructions.
  """


class CorruptInputError(DataError):
  """A raw input is unusable: undecodable or truncated image, a CSV row naming
  a missing file, an unknown label.

  Attributes:
    file: the offending file, relative to the manual folder.
    row: the 1-based line of the CSV file naming it (the header is line 1), or
      None when the file was not listed by a CSV.
    reason: what is wrong with it.
  """

  def __init__(self, message: str, *, file: str = "", row: int | None = None,
               reason: str = ""):
    super().__init__(message)
    self.file = file
    self.row = row
    self.reason = reason


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
