r"""Command line: fine-tune and evaluate a config's episodes into a workdir.

  python -m jaxfsl.main --config configs/episodic/chestx.py --config.shot=5 \
      --workdir ~/runs/chestx_5shot
  python -m jaxfsl.main --config configs/episodic/demo.py --workdir /tmp/demo

Any config key can be overridden with ``--config.KEY=VALUE`` (see
``configs/base.py``). Rerunning the same command resumes an interrupted
job (and refuses a workdir holding a run of another config, naming the
differing keys); ``--restart`` discards the workdir's previous run and
starts over, so leave it out of a command you rerun to resume.
``--config.eval_only=True`` re-evaluates the adapters saved by a
``--config.save_adapters=True`` run. Set ``JAXFSL_MULTIHOST=1`` (or
``--config.multihost=True``) on every host of a multi-host job.

This module only parses flags and sets up logging; the job is
``jaxfsl.protocols.episodic.runner.run``.
"""

from __future__ import annotations

import logging as py_logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Job config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder of the job.")
_RESTART = flags.DEFINE_bool(
    "restart", False, "Discard a previous run in --workdir and start over "
    "(needed when its config differs).")

_OVERRIDE = re.compile(r"^--config\.([A-Za-z0-9_.]+)(=.*)?$")


def _config_path(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def check_override_keys(argv: Sequence[str]) -> None:
  """Names an unknown ``--config.KEY`` before ml_collections' traceback.

  Raises:
    jaxfsl.protocols.episodic.runner.ConfigError: naming the key and the known ones.
  """
  from jaxfsl.protocols.episodic import runner as experiment

  path = _config_path(argv)
  overrides = [m.group(1) for m in map(_OVERRIDE.match, argv) if m]
  if not path or not overrides:
    return
  config = experiment.load_config(path)
  for key in overrides:
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
      known = list(node.keys()) if hasattr(node, "keys") else []
      if part not in known:
        where = ".".join(parts[:depth]) or "the config"
        raise experiment.ConfigError(
            f"unknown config key {key!r} (--config.{key}): {where} has no "
            f"{part!r}; known keys there: {sorted(known)}")
      node = node[part]


def _parse_flags(argv: list[str]) -> list[str]:
  from jaxfsl.protocols.episodic import runner as experiment

  try:
    check_override_keys(argv)
    return flags.FLAGS(argv)
  except experiment.ConfigError as e:
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    # ml_collections' type errors: "flag --config.shot=abc: invalid literal".
    print(f"ERROR: {e}\nPass --helpfull to see the flags.", file=sys.stderr)
    sys.exit(2)


class _QuietLibraries(py_logging.Filter):
  """Drops Orbax's INFO chatter (dozens of lines per save) from the log."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return (record.levelno >= py_logging.WARNING
            or "/orbax/" not in record.pathname)


def _setup_logging(workdir: Path) -> py_logging.Handler:
  workdir.mkdir(parents=True, exist_ok=True)
  handler = py_logging.FileHandler(workdir / "log.txt")
  handler.setFormatter(py_logging.Formatter(
      "%(asctime)s %(levelname)s %(message)s"))
  handler.addFilter(_QuietLibraries())
  logging.get_absl_logger().addHandler(handler)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  return handler


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxfsl.checkpoints import CheckpointError
  from jaxfsl.data import DataError
  from jaxfsl.protocols.episodic import runner as experiment

  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  workdir = Path(_WORKDIR.value).expanduser()
  from jaxfsl import distributed

  # Before anything creates a JAX backend; only process 0 writes log.txt.
  distributed.initialize(_CONFIG.value.multihost)
  log_file = (_setup_logging(workdir) if distributed.is_main_process()
              else py_logging.NullHandler())
  logging.info("jaxfsl.main %s", " ".join(sys.argv[1:]))
  try:
    restart = _RESTART.value or _CONFIG.value.restart
    if _CONFIG.value.get("seeds"):
      # One sub-job per seed in WORKDIR/seed_<s>, then a seeds summary.
      from jaxfsl.protocols.episodic import seeds

      seeds.run_seeds(_CONFIG.value, workdir, restart=restart)
    else:
      experiment.run(_CONFIG.value, workdir, restart=restart)
  except (experiment.UserError, DataError, CheckpointError,
          FileNotFoundError) as e:
    # Problems the user can fix: the message, no traceback (on stderr once,
    # and in log.txt).
    print(f"ERROR: {e}", file=sys.stderr)
    log_file.emit(py_logging.LogRecord(
        "jaxfsl", py_logging.ERROR, __file__, 0, "%s: %s",
        (type(e).__name__, e), None))
    return 1
  return 0


def run() -> None:
  """Console entry point."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
