"""Issue 10, "Inputs that are silently wrong or fail late": 16-bit images,
empty classes, macOS AppleDouble and hidden files, the NIH box's ChestX label
file, every bad input listed in one pass (through the tool too) and the
small-class message."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxfsl import data
from jaxfsl.data import csv_sources, images, sources
from jaxfsl.data.errors import CorruptInputError

_REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, seed: int, size: int = 16, mode: str = "RGB") -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  shape = (size, size, 3) if mode == "RGB" else (size, size)
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8),
                  mode).save(path, format="PNG")
  return path


def _write_16bit(path: Path) -> np.ndarray:
  """A 16x16 16-bit gradient 0..65535; returns its uint16 pixels."""
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)
  Image.fromarray(pixels).save(path, format="PNG")
  with Image.open(path) as im:
    assert im.mode == "I;16"  # What Pillow gives for a 16-bit PNG.
  return pixels


def _appledouble(path: Path) -> Path:
  """What macOS leaves beside each file on a non-HFS volume: not an image."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
  return path


def _prepare(name, tmp_path, manual, **kwargs):
  return data.prepare_dataset(name, tmp_path / "data", manual,
                              progress=False, num_workers=2, **kwargs)


def test_input_16bit_png_is_scaled_not_clipped_and_reported(tmp_path):
  manual = tmp_path / "xrays"
  for j in range(2):
    _write(manual / "normal" / f"{j}.png", j)
  pixels = _write_16bit(manual / "normal" / "deep.png")
  _write(manual / "gray" / "0.png", 7, mode="L")
  result = _prepare("image_folder", tmp_path, manual)
  ds = result.dataset
  got = np.asarray(ds.image(ds.files.index("normal/deep.png")))
  want = np.round(pixels.astype(np.float64) * 255 / 65535).astype(np.uint8)
  np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, -1))
  assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) == 256
  assert result.converted_modes == {"I;16": 1, "L": 1}
  assert ("Converted 2 image(s) to 8-bit RGB: 1 x I;16 (16-bit, scaled to 8 "
          "bits), 1 x L") in result.summary()
  # ChestX's resize path scales too (the release would give white).
  stored, mode = images.read_chestx(manual / "normal" / "deep.png")
  assert mode == "I;16"
  chestx = np.asarray(data.dataset.decode_image(stored))
  assert chestx.shape == (256, 256, 3) and 100 < chestx.mean() < 155


def test_input_empty_class_folder_is_reported_at_prepare_time(tmp_path):
  manual = tmp_path / "pets"
  for j in range(2):
    _write(manual / "cat" / f"{j}.png", j)
    _write(manual / "dog" / f"{j}.png", 10 + j)
  (manual / "owl").mkdir()
  _appledouble(manual / "owl" / "._0.png")  # Hidden files do not count.
  with pytest.raises(CorruptInputError) as e:
    _prepare("image_folder", tmp_path, manual)
  assert "owl/: empty class folder: no image file in it" in str(e.value)
  result = _prepare("image_folder", tmp_path, manual, skip_corrupt=True)
  # Left out of the label set, and reported.
  assert result.dataset.class_names == ["cat", "dog"]
  assert result.dataset.skipped[0]["file"] == "owl/"
  assert "owl/: empty class folder" in result.summary()


def test_input_empty_class_of_a_fixed_dataset_is_reported(tmp_path):
  manual = tmp_path / "raw"
  for c, name in enumerate(sources.EUROSAT_CLASSES):
    if name != "River":
      _write(manual / name / "0.png", c)
  (manual / "River").mkdir()
  with pytest.raises(CorruptInputError, match="River/: empty class folder"):
    _prepare("eurosat", tmp_path, manual)


