r"""CropDisease (PlantVillage), 5-way 1-shot, the release's settings.

  jaxfsl-run --config configs/episodic/cropdisease.py --workdir DIR
  jaxfsl-run --config configs/episodic/cropdisease.py --config.shot=5 \
      --workdir DIR

Prepare the data once: python tools/prepare_data.py --dataset crop_disease ...
"""

from jaxfsl.configs import base


def get_config(arg=None):
  config = base.get_config(arg)
  config.dataset.name = "crop_disease"
  return config
