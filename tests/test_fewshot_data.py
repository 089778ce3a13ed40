"""CoOp-layout builders of the few-shot datasets: splits, names, errors."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxfsl.data.errors import (
    CorruptInputError,
    DatasetNotPreparedError,
    ManualDataError,
)
from jaxfsl.data.fewshot import builders, fake, layouts, transforms

COUNTS = {"train": 3, "val": 2, "test": 2}


@pytest.mark.parametrize("name", ["caltech101", "oxford_pets", "eurosat",
                                  "fgvc_aircraft"])
def test_builder_gives_the_split_files_splits(tmp_path, name):
  root = fake.make_coop_folder(tmp_path / "raw", name, num_classes=3,
                               counts=COUNTS, image_size=16)
  ds = builders.prepare_fewshot(name, tmp_path / "data", tmp_path / "raw",
                                progress=False)
  spec = layouts.SPECS[name]
  if spec.kind == "json":
    rows = json.loads((root / spec.split_file).read_text())
    expected = {s: [tuple(r) for r in rows[s]] for s in layouts.SPLITS}
  else:  # FGVC: variants.txt + images_variant_<split>.txt.
    variants = (root / "variants.txt").read_text().splitlines()
    expected = {}
    for s in layouts.SPLITS:
      expected[s] = []
      for line in (root / f"images_variant_{s}.txt").read_text().splitlines():
        ident, _, cname = line.partition(" ")
        expected[s].append((ident + ".jpg", variants.index(cname), cname))
  assert ds.splits == ("train", "val", "test")
  for s in layouts.SPLITS:
    assert ds.items(s) == expected[s]
    assert len(ds.split(s)) == 3 * COUNTS[s]
    np.testing.assert_array_equal(ds.split(s).labels,
                                  [y for _, y, _ in expected[s]])
  # Class names as the file has them; prompts replace "_" by a space.
  names = fake.class_names(name, 3)
  if name == "fgvc_aircraft":
    names = [n.replace("_", " ") for n in names]
  assert ds.class_names == names
  assert ds.prompt_names == [n.replace("_", " ") for n in names]
  # Records hold the images themselves.
  rel = ds.items("test")[0][0]
  img_root = root / spec.image_dir if spec.image_dir else root
  np.testing.assert_array_equal(np.asarray(ds.split("test").image(0)),
                                np.asarray(Image.open(img_root / rel)))
  # Reopened from disk.
  again = builders.load_fewshot(name, tmp_path / "data")
  assert again.items("train") == ds.items("train")


def test_imagenet_from_class_folders(tmp_path):
  fake.make_coop_folder(tmp_path / "raw", "imagenet", num_classes=3,
                        counts={"train": 4, "test": 2}, image_size=16)
  ds = builders.prepare_fewshot("imagenet", tmp_path / "data",
                                tmp_path / "raw", progress=False)
  assert ds.splits == ("train", "test")
  assert ds.class_names == ["tench", "goldfish", "great white shark"]
  train = ds.items("train")
  assert train[0] == ("train/n01440764/img_000.JPEG", 0, "tench")
  assert [y for _, y, _ in train] == [0] * 4 + [1] * 4 + [2] * 4
  assert ds.items("test")[-1] == ("val/n01484850/img_001.JPEG", 2,
                                  "great white shark")
  names = layouts.imagenet_class_names()
  assert len(names) == 1000 and list(names)[0] == "n01440764"
  assert list(names.values())[999] == "toilet paper"


@pytest.mark.parametrize("layout", ["coop_images", "clip_lora_root"])
def test_imagenet_folder_variants(tmp_path, layout):
  # CoOp: imagenet/images/{train,val}; CLIP-LoRA: imagenet/{train,val}.
  fake.make_coop_folder(tmp_path / "raw", "imagenet", num_classes=2,
                        counts={"train": 1, "test": 1}, image_size=8)
  if layout == "coop_images":
    (tmp_path / "raw" / "imagenet" / "images").mkdir()
    for sub in ("train", "val"):
      (tmp_path / "raw" / "imagenet" / sub).rename(
          tmp_path / "raw" / "imagenet" / "images" / sub)
  listing = layouts.list_splits(tmp_path / "raw", "imagenet")
  assert len(listing.splits["train"]) == 2 and not listing.problems


@pytest.mark.parametrize("folder", ["caltech-101", "Caltech101"])
def test_folder_name_variants(tmp_path, folder):
  fake.make_coop_folder(tmp_path, "caltech101", num_classes=2,
                        counts=COUNTS, image_size=8, folder=folder)
  # The parent or the dataset folder itself.
  assert layouts.list_splits(tmp_path, "caltech101").root.name == folder
  assert layouts.list_splits(tmp_path / folder,
                             "caltech101").root.name == folder


def test_missing_json_names_file_and_source(tmp_path):
  root = fake.make_coop_folder(tmp_path, "oxford_pets", num_classes=2,
                               counts=COUNTS, image_size=8)
  (root / "split_zhou_OxfordPets.json").unlink()
  with pytest.raises(ManualDataError) as e:
    builders.prepare_fewshot("oxford_pets", tmp_path / "data", tmp_path,
                             progress=False)
  msg = str(e.value)
  assert "split_zhou_OxfordPets.json" in msg
  assert "drive.google.com" in msg and "DATASETS.md" in msg


def test_rows_pointing_nowhere_are_all_listed(tmp_path):
  root = fake.make_coop_folder(tmp_path, "eurosat", num_classes=2,
                               counts=COUNTS, image_size=8)
  rows = json.loads((root / "split_zhou_EuroSAT.json").read_text())
  gone = [rows["train"][1][0], rows["test"][0][0]]
  for rel in gone:
    (root / "2750" / rel).unlink()
  with pytest.raises(CorruptInputError) as e:
    builders.prepare_fewshot("eurosat", tmp_path / "data", tmp_path,
                             progress=False)
  msg = str(e.value)
  assert "2 bad input(s)" in msg
  assert "split_zhou_EuroSAT.json train[1]" in msg
  assert "split_zhou_EuroSAT.json test[0]" in msg
  assert all(rel in msg for rel in gone)
  ds = builders.prepare_fewshot("eurosat", tmp_path / "data", tmp_path,
                                skip_corrupt=True, progress=False)
  assert len(ds.split("train")) == 3 * 2 - 1
  assert len(ds.metadata["skipped"]) == 2


def test_corrupt_image_is_named(tmp_path):
  root = fake.make_coop_folder(tmp_path, "caltech101", num_classes=2,
                               counts=COUNTS, image_size=8)
  rows = json.loads((root / "split_zhou_Caltech101.json").read_text())
  bad = rows["val"][1][0]
  (root / "101_ObjectCategories" / bad).write_bytes(b"\xff\xd8 not a jpeg")
  with pytest.raises(CorruptInputError, match=bad.replace(".", r"\.")):
    builders.prepare_fewshot("caltech101", tmp_path / "data", tmp_path,
                             progress=False)
  ds = builders.prepare_fewshot("caltech101", tmp_path / "data", tmp_path,
                                skip_corrupt=True, progress=False)
  assert bad not in ds.split("val").files
  assert [s["file"] for s in ds.metadata["skipped"]] == [bad]


def test_json_with_unknown_shape_is_reported(tmp_path):
  root = fake.make_coop_folder(tmp_path, "dtd", num_classes=2,
                               counts=COUNTS, image_size=8)
  path = root / "split_zhou_DescribableTextures.json"
  rows = json.loads(path.read_text())
  rows["train"][0] = ["x.jpg", "one"]
  rows["val"][0][2] = "renamed"
  path.write_text(json.dumps(rows))
  listing = layouts.list_splits(tmp_path, "dtd")
  assert len(listing.problems) == 2
  assert "train[0]" in listing.problems[0]
  assert "val[0]" in listing.problems[1] and "renamed" in listing.problems[1]


def test_not_prepared_error_gives_command(tmp_path):
  with pytest.raises(DatasetNotPreparedError,
                     match="prepare_data.py --dataset sun397"):
    builders.load_fewshot("sun397", tmp_path)


def test_transforms_shapes_and_determinism():
  image = Image.fromarray(
      np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8))
  a = transforms.train_view(image, 24, np.random.default_rng([1, 2]))
  b = transforms.train_view(image, 24, np.random.default_rng([1, 2]))
  assert a.shape == (24, 24, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  ev = transforms.eval_view(image, 24)
  # Shorter side 40 -> 24, longer 60 -> 36, centre crop 24 of 36.
  expected = np.asarray(image.resize((36, 24), Image.BICUBIC))[:, 6:30]
  np.testing.assert_array_equal(ev, expected)
  for seed in range(50):
    top, left, h, w = transforms.crop_box(np.random.default_rng(seed), 60, 40)
    assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
    assert 0.08 * 2400 * 0.9 <= h * w <= 2400


def _prepare_data_main():
  import importlib.util
  from pathlib import Path
  path = Path(__file__).resolve().parents[1] / "tools" / "prepare_data.py"
  spec = importlib.util.spec_from_file_location("_prepare_data_fs", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main


def test_prepare_data_tool(tmp_path, capsys):
  main = _prepare_data_main()
  fake.make_coop_folder(tmp_path / "raw", "eurosat", num_classes=2,
                        counts=COUNTS, image_size=8)
  argv = ["--dataset", "fewshot/eurosat", "--manual_dir",
          str(tmp_path / "raw"), "--data_dir", str(tmp_path / "data"),
          "--no_progress"]
  assert main(argv) == 0
  out = capsys.readouterr().out
  assert "fewshot/eurosat prepared" in out and "train 6" in out
  assert builders.load_fewshot("eurosat", tmp_path / "data").num_classes == 2
  # A missing split file: exit 1, the file named on stderr.
  (tmp_path / "raw2").mkdir()
  assert main(["--dataset", "caltech101", "--manual_dir",
               str(tmp_path / "raw2"), "--data_dir",
               str(tmp_path / "data")]) == 1
  assert "split_zhou_Caltech101.json" in capsys.readouterr().err


def test_train_batches_depend_only_on_seed_and_step():
  from jaxfsl.data.fewshot import pipeline

  rng = np.random.default_rng(0)
  images = [Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8))
            for _ in range(5)]
  labels = [0, 1, 2, 0, 1]
  make = lambda seed: pipeline.TrainBatches(  # noqa: E731
      images.__getitem__, labels, seed=seed, batch_size=4, image_size=16,
      with_clean=True)
  a = make(1)
  batches = list(a.iterate(0, 5, num_threads=3))
  assert len(batches) == 5
  for step, b in enumerate(batches):
    direct = make(1)(step)
    for key in ("images", "clean", "labels"):
      np.testing.assert_array_equal(b[key], direct[key])
    assert b["images"].shape == (4, 16, 16, 3) and b["labels"].dtype == np.int32
  assert not np.array_equal(make(2)(0)["images"], batches[0]["images"])
  # Each epoch of 5 items is a permutation: steps 0..4 cover 4 epochs.
  idx = np.concatenate([pipeline.stream_indices(1, s, 4, 5)
                        for s in range(5)])
  for e in range(4):
    assert sorted(idx[5 * e:5 * e + 5]) == list(range(5))
  # Eval batches: padded to the device multiple, masked.
  ev = pipeline.EvalBatches(images.__getitem__, labels, batch_size=2,
                            image_size=8, pad_multiple=4)
  out = list(ev.iterate())
  assert len(out) == 3 and out[-1]["images"].shape[0] == 4
  assert out[-1]["mask"].tolist() == [True, False, False, False]


def test_short_classes_are_warned_about_and_recorded(tmp_path, caplog):
  """shot > a class's images: sampled with replacement as CLIP-LoRA, with a
  warning naming the class, its image count and the shot, and a record of
  the distinct images drawn."""
  from jaxfsl.protocols.fewshot import runner

  fake.make_coop_folder(tmp_path / "raw", "caltech101", num_classes=3,
                        counts={"train": 2, "val": 4, "test": 1},
                        image_size=16)
  ds = builders.prepare_fewshot("caltech101", tmp_path / "data",
                                tmp_path / "raw", progress=False)
  short = []
  with caplog.at_level("WARNING"):
    split = runner.kshot_split(ds, 3, 1, short)
  assert len(split["train"]) == 3 * 3  # Still K per class.
  assert len(split["val"]) == 3 * 3  # min(K, 4) = 3 <= 4 images: no warning.
  names = fake.class_names("caltech101", 3)
  # In order of first appearance in the split (CLIP-LoRA's draw order).
  assert sorted((s["split"], s["label"], s["class"], s["images"], s["shots"])
                for s in short) == [("train", y, n, 2, 3)
                                    for y, n in enumerate(names)]
  for s in short:
    drawn = {r for r, y, _ in split["train"] if y == s["label"]}
    assert s["unique"] == len(drawn) <= 2
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING" and "replacement" in r.getMessage()]
  assert len(warnings) == 3
  assert all(f"'{s['class']}'" in w and "has 2 images" in w and "shot=3" in w
             for s, w in zip(short, warnings, strict=True))
