"""The job runner: a config in, a workdir of results out, resumable.

``jaxfsl.main`` (the CLI) is a thin shell over ``run``; scripts and notebooks
call it directly::

  config = experiment.load_config("configs/episodic/eurosat.py")
  config.shot = 5
  results = experiment.run(config, "/tmp/eurosat_5shot")

A job fine-tunes and evaluates ``episodes`` episodes, ``episodes_per_batch``
at a time (``jaxfsl.protocols.episodic.engine.EpisodeEngine.run_batch``), episode i being a
pure function of (seed, i): its data comes from ``jaxfsl.data.EpisodeSampler``
and its PRNG key from ``finetune.episode_keys``. After every batch the run
state (the raw results of the finished episodes, the config fingerprint and
the next episode index) is saved with Orbax (atomically: a step directory
appears complete or not at all), so rerunning a killed job continues where
it stopped and ends with exactly the results of an uninterrupted run.

Workdir layout::

  config.json         the resolved config of the last start
  log.txt             the log (written by the CLI)
  state/<n>/          Orbax run state after n finished episodes (last two)
  adapters/<i>/       with save_adapters: the final adapters of the batch
                      starting at episode i (Orbax)
  results.json, results.csv, summary.md, plots/*.png, tensorboard/
  eval_only/          the same reports from an ``eval_only`` run

Config keys: see ``default_config`` (the schema: every key, its type, the
release's value) and ``configs/base.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from jaxfsl import distributed
from jaxfsl.io import aggregate, reports
from jaxfsl.models.config import PRESETS
from jaxfsl.models.model import Model
from jaxfsl.protocols.episodic import engine as finetune
from jaxfsl.trainables.lora import BLOCK_PRESETS, LoraConfig

ConfigDict = ml_collections.ConfigDict

# Test-only hook: "point:n[,point:n...]" makes the runner SIGKILL itself the
# n-th time (1-based, counted in this process) it reaches ``point``. Points:
# in_batch (0.2 s into a batch's compute), after_compute (results on the host,
# nothing saved), after_adapters (adapters saved, state not), saving (while
# the state's asynchronous save is writing: once its temporary directory
# exists, or it finished), after_save (state on disk, before the next batch),
# before_reports.
KILL_ENV = "JAXFSL_TEST_KILL_AT"
# Set to 1 (or config.multihost=True) to call jax.distributed.initialize().
MULTIHOST_ENV = "JAXFSL_MULTIHOST"

DEMO_NOTE = ("PIPELINE CHECK ONLY: a random-init model on generated data. "
             "These accuracies say the pipeline runs end to end; they are not "
             "a result of the method.")

_DTYPES = ("float32", "bfloat16", "float16")
_STATE_ITEMS = ("meta", "outputs")
# Keys that change how a job runs but not its results: a workdir may be
# resumed with other values. ``epochs`` is replaced by the resolved ``steps``.
_RUN_ONLY_KEYS = (
    "episodes", "episodes_per_batch", "save_adapters", "eval_only", "restart",
    "jax_cache_dir", "multihost", "epochs", "dataset.data_dir",
    "dataset.num_workers", "dataset.prefetch", "dataset.prepare_synthetic",
)
# Outputs a restart removes (never the whole workdir: it may hold data).
_OUTPUTS = ("state", "adapters", "eval_only", "tensorboard", "plots",
            "results.json", "results.csv", "summary.md")


class UserError(Exception):
  """A problem the user can fix (bad config, missing input, workdir clash).

  The CLI prints its message without a traceback.
  """


class ConfigError(UserError, ValueError):
  """An unknown key, a wrong type or an invalid value; names the key."""


class ResumeError(UserError):
  """The workdir holds a run of another config (names the differing keys)."""


class MissingInputError(UserError, FileNotFoundError):
  """A checkpoint or saved adapters are missing; says how to get them."""


# ---------------------------------------------------------------------------
# Config: schema, loading, validation, resolution.
# ---------------------------------------------------------------------------


def default_config() -> ConfigDict:
  """Every config key with its type and default: ``jaxfsl/configs/base.py``
  (the one home of defaults) is the schema ``validate`` checks against."""
  from jaxfsl.configs import base

  return base.get_config()


def load_config(path: str | os.PathLike[str], arg: str | None = None
                ) -> ConfigDict:
  """Loads a config file's ``get_config()`` (``"file.py:arg"`` passes arg).

  Raises:
    ConfigError: the file does not exist or has no ``get_config``.
  """
  path = str(path)
  if arg is None and ":" in path and not os.path.exists(path):
    path, arg = path.rsplit(":", 1)
  file = Path(path).expanduser()
  if not file.is_file():
    raise ConfigError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(
      f"jaxfsl_config_{file.stem}_{abs(hash(str(file.resolve())))}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} has no get_config()")
  return module.get_config(arg) if arg else module.get_config()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, (Mapping, ConfigDict)):
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def _type_name(value: Any) -> str:
  return type(value).__name__


def _check_type(key: str, value: Any, default: Any) -> None:
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
  if not ok:
    raise ConfigError(
        f"config key {key!r} must be a {expected.__name__} (like "
        f"{default!r}), got {_type_name(value)} {value!r}")


def _in(key: str, value: Any, allowed: Sequence[Any]) -> None:
  if value not in allowed:
    raise ConfigError(f"config key {key!r} is {value!r}; expected one of "
                      f"{tuple(allowed)}")


def _at_least(key: str, value: Any, low: float, *, allow: Any = None) -> None:
  if value == allow and allow is not None:
    return
  if value < low:
    extra = f" (or {allow})" if allow is not None else ""
    raise ConfigError(f"config key {key!r} is {value!r}; expected >= "
                      f"{low}{extra}")


def _between(key: str, value: float, low: float, high: float,
             closed_high: bool = False) -> None:
  ok = low <= value <= high if closed_high else low <= value < high
  if not ok:
    bracket = "]" if closed_high else ")"
    raise ConfigError(f"config key {key!r} is {value!r}; expected a value in "
                      f"[{low}, {high}{bracket}")


def parse_blocks(blocks: str) -> str | tuple[int, ...]:
  """``lora.blocks``: a preset name, or comma-separated block indices."""
  blocks = blocks.strip()
  if blocks in BLOCK_PRESETS:
    return blocks
  try:
    indices = tuple(int(b) for b in blocks.split(",") if b.strip())
  except ValueError:
    indices = ()
  if not indices:
    raise ConfigError(
        f"config key 'lora.blocks' is {blocks!r}; expected one of "
        f"{BLOCK_PRESETS} or comma-separated block indices such as '0,1,2'")
  return indices


def parse_targets(targets: Sequence[str]) -> tuple[str, ...]:
  """``lora.targets``: ('q', 'v') or ('q,v',) (how a flag may give it)."""
  out = []
  for t in targets:
    out += [p.strip() for p in str(t).split(",") if p.strip()]
  return tuple(out)


def validate(config: ConfigDict) -> None:
  """Checks keys, types and values; raises ``ConfigError`` naming the key.

  Every key of ``default_config`` must be present (start new configs from
  ``configs/base.py``) and no other key may be.
  """
  schema = _flatten(default_config())
  given = _flatten(config)
  unknown = sorted(set(given) - set(schema))
  if unknown:
    raise ConfigError(
        f"unknown config key(s) {unknown}; see configs/base.py for the "
        "keys jaxfsl knows")
  missing = sorted(set(schema) - set(given))
  if missing:
    raise ConfigError(
        f"config lacks key(s) {missing}; build configs on "
        "configs/base.py's get_config()")
  for key, default in schema.items():
    _check_type(key, given[key], default)

  c = config
  for key in ("way", "shot", "query", "epochs", "episodes_per_batch"):
    _at_least(key, c[key], 1)
  _at_least("episodes", c.episodes, 1, allow=-1)
  _at_least("steps", c.steps, 1, allow=-1)
  _at_least("seed", c.seed, 0)
  if c.prompt.count("{}") != 1:
    raise ConfigError(f"config key 'prompt' is {c.prompt!r}; it must "
                      "contain '{}' exactly once (the class name)")

  m = c.model
  if bool(m.checkpoint) == bool(m.init):
    raise ConfigError(
        "set exactly one of 'model.checkpoint' (a pretrained checkpoint) and "
        "'model.init' (a random-init preset), got checkpoint="
        f"{m.checkpoint!r}, init={m.init!r}; e.g. --config.model.checkpoint="
        "'' --config.model.init=tiny-clip")
  if m.init:
    _in("model.init", m.init, sorted(PRESETS))
  else:
    for key in ("image_size", "vision_depth"):
      if m[key]:
        raise ConfigError(f"config key 'model.{key}' only applies to a "
                          "random-init model ('model.init')")
  if m.init and m.tokenizer:
    raise ConfigError("config key 'model.tokenizer' only applies to "
                      "checkpoints; random-init models use a byte tokenizer")
  _at_least("model.image_size", m.image_size, 0)
  _at_least("model.vision_depth", m.vision_depth, 0)

  d = c.dataset
  from jaxfsl.data import DATASET_NAMES  # Heavy (TFDS): import when needed.
  if not d.name:
    raise ConfigError("config key 'dataset.name' is empty; expected one of "
                      f"{DATASET_NAMES} (configs/<target>.py set it)")
  _in("dataset.name", d.name.partition("/")[0], DATASET_NAMES)
  _at_least("dataset.num_workers", d.num_workers, 0)
  _at_least("dataset.prefetch", d.prefetch, 1)
  for key in ("num_classes", "images_per_class"):
    _at_least(f"dataset.synthetic.{key}", d.synthetic[key], 1)
  _at_least("dataset.synthetic.image_size", d.synthetic.image_size, 8)
  _at_least("dataset.synthetic.seed", d.synthetic.seed, 0)

  me = c.method
  _in("method.variant", me.variant, finetune.VARIANTS)
  _in("method.timing", me.timing, ("begin", "last"))
  _in("method.relation_form", me.relation_form, ("release", "softmax_kl"))
  for key in ("anti_visual_weight", "relation_weight", "visual_weight"):
    _at_least(f"method.{key}", me[key], 0.0)
  if not 0.0 < me.stage1_fraction <= 1.0:
    raise ConfigError(f"config key 'method.stage1_fraction' is "
                      f"{me.stage1_fraction!r}; expected a value in (0, 1]")

  lo = c.lora
  _at_least("lora.rank", lo.rank, 1)
  if lo.alpha <= 0:
    raise ConfigError(f"config key 'lora.alpha' is {lo.alpha!r}; expected > 0")
  _between("lora.dropout", lo.dropout, 0.0, 1.0)
  targets = parse_targets(lo.targets)
  bad = [t for t in targets if t not in ("q", "k", "v", "o")]
  if bad or not targets:
    raise ConfigError(f"config key 'lora.targets' is {tuple(lo.targets)!r}; "
                      "expected a non-empty subset of ('q', 'k', 'v', 'o')")
  _in("lora.towers", lo.towers, ("vision", "text", "both"))
  parse_blocks(lo.blocks)

  o = c.optim
  for key in ("lr", "eps", "period_factor"):
    if o[key] <= 0:
      raise ConfigError(f"config key 'optim.{key}' is {o[key]!r}; expected > 0")
  for key in ("b1", "b2"):
    _between(f"optim.{key}", o[key], 0.0, 1.0)
  _at_least("optim.weight_decay", o.weight_decay, 0.0)
  _at_least("optim.min_lr", o.min_lr, 0.0)

  if c.logit_scale <= 0:
    raise ConfigError(f"config key 'logit_scale' is {c.logit_scale!r}; "
                      "expected > 0")
  _in("compute_dtype", c.compute_dtype, _DTYPES)
  if c.eval_only and c.restart:
    raise ConfigError("'eval_only' and 'restart' exclude each other: "
                      "eval_only re-evaluates the adapters a run saved")


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
  the device count (every device gets the same number of episodes);
  ``lora.targets`` is normalised to a tuple of names.

  Raises:
    ConfigError: see ``validate``.
  """
  validate(config)
  c = ConfigDict(config.to_dict())
  if c.episodes == -1:
    c.episodes = default_episodes(c.shot)
  if c.steps == -1:
    c.steps = finetune.steps_for(c.epochs, c.shot)
  devices = jax.device_count() if num_devices is None else num_devices
  rounded = round_up_batch(c.episodes_per_batch, devices)
  if rounded != c.episodes_per_batch:
    logging.warning("episodes_per_batch=%d is not a multiple of the %d "
                    "devices; using %d", c.episodes_per_batch, devices,
                    rounded)
    c.episodes_per_batch = rounded
  c.lora.targets = parse_targets(c.lora.targets)
  c.lock()
  return c


