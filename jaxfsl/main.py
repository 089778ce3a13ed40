r"""Command line: run a config's job into a workdir (``jaxfsl-run``).

  jaxfsl-run --config configs/episodic/chestx.py --config.shot=5 \
      --workdir ~/runs/chestx_5shot
  python -m jaxfsl.main --config configs/episodic/demo.py --workdir /tmp/demo
  jaxfsl-run --help --config episodic/isic.py   # every key, default, comment

``--config`` takes a config file, found as given or among the configs
shipped with jaxfsl (``episodic/isic.py`` works from any directory). Any
config key can be overridden with ``--config.KEY=VALUE`` (see
``jaxfsl/configs/base.py``). Rerunning the same command resumes an
interrupted job (and refuses a workdir holding a run of another config,
naming the differing keys); ``--restart`` discards the workdir's previous
run and starts over, so leave it out of a command you rerun to resume.
``--config.eval_only=True`` re-evaluates the adapters saved by a
``--config.save_adapters=True`` run. ``--config.seeds=1,2,3`` runs one
resumable job per seed in ``WORKDIR/seed_<s>``. Ctrl-C (SIGINT) or SIGTERM
stops after the batch in progress, saved; a second one stops at once. Set
``JAXFSL_MULTIHOST=1`` (or ``--config.multihost=True``) on every host of a
multi-host job.

Inputs are checked before anything is written: a bad config, config file,
workdir or a missing ``model.checkpoint`` / ``model.tokenizer`` is an
``ERROR:`` message (exit status 2 for the command line and config, 1 for
missing inputs), with nothing created; problems found later (e.g. a dataset
not prepared) exit with 1 after the job wrote its log.txt.

This module parses flags, checks inputs, sets up logging and dispatches on
``config.protocol`` (``PROTOCOLS``: "episodic" ->
``jaxfsl.protocols.episodic.runner``; "fewshot" -> its runner where that
protocol is installed), each protocol validating its own config.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging as py_logging
import os
import re
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from jaxfsl import distributed
from jaxfsl.paths import user_path
from jaxfsl.protocols.episodic import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Job config file: a path, or a config shipped with jaxfsl "
    "(e.g. episodic/isic.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder of the job.")
_RESTART = flags.DEFINE_bool(
    "restart", False, "Discard a previous run in --workdir and start over "
    "(needed when its config differs).")

_OVERRIDE = re.compile(r"^--config\.([A-Za-z0-9_.]+)(=.*)?$")
_HELP = ("--help", "-h", "--helpshort", "--helpfull", "-?")
USAGE = ("usage: jaxfsl-run --config FILE --workdir DIR [--config.KEY=VALUE "
         "...] [--restart]\n       (same as python -m jaxfsl.main ...)")


def _config_arg(argv: Sequence[str]) -> tuple[int, str] | None:
  """(position, value) of ``--config``'s value in argv."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return i, arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return i + 1, argv[i + 1]
  return None


def resolve_config_arg(argv: list[str]) -> list[str]:
  """argv with ``--config``'s file made absolute (found as given or among
  the shipped configs; a ``:arg`` suffix is kept).

  Raises:
    jaxfsl.protocols.episodic.config.ConfigError: no such file.
  """
  found = _config_arg(argv)
  if found is None:
    return argv
  pos, value = found
  path, arg = value, None
  if ":" in value and not user_path(value).exists():
    path, arg = value.rsplit(":", 1)
  file = str(config_lib.find_config(path)) + (f":{arg}" if arg else "")
  argv = list(argv)
  argv[pos] = f"--config={file}" if argv[pos].startswith("--config=") else file
  return argv


def check_override_keys(argv: Sequence[str]) -> None:
  """Names an unknown ``--config.KEY`` before ml_collections' traceback.

  Raises:
    jaxfsl.protocols.episodic.config.ConfigError: naming the key and the
      known ones.
  """
  found = _config_arg(argv)
  overrides = [m.group(1) for m in map(_OVERRIDE.match, argv) if m]
  if not found or not overrides:
    return
  config = config_lib.load_config(found[1])
  for key in overrides:
    if key in config_lib.RENAMED_KEYS:
      raise config_lib.ConfigError(config_lib.renamed_key_message(key))
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
      known = list(node.keys()) if hasattr(node, "keys") else []
      if part not in known:
        where = ".".join(parts[:depth]) or "the config"
        raise config_lib.ConfigError(
            f"unknown config key {key!r} (--config.{key}): {where} has no "
            f"{part!r}; known keys there: {sorted(known)}")
      node = node[part]


_ASSIGN = re.compile(r"^\s*config\.([\w.]+)\s*=\s*(.*)$")
_INLINE = re.compile(r"\s#\s?(.*)$")


