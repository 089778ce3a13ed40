"""EuroSAT and CropDisease from the TFDS catalog instead of manual folders.

    python tools/prepare_data.py --dataset eurosat --from_catalog
    jaxfsl.data.prepare_dataset("crop_disease", data_dir, catalog=True)

``eurosat`` is built from the catalog dataset ``eurosat/rgb`` and
``crop_disease`` from ``plant_village``; their labels are mapped to the CDFSL
class names and label order of the manual builders (``CATALOG_CLASSES``), so
that a dataset prepared either way has the same ``class_names`` and
``prompt_names``. Records are listed class-major, sorted by file name within
a class, as the manual folders are.

Caveats (say them in a paper):
  * Downloading and generating a catalog dataset is TFDS's own code, which
    needs TensorFlow (``tf.io.gfile``) and the internet; jaxfsl itself does
    not. Without TensorFlow, prepare the catalog dataset where it is (e.g.
    Colab) with ``tfds.builder(name).download_and_prepare(
    file_format="array_record")`` and pass its ``--catalog_dir``; reading it
    needs no TensorFlow.
  * ``plant_village`` is the 54,303 original images (Mendeley, without
    augmentation); the CDFSL benchmark's CropDisease is the Kaggle
    "plant-disease" ``dataset/train`` folder: same 38 classes, other images,
    so accuracies are not comparable with the paper's. ``eurosat/rgb`` holds
    the same 27,000 EuroSAT RGB images as the manual download.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxfsl.data import classes
from jaxfsl.data.errors import ManualDataError
from jaxfsl.data.sources import SourceItem, SourceListing
from jaxfsl.paths import user_path


@dataclasses.dataclass(frozen=True)
class CatalogSpec:
  """Where a jaxfsl dataset comes from in the TFDS catalog.

  Attributes:
    catalog_name: the TFDS name (with config).
    filename_key: the feature holding the source file name.
    classes: the CDFSL class names, in jaxfsl label order.
  """
  catalog_name: str
  filename_key: str
  classes: tuple[str, ...]


CATALOG = {
    "eurosat": CatalogSpec("eurosat/rgb", "filename", classes.EUROSAT_CLASSES),
    "crop_disease": CatalogSpec("plant_village", "image/filename",
                                classes.CROP_DISEASE_CLASSES),
}
"""jaxfsl dataset name -> its TFDS catalog source."""


@dataclasses.dataclass(frozen=True)
class CatalogItem(SourceItem):
  """A ``SourceItem`` read from record ``record`` of a catalog dataset."""
  record: int = -1


@dataclasses.dataclass
class CatalogSource:
  """An opened TFDS catalog dataset.

  Attributes:
    catalog_name: the TFDS name, e.g. ``eurosat/rgb``.
    version: its TFDS version.
    records: random-access sequence of records {image: encoded bytes, label:
      int, <filename_key>: str or bytes} (TFDS ``as_data_source`` with the
      images left encoded).
    label_names: the catalog's class names, in catalog label order.
    filename_key: the feature holding the source file name.
  """
  catalog_name: str
  version: str
  records: Sequence[Mapping[str, Any]]
  label_names: list[str]
  filename_key: str


def class_key(name: str) -> str:
  """The key matching a catalog class name with a CDFSL one.

  PlantVillage's TFDS names drop the parenthesised qualifiers of the Kaggle
  folders and their trailing ``_`` ("Corn___Common_rust" vs
  "Corn_(maize)___Common_rust_"); the key drops both, and case.
  """
  parts = [re.sub(r"_?\([^)]*\)", "", p).strip("_").lower()
           for p in name.split("___")]
  return "___".join(parts)


def label_map(label_names: Sequence[str], ours: Sequence[str]) -> np.ndarray:
  """int32 [len(label_names)]: catalog label -> jaxfsl label.

  Raises:
    ManualDataError: the catalog's classes do not match ``ours`` one to one
      (naming the unmatched ones).
  """
  index = {class_key(c): i for i, c in enumerate(ours)}
  mapped = [index.get(class_key(n), -1) for n in label_names]
  unmatched = [n for n, m in zip(label_names, mapped, strict=True) if m < 0]
  missing = [c for i, c in enumerate(ours) if i not in mapped]
  if unmatched or missing or len(set(mapped)) != len(mapped):
    raise ManualDataError(
        f"The catalog's {len(label_names)} classes do not map one to one to "
        f"the {len(ours)} CDFSL classes: catalog classes without a match "
        f"{unmatched}, CDFSL classes without a match {missing}.")
  return np.asarray(mapped, np.int32)


def _tensorflow_available() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def open_catalog(name: str, catalog_dir: os.PathLike[str] | str | None = None,
                 ) -> CatalogSource:
  """Opens (downloading and generating it first if needed) the TFDS catalog
  dataset of jaxfsl dataset ``name``.

  Args:
    name: ``eurosat`` or ``crop_disease``.
    catalog_dir: TFDS data folder of the catalog dataset (default: TFDS's,
      ``~/tensorflow_datasets``).

  Raises:
    ManualDataError: not prepared and TensorFlow is missing (TFDS's
      generators need it), or prepared in a format without random access.
  """
  if name not in CATALOG:
    raise ValueError(f"Dataset {name!r} has no TFDS catalog source; only "
                     f"{sorted(CATALOG)} do.")
  spec = CATALOG[name]
  data_dir = None if catalog_dir is None else str(user_path(catalog_dir))
  builder = tfds.builder(spec.catalog_name, data_dir=data_dir)
  if not Path(builder.data_dir, "dataset_info.json").is_file():
    if not _tensorflow_available():
      raise ManualDataError(
          f"{spec.catalog_name} is not prepared in {builder.data_dir}, and "
          "TFDS's catalog builders need TensorFlow to download and generate "
          "it (jaxfsl does not). Either `pip install tensorflow-cpu`, or "
          "prepare it where TensorFlow is (e.g. Colab): "
          f"tfds.builder({spec.catalog_name!r}).download_and_prepare("
          "file_format='array_record'), copy it and pass --catalog_dir; or "
          "use the manual download (--manual_dir).")
    builder.download_and_prepare(file_format="array_record")
  try:
    records = builder.as_data_source(
        split="train", decoders={"image": tfds.decode.SkipDecoding()})
  except (NotImplementedError, ValueError) as e:
    raise ManualDataError(
        f"Cannot read {spec.catalog_name} in {builder.data_dir} with random "
        f"access ({e}); prepare it with file_format='array_record'.") from e
  return CatalogSource(
      catalog_name=spec.catalog_name, version=str(builder.version),
      records=records,
      label_names=list(builder.info.features["label"].names),
      filename_key=spec.filename_key)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def list_catalog(source: CatalogSource,
                 class_names: Sequence[str]) -> SourceListing:
  """Lists a catalog dataset as ``CatalogItem``s in jaxfsl's order: by
  jaxfsl label, then by file name (as the manual class folders)."""
  mapping = label_map(source.label_names, class_names)
  entries = []
  for i in range(len(source.records)):
    record = source.records[i]
    entries.append((int(mapping[int(record["label"])]),
                    _text(record[source.filename_key]), i))
  entries.sort()
  items = [CatalogItem(path=Path(), label=label,
                       file=f"{source.catalog_name}/{filename}", record=i)
           for label, filename, i in entries]
  return SourceListing(root=Path(source.catalog_name), items=items)
