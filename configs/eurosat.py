r"""EuroSAT RGB, 5-way 1-shot, the release's settings.

  python -m jaxfsl.main --config configs/eurosat.py --workdir DIR
  python -m jaxfsl.main --config configs/eurosat.py --config.shot=5 \
      --workdir DIR

Prepare the data once: python tools/prepare_data.py --dataset eurosat ...
"""

import pathlib

from jaxfsl import experiment


def get_config(arg=None):
  config = experiment.load_config(
      pathlib.Path(__file__).with_name("common.py"), arg)
  config.dataset.name = "eurosat"
  return config
