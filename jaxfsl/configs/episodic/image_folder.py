r"""Your own data: one folder per class, 5-way 1-shot, the release's method.

Prepare the folder once as a named dataset (``--name`` is yours to choose)::

  python tools/prepare_data.py --dataset image_folder --name mine \
      --manual_dir ~/my_data --data_dir ~/jaxfsl_data

then run, naming that dataset and the checkpoint to fine-tune::

  jaxfsl-run --config episodic/image_folder.py \
      --config.dataset.name=image_folder/mine \
      --config.model.checkpoint=~/jaxfsl_models/clip-vit-base-patch16 \
      --workdir ~/runs/mine_1shot

The two keys to set:

* ``dataset.name``: ``image_folder/<name>``, the ``--name`` given to
  ``prepare_data.py`` (and ``dataset.data_dir`` if you prepared it
  elsewhere than $JAXFSL_DATA_DIR or ~/jaxfsl_data);
* ``model.checkpoint``: the checkpoint folder or file (base.py's default is
  the release's CLIP ViT-B/16 Hugging Face folder).

Each class needs shot + query images (16 for 1-shot); smaller classes are
refused unless ``--config.dataset.exclude_small_classes=True``. Prompts use
the folder names (or the JSON mapping given to prepare_data.py).
"""

from jaxfsl.configs import base


def get_config(arg=None):
  config = base.get_config(arg)
  # Set on the command line: image_folder/<the --name of prepare_data.py>.
  config.dataset.name = "image_folder/mine"
  return config