def engine_config(config: ConfigDict) -> finetune.EngineConfig:
  """The engine's static config from a resolved job config."""
  c = config
  try:
    return finetune.EngineConfig(
        way=c.way, shot=c.shot, query=c.query, steps=c.steps,
        method=finetune.MethodConfig(**c.method.to_dict()),
        optim=finetune.OptimConfig(**c.optim.to_dict()),
        lora=LoraConfig(rank=c.lora.rank, alpha=float(c.lora.alpha),
                        dropout=float(c.lora.dropout),
                        targets=parse_targets(c.lora.targets),
                        towers=c.lora.towers,
                        blocks=parse_blocks(c.lora.blocks)),
        logit_scale=("checkpoint" if c.use_checkpoint_logit_scale
                     else float(c.logit_scale)),
        remat=c.remat,
        skip_clean_pass_in_stage2=c.skip_clean_pass_in_stage2)
  except ValueError as e:  # The dataclasses' own checks, already named.
    raise ConfigError(str(e)) from e


def fingerprint(config: ConfigDict) -> dict[str, Any]:
  """The keys that determine a job's results, flat and JSON-normalised."""
  flat = _flatten(config)
  keep = {k: v for k, v in flat.items() if k not in _RUN_ONLY_KEYS}
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


# ---------------------------------------------------------------------------
# Inputs: model and episodes.
# ---------------------------------------------------------------------------

