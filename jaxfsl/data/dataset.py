"""Loading prepared datasets: class names, labels, random access to images.

    ds = jaxfsl.data.load_dataset("eurosat", data_dir)
    ds.prompt_names      # ["Annual Crop Land", ...]  (label order)
    ds.labels            # int32 [N], no image decoded
    ds.image(i)          # PIL RGB image, as the release's loader gives it

Prepared datasets live in ``data_dir/<name>[/<config>]/<version>`` (TFDS
layout; ``image_folder`` and ``synthetic`` have one config per dataset).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxfsl.data import builders
from jaxfsl.data.errors import DataError, DatasetNotPreparedError
from jaxfsl.paths import user_path

DATA_DIR_ENV = "JAXFSL_DATA_DIR"
DATASET_NAMES = tuple(builders.BUILDERS)
_CONFIG_DATASETS = ("image_folder", "synthetic")
_VERSION = str(builders.CdfslBuilder.VERSION)


def default_data_dir() -> Path:
  """``$JAXFSL_DATA_DIR``, else ``~/jaxfsl_data`` (``~`` / ``$VARS``
  expanded)."""
  return user_path(os.environ.get(DATA_DIR_ENV) or "~/jaxfsl_data")


def decode_image(data: bytes) -> Image.Image:
  """Decodes stored image bytes to an RGB PIL image (fully loaded)."""
  im = Image.open(io.BytesIO(data))
  im.load()
  return im if im.mode == "RGB" else im.convert("RGB")


def _split_name(name: str, config: str | None) -> tuple[str, str | None]:
  if "/" in name:
    name, _, from_name = name.partition("/")
    if config is not None and config != from_name:
      raise ValueError(f"Dataset {name!r}: config given twice ({from_name!r} "
                       f"in the name, {config!r} as config).")
    config = from_name
  if name not in DATASET_NAMES:
    raise ValueError(f"Unknown dataset {name!r}; expected one of "
                     f"{list(DATASET_NAMES)}.")
  if config is not None and name not in _CONFIG_DATASETS:
    raise ValueError(f"Dataset {name!r} has no configs (got {config!r}); "
                     f"only {list(_CONFIG_DATASETS)} do.")
  return name, config


def dataset_dir(name: str, data_dir: os.PathLike[str] | str,
                config: str | None = None) -> Path:
  """Where ``prepare_dataset`` writes (and ``load_dataset`` reads) a dataset.

  Returns ``data_dir/name[/config]/<version>``; it may not exist yet.
  """
  name, config = _split_name(name, config)
  base = user_path(data_dir) / name
  if config is not None:
    base = base / config
  return base / _VERSION


def prepared_configs(name: str, data_dir: os.PathLike[str] | str) -> list[str]:
  """The configs of ``image_folder`` / ``synthetic`` prepared in data_dir."""
  base = user_path(data_dir) / name
  if not base.is_dir():
    return []
  return sorted(d.name for d in base.iterdir()
                if (d / _VERSION / "dataset_info.json").is_file())


def prepare_command(name: str, data_dir: os.PathLike[str] | str,
                    config: str | None = None) -> str:
  """The shell command that prepares a dataset."""
  cmd = f"python tools/prepare_data.py --dataset {name}"
  if name == "synthetic":
    if config:
      cmd += f" --name {config}"
  elif name == "image_folder":
    cmd += " --manual_dir /path/to/your/class_folders"
    cmd += f" --name {config}" if config else ""
  else:
    cmd += f" --manual_dir /path/to/raw/{name}"
  return cmd + f" --data_dir {data_dir}"


def _not_prepared(name: str, data_dir: Path, config: str | None,
                  looked: Path) -> DatasetNotPreparedError:
  instructions = builders.BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS
  lines = [f"Dataset {name!r}" + (f" (config {config!r})" if config else "") +
           f" is not prepared in {data_dir} (no {looked})."]
  if instructions and name != "image_folder":
    lines += ["1. Download the raw data by hand (nothing is downloaded "
              "automatically):", instructions.rstrip(), "2. Build it once:"]
  else:
    lines.append("Build it once:")
  lines.append("  " + prepare_command(name, data_dir, config))
  return DatasetNotPreparedError("\n".join(lines))


class Dataset:
  """A prepared dataset (read-only, thread-safe random access).

  Attributes:
    path: the dataset folder ``data_dir/name[/config]/version``.
    name: dataset name (``chestx``, ..., ``synthetic``).
    config: TFDS config name (``image_folder`` / ``synthetic``) or None.
    class_names: list[str], raw class names (TFDS ClassLabel names).
    prompt_names: list[str], names used in prompts, in label order.
    labels: int32 [N] (read-only) label of every record.
    files: list[str], source file of every record (relative to manual_dir).
    skipped: list of {file, row, reason} inputs skipped at build time.
    metadata: the whole build metadata (see ``jaxfsl.data.builders``).
    info: the TFDS DatasetInfo.
  """

  def __init__(self, path: os.PathLike[str] | str):
    self.path = user_path(path)
    if not (self.path / "dataset_info.json").is_file():
      raise DatasetNotPreparedError(
          f"{self.path} is not a prepared dataset (no dataset_info.json).")
    builder = tfds.builder_from_directory(str(self.path))
    self.info = builder.info
    self.name: str = builder.name
    self.config: str | None = (builder.builder_config.name
                               if builder.builder_config else None)
    self.metadata: dict[str, Any] = json.loads(
        (self.path / "metadata.json").read_text())
    self.class_names: list[str] = list(self.info.features["label"].names)
    self.prompt_names: list[str] = list(self.metadata["prompt_names"])
    self.files: list[str] = list(self.metadata["files"])
    self.skipped: list[dict[str, Any]] = list(self.metadata["skipped"])
    labels = np.asarray(self.metadata["labels"], np.int32)
    labels.setflags(write=False)
    self.labels = labels
    self._source = builder.as_data_source(
        split="train", decoders={"image": tfds.decode.SkipDecoding()})
    self._check_consistency()

  def _check_consistency(self) -> None:
    n = len(self._source)
    problems = []
    if len(self.labels) != n or len(self.files) != n:
      problems.append(f"{n} records but {len(self.labels)} labels / "
                      f"{len(self.files)} files in metadata.json")
    elif len(self.prompt_names) != len(self.class_names):
      problems.append(f"{len(self.class_names)} classes but "
                      f"{len(self.prompt_names)} prompt names")
    else:
      # A few records are enough to catch a record order that does not match
      # the label list (e.g. files copied from another build).
      for i in sorted({0, n // 2, n - 1}):
        label = int(self._source[i]["label"])
        if label != self.labels[i]:
          problems.append(f"record {i} has label {label}, metadata.json says "
                          f"{self.labels[i]}")
    if problems:
      raise DataError(
          f"Prepared dataset {self.path} is inconsistent: {problems[0]}. "
          "Rebuild it with tools/prepare_data.py --overwrite.")

  def __len__(self) -> int:
    return len(self.labels)

  def __repr__(self) -> str:
    return (f"Dataset({self.name!r}, config={self.config!r}, "
            f"{len(self)} images, {self.num_classes} classes)")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def class_counts(self) -> np.ndarray:
    """int64 [num_classes] number of images of each class."""
    return np.bincount(self.labels, minlength=self.num_classes)

  def encoded(self, index: int) -> bytes:
    """The stored (JPEG/PNG) bytes of record ``index``."""
    return self._source[int(index)]["image"]

  def image(self, index: int) -> Image.Image:
    """Record ``index`` decoded as an RGB PIL image (original size)."""
    return decode_image(self.encoded(index))

  def __getitem__(self, index: int) -> dict[str, Any]:
    """{"image": uint8 [H, W, 3], "label": int, "file": str}."""
    return {"image": np.asarray(self.image(index)),
            "label": int(self.labels[index]), "file": self.files[index]}


class InMemoryDataset:
  """A dataset held in memory, with the ``Dataset`` interface the episode
  sampler uses (handy for tests and small user data).

  Args:
    images: uint8 [N, H, W, 3] array, or a sequence of N uint8 [H, W, 3].
    labels: int [N], values in [0, len(class_names)).
    class_names: class names, in label order.
    prompt_names: names for prompts; defaults to ``class_names``.
  """

  def __init__(self, images: np.ndarray | Sequence[np.ndarray],
               labels: Sequence[int] | np.ndarray,
               class_names: Sequence[str],
               prompt_names: Sequence[str] | None = None):
    self.name = "in_memory"
    self.class_names = list(class_names)
    self.prompt_names = list(prompt_names or class_names)
    self._images = list(images)
    labels = np.asarray(labels, np.int32)
    labels.setflags(write=False)
    self.labels = labels
    if len(self._images) != len(labels):
      raise ValueError(f"{len(self._images)} images but {len(labels)} labels.")
    if len(self.prompt_names) != len(self.class_names):
      raise ValueError(f"{len(self.class_names)} class names but "
                       f"{len(self.prompt_names)} prompt names.")
    bad = labels[(labels < 0) | (labels >= len(self.class_names))]
    if bad.size:
      raise ValueError(f"label {int(bad[0])} out of range "
                       f"[0, {len(self.class_names)}).")
    for i, im in enumerate(self._images):
      im = np.asarray(im)
      if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3:
        raise ValueError(f"image {i}: {im.dtype} {im.shape}; expected uint8 "
                         "[H, W, 3].")

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def class_counts(self) -> np.ndarray:
    return np.bincount(self.labels, minlength=self.num_classes)

  def image(self, index: int) -> Image.Image:
    return Image.fromarray(np.asarray(self._images[index]))


def load_dataset(name: str, data_dir: os.PathLike[str] | str | None = None,
                 *, config: str | None = None) -> Dataset:
  """Opens a prepared dataset.

  Args:
    name: one of ``DATASET_NAMES``; ``image_folder`` / ``synthetic`` may name
      their config as ``"synthetic/<config>"`` or with ``config``.
    data_dir: where datasets are prepared; defaults to ``default_data_dir()``.
    config: config of ``image_folder`` / ``synthetic``; may be omitted when
      exactly one is prepared.

  Returns:
    The dataset.

  Raises:
    DatasetNotPreparedError: with the ``python tools/prepare_data.py ...``
      command to run and where to download the raw data.
  """
  data_dir = user_path(data_dir) if data_dir else default_data_dir()
  name, config = _split_name(name, config)
  if name in _CONFIG_DATASETS and config is None:
    configs = prepared_configs(name, data_dir)
    if len(configs) > 1:
      raise DataError(
          f"Several {name} datasets are prepared in {data_dir}: {configs}; "
          f"choose one, e.g. load_dataset('{name}/{configs[0]}', ...).")
    if not configs:
      raise _not_prepared(name, data_dir, None, data_dir / name)
    config = configs[0]
  path = dataset_dir(name, data_dir, config)
  if not (path / "dataset_info.json").is_file():
    raise _not_prepared(name, data_dir, config, path / "dataset_info.json")
  return Dataset(path)
