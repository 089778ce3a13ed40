"""Job configs of the episodic protocol: finding, loading, checking, resolving.

``jaxfsl/configs/base.py`` is the one home of defaults (every key, with a
comment) and therefore the schema: a job config must have exactly its keys,
with its types. Values are checked in two places only:

* the keys of the engine's dataclasses (``method.*``, ``lora.*``,
  ``optim.*``, ``logit_scale``...) by the dataclasses themselves, which this
  module builds from the ConfigDict (``engine_config``);
* the job-level keys (protocol, trainable, way/shot/query, episodes, steps,
  seeds, dataset, model) by ``job_problems`` below.

Every problem of a config is reported in one ``ConfigError`` (not only the
first). Nothing here imports JAX at module load: the CLI checks its inputs
before anything slow starts and before anything is written.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jaxfsl import configs as _configs_pkg
from jaxfsl.paths import user_path

ConfigDict = ml_collections.ConfigDict

# The config files shipped with jaxfsl (``configs`` in a clone is a link to
# it): config names resolve here too, so ``--config episodic/isic.py`` works
# from any directory, and from an installed wheel.
CONFIG_DIR = Path(_configs_pkg.__file__).resolve().parent
BASE_FILE = CONFIG_DIR / "base.py"

DTYPES = ("float32", "bfloat16", "float16")
# Keys that change how a job runs but not its results: a workdir may be
# resumed with other values. ``epochs`` is replaced by the resolved ``steps``.
RUN_ONLY_KEYS = (
    "episodes", "episodes_per_batch", "save_adapters", "eval_only", "restart",
    "jax_cache_dir", "multihost", "epochs", "seeds", "dataset.data_dir",
    "dataset.num_workers", "dataset.prefetch", "dataset.prepare_synthetic",
)
# Config keys holding a user path: each goes through ``jaxfsl.paths.user_path``
# (``~`` and ``$VARS``) where it is used.
PATH_KEYS = ("model.checkpoint", "model.tokenizer", "dataset.data_dir",
             "jax_cache_dir")


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
    done: episodes finished and saved (including earlier runs).
    total: episodes of the job.
    exit_code: 128 + signum (130 for SIGINT, 143 for SIGTERM).
  """

  def __init__(self, signum: int, done: int | None, total: int | None):
    self.signum, self.done, self.total = signum, done, total
    self.exit_code = 128 + signum
    where = ("while starting" if done is None
             else f"after {done}/{total} episodes")
    super().__init__(f"Interrupted {where}; rerun the same command to "
                     "resume.")


