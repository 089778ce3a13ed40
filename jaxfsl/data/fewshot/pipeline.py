"""The few-shot trainer's input pipeline on grain.

Training batches: the K-shot train items are read as a stream of epochs,
each a permutation drawn from ``np.random.default_rng([seed, epoch])``;
step s takes stream positions [s B, (s + 1) B). Every batch is therefore
full (CLIP-LoRA's DataLoader has ``drop_last=False`` and ends each epoch on a
short batch; here the batch runs on into the next epoch instead, keeping
one compiled step and an even split over devices). Row r of step s is
augmented with ``np.random.default_rng([seed, s, r])``, so a batch depends
only on (seed, step): a resumed run sees the very same batches.

grain builds batches on ``num_threads`` threads (PIL releases the GIL while
decoding and resizing) and keeps ``prefetch`` of them ahead of the device.

Batch dict (numpy):
  images  uint8 [B, S, S, 3]  RandomResizedCrop + flip views.
  clean   uint8 [B, S, S, 3]  the same images, eval transform (only with
                              ``with_clean``: RA's g).
  labels  int32 [B].
Eval batch dict: images uint8 [B, S, S, 3] (eval transform), labels int32
[B], mask bool [B] (False on the padding of the last batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from jaxfsl.data.fewshot import transforms

ImageFn = Callable[[int], Image.Image]


def stream_indices(seed: int, step: int, batch_size: int,
                   num_items: int) -> np.ndarray:
  """int64 [B]: the item indices of training step ``step``."""
  start = step * batch_size
  positions = np.arange(start, start + batch_size)
  epochs, offsets = np.divmod(positions, num_items)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(num_items)
    sel = epochs == epoch
    out[sel] = perm[offsets[sel]]
  return out


class TrainBatches:
  """Deterministic training batches (see the module docstring).

  Args:
    image_fn: item index -> PIL image (decoded source image).
    labels: int [num_items] label of each K-shot item.
    seed: run seed.
    batch_size: B.
    image_size: S.
    with_clean: also return the eval-transformed images (RA).
    resample: PIL filter ("bicubic").
    center_crop: eval transform crops (CLIP) or squashes (SigLIP).
  """

  def __init__(self, image_fn: ImageFn, labels: Sequence[int], *, seed: int,
               batch_size: int, image_size: int, with_clean: bool = False,
               resample: str = "bicubic", center_crop: bool = True):
    self.image_fn = image_fn
    self.labels = np.asarray(labels, np.int32)
    if not len(self.labels):
      raise ValueError("TrainBatches: no training item.")
    self.seed, self.batch_size, self.image_size = seed, batch_size, image_size
    self.with_clean, self.resample = with_clean, resample
    self.center_crop = center_crop

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    """The batch of training step ``step``."""
    idx = stream_indices(self.seed, int(step), self.batch_size,
                         len(self.labels))
    views, clean = [], []
    for row, i in enumerate(idx):
      image = self.image_fn(int(i))
      rng = np.random.default_rng([self.seed, int(step), row])
      views.append(transforms.train_view(image, self.image_size, rng,
                                         self.resample))
      if self.with_clean:
        clean.append(transforms.eval_view(image, self.image_size,
                                          self.resample, self.center_crop))
    batch = {"images": np.stack(views), "labels": self.labels[idx]}
    if self.with_clean:
      batch["clean"] = np.stack(clean)
    return batch

  def iterate(self, start: int, stop: int, num_threads: int = 4,
              prefetch: int = 4) -> Iterator[dict[str, np.ndarray]]:
    """Batches of steps start, ..., stop - 1, built ahead on threads."""
    return _iterate(self, start, stop, num_threads, prefetch)


class EvalBatches:
  """Eval batches of a split, padded to a multiple of ``pad_multiple``.

  Args:
    image_fn: index -> PIL image; labels: int [N].
    batch_size, image_size, resample, center_crop: as TrainBatches.
    pad_multiple: every batch (also the last) has a multiple of this many
      rows (the device count).
  """

  def __init__(self, image_fn: ImageFn, labels: Sequence[int], *,
               batch_size: int, image_size: int, resample: str = "bicubic",
               center_crop: bool = True, pad_multiple: int = 1):
    self.image_fn = image_fn
    self.labels = np.asarray(labels, np.int32)
    self.batch_size, self.image_size = batch_size, image_size
    self.resample, self.center_crop = resample, center_crop
    self.pad_multiple = pad_multiple

  def __len__(self) -> int:
    return -(-len(self.labels) // self.batch_size)

  def __call__(self, b: int) -> dict[str, np.ndarray]:
    idx = np.arange(b * self.batch_size,
                    min((b + 1) * self.batch_size, len(self.labels)))
    rows = -(-len(idx) // self.pad_multiple) * self.pad_multiple
    images = np.zeros((rows, self.image_size, self.image_size, 3), np.uint8)
    for r, i in enumerate(idx):
      images[r] = transforms.eval_view(self.image_fn(int(i)), self.image_size,
                                       self.resample, self.center_crop)
    labels = np.zeros(rows, np.int32)
    labels[:len(idx)] = self.labels[idx]
    mask = np.arange(rows) < len(idx)
    return {"images": images, "labels": labels, "mask": mask}

  def iterate(self, num_threads: int = 4, prefetch: int = 2
              ) -> Iterator[dict[str, np.ndarray]]:
    return _iterate(self, 0, len(self), num_threads, prefetch)


def _iterate(fn: Callable[[int], Any], start: int, stop: int,
             num_threads: int, prefetch: int) -> Iterator[Any]:
  if stop <= start:
    return iter(())
  ds = grain.MapDataset.range(start, stop).map(fn)
  return iter(ds.to_iter_dataset(grain.ReadOptions(
      num_threads=max(1, num_threads),
      prefetch_buffer_size=max(1, prefetch))))
