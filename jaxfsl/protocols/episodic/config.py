"""Job configs of the episodic protocol: checking and resolving.

Finding and loading config files is ``config_files``, the error types are
``errors``; both are re-exported here, the module the CLI and the runner
use as ``config_lib``.

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

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

# RENAMED_KEYS: {old: new} config keys; ``config_diff`` reads old as new.
from jaxfsl.configs.base import RENAMED_KEYS
from jaxfsl.protocols.episodic.config_files import (  # noqa: F401
  BASE_FILE,
  CONFIG_DIR,
  default_config,
  find_config,
  load_config,
  shipped_configs,
)
from jaxfsl.protocols.episodic.errors import (  # noqa: F401 - re-exported.
  ConfigError,
  Interrupted,
  MissingInputError,
  ResumeError,
  UserError,
  WorkdirError,
)
from jaxfsl.protocols.episodic.trainable_checks import (  # noqa: F401
  TRAINABLE_BLOCKS,  # Re-exported: config_lib.inert_keys etc. keep working.
  bind_problems,
  inert_keys,
  preset_model_config,
)

ConfigDict = ml_collections.ConfigDict

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


def renamed_key_message(key: str) -> str:
  """The error for a key of ``RENAMED_KEYS``, naming the new key."""
  new = RENAMED_KEYS[key]
  return (f"config key {key!r} was renamed to {new!r}: set "
          f"config.{new} in a config file, or pass --config.{new}=VALUE")


def schema_problems(config: ConfigDict) -> list[str]:
  """Unknown keys, missing keys and wrong types, against base.py."""
  schema = flatten(default_config())
  given = flatten(config)
  problems = []
  unknown = sorted(set(given) - set(schema))
  for key in [k for k in unknown if k in RENAMED_KEYS]:
    unknown.remove(key)
    problems.append(renamed_key_message(key))
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


# Job-level keys that shape the episodes, which ``EngineConfig`` checks again
# (more loosely: any count >= 1): {key: (ok(value), expected, a valid
# stand-in)}. ``validate`` gives the engine the stand-in of a bad one, so
# that each problem is reported once, in the job's words.
_SHAPE_CHECKS = {
    # A 1-way episode is trivially 100% accurate: at least 2 classes.
    "way": (lambda v: v >= 2, ">= 2", 2),
    "shot": (lambda v: v >= 1, ">= 1", 1),
    "query": (lambda v: v >= 1, ">= 1", 1),
    "epochs": (lambda v: v >= 1, ">= 1", 1),
    "steps": (lambda v: v >= 1 or v == -1, ">= 1 (or -1: epochs * shot)", 1),
}


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
      trainable = get_trainable(c.trainable, c[c.trainable].to_dict())
    except (ValueError, TypeError) as e:
      problems.append(str(e))
    else:
      # Settings that do not fit the model (MaPLe's depth), reported before
      # anything is written when the model's config is known unbuilt.
      preset = preset_model_config(c.model)
      if preset is not None:
        misfits = trainable.model_problems(preset)
        if not misfits and c.prompt.count("{}") == 1:
          # Its tokenizer is known too: n_ctx / ctx_init against the text
          # context (the template is checked below).
          misfits = bind_problems(trainable, preset, c)
        problems += misfits
  if c.seeds:
    from jaxfsl.protocols.episodic import seeds  # Imports the runner (JAX).

    try:
      seeds.parse_seeds(c.seeds)
    except ConfigError as e:
      problems.append(f"config key 'seeds': {e}")
  for key, (ok, expected, _) in _SHAPE_CHECKS.items():
    need(ok(c[key]), key, expected)
  need(c.episodes_per_batch >= 1 or c.episodes_per_batch == -1,
       "episodes_per_batch", ">= 1 (or -1: auto, the largest batch that "
       "fits the device memory)")
  need(c.episodes >= 1 or c.episodes == -1, "episodes",
       ">= 1 (or -1: 800 for 1-shot, 400 otherwise)")
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
  problems += _episode_fits_problems(c)
  need(d.num_workers >= 0, "dataset.num_workers", ">= 0")
  need(d.prefetch >= 1, "dataset.prefetch", ">= 1")
  for key in ("num_classes", "images_per_class"):
    need(d.synthetic[key] >= 1, f"dataset.synthetic.{key}", ">= 1")
  need(d.synthetic.image_size >= 8, "dataset.synthetic.image_size", ">= 8")
  need(d.synthetic.seed >= 0, "dataset.synthetic.seed", ">= 0")
  return problems


def _episode_fits_problems(c: ConfigDict) -> list[str]:
  """An episode shape the dataset cannot give, where that is known from the
  config alone (before the synthetic data is generated or any data read):
  way against a fixed class list or ``dataset.synthetic.num_classes``, and
  shot + query against ``dataset.synthetic.images_per_class``."""
  from jaxfsl.data.classes import FIXED_CLASSES

  d, problems = c.dataset, []
  if d.name == "synthetic":
    s = d.synthetic
    if c.way > s.num_classes:
      problems.append(
          f"config key 'way' is {c.way}; the synthetic dataset has "
          f"dataset.synthetic.num_classes={s.num_classes} classes: expected "
          f"way <= {s.num_classes} (or raise dataset.synthetic.num_classes)")
    if c.shot + c.query > s.images_per_class:
      problems.append(
          f"config keys 'shot' + 'query' are {c.shot} + {c.query} = "
          f"{c.shot + c.query} images per class; the synthetic dataset has "
          f"dataset.synthetic.images_per_class={s.images_per_class}: expected"
          f" shot + query <= {s.images_per_class} (or raise "
          "dataset.synthetic.images_per_class)")
  elif d.name in FIXED_CLASSES and c.way > len(FIXED_CLASSES[d.name]):
    problems.append(
        f"config key 'way' is {c.way}; dataset {d.name!r} has "
        f"{len(FIXED_CLASSES[d.name])} classes: expected way <= "
        f"{len(FIXED_CLASSES[d.name])}")
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
    ConfigError: every section the dataclasses refused and the engine's own
      problems, in one pass, each message naming the section and key.
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
  stand_ins = {"method": MethodConfig, "optim": OptimConfig,
               "lora": LoraConfig}
  for section, build in builders.items():
    try:
      parts[section] = build()
    except (ValueError, TypeError) as e:
      problems.append(_section_error(section, e))
      # Reported; a default stands in so that the checks below still run.
      parts[section] = stand_ins[section]()
  block = None
  if c.trainable != "lora" and c.trainable in c:
    block = c[c.trainable].to_dict()  # coop.* / maple.*, checked when built.
  try:
    engine = EngineConfig(
        way=c.way, shot=c.shot, query=c.query, steps=total_steps(c),
        trainable=c.trainable, trainable_config=block, prompt=c.prompt,
        logit_scale=("checkpoint" if c.use_checkpoint_logit_scale
                     else float(c.logit_scale)),
        remat=c.remat,
        skip_clean_pass_outside_window=c.skip_clean_pass_outside_window,
        **parts)
  except (ValueError, TypeError) as e:
    problems.append(str(e))
  if problems:
    raise ConfigError("\n".join(problems))
  return engine


def validate(config: ConfigDict) -> None:
  """Checks keys, types and values; lists every problem found.

  Raises:
    ConfigError: one line per problem, each naming its key.
  """
  problems = schema_problems(config)
  if problems:  # Values of unknown or mistyped keys cannot be checked.
    raise ConfigError("\n".join(problems))
  problems = job_problems(config)
  bad = {k: stand_in for k, (ok, _, stand_in) in _SHAPE_CHECKS.items()
         if not ok(config[k])}
  checked = config
  if bad:  # Already reported: the engine checks the rest.
    checked = ConfigDict(config.to_dict())
    checked.update(bad)
    if "epochs" in bad and "steps" not in bad and config.steps == -1:
      checked.steps = 1
  try:
    engine_config(checked)
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
  """``["shot: 1 -> 5", ...]`` for the keys whose values differ.

  ``old`` may be a fingerprint saved before a key was renamed
  (``RENAMED_KEYS``): its old names count as the new ones.
  """
  old = {RENAMED_KEYS.get(k, k): v for k, v in old.items()}
  lines = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
    if a != b:
      lines.append(f"{key}: {a!r} -> {b!r}")
  return lines
