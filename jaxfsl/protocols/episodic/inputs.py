"""A job's inputs: the backbone, the prepared dataset and its episodes.

Every path from the config goes through ``jaxfsl.paths.user_path`` (``~``
and ``$VARS`` expanded, also after ``=`` on a command line).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxfsl.models.config import PRESETS
from jaxfsl.models.model import Model
from jaxfsl.paths import user_path
from jaxfsl.protocols.episodic import trainable_checks
from jaxfsl.protocols.episodic.batch import EpisodeBatch, make_batches
from jaxfsl.protocols.episodic.config import ConfigError, MissingInputError

ConfigDict = ml_collections.ConfigDict

CHECKPOINT_HELP = """\
The release fine-tunes OpenAI CLIP ViT-B/16. Download it once (the Hugging
Face folder with config.json, model.safetensors and the tokenizer files), e.g.
  huggingface-cli download openai/clip-vit-base-patch16 \\
      --local-dir ~/jaxfsl_models/clip-vit-base-patch16
(from https://huggingface.co/openai/clip-vit-base-patch16), then pass
  --config.model.checkpoint=~/jaxfsl_models/clip-vit-base-patch16
(jaxfsl also reads OpenAI .pt files and big_vision SigLIP .npz files).
To check the pipeline without any download:
  --config configs/{protocol}/demo.py"""


def checkpoint_path(config: ConfigDict) -> Path | None:
  """``model.checkpoint`` as a path (None for random-init models).

  Raises:
    MissingInputError: it does not exist (says what to download, from where,
      and how).
  """
  if config.model.init:
    return None
  path = user_path(config.model.checkpoint)
  if not path.exists():
    raise MissingInputError(
        f"model.checkpoint {config.model.checkpoint!r} does not exist "
        f"({path}).\n" + CHECKPOINT_HELP.format(
            protocol=config.get("protocol", "episodic")))
  return path


def check_inputs(config: ConfigDict) -> None:
  """The job's input files given by path, checked before anything is
  written into the workdir: ``model.checkpoint`` (for a checkpoint job) and
  ``model.tokenizer`` (when set). A job they reject leaves the workdir as it
  found it. (The dataset is checked when it is opened: the synthetic one may
  be generated there.)

  Raises:
    MissingInputError: a path that does not exist (the checkpoint's says
      what to download, from where, and how).
  """
  checkpoint_path(config)
  tokenizer = config.model.tokenizer
  if tokenizer and not user_path(tokenizer).exists():
    raise MissingInputError(
        f"model.tokenizer {tokenizer!r} does not exist "
        f"({user_path(tokenizer)}); set it to a folder with the tokenizer "
        "files, or to '' to use the checkpoint's own")


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
    try:
      arch = trainable_checks.preset_model_config(m, strict=True)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"model.image_size / model.vision_depth: {e}") from e
    if arch is None:
      raise ConfigError(
          f"model.init {m.init!r} is not a preset; one of {sorted(PRESETS)}")
    model = models.build(arch, seed=m.init_seed, dtype=dtype)
    model.name = f"random-init {m.init}"
    return model
  path = checkpoint_path(config)
  import jaxfsl

  tokenizer = str(user_path(m.tokenizer)) if m.tokenizer else None
  model = jaxfsl.load_model(str(path), tokenizer=tokenizer, dtype=dtype)
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
  return user_path(config.dataset.data_dir.format(workdir=str(workdir)))


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
  """The episode sampler: episode i is a pure function of (seed, i).

  Raises:
    ConfigError: the dataset cannot give these episodes (e.g. classes with
      fewer than shot + query images: says the command-line switch).
  """
  from jaxfsl import data

  try:
    return data.EpisodeSampler(
        dataset, way=config.way, shot=config.shot, query=config.query,
        seed=config.seed, image_size=image_size,
        exclude_small_classes=config.dataset.exclude_small_classes)
  except ValueError as e:
    # The sampler's message already names the switch (command line and
    # Python): it is said once.
    raise ConfigError(f"dataset {config.dataset.name!r} cannot give these "
                      f"episodes: {e}") from e


def episode_batches(model: Model, sampler: Any, config: ConfigDict,
                    indices: Sequence[int]
                    ) -> Iterator[tuple[np.ndarray, np.ndarray, EpisodeBatch]]:
  """The job's model-ready batches of ``indices`` (``batch.make_batches``
  with the config's batch size, prompt and worker settings).

  Yields:
    (global episode indices int64 [E] (padding included), valid bool [E],
    this host's ``EpisodeBatch``).
  """
  return make_batches(model, sampler, indices, config.episodes_per_batch,
                      config.prompt, num_workers=config.dataset.num_workers,
                      prefetch=config.dataset.prefetch)
