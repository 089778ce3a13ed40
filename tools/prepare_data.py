r"""Builds one dataset for jaxfsl from its manual download (no network).

  python tools/prepare_data.py --dataset eurosat --manual_dir ~/raw/EuroSAT \
      --data_dir ~/jaxfsl_data [--skip_corrupt]
  python tools/prepare_data.py --dataset synthetic --data_dir ~/jaxfsl_data \
      --num_classes 10 --images_per_class 40 --image_size 64 --seed 0
  python tools/prepare_data.py --dataset image_folder --manual_dir ~/my_data \
      --data_dir ~/jaxfsl_data --name my_data --class_names_json names.json
  python tools/prepare_data.py --dataset eurosat --from_catalog \
      --data_dir ~/jaxfsl_data

Prints a summary (images per class, skipped, ignored and converted files);
skipped and ignored inputs are also written to skip_report.tsv beside the
dataset. On bad inputs (without --skip_corrupt) every one of them is checked:
exit status 1 with their count, the first few (file / CSV row / reason) and
bad_inputs.tsv listing them all. Preparing a dataset again from a changed
source (other folder, files added or changed) is refused with the
differences; --overwrite rebuilds it. Paths may start with ~ or use $VARS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
  import jaxfsl.data  # noqa: F401
except ImportError:  # Run from a checkout without `pip install -e .`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxfsl.data import DATASET_NAMES, DataError, default_data_dir
from jaxfsl.data.fewshot import cli as fewshot_cli
from jaxfsl.data.prepare import prepare_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", required=True, choices=DATASET_NAMES +
                 fewshot_cli.choices(DATASET_NAMES))
  p.add_argument("--manual_dir", default=None,
                 help="folder holding the raw download (not for synthetic)")
  p.add_argument("--data_dir", default=str(default_data_dir()),
                 help="where prepared datasets live (default: "
                 "$JAXFSL_DATA_DIR or ~/jaxfsl_data)")
  p.add_argument("--from_catalog", action="store_true",
                 help="eurosat / crop_disease: build from the TFDS catalog "
                 "dataset eurosat/rgb / plant_village instead of "
                 "--manual_dir (downloading it needs TensorFlow and the "
                 "internet; see jaxfsl/data/catalog.py)")
  p.add_argument("--catalog_dir", default=None,
                 help="TFDS data folder of the catalog dataset (default: "
                 "TFDS's, ~/tensorflow_datasets)")
  p.add_argument("--skip_corrupt", action="store_true",
                 help="skip bad inputs and list them in a report instead of "
                 "failing")
  p.add_argument("--overwrite", action="store_true",
                 help="rebuild even if already prepared (needed when the "
                 "source changed since)")
  p.add_argument("--num_workers", type=int, default=None,
                 help="image decoding threads (default: min(8, CPUs))")
  p.add_argument("--no_progress", action="store_true",
                 help="hide the progress bars")
  g = p.add_argument_group("image_folder / synthetic")
  g.add_argument("--name", default=None,
                 help="config name (image_folder default: the folder name; "
                 "synthetic default: from its sizes and seed)")
  g.add_argument("--class_names_json", default=None,
                 help="image_folder: JSON {folder name: prompt name}")
  g.add_argument("--num_classes", type=int, default=10)
  g.add_argument("--images_per_class", type=int, default=40)
  g.add_argument("--image_size", type=int, default=64)
  g.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  if args.dataset not in DATASET_NAMES:  # The few-shot benchmark's sets.
    return fewshot_cli.prepare_from_args(args)
  try:
    result = prepare_dataset(
        args.dataset, args.data_dir, args.manual_dir,
        skip_corrupt=args.skip_corrupt, overwrite=args.overwrite,
        num_workers=args.num_workers, config_name=args.name,
        class_names_json=args.class_names_json,
        synthetic_classes=args.num_classes,
        synthetic_images_per_class=args.images_per_class,
        synthetic_image_size=args.image_size, synthetic_seed=args.seed,
        from_catalog=args.from_catalog, catalog_dir=args.catalog_dir,
        progress=not args.no_progress)
  except (DataError, ValueError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 1
  print(result.summary())
  return 0


if __name__ == "__main__":
  sys.exit(main())
