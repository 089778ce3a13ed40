r"""eurosat, CLIP-LoRA's few-shot protocol (see common.py).

  python -m jaxfsl.main --config configs/fewshot/eurosat.py \
      --config.shot=16 --config.seed=1 --workdir DIR

Prepare the data once (CoOp layout, docs/fewshot.md):
  python tools/prepare_data.py --dataset fewshot/eurosat \
      --manual_dir DATA_DIR
"""

from jaxfsl.configs.fewshot import common


def get_config(arg=None):
  config = common.get_config(arg)
  config.dataset.name = "eurosat"
  return config
