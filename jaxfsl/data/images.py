"""Reading and validating raw image files at prepare time, and the ordered
parallel map that decodes them.

Every reader fully decodes its file (a truncated or corrupt file fails here,
at prepare time, not in the middle of a job) and returns ``(bytes, mode)``:
the bytes to store and the Pillow mode of the source file, so that the
builders can count and report the images whose mode was converted.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

CHESTX_IMAGE_SIZE = 256

# Pillow modes of single-channel integer images wider than 8 bits (16-bit
# PNG / TIFF open as "I;16*"; some readers give 32-bit "I").
WIDE_GRAY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_BYTESIO = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class ImageReadError(OSError):
  """A raw image file cannot be decoded; the message names the file."""


def encode_png(image: Image.Image) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  return buf.getvalue()


def to_8bit(image: Image.Image) -> Image.Image:
  """A 16-bit (or 32-bit integer) grayscale image scaled to 8-bit ``L``.

  Pillow's ``convert("L"/"RGB")`` clips such images at 255 (a 16-bit X-ray
  becomes white); here the full 16-bit range is scaled instead:
  ``round(v * 255 / 65535)`` with ``v`` clipped to [0, 65535]. Other modes
  are returned unchanged.
  """
  if image.mode not in WIDE_GRAY_MODES:
    return image
  values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
  return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8),
                         "L")


def _open(data: bytes, name: str) -> Image.Image:
  """Fully decodes ``data``; errors name the file ``name``, not a buffer."""
  try:
    im = Image.open(io.BytesIO(data))
    im.load()
  except Image.UnidentifiedImageError as e:
    raise ImageReadError(
        f"cannot identify image file {name!r} (UnidentifiedImageError: "
        "not an image Pillow can decode)") from e
  except Exception as e:  # noqa: BLE001 - re-raised, naming the file.
    message = _BYTESIO.sub(repr(name), str(e))
    raise ImageReadError(f"{name!r}: {type(e).__name__}: {message}") from e
  return im


def read_image_bytes(data: bytes, name: str) -> tuple[bytes, str]:
  """``read_image`` of a file's bytes (``name`` is used in errors)."""
  with _open(data, name) as im:
    if im.format in ("JPEG", "PNG") and im.mode == "RGB":
      return data, "RGB"
    return encode_png(to_8bit(im).convert("RGB")), im.mode


def read_image(path: Path) -> tuple[bytes, str]:
  """Reads an image file, fully decoding it to catch corrupt/truncated files.

  Returns ``(bytes, source mode)``: the file's own bytes when it is an RGB
  JPEG/PNG (no re-encoding, bit-exact with the release's
  ``Image.open(f).convert("RGB")``); any other file is stored as the lossless
  PNG of its RGB conversion, which decodes to the very same pixels, except
  16-bit grayscale, which is scaled to 8 bits first (``to_8bit``).

  Raises:
    ImageReadError: the file cannot be decoded (the message names it).
    OSError: the file cannot be read.
  """
  return read_image_bytes(path.read_bytes(), path.name)


def read_image_file(path: Path) -> bytes:
  """The stored bytes of ``read_image`` (without the source mode)."""
  return read_image(path)[0]


def read_chestx(path: Path) -> tuple[bytes, str]:
  """ChestX as the release loads it: ``Image.open(f).resize((256, 256))``
  (Pillow's default filter) then ``convert("RGB")``, stored as lossless PNG;
  16-bit files are scaled to 8 bits before the resize (``to_8bit``).

  Returns ``(PNG bytes, source mode)``; raises as ``read_image``.
  """
  with _open(path.read_bytes(), path.name) as im:
    out = to_8bit(im).resize((CHESTX_IMAGE_SIZE, CHESTX_IMAGE_SIZE))
    return encode_png(out.convert("RGB")), im.mode


_T = TypeVar("_T")
_R = TypeVar("_R")


class _Catching:
  """``fn`` returning its exception instead of raising it (picklable)."""

  def __init__(self, fn: Callable[[_T], _R]):
    self.fn = fn

  def __call__(self, item: _T) -> _R | Exception:
    try:
      return self.fn(item)
    except Exception as e:  # noqa: BLE001 - reported per file by the caller.
      return e


def ordered_map(fn: Callable[[_T], _R], items: Sequence[_T] | Iterable[_T],
                num_workers: int) -> Iterator[tuple[_T, _R | Exception]]:
  """Yields ``(item, fn(item) or the exception it raised)`` in input order.

  Grain's ``MapDataset(...).to_iter_dataset`` runs ``fn`` on ``num_workers``
  threads (Pillow releases the GIL while decoding / resizing / encoding) with
  a bounded read-ahead of ``4 * num_workers`` results, in input order.
  Chosen over ``concurrent.futures.Executor.map``, which is ordered too but
  submits every item at once: its results for a 100k-image dataset would all
  wait in memory when the TFDS writer is slower than the decoders. Threads,
  not processes: ``fn`` is I/O and Pillow work that releases the GIL, and
  the encoded bytes would otherwise be pickled back.
  """
  items = list(items)
  catching = _Catching(fn)
  if num_workers <= 1:
    for item in items:
      yield item, catching(item)
    return
  import grain  # Imports JAX (~1 s): only when there is work for threads.

  results = grain.MapDataset.source(items).map(catching).to_iter_dataset(
      grain.ReadOptions(num_threads=num_workers,
                        prefetch_buffer_size=4 * num_workers),
      allow_nones=True)
  iterator = iter(results)
  try:
    yield from zip(items, iterator, strict=True)
  finally:
    iterator.close()