def test_input_appledouble_and_hidden_files_are_skipped_and_counted(tmp_path):
  manual = tmp_path / "pets"
  for j in range(2):
    _write(manual / "cat" / f"{j}.png", j)
    _appledouble(manual / "cat" / f"._{j}.png")
  (manual / "cat" / ".DS_Store").write_bytes(b"\0" * 8)
  _write(manual / "cat" / ".thumbnails" / "t.png", 9)
  _appledouble(manual / "._cat")
  result = _prepare("image_folder", tmp_path, manual)
  ds = result.dataset
  assert ds.files == ["cat/0.png", "cat/1.png"]
  ignored = ds.metadata["ignored"]
  assert sorted(p["file"] for p in ignored) == [
      "._cat", "cat/.DS_Store", "cat/._0.png", "cat/._1.png",
      "cat/.thumbnails/"]
  assert all("hidden file" in p["reason"] for p in ignored)
  summary = result.summary()
  assert "Ignored 5 file(s)" in summary
  assert "5 x hidden file (a dotfile, or a macOS AppleDouble '._*' file)" \
      in summary
  rows = result.report_path.read_text().splitlines()
  assert sum(r.startswith("ignored\t") for r in rows) == 5


def test_input_error_text_names_the_file_not_a_buffer(tmp_path):
  manual = tmp_path / "pets"
  _write(manual / "cat" / "0.png", 0)
  broken = manual / "cat" / "broken.png"
  broken.write_bytes(b"not an image at all")
  with pytest.raises(CorruptInputError) as e:
    _prepare("image_folder", tmp_path, manual)
  msg = str(e.value)
  assert "cat/broken.png: cannot read image" in msg
  assert "cannot identify image file 'broken.png'" in msg
  assert "BytesIO" not in msg and "0x" not in msg
  with pytest.raises(OSError) as e:
    images.read_image(broken)
  assert "broken.png" in str(e.value) and "BytesIO" not in str(e.value)


def _chestx(root: Path, csv_names: tuple[str, ...]) -> Path:
  for c in range(len(sources.CHESTX_CLASSES)):
    _write(root / "images" / f"{c:08d}_000.png", c, mode="L")
  for k, csv_name in enumerate(csv_names):
    with open(root / csv_name, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["Image Index", "Finding Labels", "Follow-up #"])
      # The files differ in one row so that the one used can be told apart.
      for c, label in enumerate(sources.CHESTX_CLASSES):
        w.writerow([f"{c:08d}_000.png", "No Finding" if (k, c) == (1, 0)
                    else label, 0])
  return root


def test_input_chestx_nih_box_label_file_is_accepted(tmp_path):
  v2020 = "Data_Entry_2017_v2020.csv"
  manual = _chestx(tmp_path / "box", (v2020,))
  result = _prepare("chestx", tmp_path / "a", manual, skip_corrupt=True)
  assert result.dataset.metadata["csv_name"] == v2020
  assert f"Labels read from {v2020}." in result.summary()
  # Both present: the 2017 file is preferred (and said so).
  both = _chestx(tmp_path / "both", (csv_sources.CHESTX_CSV, v2020))
  result = _prepare("chestx", tmp_path / "b", both)
  assert result.dataset.metadata["csv_name"] == csv_sources.CHESTX_CSV
  assert len(result.dataset) == 7  # The v2020 file's "No Finding" unused.


