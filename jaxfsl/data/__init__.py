"""Episode data layer: TFDS builders, loading, episodes, augmentations.

Build once (no network; raw data downloaded by hand into ``manual_dir``):

    python tools/prepare_data.py --dataset eurosat --manual_dir ~/raw/EuroSAT \
        --data_dir ~/jaxfsl_data

then, in the main job:

    ds = jaxfsl.data.load_dataset("eurosat", "~/jaxfsl_data")
    sampler = jaxfsl.data.EpisodeSampler(ds, way=5, shot=1, query=15, seed=0,
                                         image_size=model.config.vision.image_size)
    for batch in jaxfsl.data.iterate_batches(sampler, range(800), 4):
      ...  # uint8 pixels; normalise on device with the checkpoint's mean/std

Modules: ``sources`` (raw layouts), ``builders`` (TFDS builders), ``prepare``
(build + report), ``dataset`` (loading), ``episodes`` (sampler), ``augment``
(views, normalize), ``pipeline`` (grain-based batches), ``images`` (reading
raw images), ``provenance`` (what a dataset was built from), ``synthetic``.
"""

from jaxfsl.data.augment import normalize
from jaxfsl.data.dataset import (
    DATASET_NAMES,
    Dataset,
    InMemoryDataset,
    dataset_dir,
    default_data_dir,
    load_dataset,
    prepare_command,
)
from jaxfsl.data.episodes import EpisodePlan, EpisodeSampler
from jaxfsl.data.errors import (
    CorruptInputError,
    DataError,
    DatasetNotPreparedError,
    EpisodeError,
    ManualDataError,
    StaleDatasetError,
)
from jaxfsl.data.pipeline import iterate_batches, stack_episodes
from jaxfsl.data.prepare import PrepareResult, prepare_dataset

__all__ = [
    "DATASET_NAMES", "CorruptInputError", "DataError", "Dataset",
    "DatasetNotPreparedError", "EpisodeError", "EpisodePlan", "EpisodeSampler",
    "InMemoryDataset", "ManualDataError", "PrepareResult", "dataset_dir",
    "default_data_dir", "iterate_batches", "load_dataset", "normalize",
    "prepare_command", "prepare_dataset", "stack_episodes",
    "StaleDatasetError",
]
