r"""stanford_cars, CLIP-LoRA's few-shot protocol (see common.py).

  python -m jaxfsl.main --config configs/fewshot/stanford_cars.py \
      --config.shot=16 --config.seed=1 --workdir DIR

Prepare the data once (CoOp layout, docs/fewshot.md):
  python tools/prepare_data.py --dataset fewshot/stanford_cars \
      --manual_dir DATA_DIR
"""

from jaxfsl.configs.fewshot import common


def get_config(arg=None):
  config = common.get_config(arg)
  config.dataset.name = "stanford_cars"
  return config
