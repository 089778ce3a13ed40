r"""Pipeline check of the few-shot protocol on generated data (~1 min).

  python -m jaxfsl.main --config configs/fewshot/demo.py --workdir /tmp/fs

A tiny CoOp-layout Caltech101 folder (synthetic shapes) is generated into
WORKDIR/raw and prepared into WORKDIR/data; a random-init ``tiny-clip`` is
fine-tuned with CLIP-LoRA's recipe for a few iterations. The accuracy only
shows that the pipeline runs and learns; it is NOT a result.
"""

from jaxfsl.configs.fewshot import common


def get_config(arg=None):
  config = common.get_config(arg)
  config.demo = True
  config.model.checkpoint = ""
  config.model.init = "tiny-clip"
  config.model.image_size = 32
  config.dataset.name = "caltech101"
  config.dataset.data_dir = "{workdir}/data"
  config.fewshot.fake_data = True
  config.shot = 4
  config.steps = 40
  config.optim.lr = 5e-3
  config.lora.rank = 4
  config.fewshot.batch_size = 8
  config.fewshot.eval_batch_size = 32
  config.fewshot.checkpoint_every = 10
  config.fewshot.log_every = 10
  config.fewshot.num_workers = 2
  return config