CHECKPOINT_HELP = """\
The release fine-tunes OpenAI CLIP ViT-B/16. Download it once (the Hugging
Face folder with config.json, model.safetensors and the tokenizer files), e.g.
  huggingface-cli download openai/clip-vit-base-patch16 \\
      --local-dir ~/jaxfsl_models/clip-vit-base-patch16
(from https://huggingface.co/openai/clip-vit-base-patch16), then pass
  --config.model.checkpoint=~/jaxfsl_models/clip-vit-base-patch16
(jaxfsl also reads OpenAI .pt files and big_vision SigLIP .npz files).
To check the pipeline without any download: --config configs/episodic/demo.py"""


def checkpoint_path(config: ConfigDict) -> Path | None:
  """``model.checkpoint`` as a path (None for random-init models).

  Raises:
    MissingInputError: it does not exist (says what to download, from where,
      and how).
  """
  if config.model.init:
    return None
  path = Path(config.model.checkpoint).expanduser()
  if not path.exists():
    raise MissingInputError(
        f"model.checkpoint {config.model.checkpoint!r} does not exist "
        f"({path}).\n" + CHECKPOINT_HELP)
  return path


def load_model(config: ConfigDict) -> Model:
  """The backbone: a checkpoint (``model.checkpoint``) or a random-init
  preset (``model.init``), computing in ``compute_dtype``.

  Raises:
    MissingInputError: the checkpoint path does not exist (says what to
      download, from where, and how).
    ConfigError: the checkpoint has no tokenizer and none is configured.
  """
  from jaxfsl import models

  dtype = jnp.dtype(config.compute_dtype)
  m = config.model
  if m.init:
    arch = PRESETS[m.init]
    vision = arch.vision
    if m.image_size:
      vision = dataclasses.replace(vision, image_size=m.image_size)
    if m.vision_depth:
      vision = dataclasses.replace(vision, depth=m.vision_depth)
    try:
      arch = dataclasses.replace(arch, vision=vision)
    except ValueError as e:
      raise ConfigError(f"model.image_size / model.vision_depth: {e}") from e
    model = models.build(arch, seed=m.init_seed, dtype=dtype)
    model.name = f"random-init {m.init}"
    return model
  path = checkpoint_path(config)
  import jaxfsl

  model = jaxfsl.load_model(str(path), tokenizer=m.tokenizer or None,
                            dtype=dtype)
  if model.tokenizer is None:
    raise ConfigError(
        f"model.checkpoint {str(path)!r} has no tokenizer files; set "
        "'model.tokenizer' to a folder with them (e.g. the Hugging Face "
        "folder of openai/clip-vit-base-patch16)")
  return model


