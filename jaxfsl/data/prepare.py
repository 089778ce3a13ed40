"""Building a dataset from the user's manual download: ``prepare_dataset``.

``tools/prepare_data.py`` is a thin command-line shell over this module.
Nothing is downloaded: the raw data must already be in ``manual_dir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from jaxfsl.data import builders, sources
from jaxfsl.data.dataset import DATASET_NAMES, Dataset

REPORT_NAME = "skip_report.tsv"


@dataclasses.dataclass
class PrepareResult:
  """Outcome of ``prepare_dataset``.

  Attributes:
    dataset: the prepared dataset, opened.
    reused: True when it was already prepared (nothing was rebuilt).
    report_path: the skip report written beside the dataset (see
      ``write_report``), or None when there was nothing to report.
  """
  dataset: Dataset
  reused: bool
  report_path: Path | None

  def summary(self) -> str:
    """Human-readable summary: counts per class, skipped / ignored files."""
    ds, meta = self.dataset, self.dataset.metadata
    state = "already prepared (reused)" if self.reused else "prepared"
    lines = [f"{ds.name}" + (f"/{ds.config}" if ds.config else "") +
             f" {state} at {ds.path}: {len(ds)} images, {ds.num_classes} "
             "classes."]
    for name, prompt, count in zip(ds.class_names, ds.prompt_names,
                                   ds.class_counts(), strict=True):
      lines.append(f"  {count:7d}  {name}" +
                   (f"  (prompt: {prompt!r})" if prompt != name else ""))
    for reason, count in meta.get("excluded", {}).items():
      lines.append(f"  excluded by the protocol: {count} x {reason}")
    skipped, ignored = meta.get("skipped", []), meta.get("ignored", [])
    if skipped:
      lines.append(f"SKIPPED {len(skipped)} bad input(s):")
      lines += ["  " + _describe(p, meta.get("csv_name")) for p in skipped]
    if ignored:
      lines.append(f"Ignored {len(ignored)} file(s) that are not images of a "
                   "class:")
      lines += ["  " + _describe(p, None) for p in ignored]
    if self.report_path:
      lines.append(f"Report written to {self.report_path}")
    return "\n".join(lines)


def _describe(p: dict[str, Any], csv_name: str | None) -> str:
  return sources.Problem(p["file"], p["row"], p["reason"]).describe(csv_name)


def write_report(dataset: Dataset) -> Path | None:
  """Writes ``skip_report.tsv`` beside the dataset's records.

  Columns: kind (skipped | ignored), file (relative to manual_dir), row (CSV
  line, header = 1, empty when none), reason. Returns None (and writes
  nothing) when no input was skipped or ignored.
  """
  meta = dataset.metadata
  rows = [("skipped", p) for p in meta.get("skipped", [])]
  rows += [("ignored", p) for p in meta.get("ignored", [])]
  if not rows:
    return None
  path = dataset.path / REPORT_NAME
  clean = lambda s: str(s).replace("\t", " ").replace("\n", " ")
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"# csv: {meta.get('csv_name')}\nkind\tfile\trow\treason\n")
    for kind, p in rows:
      row = "" if p["row"] is None else p["row"]
      f.write(f"{kind}\t{clean(p['file'])}\t{row}\t{clean(p['reason'])}\n")
  return path


@contextlib.contextmanager
def _progress_bar(enable: bool) -> Iterator[None]:
  # TFDS keeps the switch in a module global; restore whatever it was.
  previous = tqdm_utils._active  # noqa: SLF001
  tfds.display_progress_bar(enable)
  try:
    yield
  finally:
    tfds.display_progress_bar(previous)


def make_builder(
    name: str,
    data_dir: os.PathLike[str] | str,
    manual_dir: os.PathLike[str] | str | None = None,
    *,
    skip_corrupt: bool = False,
    num_workers: int | None = None,
    config_name: str | None = None,
    class_names_json: os.PathLike[str] | str | None = None,
    synthetic_classes: int = 10,
    synthetic_images_per_class: int = 40,
    synthetic_image_size: int = 64,
    synthetic_seed: int = 0,
) -> builders.CdfslBuilder:
  """The TFDS builder of a dataset (see ``prepare_dataset`` for the args)."""
  if name not in DATASET_NAMES:
    raise ValueError(f"Unknown dataset {name!r}; expected one of "
                     f"{list(DATASET_NAMES)}.")
  cls = builders.BUILDERS[name]
  kwargs: dict[str, Any] = dict(
      data_dir=str(Path(data_dir).expanduser()), file_format="array_record",
      skip_corrupt=skip_corrupt, num_workers=num_workers)
  if name == "synthetic":
    kwargs["config"] = builders.SyntheticConfig.make(
        synthetic_classes, synthetic_images_per_class, synthetic_image_size,
        synthetic_seed, name=config_name)
  else:
    manual = sources.check_manual_dir(manual_dir,
                                      cls.MANUAL_DOWNLOAD_INSTRUCTIONS)
    if name == "image_folder":
      class_dirs, prompts = sources.scan_image_folder(manual,
                                                      class_names_json)
      kwargs["config"] = builders.ImageFolderConfig(
          name=builders.config_slug(config_name or manual.name),
          class_dirs=tuple(class_dirs), prompt_names=tuple(prompts),
          description=f"Image folder {manual}")
    elif config_name or class_names_json:
      raise ValueError(f"--name / --class_names_json only apply to "
                       f"image_folder and synthetic, not {name!r}.")
  return cls(**kwargs)


def prepare_dataset(
    name: str,
    data_dir: os.PathLike[str] | str,
    manual_dir: os.PathLike[str] | str | None = None,
    *,
    skip_corrupt: bool = False,
    overwrite: bool = False,
    num_workers: int | None = None,
    config_name: str | None = None,
    class_names_json: os.PathLike[str] | str | None = None,
    synthetic_classes: int = 10,
    synthetic_images_per_class: int = 40,
    synthetic_image_size: int = 64,
    synthetic_seed: int = 0,
    progress: bool = True,
) -> PrepareResult:
  """Builds a dataset from its manual download (no network).

  Args:
    name: ``chestx``, ``isic2018``, ``crop_disease``, ``eurosat``,
      ``image_folder`` or ``synthetic``.
    data_dir: where prepared datasets live (``data_dir/name[/config]/1.0.0``).
    manual_dir: the raw download (unused by ``synthetic``).
    skip_corrupt: skip bad inputs (undecodable/truncated image, CSV row
      naming a missing file, unknown label) instead of stopping at the first
      one; every skipped input is listed in the report and the metadata.
    overwrite: rebuild even when the dataset is already prepared.
    num_workers: threads decoding images (default: min(8, CPUs)).
    config_name: config name of ``image_folder`` (default: the folder's name)
      or ``synthetic`` (default: from its sizes and seed).
    class_names_json: ``image_folder`` only: JSON {folder: prompt name}.
    synthetic_classes: number of classes of ``synthetic``.
    synthetic_images_per_class: images per class of ``synthetic``.
    synthetic_image_size: image height/width of ``synthetic``.
    synthetic_seed: seed of ``synthetic``.
    progress: show TFDS's progress bars.

  Returns:
    The opened dataset, whether it was reused, and the report path.

  Raises:
    ManualDataError: manual folder missing, empty or incomplete (the message
      has the download instructions).
    CorruptInputError: a bad input, naming its file and CSV row (only without
      ``skip_corrupt``).
  """
  if manual_dir is not None and str(manual_dir):
    # TFDS checks the folder again without expanding "~".
    manual_dir = Path(manual_dir).expanduser().resolve()
  builder = make_builder(
      name, data_dir, manual_dir, skip_corrupt=skip_corrupt,
      num_workers=num_workers, config_name=config_name,
      class_names_json=class_names_json, synthetic_classes=synthetic_classes,
      synthetic_images_per_class=synthetic_images_per_class,
      synthetic_image_size=synthetic_image_size,
      synthetic_seed=synthetic_seed)
  target = Path(builder.data_dir)
  reused = (target / "dataset_info.json").is_file() and not overwrite
  if not reused:
    if target.exists():
      shutil.rmtree(target)
    download_config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(manual_dir),
        try_download_gcs=False)
    # TFDS wants a download folder even with nothing to download; keep it out
    # of data_dir.
    with tempfile.TemporaryDirectory(prefix="jaxfsl_tfds_") as tmp, \
        _progress_bar(progress):
      builder.download_and_prepare(download_dir=tmp,
                                   download_config=download_config)
  dataset = Dataset(target)
  report = write_report(dataset) if not reused else (
      target / REPORT_NAME if (target / REPORT_NAME).is_file() else None)
  return PrepareResult(dataset=dataset, reused=reused, report_path=report)
