r"""Times a protocol's training step; prints one JSON line.

  python tools/benchmark.py --model clip-vit-b16 --shot 1 \
      --episodes_per_batch 1 --steps 3 --dtype float32 --against torch
  python tools/benchmark.py --protocol fewshot --model clip-vit-b16 \
      --steps 5 --dtype float32

--protocol episodic (default): the episode engine's step (E episodes).
Fields: ``step_seconds`` (median seconds of one step of the whole batch of
E episodes, stage 1: every loss term on), ``episodes_per_batch``,
``images_per_second``, ``episodes_per_hour`` (at T = epochs * shot steps,
configs/base.py),
``tflops_per_second`` and ``mfu`` (model FLOPs of forward + backward, see
``jaxfsl.benchmarking``; ``mfu`` is None where the device's peak is
unknown, e.g. CPUs), ``compile_seconds``, ``peak_memory_bytes`` (device peak
bytes in use, or the process's max RSS on CPU), ``compiled_memory`` (XLA's
temp/argument buffer sizes of the step), ``episode_state_bytes``,
``backbone_bytes``, ``device_kind``, ``device_count``;
``episodes_per_batch_choice`` (with ``--episodes_per_batch auto``: what was
chosen and why), ``compile_seconds_warm_cache`` (the same program compiled
again from the persistent cache), ``uptime_load`` (1/5/15-min load
averages: the machine's other work), with ``--host_wait_batches``
``host_wait_fraction`` (time blocked on the input pipeline / wall time); with
``--against torch`` also ``torch_step_seconds`` and ``speedup_vs_torch``
(episodes per second, jaxfsl / torch), timed interleaved in this process,
``speedup_vs_torch_paired`` (median over the ``--steps`` adjacent pairs)
with its ``_spread`` (min, max, IQR), and ``speedup_caveat`` when the model
is too small for the ratio to mean anything. The PyTorch step is
``tools/torch_reference.py``.

--protocol fewshot: the few-shot trainer's ``train_step`` with the
protocol's defaults (configs/fewshot/common.py: batch 32, LoRA r=2 on q/k/v
of both towers, variant none) and ``--classes`` prompts re-encoded every
iteration, beside its input pipeline alone (grain, RandomResizedCrop + flip
on ``--source_size`` JPEGs written to a temporary folder). Fields:
``iterations_per_second`` (1 / median ``iteration_seconds``),
``train_images_per_second``, ``first_step_seconds`` (compilation + one
iteration), ``pipeline_images_per_second``, ``pipeline_over_trainer`` (> 1:
the pipeline keeps the device fed), ``batch_size``, ``lora_towers``,
``classes``, ``image_size``, ``peak_memory_bytes``, ``device_kind``,
``device_count``, ``uptime_load``; see ``jaxfsl.benchmarking.fewshot``.

XLA flags are read when JAX starts: set ``XLA_FLAGS`` in the environment.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

from jaxfsl import benchmarking
from jaxfsl.method.objective import VARIANTS
from jaxfsl.trainables import available as available_trainables

# Flags of one protocol only: given with the other, they are an error.
EPISODIC_ONLY = ("shot", "episodes_per_batch", "memory_budget_gib",
                 "trainable", "against", "torch_threads", "time_stage2",
                 "remat", "option", "compile_only", "cache_dir",
                 "host_wait_batches", "host_wait_steps")
FEWSHOT_ONLY = ("batch_size", "classes", "towers", "image_size",
                "pipeline_batches", "num_workers", "source_images",
                "source_size", "skip_trainer")


def parse(argv=None) -> tuple[benchmarking.BenchmarkConfig |
                              benchmarking.FewshotBenchmarkConfig, bool]:
  """Command line -> (benchmark config of the chosen protocol, quiet)."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--protocol", choices=("episodic", "fewshot"),
                 default="episodic",
                 help="episodic: the episode engine's step; fewshot: the "
                 "few-shot trainer's step beside its input pipeline")
  p.add_argument("--model", default="clip-vit-b16",
                 help="preset (clip-vit-b16, clip-vit-l14, siglip-b16, "
                 "tiny-clip, ...) or checkpoint path")
  p.add_argument("--shot", type=int, default=1)
  p.add_argument("--episodes_per_batch", type=_batch_size, default=1,
                 help="E, or 'auto': the largest that fits the device "
                 "memory (XLA's memory analysis)")
  p.add_argument("--memory_budget_gib", type=float, default=None,
                 help="with --episodes_per_batch auto: GiB per device "
                 "(default: the device's bytes_limit; CPUs: none)")
  p.add_argument("--steps", type=int, default=3, help="timed steps")
  p.add_argument("--warmup", type=int, default=1,
                 help="untimed steps after compiling")
  p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                 default="float32")
  p.add_argument("--variant", choices=VARIANTS, default=None,
                 help="the method's terms (default: svl_ra for episodic, "
                 "none = CLIP-LoRA for fewshot)")
  p.add_argument("--trainable", choices=available_trainables(),
                 default="lora", help="what is fine-tuned (config.trainable)")
  p.add_argument("--trainable_option", action="append", default=[],
                 metavar="KEY=VALUE",
                 help="a key of the trainable's config block (configs/"
                 "base.py coop.* / maple.* / lora.*), e.g. depth=2 for maple "
                 "on tiny-clip; repeatable")
  p.add_argument("--against", choices=("torch",), default=None,
                 help="also time the PyTorch reference step (needs torch "
                 "and transformers)")
  p.add_argument("--torch_threads", type=int, default=None)
  p.add_argument("--time_stage2", action="store_true",
                 help="also time stage-2 steps for episodes_per_hour")
  p.add_argument("--remat", action="store_true",
                 help="EngineConfig.remat: rematerialise blocks")
  p.add_argument("--option", action="append", default=[],
                 metavar="NAME=VALUE",
                 help="extra EngineConfig field (bool/int/float), repeatable")
  p.add_argument("--compile_only", action="store_true",
                 help="compile and report memory analysis, run nothing")
  p.add_argument("--cache_dir", default=None,
                 help="compilation cache for the warm-cache compile time "
                 "(default: a fresh temporary one; 'off': skip)")
  p.add_argument("--host_wait_batches", type=int, default=0,
                 help="> 0: also run that many batches of whole episodes "
                 "from the real pipeline (synthetic data) and report the "
                 "fraction of wall time spent waiting on the host")
  p.add_argument("--host_wait_steps", type=int, default=None,
                 help="T of the host-wait episodes (default: the config's)")
  fewshot = p.add_argument_group("--protocol fewshot")
  fewshot.add_argument("--batch_size", type=int, default=None,
                       help="B (default: the protocol's, 32)")
  fewshot.add_argument("--classes", type=int, default=100,
                       help="class prompts re-encoded per iteration "
                       "(Caltech101: 100, ImageNet: 1000)")
  fewshot.add_argument("--towers", choices=("vision", "text", "both"),
                       default=None,
                       help="LoRA towers (default: the protocol's, both)")
  fewshot.add_argument("--image_size", type=int, default=0,
                       help="random-init presets: input side (0: the "
                       "preset's)")
  fewshot.add_argument("--pipeline_batches", type=int, default=20,
                       help="timed input-pipeline batches (0: none)")
  fewshot.add_argument("--num_workers", type=int, default=None,
                       help="pipeline threads (default: the protocol's)")
  fewshot.add_argument("--source_images", type=int, default=64,
                       help="distinct JPEGs the pipeline reads")
  fewshot.add_argument("--source_size", type=_size, default=(500, 375),
                       metavar="WxH", help="pixels of those JPEGs")
  fewshot.add_argument("--skip_trainer", action="store_true",
                       help="time the pipeline only")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quiet", action="store_true", help="no progress on stderr")
  args = p.parse_args(argv)
  other = FEWSHOT_ONLY if args.protocol == "episodic" else EPISODIC_ONLY
  stray = [f"--{k}" for k in other
           if getattr(args, k) != p.get_default(k)]
  if stray:
    p.error(f"{', '.join(stray)}: not a --protocol {args.protocol} flag")
  if args.protocol == "fewshot":
    return benchmarking.FewshotBenchmarkConfig(
        model=args.model, image_size=args.image_size, dtype=args.dtype,
        variant=args.variant or "none", towers=args.towers,
        batch_size=args.batch_size, classes=args.classes, steps=args.steps,
        warmup=args.warmup, pipeline_batches=args.pipeline_batches,
        num_workers=args.num_workers, source_images=args.source_images,
        source_size=args.source_size, skip_trainer=args.skip_trainer,
        seed=args.seed), args.quiet
  options = {}
  if args.remat:
    options["remat"] = True
  for item in args.option:
    name, _, value = item.partition("=")
    options[name] = benchmarking.parse_option_value(value)
  if args.trainable_option:
    from jaxfsl.configs.base import get_config

    block = get_config()[args.trainable].to_dict()
    for item in args.trainable_option:
      name, _, value = item.partition("=")
      block[name] = benchmarking.parse_option_value(value)
    options["trainable_config"] = block
  config = benchmarking.BenchmarkConfig(
      model=args.model, shot=args.shot,
      episodes_per_batch=args.episodes_per_batch, steps=args.steps,
      dtype=args.dtype, variant=args.variant or "svl_ra",
      trainable=args.trainable,
      against=args.against,
      time_stage2=args.time_stage2, engine_options=options,
      warmup=args.warmup, compile_only=args.compile_only, seed=args.seed,
      torch_threads=args.torch_threads,
      memory_budget_bytes=(None if args.memory_budget_gib is None
                           else int(args.memory_budget_gib * 2 ** 30)),
      cache_dir=args.cache_dir, host_wait_batches=args.host_wait_batches,
      host_wait_steps=args.host_wait_steps)
  return config, args.quiet