def data_dir(config: ConfigDict, workdir: str | os.PathLike[str]) -> Path:
  """``dataset.data_dir`` with ``{workdir}`` filled in; '' means the data
  layer's default ($JAXFSL_DATA_DIR or ~/jaxfsl_data)."""
  from jaxfsl import data

  if not config.dataset.data_dir:
    return data.default_data_dir()
  return Path(config.dataset.data_dir.format(workdir=str(workdir))
              ).expanduser()


def open_dataset(config: ConfigDict, workdir: str | os.PathLike[str]) -> Any:
  """The job's prepared dataset (generates the synthetic one first when
  ``dataset.prepare_synthetic`` and it is absent).

  Raises:
    jaxfsl.data.DatasetNotPreparedError: with where to download the data and
      the ``tools/prepare_data.py`` command that prepares it.
  """
  from jaxfsl import data
  from jaxfsl.data import builders

  d = config.dataset
  root = data_dir(config, workdir)
  name, _, subconfig = d.name.partition("/")
  if name == "synthetic" and not subconfig:
    s = d.synthetic
    subconfig = builders.SyntheticConfig.make(
        s.num_classes, s.images_per_class, s.image_size, s.seed).name
  try:
    return data.load_dataset(name, root, config=subconfig or None)
  except data.DatasetNotPreparedError:
    if not (name == "synthetic" and d.prepare_synthetic):
      raise
  logging.info("Generating the synthetic dataset %s in %s", subconfig, root)
  s = d.synthetic
  return data.prepare_dataset(
      "synthetic", root, synthetic_classes=s.num_classes,
      synthetic_images_per_class=s.images_per_class,
      synthetic_image_size=s.image_size, synthetic_seed=s.seed,
      config_name=subconfig, progress=False).dataset


def make_sampler(config: ConfigDict, dataset: Any, image_size: int) -> Any:
  """The episode sampler: episode i is a pure function of (seed, i)."""
  from jaxfsl import data

  try:
    return data.EpisodeSampler(
        dataset, way=config.way, shot=config.shot, query=config.query,
        seed=config.seed, image_size=image_size,
        exclude_small_classes=config.dataset.exclude_small_classes)
  except ValueError as e:
    raise ConfigError(f"dataset {config.dataset.name!r} cannot give these "
                      f"episodes: {e}") from e


class PromptIds:
  """Tokenised class prompts, cached per class name.

  Args:
    model: gives ``tokenize``.
    template: e.g. "a photo of a {}.".
  """

  def __init__(self, model: Model, template: str):
    self.model = model
    self.template = template
    self._cache: dict[str, np.ndarray] = {}

  def __call__(self, class_names: Sequence[Sequence[str]]) -> np.ndarray:
    """E lists of ``way`` names -> int32 [E, way, L]."""
    missing = sorted({n for names in class_names for n in names}
                     - set(self._cache))
    if missing:
      ids = self.model.tokenize([self.template.format(n) for n in missing])
      self._cache.update(zip(missing, ids, strict=True))
    return np.stack([np.stack([self._cache[n] for n in names])
                     for names in class_names]).astype(np.int32)


# ---------------------------------------------------------------------------
# Run state (Orbax).
# ---------------------------------------------------------------------------


