"""eurosat / crop_disease built from the TFDS catalog (eurosat/rgb,
plant_village) with TFDS' mock data (no download): class names and order
equal the manual builders'."""

from __future__ import annotations

import io
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxfsl import data
from jaxfsl.data import builders, catalog, sources
from jaxfsl.data.errors import ManualDataError

PER_CLASS = 2


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


def _png(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG")
  return buf.getvalue()


def _pixels(label: int, j: int) -> np.ndarray:
  rng = np.random.default_rng(100 * label + j)
  return rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)


def _fake_records(builder, split, decoders=None, **kwargs):
  """Stands in for ``as_data_source``: PER_CLASS encoded images per catalog
  class, in an order unlike jaxfsl's (last class first, files reversed)."""
  del split, kwargs
  assert "image" in decoders  # jaxfsl keeps the images encoded.
  key = catalog.CATALOG[{"eurosat": "eurosat",
                         "plant_village": "crop_disease"}[builder.name]
                        ].filename_key
  names = builder.info.features["label"].names
  return [{"image": _png(_pixels(label, j)), "label": label,
           key: f"{names[label]}_{j}.jpg".encode()}
          for label in reversed(range(len(names)))
          for j in reversed(range(PER_CLASS))]


def _open_mocked(name: str, monkeypatch) -> catalog.CatalogSource:
  # Mocked download_and_prepare is a no-op: nothing needs TensorFlow here.
  monkeypatch.setattr(catalog, "_tensorflow_available", lambda: True)
  with tfds.testing.mock_data(as_data_source_fn=_fake_records):
    return catalog.open_catalog(name)


@pytest.mark.parametrize("name", ["eurosat", "crop_disease"])
def test_catalog_source_has_the_manual_builders_classes(name, tmp_path,
                                                        monkeypatch):
  source = _open_mocked(name, monkeypatch)
  result = data.prepare_dataset(name, tmp_path, from_catalog=source,
                                progress=False, num_workers=2)
  ds = result.dataset
  manual = builders.BUILDERS[name](data_dir=str(tmp_path / "manual"))
  assert ds.class_names == list(manual.class_names())
  assert ds.prompt_names == list(manual.prompt_names())
  assert ds.class_counts().tolist() == [PER_CLASS] * ds.num_classes
  # Class-major, files sorted within a class, like the manual folders.
  assert ds.labels.tolist() == sorted(ds.labels.tolist())
  for c in range(ds.num_classes):
    files = [f for f, y in zip(ds.files, ds.labels, strict=True) if y == c]
    assert files == sorted(files)
  # The pixels are the catalog's (stored as they are, no re-encoding).
  catalog_label = source.label_names.index(
      next(n for n in source.label_names
           if catalog.class_key(n) == catalog.class_key(ds.class_names[3])))
  i = ds.files.index(f"{source.catalog_name}/"
                     f"{source.label_names[catalog_label]}_1.jpg")
  assert ds.labels[i] == 3
  np.testing.assert_array_equal(np.asarray(ds.image(i)),
                                _pixels(catalog_label, 1))
  assert ds.metadata["source"]["options"]["catalog"] == source.catalog_name
  assert f"Built from the TFDS catalog dataset {source.catalog_name}" in \
      result.summary()


def test_plant_village_names_map_to_cdfsl_names():
  names = tfds.builder("plant_village", data_dir="/nonexistent").info \
      .features["label"].names
  mapping = catalog.label_map(names, sources.CROP_DISEASE_CLASSES)
  assert sorted(mapping.tolist()) == list(range(38))
  ours = {n: sources.CROP_DISEASE_CLASSES[m]
          for n, m in zip(names, mapping, strict=True)}
  assert ours["Corn___Common_rust"] == "Corn_(maize)___Common_rust_"
  assert ours["Cherry___healthy"] == "Cherry_(including_sour)___healthy"
  assert ours["Pepper,_bell___healthy"] == "Pepper,_bell___healthy"
  with pytest.raises(ManualDataError, match=r"without a match \['Kiwi'\]"):
    catalog.label_map(names[:-1] + ["Kiwi"], sources.CROP_DISEASE_CLASSES)


def test_catalog_without_tensorflow_says_what_to_do(tmp_path, monkeypatch):
  monkeypatch.setattr(catalog, "_tensorflow_available", lambda: False)
  with pytest.raises(ManualDataError) as e:
    data.prepare_dataset("eurosat", tmp_path / "data", from_catalog=True,
                         catalog_dir=tmp_path / "tfds", progress=False)
  msg = str(e.value)
  assert "eurosat/rgb is not prepared in" in msg
  assert "need TensorFlow" in msg and "--catalog_dir" in msg
  assert "--manual_dir" in msg
  with pytest.raises(ValueError, match="only \\['crop_disease', 'eurosat'\\]"):
    data.prepare_dataset("chestx", tmp_path / "data", from_catalog=True)
  with pytest.raises(ValueError, match="exclude each other"):
    data.prepare_dataset("eurosat", tmp_path / "data", tmp_path,
                         from_catalog=True)
