"""Building datasets from tiny manual downloads in the four raw formats, the
user image folder and the synthetic dataset: class names, counts, bad-input
errors (with and without skip_corrupt) and the skip report."""

from __future__ import annotations

import csv
import io
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxfsl import data
from jaxfsl.data import csv_sources, sources
from jaxfsl.data.errors import (
    CorruptInputError,
    DatasetNotPreparedError,
    ManualDataError,
)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
  """Nothing in the data layer may reach the network."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


def _pixels(seed: int, size=(24, 20), mode="RGB") -> np.ndarray:
  rng = np.random.default_rng(seed)
  shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
  return rng.integers(0, 256, shape, dtype=np.uint8)


def _write(path: Path, seed: int, fmt: str = "JPEG", mode: str = "RGB",
           size=(24, 20)) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(_pixels(seed, size, mode), mode).save(path, format=fmt)
  return path


def _write_truncated(path: Path) -> Path:
  _write(path, 999, size=(64, 64))
  raw = path.read_bytes()
  path.write_bytes(raw[: len(raw) // 2])
  return path


def _write_garbage(path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"this is not an image")
  return path


def _build(name, tmp_path, manual_dir=None, **kwargs):
  return data.prepare_dataset(name, tmp_path / "data", manual_dir,
                              progress=False, num_workers=2, **kwargs)


def _report_rows(result) -> list[dict[str, str]]:
  text = result.report_path.read_text().splitlines()
  assert text[0].startswith("# csv:")
  return list(csv.DictReader(text[1:], delimiter="\t"))


# ---------------------------------------------------------------------------
# ChestX
# ---------------------------------------------------------------------------

_CHESTX_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID"]


def _chestx_manual(root: Path) -> Path:
  """3 images per class + excluded rows + 3 bad rows (lines noted)."""
  rows, seed = [], 0
  for label in sources.CHESTX_CLASSES:
    for _ in range(3):
      name = f"{seed:08d}_000.png"
      _write(root / "images" / name, seed, "PNG", mode="L", size=(40, 30))
      rows.append([name, label])
      seed += 1
  # An RGBA source goes through resize -> convert("RGB") like the others.
  _write(root / "images" / "rgba.png", 77, "PNG", mode="RGB")
  Image.open(root / "images" / "rgba.png").convert("RGBA").save(
      root / "images" / "rgba.png")
  rows.append(["rgba.png", "Mass"])
  for name, labels in [("multi.png", "Cardiomegaly|Emphysema"),
                       ("none.png", "No Finding"), ("pneu.png", "Pneumonia"),
                       ("hernia.png", "Hernia")]:
    _write(root / "images" / name, seed, "PNG", mode="L")
    rows.append([name, labels])
    seed += 1
  rows.append(["missing.png", "Effusion"])       # line 28
  _write_garbage(root / "images" / "bad.png")
  rows.append(["bad.png", "Nodule"])             # line 29
  _write(root / "images" / "typo.png", 5, "PNG", mode="L")
  _write(root / "images" / "unlisted.png", 6, "PNG", mode="L")
  rows.append(["typo.png", "Atelectasiss"])      # line 30
  with open(root / csv_sources.CHESTX_CSV, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(_CHESTX_HEADER)
    for i, (name, labels) in enumerate(rows):
      w.writerow([name, labels, 0, i])
  return root


def test_chestx_lists_every_bad_row(tmp_path):
  manual = _chestx_manual(tmp_path / "raw")
  with pytest.raises(CorruptInputError) as e:
    _build("chestx", tmp_path, manual)
  # Listing problems (missing file, unknown label) come before decoding.
  assert e.value.row == 28 and e.value.file == "images/missing.png"
  msg = str(e.value)
  assert msg.startswith("3 bad input(s) in ")
  for where in ("line 28: images/missing.png", "line 30: images/typo.png",
                "line 29: images/bad.png"):
    assert f"Data_Entry_2017.csv {where}" in msg
  assert msg.endswith("each one is then listed in a report.")
  assert "--skip_corrupt" in msg
  assert [p.row for p in e.value.problems] == [28, 30, 29]
  assert not (tmp_path / "data" / "chestx" / "1.0.0").exists()


def test_chestx_skip_corrupt(tmp_path, capsys):
  manual = _chestx_manual(tmp_path / "raw")
  result = _build("chestx", tmp_path, manual, skip_corrupt=True)
  ds = result.dataset
  assert ds.class_names == list(sources.CHESTX_CLASSES)
  assert ds.prompt_names == list(sources.CHESTX_CLASSES)
  assert ds.class_counts().tolist() == [3, 3, 3, 3, 4, 3, 3]
  assert len(ds) == 22
  meta = ds.metadata
  assert meta["num_skipped"] == 3
  assert {(p["file"], p["row"]) for p in meta["skipped"]} == {
      ("images/missing.png", 28), ("images/bad.png", 29),
      ("images/typo.png", 30)}
  assert meta["excluded"] == {
      "image file not listed in the CSV": 1,
      "multi-label row": 1, "single label 'Hernia' not used": 1,
      "single label 'No Finding' not used": 1,
      "single label 'Pneumonia' not used": 1}
  rows = _report_rows(result)
  assert [(r["kind"], r["file"], r["row"]) for r in rows] == [
      ("skipped", "images/missing.png", "28"),
      ("skipped", "images/typo.png", "30"),
      ("skipped", "images/bad.png", "29")]
  assert "unknown label 'Atelectasiss'" in rows[1]["reason"]
  print(result.summary())
  out = capsys.readouterr().out
  assert "SKIPPED 3 bad input(s)" in out
  assert "Data_Entry_2017.csv line 29: images/bad.png" in out
  # Stored as the release loads it: resize to 256x256, then RGB.
  for i in (0, len(ds) - 1, ds.files.index("images/rgba.png")):
    with Image.open(manual / ds.files[i]) as src:
      want = np.asarray(src.resize((256, 256)).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(ds.image(i)), want)
  # TFDS itself can read the records (no TensorFlow needed).
  source = tfds.builder_from_directory(str(ds.path)).as_data_source("train")
  assert source[0]["image"].shape == (256, 256, 3)


# ---------------------------------------------------------------------------
# ISIC 2018
# ---------------------------------------------------------------------------


def _isic_manual(root: Path) -> Path:
  inputs = root / csv_sources.ISIC_INPUT_DIR
  rows = []
  for k in range(len(sources.ISIC_CLASSES)):
    for j in range(2):
      name = f"ISIC_{10 * k + j:07d}"
      _write(inputs / f"{name}.jpg", 10 * k + j)
      rows.append([name] + [float(c == k) for c in range(7)])
  rows.append(["ISIC_9000001"] + [0.0] * 7)              # line 16: no label
  _write(inputs / "ISIC_9000001.jpg", 1)
  rows.append(["ISIC_9000002"] + [1.0] + [0.0] * 6)      # line 17: missing
  _write_truncated(inputs / "ISIC_9000003.jpg")
  rows.append(["ISIC_9000003"] + [0.0, 1.0] + [0.0] * 5)  # line 18: truncated
  (inputs / "LICENSE.txt").write_text("not listed, not an image")
  gt = root / csv_sources.ISIC_GT_DIR
  gt.mkdir(parents=True)
  with open(gt / csv_sources.ISIC_CSV, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image"] + list(sources.ISIC_CLASSES))
    w.writerows(rows)
  return root


def test_isic_errors_name_file_and_row(tmp_path):
  manual = _isic_manual(tmp_path / "raw")
  with pytest.raises(CorruptInputError) as e:
    _build("isic2018", tmp_path, manual)
  assert (e.value.file, e.value.row) == (
      "ISIC2018_Task3_Training_Input/ISIC_9000001.jpg", 16)
  msg = str(e.value)
  assert "line 16" in msg and "unknown label" in msg
  # Every bad input of the pass, listing and decoding alike, in one error.
  assert msg.startswith("3 bad input(s) in ")
  assert "line 17: ISIC2018_Task3_Training_Input/ISIC_9000002.jpg: image " \
      "file not found" in msg
  assert "line 18: ISIC2018_Task3_Training_Input/ISIC_9000003.jpg: cannot " \
      "read image" in msg
  report = tmp_path / "data" / "isic2018" / "bad_inputs.tsv"
  assert f"All of them are listed in {report}." in msg
  assert e.value.report_path == report
  rows = list(csv.DictReader(report.read_text().splitlines()[1:],
                             delimiter="\t"))
  assert [(r["kind"], r["row"]) for r in rows] == [
      ("bad", "16"), ("bad", "17"), ("bad", "18"), ("ignored", "")]
  assert rows[-1]["file"].endswith("LICENSE.txt")


def test_isic_truncated_image_stops_build(tmp_path):
  manual = _isic_manual(tmp_path / "raw")
  csv_path = manual / csv_sources.ISIC_GT_DIR / csv_sources.ISIC_CSV
  lines = csv_path.read_text().splitlines()
  csv_path.write_text("\n".join(lines[:15] + lines[17:]) + "\n")
  with pytest.raises(CorruptInputError) as e:
    _build("isic2018", tmp_path, manual)
  assert e.value.file == "ISIC2018_Task3_Training_Input/ISIC_9000003.jpg"
  assert e.value.row == 16 and "cannot read image" in str(e.value)


def test_isic_skip_corrupt(tmp_path):
  manual = _isic_manual(tmp_path / "raw")
  result = _build("isic2018", tmp_path, manual, skip_corrupt=True)
  ds = result.dataset
  assert ds.class_names == list(sources.ISIC_CLASSES)
  assert ds.prompt_names == [
      "Melanoma", "Melanocytic Nevus", "Basal Cell Carcinoma",
      "Actinic Keratosis", "Benign Keratosis", "Dermatofibroma",
      "Vascular Lesion"]
  assert ds.class_counts().tolist() == [2] * 7
  assert ds.metadata["num_skipped"] == 3
  rows = _report_rows(result)
  assert sorted(r["row"] for r in rows if r["kind"] == "skipped") == [
      "16", "17", "18"]
  assert [r["file"] for r in rows if r["kind"] == "ignored"] == [
      "ISIC2018_Task3_Training_Input/LICENSE.txt"]
  # RGB JPEGs are stored as they are: no re-encoding loss.
  assert ds.encoded(3) == (manual / ds.files[3]).read_bytes()
  assert ds.labels.tolist() == [k for k in range(7) for _ in range(2)]


# ---------------------------------------------------------------------------
# CropDisease
# ---------------------------------------------------------------------------


def _crop_manual(root: Path) -> Path:
  for split, n in (("train", 2), ("test", 1)):
    for c, name in enumerate(sources.CROP_DISEASE_CLASSES):
      for j in range(n):
        _write(root / "dataset" / split / name / f"img{j}.JPG", 100 * c + j)
  _write_truncated(root / "dataset/train/Apple___healthy/broken.jpg")
  (root / "dataset/train/Apple___healthy/notes.txt").write_text("x")
  return root


def test_crop_disease(tmp_path):
  manual = _crop_manual(tmp_path / "raw")
  with pytest.raises(CorruptInputError) as e:
    _build("crop_disease", tmp_path, manual)
  assert e.value.file == "dataset/train/Apple___healthy/broken.jpg"
  assert e.value.row is None

  result = _build("crop_disease", tmp_path, manual, skip_corrupt=True)
  ds = result.dataset
  assert ds.class_names == list(sources.CROP_DISEASE_CLASSES)
  assert len(ds.class_names) == 38
  assert ds.prompt_names[0] == "Apple   Apple scab"
  assert ds.prompt_names[7] == (
      "Corn (maize)   Cercospora leaf spot Gray leaf spot")
  # dataset/train was preferred over dataset/test: 2 images per class.
  assert ds.class_counts().tolist() == [2] * 38
  rows = _report_rows(result)
  assert [(r["kind"], r["file"]) for r in rows] == [
      ("skipped", "dataset/train/Apple___healthy/broken.jpg"),
      ("ignored", "dataset/train/Apple___healthy/notes.txt")]
  assert ds.metadata["num_skipped"] == 1


def test_crop_disease_class_list_is_sorted():
  assert list(sources.CROP_DISEASE_CLASSES) == sorted(
      sources.CROP_DISEASE_CLASSES)
  assert list(sources.EUROSAT_CLASSES) == sorted(sources.EUROSAT_CLASSES)


# ---------------------------------------------------------------------------
# EuroSAT
# ---------------------------------------------------------------------------


def _eurosat_manual(root: Path, classes=sources.EUROSAT_CLASSES) -> Path:
  for c, name in enumerate(classes):
    for j in range(2):
      _write(root / "EuroSAT" / "2750" / name / f"{name}_{j}.jpg",
             10 * c + j, size=(64, 64))
  return root


def test_eurosat(tmp_path, monkeypatch):
  manual = _eurosat_manual(tmp_path / "raw")
  _write_garbage(manual / "EuroSAT/2750/Forest/Forest_99.jpg")
  with pytest.raises(CorruptInputError, match="Forest_99.jpg: cannot read"):
    _build("eurosat", tmp_path, manual)
  monkeypatch.setenv("HOME", str(tmp_path))  # "~" is expanded.
  result = _build("eurosat", tmp_path, "~/raw", skip_corrupt=True)
  ds = result.dataset
  assert ds.class_names == list(sources.EUROSAT_CLASSES)
  assert ds.prompt_names == [
      "Annual Crop Land", "Forest", "Herbaceous Vegetation Land",
      "Highway or Road", "Industrial Buildings", "Pasture Land",
      "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake"]
  assert ds.class_counts().tolist() == [2] * 10
  assert ds.skipped == [{"file": "EuroSAT/2750/Forest/Forest_99.jpg",
                         "row": None, "reason": ds.skipped[0]["reason"]}]
  assert "UnidentifiedImageError" in ds.skipped[0]["reason"]
  # Prepared: a second call reuses it; load_dataset finds it.
  again = _build("eurosat", tmp_path, manual)
  assert again.reused and len(again.dataset) == 20
  loaded = data.load_dataset("eurosat", tmp_path / "data")
  assert loaded.labels.tolist() == ds.labels.tolist()
  assert loaded[5]["image"].shape == (64, 64, 3)


def test_eurosat_incomplete_folder(tmp_path):
  manual = _eurosat_manual(tmp_path / "raw", sources.EUROSAT_CLASSES[:-1])
  with pytest.raises(ManualDataError) as e:
    _build("eurosat", tmp_path, manual)
  assert "Missing class folders: ['SeaLake']" in str(e.value)
  assert "zenodo.org" in str(e.value)  # Download instructions.


@pytest.mark.parametrize("name", ["chestx", "isic2018", "crop_disease"])
def test_missing_or_empty_manual_dir(tmp_path, name):
  with pytest.raises(ManualDataError, match="does not exist"):
    _build(name, tmp_path, tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ManualDataError, match="is empty") as e:
    _build(name, tmp_path, tmp_path / "empty")
  instructions = data.builders.BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS
  assert instructions.strip() in str(e.value)
  (tmp_path / "empty" / "unrelated").mkdir()
  with pytest.raises(ManualDataError, match="Could not find"):
    _build(name, tmp_path, tmp_path / "empty")


# ---------------------------------------------------------------------------
# User image folder and synthetic data
# ---------------------------------------------------------------------------


def test_image_folder(tmp_path):
  manual = tmp_path / "my_pets"
  for c, name in enumerate(["cat", "dog", "red_fox"]):
    for j in range(3):
      _write(manual / name / f"{j}.png", 10 * c + j, "PNG")
  # Grayscale input is stored as the PNG of its RGB conversion.
  _write(manual / "dog" / "gray.png", 5, "PNG", mode="L")
  names = tmp_path / "names.json"
  names.write_text(json.dumps({"dog": "small dog"}))
  result = _build("image_folder", tmp_path, manual, class_names_json=names)
  ds = result.dataset
  assert ds.config == "my_pets"
  assert ds.class_names == ["cat", "dog", "red_fox"]
  assert ds.prompt_names == ["cat", "small dog", "red fox"]
  assert ds.class_counts().tolist() == [3, 4, 3]
  i = ds.files.index("dog/gray.png")
  with Image.open(manual / "dog/gray.png") as src:
    np.testing.assert_array_equal(np.asarray(ds.image(i)),
                                  np.asarray(src.convert("RGB")))
  assert data.load_dataset("image_folder/my_pets", tmp_path / "data").config \
      == "my_pets"

  names.write_text(json.dumps({"wolf": "grey wolf"}))
  with pytest.raises(ManualDataError, match="key 'wolf' is not a class folder"):
    _build("image_folder", tmp_path, manual, class_names_json=names,
           config_name="other")


def test_synthetic_is_deterministic(tmp_path):
  kw = dict(synthetic_classes=3, synthetic_images_per_class=4,
            synthetic_image_size=16)
  a = _build("synthetic", tmp_path / "a", **kw).dataset
  b = _build("synthetic", tmp_path / "b", **kw).dataset
  c = _build("synthetic", tmp_path / "c", synthetic_seed=1, **kw).dataset
  assert a.class_names == ["red circle", "green square", "blue triangle"]
  assert a.class_counts().tolist() == [4, 4, 4]
  assert all(a.encoded(i) == b.encoded(i) for i in range(len(a)))
  assert any(a.encoded(i) != c.encoded(i) for i in range(len(a)))
  assert a.image(0).size == (16, 16)


def test_load_dataset_not_prepared(tmp_path):
  with pytest.raises(DatasetNotPreparedError) as e:
    data.load_dataset("chestx", tmp_path)
  msg = str(e.value)
  assert (f"python tools/prepare_data.py --dataset chestx --manual_dir "
          f"/path/to/raw/chestx --data_dir {tmp_path}") in msg
  assert "nihcc.app.box.com" in msg
  with pytest.raises(DatasetNotPreparedError, match="--dataset synthetic"):
    data.load_dataset("synthetic", tmp_path)
  with pytest.raises(ValueError, match="Unknown dataset 'mnist'"):
    data.load_dataset("mnist", tmp_path)


def test_read_image_file_keeps_rgb_jpeg_bytes(tmp_path):
  path = _write(tmp_path / "x.jpg", 3)
  assert sources.read_image_file(path) == path.read_bytes()
  gray = _write(tmp_path / "g.jpg", 3, mode="L")
  with Image.open(io.BytesIO(sources.read_image_file(gray))) as im:
    assert im.mode == "RGB" and im.format == "PNG"