class RunState:
  """The resumable state in ``workdir/state``: Orbax steps named by the number
  of finished episodes, each with ``meta`` (JSON: fingerprint, next episode,
  config) and ``outputs`` (the engine's raw per-episode results, numpy,
  leading axis = finished episodes, plus ``index``).

  Saves are asynchronous (the next batch computes meanwhile) and atomic;
  unfinished step directories of a killed process are removed on open.
  """

  def __init__(self, directory: Path):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.manager = ocp.CheckpointManager(
        directory.resolve(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=2, create=True, cleanup_tmp_directories=True),
        item_names=_STATE_ITEMS)

  def restore(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(meta, outputs) of the latest complete save, or None."""
    step = self.manager.latest_step()
    if step is None:
      return None
    ocp = self._ocp
    out = self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore(), outputs=ocp.args.PyTreeRestore()))
    return dict(out["meta"]), out["outputs"]

  def save(self, meta: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    ocp = self._ocp
    self.manager.save(
        int(meta["next_episode"]), args=ocp.args.Composite(
            meta=ocp.args.JsonSave(dict(meta)),
            outputs=ocp.args.PyTreeSave(dict(outputs))))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class AdapterStore:
  """Final adapters per batch in ``workdir/adapters/<first episode>``."""

  def __init__(self, directory: Path, create: bool = True):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.manager = ocp.CheckpointManager(
        directory.resolve(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None, create=create, cleanup_tmp_directories=True))

  def save(self, indices: np.ndarray, adapters: Any) -> None:
    ocp = self._ocp
    step = int(indices[0])
    if step in self.manager.all_steps():
      # Left by a run killed before its state save: same episodes, redone.
      self.manager.delete(step)
    self.manager.save(step, args=ocp.args.PyTreeSave(
        {"index": np.asarray(indices, np.int64), "adapters": adapters}))
    # The state saved next must never list an episode whose adapters are not
    # on disk.
    self.manager.wait_until_finished()

  def load_all(self) -> dict[int, Any]:
    """{episode index: its adapter tree (numpy)} over every saved batch."""
    ocp = self._ocp
    by_index = {}
    for step in sorted(self.manager.all_steps()):
      item = self.manager.restore(step, args=ocp.args.PyTreeRestore())
      for e, index in enumerate(np.asarray(item["index"])):
        by_index[int(index)] = jax.tree.map(lambda a, e=e: np.asarray(a)[e],
                                            item["adapters"])
    return by_index

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------

_kill_counts: dict[str, int] = {}


def _kill_point(point: str, ready: Callable[[], bool] | None = None) -> None:
  """The test-only self-kill hook (see ``KILL_ENV``); ``ready`` is polled
  (up to 5 s) before killing."""
  spec = os.environ.get(KILL_ENV)
  if not spec:
    return
  _kill_counts[point] = _kill_counts.get(point, 0) + 1
  for item in spec.split(","):
    name, _, count = item.partition(":")
    if name == point and int(count or 1) == _kill_counts[point]:
      deadline = time.time() + 5.0
      while ready is not None and not ready() and time.time() < deadline:
        time.sleep(0.001)
      logging.warning("%s: killing myself at %s #%d", KILL_ENV, point,
                      _kill_counts[point])
      logging.flush()
      if point == "in_batch":
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()
      else:
        os.kill(os.getpid(), signal.SIGKILL)


def _save_in_flight_or_done(directory: Path, step: int) -> bool:
  return any(p.name == str(step) or p.name.startswith(f"{step}.")
             for p in directory.iterdir())


def setup_jax(config: ConfigDict) -> None:
  """Multi-host initialisation and the persistent compilation cache."""
  distributed.initialize(config.multihost)
  if config.jax_cache_dir:
    cache = Path(config.jax_cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    # Episode programs compile for tens of seconds even for tiny models.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _is_writer() -> bool:
  return jax.process_index() == 0


def method_label(variant: str, family: str) -> str:
  """The paper's row name, e.g. ``CLIP-LoRA + SVL + RA``."""
  base = {"clip": "CLIP", "siglip": "SigLIP"}.get(family, family) + "-LoRA"
  suffix = {"none": "", "svl": " + SVL", "ra": " + RA",
            "svl_ra": " + SVL + RA", "visual": " + L_v"}[variant]
  return base + suffix


def _describe(config: ConfigDict, model: Model) -> dict[str, Any]:
  return {
      "dataset": config.dataset.name,
      "way": config.way, "shot": config.shot, "query": config.query,
      "steps": config.steps, "seed": config.seed,
      "variant": config.method.variant,
      "method": method_label(config.method.variant, model.config.family),
      "model": model.name,
      "demo": bool(config.demo),
      "note": DEMO_NOTE if config.demo else "",
  }


def _results(config: ConfigDict, info: Mapping[str, Any],
             records: list[dict[str, Any]], run_info: Mapping[str, Any]
             ) -> dict[str, Any]:
  results = dict(info)
  results.update(aggregate.summarize(records))
  results["episodes_expected"] = config.episodes
  results["complete"] = len(records) == config.episodes
  results["config"] = config.to_dict()
  results["run"] = dict(run_info)
  results["episodes"] = records
  return results


def episode_batches(sampler: Any, config: ConfigDict, indices: Sequence[int]
                    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
  """This host's part of each batch of ``episodes_per_batch`` episodes.

  The last batch is padded to full size by repeating its last episode (the
  engine needs E to be a multiple of the device count). With several hosts
  each one builds only its slice of every batch (E / process_count
  episodes), which is what ``EpisodeEngine.run_batch`` expects there.

  Yields:
    (global episode indices int64 [E] (padding included), valid bool [E],
    this host's batch from ``jaxfsl.data.iterate_batches``).
  """
  from jaxfsl import data

  epb = config.episodes_per_batch
  hosts, me = jax.process_count(), jax.process_index()
  per_host = epb // hosts
  plan = []
  for start in range(0, len(indices), epb):
    chunk = np.asarray(indices[start:start + epb], np.int64)
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], epb - len(chunk))])
    plan.append((padded, np.arange(epb) < len(chunk)))
  local = [int(i) for padded, _ in plan
           for i in padded[me * per_host:(me + 1) * per_host]]
  batches = data.iterate_batches(
      sampler, local, per_host, num_workers=config.dataset.num_workers,
      prefetch=config.dataset.prefetch)
  try:
    for (padded, valid), batch in zip(plan, batches, strict=False):
      yield padded, valid, batch
  finally:
    batches.close()  # Stops the episode threads early on an error.


