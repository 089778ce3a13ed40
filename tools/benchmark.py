r"""Times the episode engine's training step; prints one JSON line.

  python tools/benchmark.py --model clip-vit-b16 --shot 1 \
      --episodes_per_batch 1 --steps 3 --dtype float32 --against torch

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


def parse(argv=None) -> tuple[benchmarking.BenchmarkConfig, bool]:
  """Command line -> (benchmark config, quiet)."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
  p.add_argument("--variant", choices=VARIANTS, default="svl_ra")
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
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quiet", action="store_true", help="no progress on stderr")
  args = p.parse_args(argv)
  options = {}
  if args.remat:
    options["remat"] = True
  for item in args.option:
    name, _, value = item.partition("=")
    options[name] = _literal(value)
  if args.trainable_option:
    from jaxfsl.configs.base import get_config

    block = get_config()[args.trainable].to_dict()
    for item in args.trainable_option:
      name, _, value = item.partition("=")
      block[name] = _literal(value)
    options["trainable_config"] = block
  config = benchmarking.BenchmarkConfig(
      model=args.model, shot=args.shot,
      episodes_per_batch=args.episodes_per_batch, steps=args.steps,
      dtype=args.dtype, variant=args.variant, trainable=args.trainable,
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


def _literal(value: str):
  lowered = value.lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  for cast in (int, float):
    try:
      return cast(value)
    except ValueError:
      pass
  return value


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
