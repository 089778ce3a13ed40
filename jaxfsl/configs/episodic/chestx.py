r"""ChestX-ray14, 5-way 1-shot, the release's settings (125 epochs).

  jaxfsl-run --config configs/episodic/chestx.py --workdir DIR
  jaxfsl-run --config configs/episodic/chestx.py --config.shot=5 \
      --workdir DIR

Prepare the data once: python tools/prepare_data.py --dataset chestx ...
"""

from jaxfsl.configs import base


def get_config(arg=None):
  config = base.get_config(arg)
  config.dataset.name = "chestx"
  config.epochs = 125  # The release's ChestX schedule.
  return config