def _engine_batch(batch: Mapping[str, Any], prompts: PromptIds
                  ) -> dict[str, np.ndarray]:
  arrays = {k: batch[k] for k in finetune.BATCH_KEYS if k != "text_ids"}
  arrays["text_ids"] = prompts(batch["class_names"])
  return arrays


class _Speed:
  """Episodes per hour of this process, excluding the first batch (which
  includes compilation) once a second one is done."""

  def __init__(self):
    self.start = time.time()
    self.first_done: tuple[float, int] | None = None
    self.episodes = 0

  def update(self, n: int) -> float:
    now = time.time()
    self.episodes += n
    if self.first_done is None:
      self.first_done = (now, self.episodes)
      return self.episodes / max(now - self.start, 1e-9) * 3600.0
    t0, e0 = self.first_done
    return (self.episodes - e0) / max(now - t0, 1e-9) * 3600.0


# ---------------------------------------------------------------------------
# The job.
# ---------------------------------------------------------------------------


def prepare_workdir(config: ConfigDict, workdir: Path, restart: bool
                    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
  """Checks the workdir against the config; returns the saved state or None.

  Raises:
    ResumeError: the workdir holds another config's run and not ``restart``.
  """
  state_dir = workdir / "state"
  if not state_dir.exists():
    return None
  if restart:
    logging.warning("restart: removing the previous run's outputs in %s",
                    workdir)
    for name in _OUTPUTS:
      path = workdir / name
      if path.is_dir():
        shutil.rmtree(path)
      elif path.exists():
        path.unlink()
    return None
  store = RunState(state_dir)
  try:
    saved = store.restore()
  finally:
    store.close()
  if saved is None:
    return None
  meta, _ = saved
  diff = config_diff(meta["fingerprint"], fingerprint(config))
  if diff:
    raise ResumeError(
        f"workdir {workdir} holds a run with a different config; differing "
        "key(s):\n  " + "\n  ".join(diff) + "\nUse another --workdir, or "
        "pass --restart (config.restart=True) to discard that run and start "
        "over.")
  return saved


def run(config: ConfigDict, workdir: str | os.PathLike[str], *,
        restart: bool | None = None,
        on_batch: Callable[[dict[str, Any]], None] | None = None
        ) -> dict[str, Any]:
  """Runs (or resumes, or re-evaluates) a job; writes its reports.

  Args:
    config: a job config (see ``default_config``); validated here.
    workdir: output folder, created if needed.
    restart: discard a previous run in ``workdir`` (default:
      ``config.restart``).
    on_batch: called after each batch with the progress dict (for UIs).

  Returns:
    The results dict written to ``results.json`` (or
    ``eval_only/results.json``).

  Raises:
    ConfigError, ResumeError, MissingInputError, jaxfsl.data.DataError: the
      user can fix these (the CLI prints them without a traceback).
    FloatingPointError: an episode's loss became NaN/inf.
  """
  workdir = Path(workdir).expanduser()
  setup_jax(config)
  config = resolve(config)
  restart = config.restart if restart is None else restart
  with distributed.main_process_first("workdir"):
    workdir.mkdir(parents=True, exist_ok=True)
  if config.demo:
    logging.warning(DEMO_NOTE)
  if config.eval_only:
    return evaluate_saved(config, workdir)

  saved = prepare_workdir(config, workdir, restart)
  if _is_writer():
    reports.write_text_atomic(workdir / "config.json",
                                config.to_json(indent=2))
  logging.info("Config:\n%s", config)

  # Missing inputs fail before anything slow (a checkpoint loads slowly).
  checkpoint_path(config)
  dataset = open_dataset(config, workdir)
  model = load_model(config)
  sampler = make_sampler(config, dataset, model.config.vision.image_size)
  engine = finetune.EpisodeEngine(model, engine_config(config))
  prompts = PromptIds(model, config.prompt)
  info = _describe(config, model)
  logging.info("%s on %s (%s): %d-way %d-shot, %d episodes, T=%d steps, "
               "%d episodes per batch over %d device(s)", info["method"],
               config.dataset.name, model.name, config.way, config.shot,
               config.episodes, config.steps, config.episodes_per_batch,
               jax.device_count())

  fp = fingerprint(config)
  parts: list[dict[str, Any]] = []
  next_episode = 0
  if saved is not None:
    meta, outputs = saved
    parts.append(outputs)
    next_episode = int(meta["next_episode"])
    logging.info("Resuming: %d episode(s) already done", next_episode)
  total = config.episodes
  state = RunState(workdir / "state")
  adapters = (AdapterStore(workdir / "adapters") if config.save_adapters
              else None)
  tb = reports.TensorBoard(workdir / "tensorboard") if _is_writer() else None
  speed = _Speed()
  all_acc = ([] if not parts else
             [aggregate.percent(a)
              for a in parts[0]["stages"]["accuracy"][:, -1]])
  batches = episode_batches(sampler, config, range(next_episode, total))
  try:
    for indices, valid, batch in batches:
      _kill_point("in_batch")
      out = engine.run_batch(
          _engine_batch(batch, prompts),
          finetune.episode_keys(config.seed, batch["index"]),
          episode_ids=indices, return_adapters=config.save_adapters)
      _kill_point("after_compute")
      out = aggregate.take_outputs(out, valid)
      done_idx = indices[valid]
      if adapters is not None:
        adapters.save(done_idx, out.pop("adapters"))
        _kill_point("after_adapters")
      out["index"] = done_idx
      parts = [aggregate.concat_outputs(parts + [out])]
      next_episode = int(done_idx[-1]) + 1
      state.save({"next_episode": next_episode, "fingerprint": fp,
                  "config": config.to_dict()}, parts[0])
      _kill_point("saving", ready=lambda step=next_episode: (
          _save_in_flight_or_done(workdir / "state", step)))
      records = aggregate.episode_records(out, done_idx)
      all_acc += [r["accuracy"] for r in records]
      rate = speed.update(len(done_idx))
      line = aggregate.progress_line(next_episode, total, all_acc, rate)
      logging.info("%s", line)
      progress = {"done": next_episode, "total": total, "rate": rate,
                  "records": records, "line": line}
      if tb is not None:
        tb.batch(progress, all_acc)
      if on_batch is not None:
        on_batch(progress)
      if os.environ.get(KILL_ENV):
        # The hook's "after_save" means the state is on disk; real runs let
        # the save overlap the next batch.
        state.manager.wait_until_finished()
      _kill_point("after_save")
  except BaseException:
    if tb is not None:
      tb.close()
    raise
  finally:
    batches.close()
    state.close()
    if adapters is not None:
      adapters.close()

  _kill_point("before_reports")
  outputs = parts[0] if parts else None
  records = []
  if outputs is not None:
    order = np.flatnonzero(np.asarray(outputs["index"]) < total)
    kept = aggregate.take_outputs(outputs, order)
    records = aggregate.dedupe(
        aggregate.episode_records(kept, kept["index"]))
  results = _results(config, info, records, {
      "devices": jax.device_count(), "workdir": str(workdir),
      "wall_seconds_this_process": round(time.time() - speed.start, 1)})
  if _is_writer():
    reports.write_all(workdir, results)
    if tb is not None:
      tb.final(results)
      tb.close()
  logging.info("Done: %s %s %d-shot: %s %% over %d episodes (zero-shot %s)",
               info["method"], config.dataset.name, config.shot,
               aggregate.format_mean_ci(results["accuracy_mean"],
                                       results["accuracy_ci95"]),
               results["num_episodes"],
               aggregate.format_mean_ci(results["zero_shot_accuracy_mean"],
                                       results["zero_shot_accuracy_ci95"]))
  if config.demo:
    logging.warning(DEMO_NOTE)
  return results


# ---------------------------------------------------------------------------
# Evaluation with given adapters (eval_only).
# ---------------------------------------------------------------------------


class AdapterEvaluator:
  """Evaluates episodes' queries with given adapters, no training.

  Built on ``EpisodeEngine.prepare`` / ``evaluate``: one compiled program
  per batch shape, episodes sharded over the engine's mesh like
  ``run_batch``.
  """

  def __init__(self, engine: finetune.EpisodeEngine):
    self.engine = engine
    self._fn = None

  def _one(self, backbone, episode, adapters):
    engine = self.engine
    inputs = engine.prepare(backbone, episode)

    def at(tree):
      # ``evaluate`` reads the adapters only; the rest is placeholder.
      return finetune.EpisodeState(
          adapters=tree, opt_state=(), prev_relation=jnp.zeros((1, 1)),
          loss=jnp.zeros(()), first_nonfinite_step=jnp.zeros((), jnp.int32))

    zeros = jax.tree.map(jnp.zeros_like, adapters)  # B = 0: the backbone.
    return {"final": engine.evaluate(at(adapters), inputs, backbone),
            "zero_shot": engine.evaluate(at(zeros), inputs, backbone)}

  def __call__(self, batch: Mapping[str, np.ndarray], adapters: Any
               ) -> dict[str, Any]:
    """Metrics of E episodes.

    Args:
      batch: the engine's batch arrays (see ``EpisodeEngine.run_batch``;
        on several hosts, this host's slice).
      adapters: adapter tree with a leading E axis (likewise).

    Returns:
      {"final": {metric: [E]}, "zero_shot": {metric: [E]}} as numpy.
    """
    if self._fn is None:
      mesh, axis = self.engine.mesh, self.engine.axis
      episodes = NamedSharding(mesh, PartitionSpec(axis))
      replicated = NamedSharding(mesh, PartitionSpec())
      self._fn = jax.jit(jax.vmap(self._one, in_axes=(None, 0, 0)),
                         in_shardings=(replicated, episodes, episodes),
                         out_shardings=episodes)
    arrays = {k: np.asarray(batch[k]) for k in finetune.BATCH_KEYS}
    params = self.engine.model.params
    if jax.process_count() == 1:
      return jax.device_get(self._fn(params, arrays, adapters))
    # Several hosts: as ``EpisodeEngine.run_batch``, each passes its slice
    # and receives the whole batch.
    from jax.experimental import multihost_utils

    episodes = NamedSharding(self.engine.mesh,
                             PartitionSpec(self.engine.axis))
    arrays, adapters = jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(episodes, x),
        (arrays, adapters))
    return multihost_utils.process_allgather(
        self._fn(params, arrays, adapters), tiled=True)


