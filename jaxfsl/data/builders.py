"""TFDS builders of the CDFSL target datasets, user image folders and the
synthetic demo dataset.

They are ``tfds.core.GeneratorBasedBuilder`` subclasses writing ArrayRecord
files (random access), and need no TensorFlow: images reach TFDS as already
encoded bytes, which TFDS stores as they are.

Record layout (split ``train``; record order = source order, TFDS shuffling
is disabled so that the label list below lines up with the records):

  image  Image(shape=(None, None, 3))  encoded JPEG or PNG bytes: the source
                                       file's own bytes when it is an RGB
                                       JPEG/PNG, else the lossless PNG of its
                                       RGB conversion (ChestX: the 256x256
                                       RGB resize, as the release loads it).
  label  ClassLabel(names=class_names) int64 scalar.
  file   Text                          source path relative to manual_dir.

Dataset metadata (``metadata.json`` beside ``dataset_info.json``):

  prompt_names  list[str]  the class names used in prompts, in label order.
  labels        list[int]  label of every record, in record order (lets the
                           episode sampler index classes without decoding).
  files         list[str]  the ``file`` of every record.
  num_skipped   int        number of inputs skipped with ``skip_corrupt``.
  converted_modes dict     Pillow mode -> number of source images stored
                           after a mode conversion (e.g. "L", "RGBA", "I;16"
                           (16-bit, scaled to 8 bits)); RGB images absent.
  skipped       list[dict] {file, row, reason} of each skipped input.
  ignored       list[dict] {file, row, reason} of files that are not part of
                           the dataset (non-image files in class folders).
  excluded      dict       rows left out by the protocol, counted by reason.
  csv_name      str|None   the CSV (label) file used, relative to
                           manual_dir; ``row`` refers to it.
  source        dict       what the dataset was built from (manual folder,
                           options, a fingerprint of the listing); see
                           ``jaxfsl.data.provenance``.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from jaxfsl.data import catalog as _catalog_module
from jaxfsl.data import csv_sources, images, sources, synthetic
from jaxfsl.data.errors import CorruptInputError, DataError, ManualDataError
from jaxfsl.data.sources import Problem, SourceItem, SourceListing

SKIP_HINT = ("Pass --skip_corrupt (skip_corrupt=True) to skip bad inputs; "
             "each one is then listed in a report.")
MAX_LISTED = 10  # Bad inputs shown in an error message (all in the report).


def bad_inputs_message(problems: Sequence[Problem], csv_name: str | None,
                       root: Path | str, report_path: Path | None = None,
                       num_ignored: int = 0) -> str:
  """The error text for bad inputs: count, the first ``MAX_LISTED``, the
  report holding them all, then the ``--skip_corrupt`` hint."""
  lines = [f"{len(problems)} bad input(s) in {root}:"]
  lines += ["  " + p.describe(csv_name) for p in problems[:MAX_LISTED]]
  if len(problems) > MAX_LISTED:
    lines.append(f"  ... and {len(problems) - MAX_LISTED} more.")
  if num_ignored:
    lines.append(f"({num_ignored} other file(s) ignored: hidden files such "
                 "as macOS '._*', non-image files, files no CSV row names.)")
  if report_path is not None:
    lines.append(f"All of them are listed in {report_path}.")
  lines.append(SKIP_HINT)
  return "\n".join(lines)


def bad_inputs_error(problems: Sequence[Problem], csv_name: str | None,
                     root: Path | str, report_path: Path | None = None,
                     ignored: Sequence[Problem] = ()) -> CorruptInputError:
  """``CorruptInputError`` for ``problems`` (non-empty); its ``file``, ``row``
  and ``reason`` are the first one's; ``ignored`` files are counted."""
  first = problems[0]
  error = CorruptInputError(
      bad_inputs_message(problems, csv_name, root, report_path, len(ignored)),
      file=first.file, row=first.row, reason=first.reason, problems=problems,
      report_path=report_path, csv_name=csv_name, root=str(root))
  error.ignored = list(ignored)
  return error

