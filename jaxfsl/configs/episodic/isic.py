r"""ISIC 2018 Task 3, 5-way 1-shot, the release's settings.

  jaxfsl-run --config configs/episodic/isic.py --workdir DIR
  jaxfsl-run --config configs/episodic/isic.py --config.shot=5 \
      --workdir DIR

Prepare the data once: python tools/prepare_data.py --dataset isic2018 ...
"""

from jaxfsl.configs import base


def get_config(arg=None):
  config = base.get_config(arg)
  config.dataset.name = "isic2018"
  return config
