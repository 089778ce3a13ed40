r"""EuroSAT RGB, 5-way 1-shot, the release's settings.

  jaxfsl-run --config configs/episodic/eurosat.py --workdir DIR
  jaxfsl-run --config configs/episodic/eurosat.py --config.shot=5 \
      --workdir DIR

Prepare the data once: python tools/prepare_data.py --dataset eurosat ...
"""

from jaxfsl.configs import base


def get_config(arg=None):
  config = base.get_config(arg)
  config.dataset.name = "eurosat"
  return config
