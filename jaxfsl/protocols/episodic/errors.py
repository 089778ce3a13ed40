"""The episodic job's error types: what the CLI reports as one line.

``UserError`` and its subclasses are problems the user can fix; the CLI
prints their message as one ``ERROR:`` line without a traceback.
``Interrupted`` is a clean stop on SIGINT/SIGTERM, not an error.
"""

from __future__ import annotations


class UserError(Exception):
  """A problem the user can fix (bad config, missing input, workdir clash).

  The CLI prints its message as one ``ERROR:`` line, without a traceback.
  """


class ConfigError(UserError, ValueError):
  """Unknown keys, wrong types or invalid values; names every key."""


class ResumeError(UserError):
  """The workdir holds a run of another config (names the differing keys)."""


class MissingInputError(UserError, FileNotFoundError):
  """A checkpoint or saved adapters are missing; says how to get them."""


class WorkdirError(UserError):
  """The workdir cannot be used (a file, not writable); names the path."""


class Interrupted(Exception):
  """The job stopped on SIGINT/SIGTERM after saving its finished episodes.

  Attributes:
    signum: the signal received.
    done: episodes (or ``unit``) finished and saved (including earlier
      runs).
    total: episodes of the job.
    exit_code: 128 + signum (130 for SIGINT, 143 for SIGTERM).
  """

  def __init__(self, signum: int, done: int | None, total: int | None,
               unit: str = "episodes"):
    self.signum, self.done, self.total = signum, done, total
    self.exit_code = 128 + signum
    where = ("while starting" if done is None
             else f"after {done}/{total} {unit}")
    super().__init__(f"Interrupted {where}; rerun the same command to "
                     "resume.")