# ---------------------------------------------------------------------------
# Finding and loading config files.
# ---------------------------------------------------------------------------


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
    ConfigError: the file does not exist or has no ``get_config``.
  """
  path = str(path)
  if arg is None and ":" in path and not user_path(path).exists():
    path, arg = path.rsplit(":", 1)
  file = find_config(path)
  spec = importlib.util.spec_from_file_location(
      f"jaxfsl_config_{file.stem}_{abs(hash(str(file)))}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {str(file)!r} has no get_config()")
  return module.get_config(arg) if arg else module.get_config()


def default_config() -> ConfigDict:
  """Every key with its type and default: ``jaxfsl/configs/base.py``."""
  from jaxfsl.configs import base

  return base.get_config()


# ---------------------------------------------------------------------------
# The schema: keys and types (from base.py).
# ---------------------------------------------------------------------------


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"method.variant": "svl_ra", ...}`` from a nested config."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, (Mapping, ConfigDict)):
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def _type_problem(key: str, value: Any, default: Any) -> str | None:
  expected = type(default)
  if expected is bool:
    ok = isinstance(value, (bool, np.bool_))
  elif expected is int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
  elif expected is float:
    ok = (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, bool))
  elif expected is tuple:
    ok = (isinstance(value, (tuple, list))
          and all(isinstance(v, str) for v in value))
  else:
    ok = isinstance(value, expected)
  if ok:
    return None
  return (f"config key {key!r} must be a {expected.__name__} (like "
          f"{default!r}), got {type(value).__name__} {value!r}")


def schema_problems(config: ConfigDict) -> list[str]:
  """Unknown keys, missing keys and wrong types, against base.py."""
  schema = flatten(default_config())
  given = flatten(config)
  problems = []
  unknown = sorted(set(given) - set(schema))
  if unknown:
    problems.append(f"unknown config key(s) {unknown}; see "
                    "jaxfsl/configs/base.py (or --help) for the keys "
                    "jaxfsl knows")
  missing = sorted(set(schema) - set(given))
  if missing:
    problems.append(f"config lacks key(s) {missing}; build configs on "
                    "jaxfsl/configs/base.py's get_config()")
  for key, default in schema.items():
    if key in given:
      problem = _type_problem(key, given[key], default)
      if problem:
        problems.append(problem)
  return problems


# ---------------------------------------------------------------------------
# Job-level keys: the one place their values are checked.
# ---------------------------------------------------------------------------


def job_problems(config: ConfigDict) -> list[str]:
  """Every problem of the job-level keys (not the dataclasses' keys)."""
  c = config
  problems = []

  def need(ok: bool, key: str, expected: str) -> None:
    if not ok:
      value = c
      for part in key.split("."):
        value = value[part]
      problems.append(f"config key {key!r} is {value!r}; expected {expected}")

  if c.protocol != "episodic":
    problems.append(f"config key 'protocol' is {c.protocol!r}; this is the "
                    "episodic job ('episodic'); jaxfsl-run dispatches each "
                    "protocol to its own runner")
  from jaxfsl.trainables import available  # The registry.

  if c.trainable not in available():
    problems.append(f"config key 'trainable' is {c.trainable!r}; expected "
                    f"one of {available()}")
  elif c.trainable != "lora":
    from jaxfsl.trainables import get_trainable

    try:  # The block's own dataclass checks its keys and values.
      get_trainable(c.trainable, c[c.trainable].to_dict())
    except (ValueError, TypeError) as e:
      problems.append(str(e))
  if c.seeds:
    from jaxfsl.protocols.episodic import seeds  # Imports the runner (JAX).

    try:
      seeds.parse_seeds(c.seeds)
    except ConfigError as e:
      problems.append(f"config key 'seeds': {e}")
  # A 1-way episode is trivially 100% accurate: at least 2 classes.
  need(c.way >= 2, "way", ">= 2")
  for key in ("shot", "query", "epochs"):
    need(c[key] >= 1, key, ">= 1")
  need(c.episodes_per_batch >= 1 or c.episodes_per_batch == -1,
       "episodes_per_batch", ">= 1 (or -1: auto, the largest batch that "
       "fits the device memory)")
  need(c.episodes >= 1 or c.episodes == -1, "episodes",
       ">= 1 (or -1: 800 for 1-shot, 400 otherwise)")
  need(c.steps >= 1 or c.steps == -1, "steps", ">= 1 (or -1: epochs * shot)")
  need(c.seed >= 0, "seed", ">= 0")
  need(c.prompt.count("{}") == 1, "prompt",
       "a template with '{}' exactly once (the class name)")
  need(c.compute_dtype in DTYPES, "compute_dtype", f"one of {DTYPES}")
  if c.eval_only and c.restart:
    problems.append("'eval_only' and 'restart' exclude each other: "
                    "eval_only re-evaluates the adapters a run saved")

  m = c.model
  if bool(m.checkpoint) == bool(m.init):
    problems.append(
        "set exactly one of 'model.checkpoint' (a pretrained checkpoint) and "
        "'model.init' (a random-init preset), got checkpoint="
        f"{m.checkpoint!r}, init={m.init!r}; e.g. --config.model.checkpoint="
        "'' --config.model.init=tiny-clip")
  if m.init:
    from jaxfsl.models.config import PRESETS  # No JAX: plain dataclasses.

    need(m.init in PRESETS, "model.init", f"one of {sorted(PRESETS)}")
    if m.tokenizer:
      problems.append("config key 'model.tokenizer' only applies to "
                      "checkpoints; random-init models use a byte tokenizer")
  else:
    for key in ("image_size", "vision_depth"):
      if m[key]:
        problems.append(f"config key 'model.{key}' only applies to a "
                        "random-init model ('model.init')")
  need(m.image_size >= 0, "model.image_size", ">= 0")
  need(m.vision_depth >= 0, "model.vision_depth", ">= 0")

  d = c.dataset
  from jaxfsl.data import DATASET_NAMES  # Heavy (TFDS): import when needed.

  if not d.name:
    problems.append("config key 'dataset.name' is empty; expected one of "
                    f"{DATASET_NAMES} (configs/episodic/*.py set it)")
  else:
    need(d.name.partition("/")[0] in DATASET_NAMES, "dataset.name",
         f"one of {DATASET_NAMES} (image_folder/<name> for your own data)")
  need(d.num_workers >= 0, "dataset.num_workers", ">= 0")
  need(d.prefetch >= 1, "dataset.prefetch", ">= 1")
  for key in ("num_classes", "images_per_class"):
    need(d.synthetic[key] >= 1, f"dataset.synthetic.{key}", ">= 1")
  need(d.synthetic.image_size >= 8, "dataset.synthetic.image_size", ">= 8")
  need(d.synthetic.seed >= 0, "dataset.synthetic.seed", ">= 0")
  return problems


# ---------------------------------------------------------------------------
# The engine's dataclasses: built here, checked by themselves.
# ---------------------------------------------------------------------------


def parse_targets(targets: Sequence[str]) -> tuple[str, ...]:
  """``lora.targets``: ('q', 'v') or ('q,v',) (how a flag may give it)."""
  out = []
  for t in targets:
    out += [p.strip() for p in str(t).split(",") if p.strip()]
  return tuple(out)


def parse_blocks(blocks: str) -> str | tuple[int, ...]:
  """``lora.blocks``: a preset name (kept as is), or "0,1,2" -> (0, 1, 2).

  A string that is neither is passed on for ``LoraConfig`` to refuse.
  """
  blocks = blocks.strip()
  if re.fullmatch(r"\d+(\s*,\s*\d+)*\s*,?", blocks):
    return tuple(int(b) for b in blocks.split(",") if b.strip())
  return blocks


def total_steps(config: ConfigDict) -> int:
  """T: ``steps`` when set, else the release's ``epochs * shot``."""
  if config.steps != -1:
    return int(config.steps)
  return int(config.epochs) * int(config.shot)


def _section_error(section: str, error: ValueError) -> str:
  # The dataclasses name their fields; say which config section they are.
  msg = str(error)
  return msg if msg.startswith(f"{section}.") else f"{section}: {msg}"


def engine_config(config: ConfigDict) -> Any:
  """The engine's static config (``EngineConfig``) from a job config.

  ``MethodConfig``, ``LoraConfig`` and ``OptimConfig`` are built from the
  ``method``, ``lora`` and ``optim`` sections key for key, and check their
  own values; ``steps=-1`` is taken as ``epochs * shot``.

  Raises:
    ConfigError: every section the dataclasses refused, each message naming
      the section and key.
  """
  from jaxfsl.method.objective import MethodConfig
  from jaxfsl.optim import OptimConfig
  from jaxfsl.protocols.episodic.engine_config import EngineConfig
  from jaxfsl.trainables.lora import LoraConfig

  c = config
  problems = []
  parts: dict[str, Any] = {}
  builders = {
      "method": lambda: MethodConfig(**c.method.to_dict()),
      "optim": lambda: OptimConfig(**c.optim.to_dict()),
      "lora": lambda: LoraConfig(
          rank=c.lora.rank, alpha=float(c.lora.alpha),
          dropout=float(c.lora.dropout),
          targets=parse_targets(c.lora.targets), towers=c.lora.towers,
          blocks=parse_blocks(c.lora.blocks),
          dropout_masks=c.lora.dropout_masks),
  }
  for section, build in builders.items():
    try:
      parts[section] = build()
    except (ValueError, TypeError) as e:
      problems.append(_section_error(section, e))
  if problems:
    raise ConfigError("\n".join(problems))
  block = None
  if c.trainable != "lora" and c.trainable in c:
    block = c[c.trainable].to_dict()  # coop.* / maple.*, checked when built.
  try:
    return EngineConfig(
        way=c.way, shot=c.shot, query=c.query, steps=total_steps(c),
        trainable=c.trainable, trainable_config=block,
        logit_scale=("checkpoint" if c.use_checkpoint_logit_scale
                     else float(c.logit_scale)),
        remat=c.remat, skip_clean_pass_in_stage2=c.skip_clean_pass_in_stage2,
        **parts)
  except (ValueError, TypeError) as e:
    raise ConfigError(str(e)) from e


def validate(config: ConfigDict) -> None:
  """Checks keys, types and values; lists every problem found.

  Raises:
    ConfigError: one line per problem, each naming its key.
  """
  problems = schema_problems(config)
  if problems:  # Values of unknown or mistyped keys cannot be checked.
    raise ConfigError("\n".join(problems))
  problems = job_problems(config)
  try:
    engine_config(config)
  except ConfigError as e:
    problems.append(str(e))
  if problems:
    raise ConfigError("\n".join(problems))


def default_episodes(shot: int) -> int:
  """The benchmark's episode count: 800 for 1-shot, 400 otherwise."""
  return 800 if shot == 1 else 400


def round_up_batch(episodes_per_batch: int, num_devices: int) -> int:
  """The smallest multiple of the device count >= episodes_per_batch."""
  return int(math.ceil(episodes_per_batch / num_devices) * num_devices)


def resolve(config: ConfigDict, num_devices: int | None = None) -> ConfigDict:
  """A validated, resolved, locked copy of ``config``.

  ``episodes=-1`` becomes 800 (1-shot) or 400; ``steps=-1`` becomes
  ``epochs * shot``; ``episodes_per_batch`` is rounded up to a multiple of
  the device count (every device gets the same number of episodes, a
  warning says so); ``lora.targets`` is normalised to a tuple of names.

  Args:
    config: a job config.
    num_devices: default ``jax.device_count()``.

  Raises:
    ConfigError: see ``validate``.
  """
  validate(config)
  c = ConfigDict(config.to_dict())
  if c.episodes == -1:
    c.episodes = default_episodes(c.shot)
  c.steps = total_steps(c)
  if num_devices is None:
    import jax

    num_devices = jax.device_count()
  # -1 (auto) is resolved by the runner once the model is built.
  rounded = (c.episodes_per_batch if c.episodes_per_batch == -1 else
             round_up_batch(c.episodes_per_batch, num_devices))
  if rounded != c.episodes_per_batch:
    from absl import logging

    logging.warning("episodes_per_batch=%d is not a multiple of the %d "
                    "devices; using %d", c.episodes_per_batch, num_devices,
                    rounded)
    c.episodes_per_batch = rounded
  c.lora.targets = parse_targets(c.lora.targets)
  c.lock()
  return c


def t_source(config: ConfigDict) -> str:
  """Which key set T, for the config dump (``config`` as given)."""
  if config.steps != -1:
    return f"T = {config.steps} steps, set by 'steps' ('epochs' is unused)"
  return (f"T = epochs * shot = {config.epochs} * {config.shot} = "
          f"{total_steps(config)} steps, set by 'epochs' (steps=-1)")


def fingerprint(config: ConfigDict) -> dict[str, Any]:
  """The keys that determine a job's results, flat and JSON-normalised."""
  keep = {k: v for k, v in flatten(config).items() if k not in RUN_ONLY_KEYS}
  return json.loads(json.dumps(keep, sort_keys=True, default=str))


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]
                ) -> list[str]:
  """``["shot: 1 -> 5", ...]`` for the keys whose values differ."""
  lines = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
    if a != b:
      lines.append(f"{key}: {a!r} -> {b!r}")
  return lines
