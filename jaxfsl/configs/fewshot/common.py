r"""The few-shot protocol's settings (CLIP-LoRA's), on top of base.py.

  python -m jaxfsl.main --config configs/fewshot/caltech101.py \
      --config.shot=16 --config.seed=1 --workdir DIR

Keys shared with the episodic protocol keep their meaning: ``shot`` is K,
``seed`` picks the K-shot split and the run, ``steps`` > 0 overrides the
default ``fewshot.iters_per_shot * shot`` iterations, ``method.variant``
picks the terms (none = CLIP-LoRA; svl / ra / svl_ra add the minibatch forms
of docs/fewshot.md), ``lora.*`` and ``optim.lr / weight_decay / min_lr / b1
/ b2 / eps`` configure the adapters and AdamW (``optim.period_factor`` is
unused: the cosine runs over exactly the T iterations). Protocol-only keys
are in the ``fewshot`` block below.
"""

import ml_collections

from jaxfsl.configs import base


def get_config(arg=None):
  """CLIP-LoRA: ViT-B/16, LoRA r=2 alpha=1 on q/k/v of both towers, 16
  shots, 500 * K iterations of batch 32, no extra term."""
  config = base.get_config(arg)
  config.protocol = "fewshot"
  config.dataset.name = ""  # caltech101, ..., set by the dataset configs.
  config.shot = 16
  config.steps = -1
  config.seed = 1
  config.prompt = "a photo of a {}."

  config.method.variant = "none"

  config.lora.rank = 2
  config.lora.alpha = 1.0  # Scaling alpha / sqrt(rank) = 0.707.
  config.lora.dropout = 0.25
  config.lora.towers = "both"

  config.fewshot = ml_collections.ConfigDict()
  config.fewshot.iters_per_shot = 500  # T = 500 * shot (CLIP-LoRA).
  config.fewshot.batch_size = 32  # A multiple of the device count.
  config.fewshot.eval_batch_size = 256
  # Class prompts encoded per chunk when the text tower trains.
  config.fewshot.text_chunk = 128
  config.fewshot.checkpoint_every = 500  # Iterations between checkpoints.
  config.fewshot.log_every = 50  # Iterations between progress lines.
  config.fewshot.num_workers = 4  # grain threads building batches.
  config.fewshot.prefetch = 4  # Batches built ahead.
  config.fewshot.eval_zero_shot = True  # Also report the frozen model.
  # Test-time crop: True = CLIP's resize shorter side + centre crop;
  # False = resize to SxS (SigLIP's processor).
  config.fewshot.center_crop = True
  # Generate a tiny CoOp-layout dataset into WORKDIR/raw when the dataset
  # is not prepared (demo / tests only).
  config.fewshot.fake_data = False
  config.fewshot.fake_classes = 4
  config.fewshot.fake_images = ml_collections.ConfigDict(
      dict(train=8, val=2, test=6))
  config.fewshot.fake_image_size = 32
  return config