def key_comments(source: str | None = None) -> dict[str, str]:
  """{key or section: its comment} from base.py's source: the comment lines
  just above an assignment, and the one at the end of its line."""
  text = config_lib.BASE_FILE.read_text() if source is None else source
  comments: dict[str, str] = {}
  pending: list[str] = []
  for line in text.splitlines():
    stripped = line.strip()
    if stripped.startswith("#"):
      pending.append(stripped.lstrip("#").strip())
      continue
    match = _ASSIGN.match(line)
    if match:
      inline = _INLINE.search(match.group(2))
      parts = pending + ([inline.group(1)] if inline else [])
      if parts:
        comments[match.group(1)] = " ".join(parts)
    pending = []
  return comments


def describe_keys(config: ml_collections.ConfigDict | None = None) -> str:
  """Every key: value (and base.py's default where it differs), comment.

  Args:
    config: a loaded config (default: base.py's).
  """
  base = config_lib.flatten(config_lib.default_config())
  given = base if config is None else config_lib.flatten(config)
  comments = key_comments()
  lines = ["Config keys (override with --config.KEY=VALUE; defaults and "
           f"comments from {config_lib.BASE_FILE}):"]
  section = None
  for key, value in given.items():
    parent = key.rsplit(".", 1)[0] if "." in key else None
    if parent != section and parent is not None:
      if parent in comments:
        lines.append(f"  # {parent}: {comments[parent]}")
      section = parent
    default = base.get(key, "<not in base.py>")
    extra = "" if value == default else f"  (default {default!r})"
    lines.append(f"  {key} = {value!r}{extra}")
    if key in comments:
      lines.append(f"      {comments[key]}")
  return "\n".join(lines)


def help_text(argv: Sequence[str]) -> str:
  """``--help``: usage, the flags, and with ``--config`` every key."""
  lines = [USAGE, "", (__doc__ or "").split("\n\n")[0].strip(), "",
           "Flags:",
           "  --config FILE     the job config: a path, or a shipped "
           "config (episodic/isic.py)",
           "  --workdir DIR     output folder of the job",
           "  --restart         discard a previous run in --workdir",
           "  --config.KEY=VALUE  override a config key", ""]
  found = _config_arg(argv)
  config = config_lib.load_config(found[1]) if found else None
  if config is None:
    lines.append("Pass --config FILE with --help to list its keys; the keys "
                 "and defaults of jaxfsl/configs/base.py:")
  lines.append(describe_keys(config))
  return "\n".join(lines)


def _fail(message: str, status: int = 2) -> None:
  print(f"ERROR: {message}", file=sys.stderr)
  sys.exit(status)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    argv = resolve_config_arg(argv)
    if any(a in _HELP for a in argv[1:]):
      print(help_text(argv))
      sys.exit(0)
    found = _config_arg(argv)
    if found:
      # ml_collections' own loading shows a bad file as a traceback (or, for
      # get_config() returning 3, as an error much later): load it here
      # first so that each problem is one ERROR line naming the file.
      config_lib.load_config(found[1])
    check_override_keys(argv)
    return flags.FLAGS(argv)
  except config_lib.ConfigError as e:
    _fail(str(e))
  except flags.Error as e:
    # ml_collections' type errors: "flag --config.shot=abc: invalid literal".
    _fail(f"{e}\nPass --help --config FILE to see the config keys.")
  return argv  # Not reached.


def check_workdir(value: str | None) -> Path:
  """The workdir as a usable path, created (after the config was checked).

  Raises:
    config_lib.WorkdirError: it is a file, or cannot be created or written
      (names the path and what to do).
  """
  if not value:
    raise config_lib.WorkdirError("--workdir is required (the job's output "
                                  "folder)")
  workdir = user_path(value)
  if workdir.exists() and not workdir.is_dir():
    raise config_lib.WorkdirError(
        f"--workdir {workdir} is an existing file, not a folder; pass a "
        "folder (it is created if absent)")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise config_lib.WorkdirError(
        f"--workdir {workdir} is not writable ({e.strerror}); pass a folder "
        "you can write to") from e
  return workdir


class _QuietLibraries(py_logging.Filter):
  """Drops Orbax's INFO chatter (dozens of lines per save) from the log."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return (record.levelno >= py_logging.WARNING
            or "/orbax/" not in record.pathname)


def _setup_logging(workdir: Path) -> py_logging.Handler:
  handler = py_logging.FileHandler(workdir / "log.txt")
  handler.setFormatter(py_logging.Formatter(
      "%(asctime)s %(levelname)s %(message)s"))
  handler.addFilter(_QuietLibraries())
  logging.get_absl_logger().addHandler(handler)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  return handler


def _log_error(handler: py_logging.Handler, e: BaseException) -> None:
  handler.emit(py_logging.LogRecord(
      "jaxfsl", py_logging.ERROR, __file__, 0, "%s: %s",
      (type(e).__name__, e), None))


def _log_record(handler: py_logging.Handler, e: BaseException,
                level: int) -> None:
  """``e``'s message in log.txt only (the caller prints it on stderr)."""
  handler.emit(py_logging.LogRecord("jaxfsl", level, __file__, 0, "%s",
                                    (e,), None))