def _many_bad_inputs(root: Path) -> Path:
  """ChestX with one of each: corrupt image, CSV row naming no file, empty
  class (no row of it), AppleDouble file; plus good rows."""
  rows = []
  for c, label in enumerate(sources.CHESTX_CLASSES[:-1]):  # No Pneumothorax.
    name = f"{c:08d}_000.png"
    _write(root / "images" / name, c, mode="L")
    _appledouble(root / "images" / f"._{name}")
    rows.append([name, label])
  (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  rows.append(["corrupt.png", "Mass"])     # line 8
  rows.append(["nowhere.png", "Nodule"])  # line 9
  with open(root / csv_sources.CHESTX_CSV, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["Image Index", "Finding Labels"])
    w.writerows(rows)
  return root


def test_input_every_bad_input_listed_in_one_pass_through_the_tool(tmp_path):
  manual = _many_bad_inputs(tmp_path / "raw")
  env = dict(os.environ, PYTHONPATH=str(_REPO), JAX_PLATFORMS="cpu")
  cmd = [sys.executable, str(_REPO / "tools" / "prepare_data.py"),
         "--dataset", "chestx", "--manual_dir", str(manual), "--data_dir",
         str(tmp_path / "data"), "--no_progress"]
  done = subprocess.run(cmd, capture_output=True, text=True, env=env,
                        check=False)
  assert done.returncode == 1
  err = done.stderr[done.stderr.index("ERROR: "):]
  assert err.startswith(f"ERROR: 3 bad input(s) in {manual}:")
  assert "Data_Entry_2017.csv line 9: images/nowhere.png: image file not " \
      "found" in err
  assert "Data_Entry_2017.csv line 8: images/corrupt.png: cannot read " \
      "image" in err
  assert "Data_Entry_2017.csv: empty class: no usable row of class " \
      "'Pneumothorax'" in err
  assert "(6 other file(s) ignored: hidden files such as macOS '._*'" in err
  report = tmp_path / "data" / "chestx" / "bad_inputs.tsv"
  assert f"All of them are listed in {report}." in err
  assert err.rstrip().endswith(
      "Pass --skip_corrupt (skip_corrupt=True) to skip bad inputs; each one "
      "is then listed in a report.")
  rows = list(csv.DictReader(report.read_text().splitlines()[1:],
                             delimiter="\t"))
  assert [r["kind"] for r in rows] == ["bad"] * 3 + ["ignored"] * 6
  assert rows[3]["file"] == "images/._00000000_000.png"

  done = subprocess.run(cmd + ["--skip_corrupt"], capture_output=True,
                        text=True, env=env, check=False)
  assert done.returncode == 0, done.stderr
  assert "SKIPPED 3 bad input(s)" in done.stdout
  assert "6 x hidden file" in done.stdout
  assert not report.exists()  # A successful build removes the old list.


def test_input_error_lists_the_first_few_then_counts(tmp_path):
  manual = tmp_path / "pets"
  _write(manual / "cat" / "ok.png", 0)
  for j in range(13):
    (manual / "cat" / f"bad{j:02d}.png").write_bytes(b"junk")
  with pytest.raises(CorruptInputError) as e:
    _prepare("image_folder", tmp_path, manual)
  msg = str(e.value)
  assert msg.startswith("13 bad input(s)")
  assert "cat/bad09.png" in msg and "cat/bad10.png" not in msg
  assert "... and 3 more." in msg
  assert len(e.value.problems) == 13


def test_input_small_class_error_gives_the_command_line_switch():
  labels = np.repeat(np.arange(3), [5, 5, 2])
  ds = data.InMemoryDataset(np.zeros((12, 4, 4, 3), np.uint8), labels,
                            ["a", "b", "c"])
  with pytest.raises(ValueError) as e:
    data.EpisodeSampler(ds, way=2, shot=1, query=2, image_size=4)
  assert "'c' (label 2) has 2" in str(e.value)
  assert "--config.dataset.exclude_small_classes=True" in str(e.value)


def test_input_macos_zip_mirror_folder_is_not_data(tmp_path):
  # A zip made on a Mac holds __MACOSX/<same tree>/._<file> beside the data:
  # it is neither a class nor part of the source fingerprint.
  manual = tmp_path / "pets"
  for c, name in enumerate(["cat", "dog"]):
    _write(manual / name / "0.png", c)
    _appledouble(manual / "__MACOSX" / name / "._0.png")
  result = _prepare("image_folder", tmp_path, manual)
  assert result.dataset.class_names == ["cat", "dog"]
  assert "__MACOSX" not in str(result.dataset.metadata["source"])
