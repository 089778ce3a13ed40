"""What a prepared dataset was built from, to refuse reusing stale data.

``prepare_dataset`` records, in the dataset's metadata (``source``), the
manual folder, the options that shape the dataset (class folders and prompt
names of an image folder, the synthetic sizes) and a cheap fingerprint of the
manual folder's listing: per folder, the number of files, their total size
and a digest of their names, sizes and modification times (no file content
is read, so fingerprinting 100k images costs one ``stat`` each). Hidden
files and folders are left out: they are never part of a dataset, and
Finder's ``.DS_Store`` changes on its own.

Preparing the same dataset name again compares the new record with the
stored one; ``describe_changes`` names the differences (another manual
folder, new / removed / changed folders, other options).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from jaxfsl.data.sources import is_hidden

MAX_SHOWN = 5  # Folders named per kind of change in a message.


def fingerprint(root: Path | None) -> dict[str, list[Any]]:
  """Per-folder fingerprint of the files under ``root`` (recursively).

  Args:
    root: the manual folder, or None (no manual folder: empty fingerprint).

  Returns:
    {folder relative to root ("." for root): [number of files, total bytes,
    sha1 hex digest of the sorted "name size mtime_ns" lines]}.
  """
  if root is None:
    return {}
  out: dict[str, list[Any]] = {}
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
    digest, count, total = hashlib.sha1(), 0, 0
    for name in sorted(filenames):
      if is_hidden(name):
        continue
      try:
        st = os.stat(os.path.join(dirpath, name))
      except OSError:  # A dangling link: listed by name only.
        st = None
      size = st.st_size if st else -1
      digest.update(f"{name}\0{size}\0{st.st_mtime_ns if st else -1}\n"
                    .encode("utf-8", "surrogateescape"))
      count, total = count + 1, total + max(size, 0)
    if count:
      rel = Path(dirpath).relative_to(root).as_posix()
      out[rel] = [count, total, digest.hexdigest()]
  return out


def source_record(manual_dir: Path | None,
                  options: dict[str, Any]) -> dict[str, Any]:
  """The ``source`` metadata of a dataset (JSON-serialisable).

  Args:
    manual_dir: the resolved manual folder, or None.
    options: the settings that shape the dataset beyond its files.
  """
  return {"manual_dir": None if manual_dir is None else str(manual_dir),
          "options": options, "folders": fingerprint(manual_dir)}


def _names(keys: list[str]) -> str:
  shown = ", ".join(repr(k) for k in keys[:MAX_SHOWN])
  return shown + (f" and {len(keys) - MAX_SHOWN} more"
                  if len(keys) > MAX_SHOWN else "")


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """The differences between two ``source_record``s, one line each (empty
  when they are equal)."""
  lines = []
  if old.get("manual_dir") != new.get("manual_dir"):
    lines.append(f"manual folder: was {old.get('manual_dir')}, now "
                 f"{new.get('manual_dir')}")
  old_opts, new_opts = old.get("options", {}), new.get("options", {})
  for key in sorted(old_opts.keys() | new_opts.keys()):
    if old_opts.get(key) != new_opts.get(key):
      lines.append(f"{key}: was {old_opts.get(key)!r}, now "
                   f"{new_opts.get(key)!r}")
  before, after = old.get("folders", {}), new.get("folders", {})
  added = sorted(after.keys() - before.keys())
  removed = sorted(before.keys() - after.keys())
  changed = sorted(k for k in before.keys() & after.keys()
                   if list(before[k]) != list(after[k]))
  if added:
    lines.append(f"new folder(s) with files: {_names(added)}")
  if removed:
    lines.append(f"folder(s) gone or emptied: {_names(removed)}")
  for k in changed[:MAX_SHOWN]:
    (n0, b0, _), (n1, b1, _) = before[k], after[k]
    what = (f"{n0} -> {n1} files, {b0} -> {b1} bytes"
            if (n0, b0) != (n1, b1) else "files renamed or modified")
    lines.append(f"folder {k!r} changed: {what}")
  if len(changed) > MAX_SHOWN:
    lines.append(f"... and {len(changed) - MAX_SHOWN} more changed "
                 "folder(s)")
  return lines