def evaluate_saved(config: ConfigDict, workdir: Path) -> dict[str, Any]:
  """``eval_only``: reloads each episode's saved adapters, re-evaluates its
  queries (and the zero-shot model) and writes ``workdir/eval_only/``.

  Raises:
    MissingInputError: no adapters saved (run with save_adapters=True).
    ResumeError: the saved run's config differs from this one.
  """
  adapter_dir = workdir / "adapters"
  if not adapter_dir.is_dir():
    raise MissingInputError(
        f"eval_only: {adapter_dir} does not exist; train first with "
        "--config.save_adapters=True (same config and workdir)")
  saved = prepare_workdir(config, workdir, restart=False)
  train_acc = {}
  if saved is not None:
    _, outputs = saved
    final = outputs["stages"]["accuracy"][:, -1]
    for i, a in zip(outputs["index"], final, strict=True):
      train_acc[int(i)] = aggregate.percent(a)
  store = AdapterStore(adapter_dir, create=False)
  try:
    by_index = store.load_all()
  finally:
    store.close()
  indices = [i for i in sorted(by_index) if i < config.episodes]
  if not indices:
    raise MissingInputError(f"eval_only: no saved adapters in {adapter_dir}")
  missing = config.episodes - len(indices)
  if missing:
    logging.warning("eval_only: %d of %d episodes have no saved adapters",
                    missing, config.episodes)

  dataset = open_dataset(config, workdir)
  model = load_model(config)
  sampler = make_sampler(config, dataset, model.config.vision.image_size)
  engine = finetune.EpisodeEngine(model, engine_config(config))
  evaluator = AdapterEvaluator(engine)
  prompts = PromptIds(model, config.prompt)
  info = _describe(config, model)
  records = []
  start = time.time()
  for idx, valid, batch in episode_batches(sampler, config, indices):
    trees = [by_index[int(i)] for i in batch["index"]]
    stacked = jax.tree.map(lambda *a: np.stack(a), *trees)
    out = evaluator(_engine_batch(batch, prompts), stacked)
    out = aggregate.take_outputs(out, valid)
    as_engine = {
        "stages": {k: np.asarray(v)[:, None] for k, v in out["final"].items()},
        "zero_shot": out["zero_shot"],
    }
    for r in aggregate.episode_records(as_engine, idx[valid]):
      r.pop("losses")
      if r["index"] in train_acc:
        r["train_accuracy"] = train_acc[r["index"]]
      records.append(r)
    logging.info("eval_only: %d/%d episodes", len(records), len(indices))
  diffs = [abs(r["accuracy"] - r["train_accuracy"]) for r in records
           if "train_accuracy" in r]
  results = _results(config, info, records, {
      "devices": jax.device_count(), "workdir": str(workdir),
      "wall_seconds_this_process": round(time.time() - start, 1)})
  results["eval_only"] = True
  results["max_abs_diff_vs_training"] = max(diffs) if diffs else None
  results["complete"] = len(records) == config.episodes
  if _is_writer():
    reports.write_all(workdir / "eval_only", results)
  logging.info("eval_only: %s %% over %d episodes; max |accuracy - training "
               "accuracy| = %s", aggregate.format_mean_ci(
                   results["accuracy_mean"], results["accuracy_ci95"]),
               len(records), results["max_abs_diff_vs_training"])
  return results
