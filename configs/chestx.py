r"""ChestX-ray14, 5-way 1-shot, the release's settings (125 epochs).

  python -m jaxfsl.main --config configs/chestx.py --workdir DIR
  python -m jaxfsl.main --config configs/chestx.py --config.shot=5 \
      --workdir DIR

Prepare the data once: python tools/prepare_data.py --dataset chestx ...
"""

import pathlib

from jaxfsl import experiment


def get_config(arg=None):
  config = experiment.load_config(
      pathlib.Path(__file__).with_name("common.py"), arg)
  config.dataset.name = "chestx"
  config.epochs = 125  # The release's ChestX schedule.
  return config
