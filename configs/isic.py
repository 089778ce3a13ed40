r"""ISIC 2018 Task 3, 5-way 1-shot, the release's settings.

  python -m jaxfsl.main --config configs/isic.py --workdir DIR
  python -m jaxfsl.main --config configs/isic.py --config.shot=5 \
      --workdir DIR

Prepare the data once: python tools/prepare_data.py --dataset isic2018 ...
"""

import pathlib

from jaxfsl import experiment


def get_config(arg=None):
  config = experiment.load_config(
      pathlib.Path(__file__).with_name("common.py"), arg)
  config.dataset.name = "isic2018"
  return config