CHESTX_INSTRUCTIONS = """\
ChestX-ray14 (NIH Clinical Center): https://nihcc.app.box.com/v/ChestXray-NIHCC
(also on Kaggle as "nih-chest-xrays/data"). Download Data_Entry_2017.csv and
the image archives images_001.tar.gz ... images_012.tar.gz, extract them and
place in the manual folder:
  MANUAL_DIR/Data_Entry_2017.csv
  MANUAL_DIR/images/00000001_000.png ...
(the Kaggle layout MANUAL_DIR/images_001/images/*.png is accepted too).
"""

ISIC_INSTRUCTIONS = """\
ISIC 2018 Task 3 training set: https://challenge.isic-archive.com/data/#2018
Download ISIC2018_Task3_Training_Input.zip and
ISIC2018_Task3_Training_GroundTruth.zip and extract both into the manual folder:
  MANUAL_DIR/ISIC2018_Task3_Training_Input/ISIC_0024306.jpg ...
  MANUAL_DIR/ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
"""

CROP_DISEASE_INSTRUCTIONS = """\
CropDisease (PlantVillage, 38 classes), as used by the CDFSL benchmark
(https://github.com/IBM/cdfsl-benchmark): download "plant-disease" from Kaggle
(https://www.kaggle.com/saroz014/plant-disease) and extract it into the manual
folder. The 38 class folders (Apple___Apple_scab, ..., Tomato___healthy) may
sit in the manual folder itself or one/two levels below, e.g.
  MANUAL_DIR/dataset/train/Apple___Apple_scab/*.JPG
(when both dataset/train and dataset/test exist, train is used).
"""

EUROSAT_INSTRUCTIONS = """\
EuroSAT RGB: https://zenodo.org/records/7711810 (EuroSAT_RGB.zip), or the
original https://madm.dfki.de/files/sentinel/EuroSAT.zip. Extract it into the
manual folder. The 10 class folders (AnnualCrop, Forest, ..., SeaLake) may sit
in the manual folder itself or one/two levels below, e.g.
  MANUAL_DIR/2750/AnnualCrop/AnnualCrop_1.jpg
"""

IMAGE_FOLDER_INSTRUCTIONS = """\
Your own data: one subfolder per class directly in the manual folder,
  MANUAL_DIR/<class name>/<image>.jpg|.png|...
Folder names become class names (prompt names replace "_" by a space) unless a
JSON file {"folder": "prompt name", ...} is given with --class_names_json.
"""


def default_num_workers() -> int:
  return max(1, min(8, os.cpu_count() or 1))


class CdfslBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic: list the sources, decode/validate them in parallel, write
  the records and the metadata, skip or stop on bad inputs.

  Constructor arguments on top of ``tfds.core.DatasetBuilder``'s:
    skip_corrupt: skip bad inputs (listing them in the metadata) instead of
      failing; without it, every input is still checked and all the bad ones
      are listed in one ``CorruptInputError``.
    num_workers: threads decoding the images.
    source_record: stored as ``metadata["source"]`` (what the dataset is
      built from; see ``jaxfsl.data.provenance``).
    catalog: build from this TFDS catalog dataset instead of the manual
      folder (``eurosat``, ``crop_disease``; see ``jaxfsl.data.catalog``).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  HOMEPAGE = ""
  CITATION = ""
  DESCRIPTION = ""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default resolves the package via importlib resources, which
    # fails for a namespace package (needs `importlib_resources`); the module
    # file is all it needs (it only looks for an optional checksums.tsv).
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, skip_corrupt: bool = False,
               num_workers: int | None = None,
               source_record: dict[str, Any] | None = None,
               catalog: _catalog_module.CatalogSource | None = None,
               **kwargs: Any):
    if catalog is not None and self.name not in _catalog_module.CATALOG:
      raise ValueError(f"{self.name} has no TFDS catalog source.")
    self._catalog = catalog
    self._skip_corrupt = skip_corrupt
    self._num_workers = num_workers or default_num_workers()
    self._source_record = source_record
    super().__init__(**kwargs)

  @property
  def source_record(self) -> dict[str, Any] | None:
    """What the dataset is built from (``jaxfsl.data.provenance``)."""
    return self._source_record

  # To be provided by subclasses.
  def class_names(self) -> Sequence[str]:
    raise NotImplementedError

  def prompt_names(self) -> Sequence[str]:
    return [sources.prompt_name(c) for c in self.class_names()]

  def list_sources(self, manual_dir: Path) -> SourceListing:
    raise NotImplementedError

  def read(self, item: SourceItem) -> tuple[bytes, str]:
    """(bytes to store, Pillow mode of the source image)."""
    if isinstance(item, _catalog_module.CatalogItem):
      return images.read_image_bytes(
          self._catalog.records[item.record]["image"], item.file)
    return images.read_image(item.path)

  def _manual_dir(self, dl_manager: tfds.download.DownloadManager) -> Path:
    try:
      return sources.check_manual_dir(dl_manager.manual_dir,
                                      self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    except AssertionError as e:  # TFDS's "missing or empty" check.
      raise ManualDataError(str(e)) from e

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=list(self.class_names())),
            "file": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            prompt_names=list(self.prompt_names())),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    if self._catalog is not None:
      listing = _catalog_module.list_catalog(self._catalog,
                                             self.class_names())
    else:
      listing = self.list_sources(self._manual_dir(dl_manager))
    if listing.csv_name is not None:
      # Class folders report their own emptiness; a CSV can leave a class
      # without any row, which would only fail later in the episode sampler.
      present = {item.label for item in listing.items}
      listing.problems += [
          Problem(listing.csv_name, None,
                  f"empty class: no usable row of class {name!r}")
          for c, name in enumerate(self.class_names()) if c not in present]
    return {"train": self._generate_examples(listing)}

  def _generate_examples(self, listing: SourceListing
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    labels: list[int] = []
    files: list[str] = []
    bad: list[Problem] = list(listing.problems)
    converted: collections.Counter[str] = collections.Counter()
    for item, result in images.ordered_map(self.read, listing.items,
                                           self._num_workers):
      if isinstance(result, Exception):
        bad.append(Problem(item.file, item.row, "cannot read image: "
                           f"{type(result).__name__}: {result}"))
        continue
      if bad and not self._skip_corrupt:
        continue  # The build fails: only look for the other bad inputs.
      data, mode = result
      if mode != "RGB":
        converted[mode] += 1
      # Keys are consecutive ints: with shuffling disabled TFDS writes the
      # records in key order, so record i has labels[i].
      yield len(labels), {"image": data, "label": item.label,
                          "file": item.file}
      labels.append(item.label)
      files.append(item.file)
    if bad and not self._skip_corrupt:
      raise bad_inputs_error(bad, listing.csv_name, listing.root,
                             ignored=listing.ignored)
    if not labels:
      raise DataError(
          f"No usable example in {listing.root} ({len(bad)} skipped); "
          "nothing to build.")
    self.info.metadata.update(
        labels=labels,
        files=files,
        num_skipped=len(bad),
        skipped=[p.to_json() for p in bad],
        ignored=[p.to_json() for p in listing.ignored],
        excluded=dict(listing.excluded),
        converted_modes=dict(sorted(converted.items())),
        csv_name=listing.csv_name,
        source=self._source_record,
    )


class Chestx(CdfslBuilder, skip_registration=True):
  """ChestX-ray14, single-label rows of 7 findings (CDFSL benchmark)."""

  name = "chestx"
  MANUAL_DOWNLOAD_INSTRUCTIONS = CHESTX_INSTRUCTIONS
  HOMEPAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
  DESCRIPTION = ("ChestX-ray14 rows with one label among 7 findings (no "
                 "'No Finding', no 'Pneumonia'); images resized to 256x256 "
                 "RGB at build time as the CDFSL release loads them.")

  def class_names(self) -> Sequence[str]:
    return sources.CHESTX_CLASSES

  def list_sources(self, manual_dir: Path) -> SourceListing:
    return csv_sources.list_chestx(manual_dir,
                                   self.MANUAL_DOWNLOAD_INSTRUCTIONS)

  def read(self, item: SourceItem) -> tuple[bytes, str]:
    return images.read_chestx(item.path)


class Isic2018(CdfslBuilder, skip_registration=True):
  """ISIC 2018 Task 3 training set, 7 lesion classes."""

  name = "isic2018"
  MANUAL_DOWNLOAD_INSTRUCTIONS = ISIC_INSTRUCTIONS
  HOMEPAGE = "https://challenge.isic-archive.com/data/#2018"
  DESCRIPTION = "ISIC 2018 Task 3 (lesion diagnosis) training images."

  def class_names(self) -> Sequence[str]:
    return sources.ISIC_CLASSES

  def prompt_names(self) -> Sequence[str]:
    return sources.ISIC_PROMPTS

  def list_sources(self, manual_dir: Path) -> SourceListing:
    return csv_sources.list_isic(manual_dir,
                                 self.MANUAL_DOWNLOAD_INSTRUCTIONS)


class CropDisease(CdfslBuilder, skip_registration=True):
  """PlantVillage, 38 classes (folder names; prompts replace ``_``)."""

  name = "crop_disease"
  MANUAL_DOWNLOAD_INSTRUCTIONS = CROP_DISEASE_INSTRUCTIONS
  HOMEPAGE = "https://github.com/IBM/cdfsl-benchmark"
  DESCRIPTION = "CropDisease (PlantVillage) as in the CDFSL benchmark."

  def class_names(self) -> Sequence[str]:
    return sources.CROP_DISEASE_CLASSES

  def list_sources(self, manual_dir: Path) -> SourceListing:
    return sources.list_fixed_classes(
        manual_dir, sources.CROP_DISEASE_CLASSES, "CropDisease",
        self.MANUAL_DOWNLOAD_INSTRUCTIONS)


class Eurosat(CdfslBuilder, skip_registration=True):
  """EuroSAT RGB, 10 land-cover classes."""

  name = "eurosat"
  MANUAL_DOWNLOAD_INSTRUCTIONS = EUROSAT_INSTRUCTIONS
  HOMEPAGE = "https://github.com/phelber/EuroSAT"
  DESCRIPTION = "EuroSAT RGB (Sentinel-2 land cover), 10 classes."

  def class_names(self) -> Sequence[str]:
    return sources.EUROSAT_CLASSES

  def prompt_names(self) -> Sequence[str]:
    return sources.EUROSAT_PROMPTS

  def list_sources(self, manual_dir: Path) -> SourceListing:
    return sources.list_fixed_classes(
        manual_dir, sources.EUROSAT_CLASSES, "EuroSAT",
        self.MANUAL_DOWNLOAD_INSTRUCTIONS)


def config_slug(text: str) -> str:
  """A TFDS-safe config name from free text (letters, digits, ``_``)."""
  slug = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").lower()
  return slug or "default"


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """Class folders and prompt names of one user dataset (see
  ``sources.scan_image_folder``)."""
  class_dirs: tuple[str, ...] = ()
  prompt_names: tuple[str, ...] = ()
  # Class folders without images, left out with skip_corrupt (reported).
  empty_dirs: tuple[str, ...] = ()


class ImageFolder(CdfslBuilder, skip_registration=True):
  """The user's own one-folder-per-class data; one TFDS config per dataset
  (``data_dir/image_folder/<config>/1.0.0``)."""

  name = "image_folder"
  MANUAL_DOWNLOAD_INSTRUCTIONS = IMAGE_FOLDER_INSTRUCTIONS
  DESCRIPTION = "A user image folder, one subfolder per class."

  def __init__(self, **kwargs: Any):
    if not isinstance(kwargs.get("config"), ImageFolderConfig):
      raise ValueError(
          "ImageFolder needs config=ImageFolderConfig(...); use "
          "jaxfsl.data.prepare_dataset('image_folder', ...), which scans the "
          "folder for you.")
    super().__init__(**kwargs)

  def class_names(self) -> Sequence[str]:
    return self.builder_config.class_dirs

  def prompt_names(self) -> Sequence[str]:
    return self.builder_config.prompt_names

  def list_sources(self, manual_dir: Path) -> SourceListing:
    found, _ = sources.scan_image_folder(manual_dir)
    empty = self.builder_config.empty_dirs
    expected = sorted(tuple(self.class_names()) + tuple(empty))
    if found != expected:
      raise ManualDataError(
          f"{manual_dir} class folders changed since the config was made: "
          f"found {found}, expected {expected}.")
    listing = sources.list_class_folders(manual_dir, self.class_names(),
                                         manual_dir)
    listing.problems[:0] = [Problem(f"{d}/", None, sources.EMPTY_CLASS_REASON)
                            for d in empty]
    return listing


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """Size of the synthetic dataset (see ``jaxfsl.data.synthetic``)."""
  num_classes: int = 10
  images_per_class: int = 40
  image_size: int = 64
  seed: int = 0

  @classmethod
  def make(cls, num_classes: int = 10, images_per_class: int = 40,
           image_size: int = 64, seed: int = 0,
           name: str | None = None) -> SyntheticConfig:
    for key, value, low in (("num_classes", num_classes, 1),
                            ("images_per_class", images_per_class, 1),
                            ("image_size", image_size, 8), ("seed", seed, 0)):
      if not isinstance(value, int) or value < low:
        raise ValueError(f"synthetic {key}={value!r}; expected an int >= "
                         f"{low}.")
    name = name or (f"c{num_classes}_n{images_per_class}_s{image_size}"
                    f"_seed{seed}")
    return cls(name=config_slug(name), num_classes=num_classes,
               images_per_class=images_per_class, image_size=image_size,
               seed=seed, description=(
                   f"{num_classes} classes x {images_per_class} images of "
                   f"{image_size}x{image_size}, seed {seed}"))


class Synthetic(CdfslBuilder, skip_registration=True):
  """Learnable synthetic shapes (demo and tests); needs no manual folder."""

  name = "synthetic"
  DESCRIPTION = ("Synthetic coloured shapes on textured backgrounds; class "
                 "= (shape, colour). Deterministic from the config's seed.")

  def __init__(self, **kwargs: Any):
    kwargs.setdefault("config", SyntheticConfig.make())
    super().__init__(**kwargs)

  def class_names(self) -> Sequence[str]:
    return synthetic.class_names(self.builder_config.num_classes)

  def list_sources(self, manual_dir: Path) -> SourceListing:
    del manual_dir
    cfg = self.builder_config
    items = [
        SourceItem(path=Path(), label=c, file=f"{c:03d}/{n:05d}.png")
        for c in range(cfg.num_classes) for n in range(cfg.images_per_class)
    ]
    return SourceListing(root=Path(), items=items)

  def read(self, item: SourceItem) -> tuple[bytes, str]:
    cfg = self.builder_config
    index = int(Path(item.file).stem)
    image = synthetic.make_image(cfg.seed, item.label, index, cfg.image_size)
    return images.encode_png(Image.fromarray(image)), "RGB"

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    return {"train": self._generate_examples(self.list_sources(Path()))}


BUILDERS: dict[str, type[CdfslBuilder]] = {
    b.name: b
    for b in (Chestx, Isic2018, CropDisease, Eurosat, ImageFolder, Synthetic)
}
"""Dataset name (``--dataset``) -> builder class."""
