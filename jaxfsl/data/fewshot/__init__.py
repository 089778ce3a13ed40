"""The 11-dataset few-shot benchmark's data (CoOp layout): TFDS builder,
CLIP-LoRA's K-shot split, transforms and the training input pipeline."""

from jaxfsl.data.fewshot.layouts import NAMES, SPECS, list_splits
from jaxfsl.data.fewshot.split import fewshot_split, read_split, write_split

__all__ = ["NAMES", "SPECS", "fewshot_split", "list_splits", "read_split",
           "write_split"]
