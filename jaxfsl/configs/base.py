r"""The release's settings: the ONE home of jaxfsl's config defaults.

  jaxfsl-run --config configs/episodic/chestx.py --workdir DIR
  jaxfsl-run --help --config episodic/chestx.py   # these keys and comments

Every key jaxfsl knows is set below, with a comment (``--help`` prints
them); target configs (``configs/episodic/*.py``) start from here and
change a few. The job rejects other keys and wrong types, naming the key;
override any with ``--config.KEY=VALUE``. This file imports nothing from
jaxfsl (loading a config imports no JAX).

Comment convention (read by ``--help``): the comment lines just above a key,
and the comment at the end of its line.
"""

import ml_collections


def get_config(arg=None):
  """Release defaults: CLIP ViT-B/16 + vision LoRA, SVL + RA, 5-way 1-shot."""
  del arg
  config = ml_collections.ConfigDict()

  # Which protocol runs the job: "episodic" (the CDFSL targets, one
  # fine-tuning per episode) or "fewshot" (the 11-dataset benchmark under
  # CLIP-LoRA's protocol; set by configs/fewshot/*.py with its fewshot.*
  # block).
  config.protocol = "episodic"
  # What is fine-tuned beside the frozen backbone: "lora" (the release;
  # block lora.*), "coop" (CoOp's text context; block coop.*) or "maple"
  # (MaPLe's prompts in both towers; block maple.*). See jaxfsl/trainables/.
  config.trainable = "lora"
  # Several seeds in one job: "1,2,3" runs one resumable sub-job per seed in
  # WORKDIR/seed_<s> ('': the single ``seed`` below).
  config.seeds = ""

  # The backbone.
  config.model = ml_collections.ConfigDict()
  # A pretrained checkpoint (HF folder, OpenAI .pt, big_vision .npz) ...
  config.model.checkpoint = "~/jaxfsl_models/clip-vit-base-patch16"
  # ... or a random-init preset of jaxfsl.models.PRESETS (set exactly one).
  config.model.init = ""
  config.model.init_seed = 0  # Random-init only: the parameters' seed.
  # Random-init only: input side (0: the preset's).
  config.model.image_size = 0
  # Random-init only: vision tower depth (0: the preset's).
  config.model.vision_depth = 0
  # Tokenizer files when the checkpoint lacks them ('': the checkpoint's).
  config.model.tokenizer = ""

  # The episodes' source.
  config.dataset = ml_collections.ConfigDict()
  # chestx | isic2018 | crop_disease | eurosat | image_folder/<name> |
  # synthetic (set by the target configs).
  config.dataset.name = ""
  # Prepared datasets ('': $JAXFSL_DATA_DIR or ~/jaxfsl_data); "{workdir}"
  # is replaced by the job's workdir.
  config.dataset.data_dir = ""
  # Generate the synthetic dataset when it is absent (demo only).
  config.dataset.prepare_synthetic = False
  # The synthetic dataset (demo): classes, images per class, side, seed.
  config.dataset.synthetic = ml_collections.ConfigDict(dict(
      num_classes=10, images_per_class=40, image_size=64, seed=0))
  # Leave classes with fewer than shot + query images out of the draw
  # (instead of refusing the dataset).
  config.dataset.exclude_small_classes = False
  config.dataset.num_workers = 4  # Threads building episodes.
  config.dataset.prefetch = 2  # Batches prepared ahead.

  # The class prompt; "{}" is replaced by the class name.
  config.prompt = "a photo of a {}."
  config.way = 5  # Classes per episode.
  config.shot = 1  # Labelled support images per class.
  config.query = 15  # Query images per class (evaluated).
  # Episodes of the job; -1: 800 for 1-shot, 400 otherwise (the benchmark).
  config.episodes = -1
  # T = epochs * shot full-batch steps (the release) ...
  config.epochs = 250
  # ... unless steps > 0, which sets T directly (-1: use epochs).
  config.steps = -1
  config.seed = 1  # Episode i is a pure function of (seed, i).
  # Episodes fine-tuned at once (vmapped); rounded up to a multiple of the
  # device count. Results do not depend on it. -1: auto, the largest batch
  # whose compiled program fits the device memory (GPU/TPU; one episode per
  # device on CPU; engine.auto_episodes_per_batch).
  config.episodes_per_batch = 4

  # The loss terms and when they act (jaxfsl.method.objective.MethodConfig).
  config.method = ml_collections.ConfigDict()
  config.method.variant = "svl_ra"  # none | svl | ra | svl_ra | visual
  config.method.anti_visual_weight = 0.1  # SVL (L_ad).
  config.method.relation_weight = 3.0  # RA (L_ra).
  config.method.visual_weight = 1.0  # "FT + L_v" (variant visual).
  # Extra terms active for this fraction of T (0.6: the first 3 int(T/5)
  # steps) ...
  config.method.window_fraction = 0.6
  config.method.timing = "begin"  # ... at the beginning (or "last").
  config.method.relation_form = "release"  # Or "softmax_kl" (the paper's).

  # The adapters (jaxfsl.trainables.lora.LoraConfig).
  config.lora = ml_collections.ConfigDict()
  config.lora.rank = 16  # r.
  config.lora.alpha = 8.0  # Scaling alpha / sqrt(rank) = 2.
  config.lora.dropout = 0.25  # On the LoRA branch input, training only.
  config.lora.targets = ("q", "k", "v")  # Attention projections adapted.
  config.lora.towers = "vision"  # vision | text | both
  # all | bottom | mid | up | half-up | half-bottom, or indices "0,1,2".
  config.lora.blocks = "all"
  # How the dropout masks are drawn: "bernoulli" (jax.random.bernoulli, the
  # default: results as before) or "packed" (opt-in, faster on CPU: 8-bit
  # draws, 4x fewer random bits; exact for dropout multiples of 1/256 such
  # as 0.25, other masks than "bernoulli"'s). docs/performance.md.
  config.lora.dropout_masks = "bernoulli"

  # CoOp, trainable "coop" (jaxfsl.trainables.coop.CoopConfig).
  config.coop = ml_collections.ConfigDict()
  # Learned context vectors (ignored with ctx_init: its token count).
  config.coop.n_ctx = 16
  # Phrase initialising a unified context, e.g. "a photo of a" ('': random).
  config.coop.ctx_init = ""
  config.coop.class_specific = False  # One context per class (CSC).
  config.coop.class_token_position = "end"  # end | middle | front
  config.coop.init_std = 0.02  # Std of the random initialisation.

  # MaPLe, trainable "maple" (jaxfsl.trainables.maple.MapleConfig): CLIP,
  # SigLIP and PE-Core (not a vision-only checkpoint); depth <= both towers'.
  config.maple = ml_collections.ConfigDict()
  config.maple.n_ctx = 2  # Learned prompt tokens per layer.
  # Init phrase of the layer-0 text prompts ('': random).
  config.maple.ctx_init = "a photo of a"
  config.maple.depth = 9  # Layers (from the first) with learned prompts.
  config.maple.init_std = 0.02  # Std of the random prompts.

  # The optimiser of the trainable, cosine-annealed per step
  # (jaxfsl.optim.OptimConfig): the release's AdamW by default.
  config.optim = ml_collections.ConfigDict()
  # adamw (the release) | sgd (torch's SGD: momentum, weight decay added to
  # the gradient) | trainable: the trainable's own optimiser, replacing the
  # other optim.* keys; for coop and maple their originals' SGD (lr 2e-3
  # CoOp, 3.5e-3 MaPLe; momentum 0.9, weight_decay 5e-4, min_lr 0,
  # period_factor 1, warmup one epoch = shot steps at 1e-5), for lora AdamW.
  config.optim.name = "adamw"
  config.optim.lr = 2e-4  # Initial learning rate.
  config.optim.b1 = 0.9  # Adam beta1.
  config.optim.b2 = 0.999  # Adam beta2.
  config.optim.eps = 1e-8  # Adam epsilon.
  # Weight decay: AdamW decoupled (times the LR); SGD on the gradient.
  config.optim.weight_decay = 1e-2
  config.optim.min_lr = 1e-6  # Cosine floor ...
  config.optim.period_factor = 8.0  # ... over a half-period of 8 T.
  config.optim.momentum = 0.9  # SGD only (no dampening, no Nesterov).
  # Steps at the constant warmup_lr before the cosine starts (counted from
  # the warmup's end): 0 none (the release); -1 one epoch of T = epochs *
  # shot, i.e. shot steps (CoOp/MaPLe warm up for 1 epoch).
  config.optim.warmup_steps = 0
  config.optim.warmup_lr = 1e-5  # The LR during the warmup.

  # Multiplier of the cosine logits in every loss and in evaluation.
  config.logit_scale = 100.0
  # Use the checkpoint's learned temperature instead of logit_scale.
  config.use_checkpoint_logit_scale = False
  # float32 | bfloat16 | float16 matmuls (parameters stay float32; the
  # release trains in fp16 with loss scaling).
  config.compute_dtype = "float32"
  # Rematerialise transformer blocks in the backward pass (less memory).
  config.remat = False
  # After the extra-terms window, skip the clean support pass no loss reads
  # (exact; compiles a second step body).
  config.skip_clean_pass_outside_window = True

  config.save_adapters = False  # Keep each episode's final adapters.
  config.eval_only = False  # Re-evaluate saved adapters, no training.
  config.restart = False  # Discard a previous run in the workdir.
  # Persistent XLA compilation cache ('': $JAXFSL_CACHE_DIR, else
  # WORKDIR/jax_cache; 'off': none). See jaxfsl/compile_cache.py.
  config.jax_cache_dir = ""
  # Call jax.distributed.initialize() (or set env JAXFSL_MULTIHOST=1).
  config.multihost = False
  config.demo = False  # Marks a pipeline check (demo.py).
  return config


# Keys renamed since they were released: {old: new}. A config (file or
# --config.KEY flag) using an old name is refused with the new one; a
# workdir or results.json saved under an old name reads as the new one. The
# extra-terms window can sit at the end of training (method.timing="last"),
# so it is no longer called "stage 1".
# The trainables' own config blocks; each is read only when
# config.trainable names it (the others are inert in that job).
TRAINABLE_BLOCKS = ("lora", "coop", "maple")

RENAMED_KEYS = {
    "method.stage1_fraction": "method.window_fraction",
    "skip_clean_pass_in_stage2": "skip_clean_pass_outside_window",
}
