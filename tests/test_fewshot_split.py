"""CLIP-LoRA's K-shot split: jaxfsl's list equals the original procedure's."""

import json
import random
from collections import defaultdict

import pytest

from jaxfsl.data.fewshot import split as fsplit


class _Datum:
  """Stand-in for Dassl's Datum (impath, label, classname)."""

  def __init__(self, impath, label, classname):
    self.impath, self.label, self.classname = impath, label, classname


def _generate_fewshot_dataset(data_source, num_shots, repeat=True):
  """Dassl DatasetBase.generate_fewshot_dataset as CLIP-LoRA ships it
  (datasets/utils.py), one data source, global ``random``."""
  if num_shots < 1:
    return data_source
  tracker = defaultdict(list)
  for item in data_source:
    tracker[item.label].append(item)
  dataset = []
  for _, items in tracker.items():
    if len(items) >= num_shots:
      sampled = random.sample(items, num_shots)
    elif repeat:
      sampled = random.choices(items, k=num_shots)
    else:
      sampled = items
    dataset.extend(sampled)
  return dataset


def _clip_lora(train, val, shots, seed):
  """CLIP-LoRA main.py: set_random_seed(seed), then e.g. Caltech101:
  val drawn first with min(K, 4) shots, then train with K."""
  random.seed(seed)
  val_d = [_Datum(*x) for x in val]
  train_d = [_Datum(*x) for x in train]
  v = _generate_fewshot_dataset(val_d, num_shots=min(shots, 4))
  t = _generate_fewshot_dataset(train_d, num_shots=shots)
  as_tuples = lambda ds: [(d.impath, d.label, d.classname) for d in ds]
  return {"train": as_tuples(t), "val": as_tuples(v)}


def _clip_lora_imagenet(train, shots, seed):
  """CLIP-LoRA datasets/imagenet.py: per label (ImageFolder order),
  random.sample(items, K + min(4, K)); first K train, rest val."""
  random.seed(seed)
  by_label = defaultdict(list)
  for item in train:
    by_label[item[1]].append(item)
  n_val = min(4, shots)
  t, v = [], []
  for _, items in by_label.items():
    samples = random.sample(items, shots + n_val)
    t = t + samples[0:shots]
    v = v + samples[shots:shots + n_val]
  return {"train": t, "val": v}


def _items(prefix, per_class, order=(2, 0, 1)):
  # Classes interleaved, first appearance 2, 0, 1 (not label order).
  return [(f"c{c}/{prefix}{i}.jpg", c, f"cls_{c}")
          for i in range(per_class) for c in order]


TRAIN = _items("tr", 5) + [("c3/tr0.jpg", 3, "cls_3")]  # class 3: 1 image.
VAL = _items("va", 3) + [("c3/va0.jpg", 3, "cls_3")]


@pytest.mark.parametrize("shots,seed", [(1, 1), (2, 1), (4, 2), (8, 3),
                                        (16, 1)])
def test_split_equals_clip_lora_procedure(shots, seed):
  got = fsplit.fewshot_split({"train": TRAIN, "val": VAL}, shots, seed)
  assert got == _clip_lora(TRAIN, VAL, shots, seed)
  assert len(got["train"]) == 4 * shots
  assert len(got["val"]) == 4 * min(shots, 4)


def test_split_pinned_literal_case():
  """K=2, seed 1 and K=4, seed 2 (val with replacement: 3 < 4 per class)."""
  tr, va = _items("tr", 5), _items("va", 3)
  got = fsplit.fewshot_split({"train": tr, "val": va}, 2, 1)
  assert [r for r, _, _ in got["train"]] == [
      "c2/tr3.jpg", "c2/tr4.jpg", "c0/tr1.jpg", "c0/tr0.jpg", "c1/tr3.jpg",
      "c1/tr0.jpg"]
  assert [r for r, _, _ in got["val"]] == [
      "c2/va0.jpg", "c2/va2.jpg", "c0/va1.jpg", "c0/va0.jpg", "c1/va1.jpg",
      "c1/va2.jpg"]
  got = fsplit.fewshot_split({"train": tr, "val": va}, 4, 2)
  assert [r for r, _, _ in got["val"]] == [
      "c2/va2.jpg", "c2/va2.jpg", "c2/va0.jpg", "c2/va0.jpg", "c0/va2.jpg",
      "c0/va2.jpg", "c0/va2.jpg", "c0/va0.jpg", "c1/va1.jpg", "c1/va1.jpg",
      "c1/va1.jpg", "c1/va0.jpg"]


@pytest.mark.parametrize("shots,seed", [(1, 1), (4, 2), (16, 3)])
def test_imagenet_split_equals_clip_lora_procedure(shots, seed):
  train = [(f"train/n{c:08d}/{i}.JPEG", c, f"name{c}")
           for c in range(3) for i in range(25)]
  got = fsplit.fewshot_split({"train": train}, shots, seed, imagenet=True)
  assert got == _clip_lora_imagenet(train, shots, seed)
  assert not set(got["train"]) & set(got["val"])


def test_imagenet_too_few_images_is_an_error():
  train = [(f"n0/{i}.JPEG", 0, "a") for i in range(5)]
  with pytest.raises(ValueError, match="class 0 has 5 train images"):
    fsplit.fewshot_split({"train": train}, 4, 1, imagenet=True)


def test_split_does_not_touch_global_random():
  random.seed(123)
  expected = random.random()
  random.seed(123)
  fsplit.fewshot_split({"train": TRAIN, "val": VAL}, 2, 1)
  assert random.random() == expected


def test_write_and_read_split(tmp_path):
  got = fsplit.fewshot_split({"train": TRAIN, "val": VAL}, 2, 1)
  path = fsplit.write_split(tmp_path / "fewshot_split.json", got)
  data = json.loads(path.read_text())
  assert set(data) == {"train", "val"}
  assert data["train"][0] == list(got["train"][0])
  assert fsplit.read_split(path) == got


def test_bad_shots():
  with pytest.raises(ValueError, match="shots must be >= 1"):
    fsplit.fewshot_split({"train": TRAIN, "val": VAL}, 0, 1)
