"""Issue 10, "Paths and stale state": preparing a dataset name again after its
source changed is refused (naming the difference and --overwrite), the
leftovers of a killed prepare are cleaned, and every path accepts ``~``."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxfsl import data
from jaxfsl.data import csv_sources, sources
from jaxfsl.data.errors import StaleDatasetError

_REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, seed: int, size: int = 16) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3),
                                                dtype=np.uint8)
  Image.fromarray(pixels).save(path, format="PNG")
  return path


def _folder(root: Path, classes=("cat", "dog"), per_class=2) -> Path:
  for c, name in enumerate(classes):
    for j in range(per_class):
      _write(root / name / f"{j}.png", 10 * c + j)
  return root


def _eurosat(root: Path) -> Path:
  for c, name in enumerate(sources.EUROSAT_CLASSES):
    for j in range(2):
      _write(root / "2750" / name / f"{name}_{j}.png", 10 * c + j)
  return root


def _prepare(name, tmp_path, manual, **kwargs):
  return data.prepare_dataset(name, tmp_path / "data", manual,
                              progress=False, num_workers=1, **kwargs)


def test_stale_state_new_class_is_refused_then_overwrite_rebuilds(tmp_path):
  manual = _folder(tmp_path / "pets")
  first = _prepare("image_folder", tmp_path, manual)
  assert first.dataset.class_names == ["cat", "dog"]
  _folder(manual, classes=("fox",))
  with pytest.raises(StaleDatasetError) as e:
    _prepare("image_folder", tmp_path, manual)
  msg = str(e.value)
  assert "class_dirs: was ['cat', 'dog'], now ['cat', 'dog', 'fox']" in msg
  assert "new folder(s) with files: 'fox'" in msg
  assert "--overwrite" in msg and "overwrite=True" in msg
  # The stale dataset is left as it was.
  assert data.load_dataset("image_folder/pets", tmp_path / "data"
                           ).class_names == ["cat", "dog"]
  again = _prepare("image_folder", tmp_path, manual, overwrite=True)
  assert not again.reused
  assert again.dataset.class_names == ["cat", "dog", "fox"]
  assert _prepare("image_folder", tmp_path, manual).reused


def test_stale_state_more_images_are_refused(tmp_path):
  manual = _eurosat(tmp_path / "raw")
  _prepare("eurosat", tmp_path, manual)
  _write(manual / "2750/Forest/Forest_9.png", 99)
  with pytest.raises(StaleDatasetError,
                     match=r"folder '2750/Forest' changed: 2 -> 3 files"):
    _prepare("eurosat", tmp_path, manual)
  # A modified image (same name, other size) is a change too.
  (manual / "2750/Forest/Forest_9.png").unlink()
  _write(manual / "2750/River/River_0.png", 5, size=20)
  with pytest.raises(StaleDatasetError, match="folder '2750/River' changed"):
    _prepare("eurosat", tmp_path, manual)


def test_stale_state_another_manual_dir_is_refused(tmp_path):
  manual = _eurosat(tmp_path / "raw")
  _prepare("eurosat", tmp_path, manual)
  other = tmp_path / "raw_copy"
  shutil.copytree(manual, other)
  with pytest.raises(StaleDatasetError) as e:
    _prepare("eurosat", tmp_path, other)
  assert f"manual folder: was {manual.resolve()}, now {other.resolve()}" \
      in str(e.value)


def _chestx(root: Path, archives: int) -> Path:
  rows = []
  for a in range(archives):
    for c, label in enumerate(sources.CHESTX_CLASSES):
      name = f"{a:04d}{c:04d}_000.png"
      _write(root / f"images_{a + 1:03d}" / "images" / name, 10 * a + c)
      rows.append([name, label])
  with open(root / csv_sources.CHESTX_CSV, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["Image Index", "Finding Labels"])
    w.writerows(rows)
  return root


def test_stale_state_chestx_archive_extracted_later_is_refused(tmp_path):
  manual = _chestx(tmp_path / "nih", archives=1)
  first = _prepare("chestx", tmp_path, manual, skip_corrupt=True)
  assert len(first.dataset) == 7
  _chestx(manual, archives=2)  # images_002 extracted, CSV rewritten.
  with pytest.raises(StaleDatasetError) as e:
    _prepare("chestx", tmp_path, manual)
  msg = str(e.value)
  assert "new folder(s) with files: 'images_002/images'" in msg
  assert "folder '.' changed" in msg  # The CSV beside the archives.
  assert len(_prepare("chestx", tmp_path, manual,
                      overwrite=True).dataset) == 14


def test_stale_state_unchanged_source_is_reused(tmp_path):
  manual = _folder(tmp_path / "pets")
  _prepare("image_folder", tmp_path, manual)
  # Finder's .DS_Store and other hidden files are no change of the data.
  (manual / "cat" / ".DS_Store").write_bytes(b"\0" * 10)
  again = _prepare("image_folder", tmp_path, manual)
  assert again.reused
  assert "already prepared (reused)" in again.summary()
  source = again.dataset.metadata["source"]
  assert source["manual_dir"] == str(manual.resolve())
  assert source["folders"]["cat"][:2] == [2, sum(
      (manual / "cat" / f"{j}.png").stat().st_size for j in range(2))]


def test_stale_state_synthetic_options_are_compared(tmp_path):
  _prepare("synthetic", tmp_path, None, synthetic_classes=2,
           synthetic_images_per_class=2, synthetic_image_size=8,
           config_name="mine")
  with pytest.raises(StaleDatasetError, match="images_per_class: was 2, now 3"):
    _prepare("synthetic", tmp_path, None, synthetic_classes=2,
             synthetic_images_per_class=3, synthetic_image_size=8,
             config_name="mine")


def test_stale_state_incomplete_folders_of_a_killed_prepare_are_cleaned(
    tmp_path, caplog):
  manual = _eurosat(tmp_path / "raw")
  leftover = tmp_path / "data" / "eurosat" / "incomplete.AB12CD_1.0.0"
  (leftover / "eurosat-train.array_record-00000-of-00001").parent.mkdir(
      parents=True)
  (leftover / "eurosat-train.array_record-00000-of-00001").write_bytes(b"x")
  with caplog.at_level(logging.WARNING):
    result = _prepare("eurosat", tmp_path, manual)
  assert not leftover.exists()
  assert result.cleaned == [leftover]
  assert "Removed 1 leftover folder(s) of an interrupted prepare" in \
      result.summary()
  assert "interrupted prepare" in caplog.text
  assert sorted(p.name for p in leftover.parent.iterdir()) == ["1.0.0"]
  # Also when the dataset itself is reused.
  leftover.mkdir()
  assert _prepare("eurosat", tmp_path, manual).cleaned == [leftover]
  assert not leftover.exists()


def _tool(*args: str, home: Path) -> subprocess.CompletedProcess:
  env = dict(os.environ, HOME=str(home), PYTHONPATH=str(_REPO),
             JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, str(_REPO / "tools" / "prepare_data.py"), *args,
       "--no_progress", "--num_workers", "1"],
      capture_output=True, text=True, env=env, cwd=home, check=False)


def test_paths_tilde_everywhere_and_overwrite_through_the_tool(tmp_path):
  _folder(tmp_path / "pets")
  (tmp_path / "names.json").write_text(json.dumps({"dog": "good dog"}))
  # "--flag=~/x": the shell does not expand "~" after "=", jaxfsl does.
  args = ["--dataset", "image_folder", "--manual_dir=~/pets",
          "--data_dir=~/data", "--class_names_json=~/names.json"]
  done = _tool(*args, home=tmp_path)
  assert done.returncode == 0, done.stderr
  ds = data.load_dataset("image_folder/pets", tmp_path / "data")
  assert ds.prompt_names == ["cat", "good dog"]
  _folder(tmp_path / "pets", classes=("cat",), per_class=3)
  refused = _tool(*args, home=tmp_path)
  assert refused.returncode == 1
  assert refused.stderr.startswith("ERROR: ")
  assert "folder 'cat' changed: 2 -> 3 files" in refused.stderr
  assert "--overwrite" in refused.stderr
  rebuilt = _tool(*args, "--overwrite", home=tmp_path)
  assert rebuilt.returncode == 0, rebuilt.stderr
  assert data.load_dataset("image_folder/pets", tmp_path / "data"
                           ).class_counts().tolist() == [3, 2]


def test_paths_tilde_and_vars_in_the_library(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.setenv("MY_DATA", str(tmp_path / "store"))
  _folder(tmp_path / "pets")
  (tmp_path / "names.json").write_text(json.dumps({"cat": "kitty"}))
  result = data.prepare_dataset(
      "image_folder", "$MY_DATA", "~/pets", class_names_json="~/names.json",
      progress=False, num_workers=1)
  assert result.dataset.path == tmp_path / "store/image_folder/pets/1.0.0"
  assert result.dataset.prompt_names == ["kitty", "dog"]
  assert data.load_dataset("image_folder", "~/store").prompt_names == [
      "kitty", "dog"]
  monkeypatch.setenv(data.dataset.DATA_DIR_ENV, "~/store")
  assert data.default_data_dir() == tmp_path / "store"
  assert data.dataset_dir("eurosat", "~/x") == tmp_path / "x/eurosat/1.0.0"


def test_stale_state_failed_overwrite_keeps_the_previous_build(tmp_path):
  manual = _folder(tmp_path / "pets")
  first = _prepare("image_folder", tmp_path, manual)
  (manual / "cat" / "broken.png").write_bytes(b"junk")
  with pytest.raises(data.CorruptInputError, match="cat/broken.png"):
    _prepare("image_folder", tmp_path, manual, overwrite=True)
  kept = data.load_dataset("image_folder/pets", tmp_path / "data")
  assert kept.files == first.dataset.files
  assert sorted(p.name for p in kept.path.parent.iterdir()) == [
      "1.0.0", "bad_inputs.tsv"]