# config.protocol -> the module that runs it: ``validate(config)`` (raises
# naming every bad key), optionally ``check_inputs(config)`` (raises
# MissingInputError for an input path that does not exist; called before the
# workdir is created or written) and ``run(config, workdir)``
# (``config.restart`` discards a previous run).
PROTOCOLS = {
    "episodic": "jaxfsl.protocols.episodic.runner",
    "fewshot": "jaxfsl.protocols.fewshot.runner",
}


def protocol_module(config: ml_collections.ConfigDict) -> Any:
  """The module running ``config.protocol``.

  Raises:
    config_lib.ConfigError: an unknown protocol, or one this installation
      lacks.
  """
  name = config.get("protocol", "episodic")
  target = PROTOCOLS.get(name)
  try:
    found = target is not None and importlib.util.find_spec(target)
  except ModuleNotFoundError:
    found = False
  if not found:
    available = [p for p, t in PROTOCOLS.items() if _has_module(t)]
    raise config_lib.ConfigError(
        f"config key 'protocol' is {name!r}; this jaxfsl runs "
        f"{available} (configs/episodic/*.py set 'episodic')")
  return importlib.import_module(target)


def _has_module(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:
    return False


def main(argv: Sequence[str]) -> int:
  """Runs the job of ``--config`` in ``--workdir``; returns the exit status.

  0 done; 1 a problem the user can fix, found while running (one ``ERROR:``
  line); 2 bad command line / config / workdir (nothing was created);
  128 + signal number when SIGINT/SIGTERM stopped it (progress saved).
  """
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}\n{USAGE}")
  if _CONFIG.value is None:
    _fail(f"--config is required\n{USAGE}")
  config = _CONFIG.value
  try:
    module = protocol_module(config)
    module.validate(config)
    # Input files given by path (model.checkpoint, ...): a job they reject
    # leaves the workdir as it found it (no log.txt, config.json, cache).
    if hasattr(module, "check_inputs"):
      module.check_inputs(config)
    # Before anything starts a JAX backend. Process 0 alone creates and
    # checks the workdir; the other processes of a multi-host job use it.
    distributed.initialize(config.get("multihost", False))
    with distributed.main_process_first("workdir"):
      workdir = (check_workdir(_WORKDIR.value)
                 if distributed.is_main_process()
                 else user_path(_WORKDIR.value))
    seeds = bool(config.get("seeds", ""))
  except config_lib.MissingInputError as e:
    _fail(str(e), 1)
  except (config_lib.UserError, ValueError, AttributeError, KeyError) as e:
    # A config's problems, named by the protocol's own validation.
    _fail(str(e))
  if _RESTART.value:
    config.restart = True

  from jaxfsl.checkpoints import CheckpointError
  from jaxfsl.data import DataError
  from jaxfsl.io.runstate import StateError

  log_file = (_setup_logging(workdir) if distributed.is_main_process()
              else py_logging.NullHandler())
  logging.info("jaxfsl.main %s", " ".join(sys.argv[1:]))
  try:
    if seeds and config.protocol == "episodic":
      # One resumable sub-job per seed in WORKDIR/seed_<s>, then the seeds
      # summary (seeds.json, summary.md).
      from jaxfsl.protocols.episodic import seeds as seeds_lib

      seeds_lib.run_seeds(config, workdir)
    else:
      module.run(config, workdir)
  except (config_lib.UserError, DataError, CheckpointError, StateError,
          FileNotFoundError, FloatingPointError) as e:
    # Problems the user can fix: the message, no traceback (on stderr once,
    # and in log.txt).
    print(f"ERROR: {e}", file=sys.stderr)
    _log_error(log_file, e)
    return 1
  except config_lib.Interrupted as e:
    # Once on stderr (absl's warning would print it a second time there),
    # and in log.txt.
    print(str(e), file=sys.stderr)
    _log_record(log_file, e, py_logging.WARNING)
    return e.exit_code
  return 0


def _main_or_exit(argv: Sequence[str]) -> None:
  try:
    status = main(argv)
  except KeyboardInterrupt:
    # Ctrl-C outside the job's own handling (while starting or loading):
    # nothing was computed yet.
    print("Interrupted while starting; rerun the same command to start "
          "again.", file=sys.stderr)
    status = 128 + signal.SIGINT
  sys.exit(status)


def run() -> None:
  """Console entry point (``jaxfsl-run``)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(_main_or_exit, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
