"""Building a dataset from the user's manual download: ``prepare_dataset``.

``tools/prepare_data.py`` is a thin command-line shell over this module.
Nothing is downloaded: the raw data must already be in ``manual_dir``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from jaxfsl.data import builders, catalog, provenance, sources
from jaxfsl.data.dataset import DATASET_NAMES, Dataset
from jaxfsl.data.errors import CorruptInputError, StaleDatasetError
from jaxfsl.paths import user_path

REPORT_NAME = "skip_report.tsv"
BAD_INPUTS_NAME = "bad_inputs.tsv"  # Beside the version folder, on failure.
SHOWN = 10  # Files listed per kind in the summary (all in the report).
_log = logging.getLogger(__name__)


@dataclasses.dataclass
class PrepareResult:
  """Outcome of ``prepare_dataset``.

  Attributes:
    dataset: the prepared dataset, opened.
    reused: True when it was already prepared (nothing was rebuilt).
    report_path: the skip report written beside the dataset (see
      ``write_report``), or None when there was nothing to report.
    cleaned: leftover ``incomplete.*`` folders of an interrupted prepare
      that were removed first.
  """
  dataset: Dataset
  reused: bool
  report_path: Path | None
  cleaned: list[Path] = dataclasses.field(default_factory=list)

  @property
  def converted_modes(self) -> dict[str, int]:
    """Pillow mode -> number of source images converted to 8-bit RGB."""
    return dict(self.dataset.metadata.get("converted_modes", {}))

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
    if meta.get("csv_name"):
      lines.append(f"Labels read from {meta['csv_name']}.")
    source_options = (meta.get("source") or {}).get("options", {})
    if "catalog" in source_options:
      lines.append("Built from the TFDS catalog dataset "
                   f"{source_options['catalog']} "
                   f"{source_options['catalog_version']}.")
    converted = self.converted_modes
    if converted:
      lines.append(
          f"Converted {sum(converted.values())} image(s) to 8-bit RGB: " +
          ", ".join(f"{n} x {mode}" + (" (16-bit, scaled to 8 bits)"
                                       if mode.startswith("I") else "")
                    for mode, n in converted.items()))
    skipped, ignored = meta.get("skipped", []), meta.get("ignored", [])
    if skipped:
      lines.append(f"SKIPPED {len(skipped)} bad input(s):")
      lines += ["  " + _describe(p, meta.get("csv_name"))
                for p in skipped[:SHOWN]]
      if len(skipped) > SHOWN:
        lines.append(f"  ... and {len(skipped) - SHOWN} more (see the "
                     "report).")
    if ignored:
      lines.append(f"Ignored {len(ignored)} file(s) that are not images of a "
                   "class:")
      by_reason = collections.defaultdict(list)
      for p in ignored:
        by_reason[p["reason"]].append(p["file"])
      for reason, files in by_reason.items():
        lines.append(f"  {len(files)} x {reason.removeprefix('ignored: ')}: "
                     + ", ".join(files[:3])
                     + (", ..." if len(files) > 3 else ""))
    if self.cleaned:
      lines.append(f"Removed {len(self.cleaned)} leftover folder(s) of an "
                   "interrupted prepare: "
                   + ", ".join(str(p) for p in self.cleaned))
    if self.reused and "source" not in meta:
      lines.append("Note: prepared by an older jaxfsl that did not record "
                   "its source; rerun with --overwrite to rebuild it if the "
                   "raw data changed since.")
    if self.report_path:
      lines.append(f"Report written to {self.report_path}")
    return "\n".join(lines)


def _describe(p: dict[str, Any], csv_name: str | None) -> str:
  return sources.Problem(p["file"], p["row"], p["reason"]).describe(csv_name)


def _write_tsv(path: Path, rows: Sequence[tuple[str, dict[str, Any]]],
               csv_name: str | None) -> None:
  clean = lambda s: str(s).replace("\t", " ").replace("\n", " ")
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"# csv: {csv_name}\nkind\tfile\trow\treason\n")
    for kind, p in rows:
      row = "" if p["row"] is None else p["row"]
      f.write(f"{kind}\t{clean(p['file'])}\t{row}\t{clean(p['reason'])}\n")


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
  _write_tsv(path, rows, meta.get("csv_name"))
  return path


def clean_incomplete(folder: Path) -> list[Path]:
  """Removes the ``incomplete.*`` folders TFDS leaves in ``folder`` when a
  prepare is killed (TFDS builds in one and renames it when done).

  Another prepare of the same dataset running at the same time would lose
  its work: prepare one dataset name at a time.
  """
  if not folder.is_dir():
    return []
  removed = sorted(d for d in folder.glob("incomplete.*") if d.is_dir())
  for d in removed:
    shutil.rmtree(d, ignore_errors=True)
  if removed:
    _log.warning("Removed %d leftover folder(s) of an interrupted prepare: "
                 "%s", len(removed), ", ".join(map(str, removed)))
  return removed


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
    from_catalog: bool | catalog.CatalogSource = False,
    catalog_dir: os.PathLike[str] | str | None = None,
) -> builders.CdfslBuilder:
  """The TFDS builder of a dataset (see ``prepare_dataset`` for the args).

  Its ``source_record`` (stored in the metadata) says what it is built from.
  """
  if name not in DATASET_NAMES:
    raise ValueError(f"Unknown dataset {name!r}; expected one of "
                     f"{list(DATASET_NAMES)}.")
  cls = builders.BUILDERS[name]
  kwargs: dict[str, Any] = dict(
      data_dir=str(user_path(data_dir)), file_format="array_record",
      skip_corrupt=skip_corrupt, num_workers=num_workers)
  manual, options = None, {}
  if name == "synthetic":
    config = builders.SyntheticConfig.make(
        synthetic_classes, synthetic_images_per_class, synthetic_image_size,
        synthetic_seed, name=config_name)
    kwargs["config"] = config
    options = {"num_classes": config.num_classes,
               "images_per_class": config.images_per_class,
               "image_size": config.image_size, "seed": config.seed}
  elif from_catalog is not False:
    if name not in catalog.CATALOG:
      raise ValueError(f"--from_catalog: {name!r} has no TFDS catalog "
                       f"source; only {sorted(catalog.CATALOG)} do.")
    if manual_dir is not None and str(manual_dir):
      raise ValueError("--manual_dir and --from_catalog exclude each other.")
    source = (from_catalog if isinstance(from_catalog, catalog.CatalogSource)
              else catalog.open_catalog(name, catalog_dir))
    kwargs["catalog"] = source
    options = {"catalog": source.catalog_name,
               "catalog_version": source.version,
               "catalog_records": len(source.records)}
  else:
    manual = sources.check_manual_dir(manual_dir,
                                      cls.MANUAL_DOWNLOAD_INSTRUCTIONS)
    if name == "image_folder":
      class_dirs, prompts = sources.scan_image_folder(manual,
                                                      class_names_json)
      empty = []
      if skip_corrupt:  # Leave empty classes out of the label set.
        empty = [c for c in class_dirs if not sources.has_images(manual / c)]
        keep = [i for i, c in enumerate(class_dirs) if c not in empty]
        class_dirs = [class_dirs[i] for i in keep]
        prompts = [prompts[i] for i in keep]
      kwargs["config"] = builders.ImageFolderConfig(
          name=builders.config_slug(config_name or manual.name),
          class_dirs=tuple(class_dirs), prompt_names=tuple(prompts),
          empty_dirs=tuple(empty), description=f"Image folder {manual}")
      options = {"class_dirs": class_dirs, "prompt_names": prompts}
    elif config_name or class_names_json:
      raise ValueError(f"--name / --class_names_json only apply to "
                       f"image_folder and synthetic, not {name!r}.")
  kwargs["source_record"] = provenance.source_record(manual, options)
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(_quiet_custom_config)
  try:
    return cls(**kwargs)
  finally:
    absl_logger.removeFilter(_quiet_custom_config)


def _quiet_custom_config(record: logging.LogRecord) -> bool:
  # TFDS warns "Using custom data configuration: <the whole config>" for
  # every image_folder / synthetic dataset: that is how they work.
  return not str(record.msg).startswith("Using custom data configuration")


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
    from_catalog: bool | catalog.CatalogSource = False,
    catalog_dir: os.PathLike[str] | str | None = None,
    progress: bool = True,
) -> PrepareResult:
  """Builds a dataset from its manual download (no network).

  Args:
    name: ``chestx``, ``isic2018``, ``crop_disease``, ``eurosat``,
      ``image_folder`` or ``synthetic``.
    data_dir: where prepared datasets live (``data_dir/name[/config]/1.0.0``).
    manual_dir: the raw download (unused by ``synthetic``).
    skip_corrupt: skip bad inputs (undecodable/truncated image, CSV row
      naming a missing file, unknown label, empty class) instead of failing;
      every skipped input is listed in the report and the metadata. Hidden
      files (macOS ``._*``, dotfiles) are always ignored and reported.
    overwrite: rebuild even when the dataset is already prepared (the
      previous build is kept if the new one fails).
    num_workers: threads decoding images (default: min(8, CPUs)).
    config_name: config name of ``image_folder`` (default: the folder's name)
      or ``synthetic`` (default: from its sizes and seed).
    class_names_json: ``image_folder`` only: JSON {folder: prompt name}.
    synthetic_classes: number of classes of ``synthetic``.
    synthetic_images_per_class: images per class of ``synthetic``.
    synthetic_image_size: image height/width of ``synthetic``.
    synthetic_seed: seed of ``synthetic``.
    from_catalog: ``eurosat`` / ``crop_disease`` only: build from the TFDS
      catalog dataset ``eurosat/rgb`` / ``plant_village`` instead of
      ``manual_dir`` (True), or from that catalog dataset already opened
      (a ``jaxfsl.data.catalog.CatalogSource``); see ``jaxfsl.data.catalog``
      for what differs from the manual download.
    catalog_dir: TFDS data folder of the catalog dataset (default: TFDS's).
    progress: show TFDS's progress bars.

  Returns:
    The opened dataset, whether it was reused, the report path and the
    leftover folders of an interrupted prepare that were removed.

  Raises:
    ManualDataError: manual folder missing, empty or incomplete (the message
      has the download instructions).
    CorruptInputError: bad inputs (only without ``skip_corrupt``): all of
      them are checked; the message gives their count, the first few and
      the report listing them all (``bad_inputs.tsv`` beside the dataset's
      version folder).
    StaleDatasetError: the dataset is already prepared from another source
      (other manual folder, files added / removed / changed, other class
      names or sizes); the message names the differences. Pass
      ``overwrite=True`` to rebuild.
  """
  if manual_dir is not None and str(manual_dir):
    # TFDS checks the folder again without expanding "~".
    manual_dir = user_path(manual_dir).resolve()
  if class_names_json is not None:
    class_names_json = user_path(class_names_json)
  builder = make_builder(
      name, data_dir, manual_dir, skip_corrupt=skip_corrupt,
      num_workers=num_workers, config_name=config_name,
      class_names_json=class_names_json, synthetic_classes=synthetic_classes,
      synthetic_images_per_class=synthetic_images_per_class,
      synthetic_image_size=synthetic_image_size,
      synthetic_seed=synthetic_seed, from_catalog=from_catalog,
      catalog_dir=catalog_dir)
  target = Path(builder.data_dir)
  cleaned = clean_incomplete(target.parent)
  reused = (target / "dataset_info.json").is_file() and not overwrite
  if reused:
    _check_same_source(target, builder.source_record)
  else:
    # An overwrite that fails (bad inputs, Ctrl-C) keeps the previous build:
    # it waits beside the new one (named like TFDS's own leftovers, so that a
    # killed run's copy is cleaned next time) until the new one is complete.
    previous = target.parent / f"incomplete.previous_{target.name}"
    if target.exists():
      target.rename(previous)
    try:
      _build(builder, manual_dir, progress)
    except BaseException:
      if previous.exists() and not target.exists():
        previous.rename(target)
      raise
    shutil.rmtree(previous, ignore_errors=True)
    (target.parent / BAD_INPUTS_NAME).unlink(missing_ok=True)
  dataset = Dataset(target)
  report = write_report(dataset) if not reused else (
      target / REPORT_NAME if (target / REPORT_NAME).is_file() else None)
  return PrepareResult(dataset=dataset, reused=reused, report_path=report,
                       cleaned=cleaned)


def _build(builder: builders.CdfslBuilder, manual_dir: Path | None,
           progress: bool) -> None:
  download_config = tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else str(manual_dir),
      try_download_gcs=False)
  # TFDS wants a download folder even with nothing to download; keep it out
  # of data_dir.
  try:
    with tempfile.TemporaryDirectory(prefix="jaxfsl_tfds_") as tmp, \
        _progress_bar(progress):
      builder.download_and_prepare(download_dir=tmp,
                                   download_config=download_config)
  except CorruptInputError as e:
    if not e.problems:
      raise
    path = Path(builder.data_dir).parent / BAD_INPUTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_tsv(path, [("bad", p.to_json()) for p in e.problems] +
               [("ignored", p.to_json()) for p in e.ignored], e.csv_name)
    raise builders.bad_inputs_error(e.problems, e.csv_name, e.root, path,
                                    e.ignored) from e.__cause__


def _check_same_source(target: Path, record: dict[str, Any]) -> None:
  """Raises ``StaleDatasetError`` when the prepared dataset at ``target`` was
  built from something else than ``record`` describes."""
  path = target / "metadata.json"
  old = json.loads(path.read_text()).get("source") if path.is_file() else None
  if old is None:  # Prepared before sources were recorded: nothing to say.
    return
  changes = provenance.describe_changes(old, record)
  if changes:
    raise StaleDatasetError(
        f"{target} was prepared from another source than the one given now:\n"
        + "\n".join(f"  {c}" for c in changes)
        + "\nRerun with --overwrite (tools/prepare_data.py --overwrite, or "
        "prepare_dataset(..., overwrite=True)) to rebuild it from the "
        "current source, or choose another --data_dir to keep both.")