def _batch_size(value: str):
  if value == "auto":
    return value
  try:
    return int(value)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"{value!r}: expected an integer or 'auto'") from None


def _size(value: str) -> tuple[int, int]:
  width, _, height = value.lower().partition("x")
  try:
    return int(width), int(height)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"{value!r}: expected WIDTHxHEIGHT, e.g. 500x375") from None


def torch_reference():
  """``tools/torch_reference.py``'s step class (imports torch when built)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "torch_reference.py")
  spec = importlib.util.spec_from_file_location("jaxfsl_torch_reference",
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.TorchReferenceStep


def main(argv=None) -> dict:
  config, quiet = parse(argv)
  log = None if quiet else (lambda msg: print(msg, file=sys.stderr,
                                               flush=True))
  if isinstance(config, benchmarking.FewshotBenchmarkConfig):
    report = benchmarking.run_fewshot(config, log=log)
    print(json.dumps(report), flush=True)
    return report
  reference = torch_reference() if config.against == "torch" else None
  report = benchmarking.run(config, log=log, reference=reference)
  if "speedup_caveat" in report and not quiet:
    print(f"note: {report['speedup_caveat']}", file=sys.stderr, flush=True)
  print(json.dumps(report), flush=True)
  return report


if __name__ == "__main__":
  from jaxfsl.checkpoints import CheckpointError

  try:
    main()
  except (ValueError, FileNotFoundError, CheckpointError) as e:
    # A bad --model / option: one line naming it, no traceback.
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(2)
