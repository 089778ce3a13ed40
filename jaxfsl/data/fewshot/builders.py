"""TFDS builder of the 11 few-shot datasets (CoOp layout), and loading them.

    prepare_fewshot("caltech101", data_dir, manual_dir="~/data/caltech-101")
    ds = load_fewshot("caltech101", data_dir)
    ds.split("test").labels       # int32 [N]
    ds.split("train").image(3)    # PIL RGB image

One builder, ``fewshot``, with one config per dataset: the records live in
``data_dir/fewshot/<name>/1.0.0`` as ArrayRecord, written without
TensorFlow like ``jaxfsl.data.builders`` (images stored as their encoded
bytes). Splits ``train``, ``val``, ``test`` exactly as the split files say
(ImageNet: ``train`` and ``test`` = the official val set), records in file
order (shuffling disabled).

Record: image Image (encoded bytes), label ClassLabel, file Text (path
relative to the image folder, the json's relpath).
Metadata (``metadata.json``): class_names, prompt_names (``_`` -> space),
splits {split: {labels: [...], files: [...]}} in record order, skipped
[{file, reason}] (with ``skip_corrupt``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxfsl.data import images
from jaxfsl.data.dataset import decode_image
from jaxfsl.data.errors import (
    CorruptInputError,
    DataError,
    DatasetNotPreparedError,
)
from jaxfsl.data.fewshot import layouts

VERSION = "1.0.0"
_MAX_LISTED = 20
_SKIP_HINT = ("\nPass skip_corrupt=True (tools/prepare_data.py "
              "--skip_corrupt) to skip bad inputs; each one is then listed.")


@dataclasses.dataclass(eq=False)
class FewshotConfig(tfds.core.BuilderConfig):
  """One dataset: its class names (from the split files)."""
  class_names: tuple[str, ...] = ()


def _problems_error(what: str, problems: list[str]) -> CorruptInputError:
  shown = "\n  ".join(problems[:_MAX_LISTED])
  more = len(problems) - _MAX_LISTED
  tail = f"\n  ... and {more} more" if more > 0 else ""
  return CorruptInputError(
      f"{what}: {len(problems)} bad input(s):\n  {shown}{tail}{_SKIP_HINT}",
      file=problems[0].split(":")[0], reason=problems[0])


class Fewshot(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The CoOp-layout few-shot datasets (config = dataset name)."""

  name = "fewshot"
  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "See jaxfsl.data.fewshot.layouts.SPECS."

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # As jaxfsl.data.builders.CdfslBuilder: TFDS's default needs
    # importlib resources of a regular package.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, listing: layouts.SplitListing | None = None,
               skip_corrupt: bool = False, num_workers: int | None = None,
               **kwargs: Any):
    self._listing = listing
    self._skip_corrupt = skip_corrupt
    self._num_workers = num_workers or max(1, min(8, os.cpu_count() or 1))
    self._skipped: list[dict[str, str]] = []
    self._split_meta: dict[str, dict[str, list]] = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    names = list(self.builder_config.class_names)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.builder_config.name} in CoOp's split.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=len(names)),
            "file": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            class_names=names, prompt_names=layouts.prompt_names(names)),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    listing = self._listing
    if listing is None:
      raise DataError("Fewshot builds only through prepare_fewshot(...).")
    if listing.problems:
      if not self._skip_corrupt:
        raise _problems_error(f"{self.builder_config.name} in {listing.root}",
                              listing.problems)
      self._skipped += [{"file": p.split(":")[0], "reason": p}
                        for p in listing.problems]
    return {split: self._generate_examples(split, items)
            for split, items in listing.splits.items() if items}

  def _generate_examples(self, split: str, items: list[layouts.Item]
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    root = self._listing.image_root
    labels: list[int] = []
    files: list[str] = []
    read = lambda item: images.read_image_file(root / item[0])  # noqa: E731
    for item, result in images.ordered_map(read, items, self._num_workers):
      rel, label, _ = item
      if isinstance(result, Exception):
        reason = (f"{split}: {root / rel}: cannot read image: "
                  f"{type(result).__name__}: {result}")
        if not self._skip_corrupt:
          raise CorruptInputError(reason + _SKIP_HINT, file=rel,
                                  reason=reason) from result
        self._skipped.append({"file": rel, "reason": reason})
        continue
      yield len(labels), {"image": result, "label": label, "file": rel}
      labels.append(label)
      files.append(rel)
    self._split_meta[split] = {"labels": labels, "files": files}
    self.info.metadata.update(splits=dict(self._split_meta),
                              skipped=list(self._skipped))


def dataset_dir(name: str, data_dir: os.PathLike[str] | str) -> Path:
  """``data_dir/fewshot/<name>/1.0.0`` (may not exist yet)."""
  if name not in layouts.SPECS:
    raise ValueError(f"unknown few-shot dataset {name!r}; expected one of "
                     f"{list(layouts.NAMES)}")
  return Path(data_dir).expanduser() / "fewshot" / name / VERSION


def prepare_fewshot(name: str, data_dir: os.PathLike[str] | str,
                    manual_dir: os.PathLike[str] | str, *,
                    skip_corrupt: bool = False, overwrite: bool = False,
                    num_workers: int | None = None,
                    progress: bool = True) -> FewshotDataset:
  """Builds one few-shot dataset from its CoOp-layout folder (no network).

  Args:
    name: one of ``layouts.NAMES`` (caltech101, oxford_pets, ...).
    data_dir: where prepared datasets live.
    manual_dir: the dataset folder (e.g. ``$DATA/caltech-101``) or its
      parent ``$DATA``.
    skip_corrupt: skip rows naming a missing file and unreadable images
      (listed in ``metadata["skipped"]``) instead of raising.
    overwrite: rebuild an already prepared dataset.
    num_workers: image reading threads.
    progress: TFDS progress bars.

  Returns:
    The opened dataset.

  Raises:
    ManualDataError: folder / split file missing (says where to get it).
    CorruptInputError: bad rows (all listed) or an unreadable image (named),
      without ``skip_corrupt``.
  """
  listing = layouts.list_splits(manual_dir, name)
  target = dataset_dir(name, data_dir)
  if (target / "dataset_info.json").is_file() and not overwrite:
    return FewshotDataset(target)
  if target.exists():
    shutil.rmtree(target)
  config = FewshotConfig(name=name, class_names=tuple(listing.class_names),
                         description=f"{name} from {listing.root}")
  builder = Fewshot(listing=listing, skip_corrupt=skip_corrupt,
                    num_workers=num_workers, config=config,
                    data_dir=str(Path(data_dir).expanduser()),
                    file_format="array_record")
  previous = tfds.display_progress_bar(progress)
  try:
    with tempfile.TemporaryDirectory(prefix="jaxfsl_tfds_") as tmp:
      builder.download_and_prepare(
          download_dir=tmp,
          download_config=tfds.download.DownloadConfig(
              manual_dir=str(listing.root), try_download_gcs=False))
  finally:
    tfds.display_progress_bar(previous)
  return FewshotDataset(target)


class FewshotSplit:
  """Random access to one split: ``labels`` int32 [N], ``files``,
  ``image(i)`` (PIL RGB), ``encoded(i)`` (stored bytes)."""

  def __init__(self, source: Any, labels: list[int], files: list[str]):
    self._source = source
    self.labels = np.asarray(labels, np.int32)
    self.labels.setflags(write=False)
    self.files = list(files)

  def __len__(self) -> int:
    return len(self.labels)

  def encoded(self, index: int) -> bytes:
    return self._source[int(index)]["image"]

  def image(self, index: int):
    return decode_image(self.encoded(index))


class FewshotDataset:
  """A prepared few-shot dataset.

  Attributes:
    name: dataset name; class_names / prompt_names: label order;
    metadata: the build metadata; splits: the split names present.
  """

  def __init__(self, path: os.PathLike[str] | str):
    self.path = Path(path)
    if not (self.path / "dataset_info.json").is_file():
      raise DatasetNotPreparedError(
          f"{self.path} is not a prepared few-shot dataset (no "
          "dataset_info.json).")
    self.metadata = json.loads((self.path / "metadata.json").read_text())
    self.name = self.path.parent.name
    self.class_names: list[str] = list(self.metadata["class_names"])
    self.prompt_names: list[str] = list(self.metadata["prompt_names"])
    self.splits = tuple(self.metadata["splits"])
    self._builder = tfds.builder_from_directory(str(self.path))
    self._cache: dict[str, FewshotSplit] = {}

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def split(self, name: str) -> FewshotSplit:
    if name not in self.metadata["splits"]:
      raise KeyError(f"{self.name}: no split {name!r}; has {self.splits}")
    if name not in self._cache:
      meta = self.metadata["splits"][name]
      source = self._builder.as_data_source(
          split=name, decoders={"image": tfds.decode.SkipDecoding()})
      if len(source) != len(meta["labels"]):
        raise DataError(f"{self.path}: split {name} has {len(source)} "
                        f"records, metadata.json {len(meta['labels'])}; "
                        "rebuild with overwrite=True.")
      self._cache[name] = FewshotSplit(source, meta["labels"], meta["files"])
    return self._cache[name]

  def items(self, name: str) -> list[layouts.Item]:
    """[(relpath, label, class name)] of a split, in record order."""
    meta = self.metadata["splits"][name]
    return [(f, int(y), self.class_names[int(y)])
            for f, y in zip(meta["files"], meta["labels"], strict=True)]


def load_fewshot(name: str, data_dir: os.PathLike[str] | str
                 ) -> FewshotDataset:
  """Opens a prepared few-shot dataset.

  Raises:
    DatasetNotPreparedError: with the command that prepares it.
  """
  path = dataset_dir(name, data_dir)
  if not (path / "dataset_info.json").is_file():
    raise DatasetNotPreparedError(
        f"Few-shot dataset {name!r} is not prepared in {data_dir} (no "
        f"{path / 'dataset_info.json'}). Build it once:\n  python "
        f"tools/prepare_data.py --dataset {name} --manual_dir "
        f"/path/to/{layouts.SPECS[name].folders[0]} --data_dir {data_dir}\n"
        + layouts.SPECS[name].instructions())
  return FewshotDataset(path)
