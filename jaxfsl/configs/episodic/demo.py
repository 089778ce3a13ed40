r"""Pipeline check: the whole job on generated data, no download.

  jaxfsl-run --config configs/episodic/demo.py --workdir /tmp/demo

A small random-init CLIP (``tiny-clip``: 2-block ViT on 64x64 inputs) is
fine-tuned with SVL + RA on episodes of the ``synthetic`` dataset (coloured
shapes), which is generated into ``WORKDIR/data`` on first use. Everything
else (LoRA, optimiser, losses, evaluation, resume, reports) is the release's
code path. The accuracies only show that the pipeline runs and learns
something; they are NOT a result of the method (the log and summary.md say
so).
"""

from jaxfsl.configs import base


def get_config(arg=None):
  config = base.get_config(arg)
  config.demo = True
  config.model.checkpoint = ""
  config.model.init = "tiny-clip"
  config.dataset.name = "synthetic"
  config.dataset.data_dir = "{workdir}/data"
  config.dataset.prepare_synthetic = True
  config.dataset.synthetic.num_classes = 10
  config.dataset.synthetic.images_per_class = 40
  config.dataset.synthetic.image_size = 64
  config.dataset.num_workers = 2
  config.shot = 1
  config.query = 15
  config.episodes = 80
  config.steps = 100
  config.episodes_per_batch = 4
  return config
