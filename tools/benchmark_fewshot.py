r"""Throughput of the few-shot protocol: trainer iterations/s and the input
pipeline's images/s alone.

  python tools/benchmark_fewshot.py                      # ViT-B/16, batch 32
  python tools/benchmark_fewshot.py --model tiny-clip --image_size 32 \
      --steps 3 --pipeline_batches 4                     # a quick check

Trainer: a random-init preset (the same shapes and FLOPs as the checkpoint),
CLIP-LoRA's LoRA (r=2, q/k/v, both towers: the prompts of ``--classes``
classes re-encoded every iteration), ``--variant``, batch ``--batch`` of
random pixels already on the device; the first iteration (compilation) is
not timed. Pipeline: ``TrainBatches`` (decode JPEG, RandomResizedCrop,
flip; ``--clean`` adds RA's eval view) over ``--source_images`` in-memory
JPEGs of ``--source_size`` pixels, on ``--threads`` grain threads, with no
device work. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

try:
  import jaxfsl  # noqa: F401
except ImportError:  # Run from a checkout without `pip install -e .`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="clip-vit-b16",
                 help="a jaxfsl.models.PRESETS name")
  p.add_argument("--image_size", type=int, default=0,
                 help="override the preset's input side (0: keep)")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--classes", type=int, default=100)
  p.add_argument("--variant", default="none",
                 choices=("none", "svl", "ra", "svl_ra"))
  p.add_argument("--towers", default="both",
                 choices=("vision", "text", "both"))
  p.add_argument("--dtype", default="float32",
                 choices=("float32", "bfloat16"))
  p.add_argument("--steps", type=int, default=5,
                 help="timed iterations (after one untimed)")
  p.add_argument("--pipeline_batches", type=int, default=20)
  p.add_argument("--threads", type=int, default=4)
  p.add_argument("--source_images", type=int, default=64)
  p.add_argument("--source_size", type=int, default=400)
  p.add_argument("--clean", action="store_true",
                 help="pipeline: also build RA's clean view")
  p.add_argument("--skip_trainer", action="store_true")
  p.add_argument("--skip_pipeline", action="store_true")
  return p.parse_args(argv)


def bench_trainer(args) -> dict:
  import jax
  import jax.numpy as jnp

  from jaxfsl.models import PRESETS, build
  from jaxfsl.protocols.fewshot import trainer as T

  arch = PRESETS[args.model]
  if args.image_size:
    arch = dataclasses.replace(arch, vision=dataclasses.replace(
        arch.vision, image_size=args.image_size))
  model = build(arch, dtype=jnp.dtype(args.dtype))
  lora = dataclasses.replace(T.CLIP_LORA_LORA, towers=args.towers)
  cfg = T.TrainerConfig(steps=max(2, args.steps + 1), batch_size=args.batch,
                        variant=args.variant, lora=lora)
  ids = model.tokenize([f"a photo of a class {c}." for c in
                        range(args.classes)])
  tr = T.FewshotTrainer(model, cfg, ids)
  s = arch.vision.image_size
  rng = np.random.default_rng(0)
  batch = tr.put_batch({
      "images": rng.integers(0, 255, (args.batch, s, s, 3), np.uint8),
      "clean": rng.integers(0, 255, (args.batch, s, s, 3), np.uint8),
      "labels": rng.integers(0, args.classes, args.batch).astype(np.int32)})
  state = tr.init_state(jax.random.PRNGKey(0))
  t = time.perf_counter()
  state, parts = tr.train_step(state, batch, jax.random.PRNGKey(0))
  jax.block_until_ready(parts)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for k in range(args.steps):
    state, parts = tr.train_step(state, batch, jax.random.PRNGKey(k + 1))
  jax.block_until_ready(parts)
  secs = time.perf_counter() - t
  return {"what": "trainer", "model": args.model, "image_size": s,
          "batch": args.batch, "classes": args.classes,
          "variant": args.variant, "towers": args.towers,
          "dtype": args.dtype, "devices": tr.num_devices,
          "backend": jax.default_backend(),
          "first_step_s": round(compile_s, 2),
          "iterations_per_s": args.steps / secs,
          "images_per_s": args.steps * args.batch / secs}


def bench_pipeline(args, image_size: int) -> dict:
  from jaxfsl.data import synthetic
  from jaxfsl.data.dataset import decode_image
  from jaxfsl.data.fewshot import pipeline

  blobs = []
  for i in range(args.source_images):
    im = Image.fromarray(synthetic.make_image(0, i % 10, i, 64)).resize(
        (args.source_size, args.source_size * 3 // 4))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    blobs.append(buf.getvalue())
  batches = pipeline.TrainBatches(
      lambda i: decode_image(blobs[i]), [i % 10 for i in range(len(blobs))],
      seed=0, batch_size=args.batch, image_size=image_size,
      with_clean=args.clean)
  it = batches.iterate(0, args.pipeline_batches + 1, args.threads)
  next(it)  # Thread start-up.
  t = time.perf_counter()
  n = sum(1 for _ in it)
  secs = time.perf_counter() - t
  return {"what": "pipeline", "image_size": image_size,
          "source": f"{args.source_size}x{args.source_size * 3 // 4} JPEG",
          "threads": args.threads, "clean_view": args.clean,
          "images_per_s": n * args.batch / secs}


def main(argv=None) -> int:
  args = parse_args(argv)
  from jaxfsl.models import PRESETS

  size = args.image_size or PRESETS[args.model].vision.image_size
  if not args.skip_pipeline:
    print(json.dumps(bench_pipeline(args, size)), flush=True)
  if not args.skip_trainer:
    print(json.dumps(bench_trainer(args)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
