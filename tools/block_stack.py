r"""How the cost of a LoRA block stack's training pass grows with its depth.

  python tools/block_stack.py --depths 3,12 --dropout 0.25
  python tools/block_stack.py --depths 12 --dropout 0 --hlo_only

Builds K transformer blocks of a preset's vision tower (``layers.Block``,
frozen, random init) with LoRA on q, k and v of each, and jits the gradient
w.r.t. the adapters of a loss on the class token after the K blocks, with
LoRA dropout as the engine trains (``EngineConfig.cpu_tuning``'s compiler
options). For each K it prints one JSON line: the arguments (``model``,
``depth``, ``images``, ``dropout``, ``masks``); two facts read from the
optimised HLO (no timing): the number of instructions of the largest fused
computation (``largest_fusion_instructions``) and the largest number of
``select`` instructions in one fused computation
(``largest_fusion_selects``; each LoRA-dropout mask applied in the backward
pass is a ``select``); unless ``--hlo_only``, the median seconds of that
pass over ``--repeats`` runs (``seconds``), the seconds per block
(``seconds_per_block``) and every run's seconds (``seconds_all``); and
the load average when the line was written (``uptime_load``).

Why it exists (docs/performance.md, "Session 11: the step costs more than
its blocks"): on XLA:CPU the engine's step costs more than its depth times
one block, and the backward pass's largest fused computation grows with
depth, because XLA fuses the residual-stream gradient of block i with the
element-wise terms of every later block (with LoRA dropout on, its masks
included) and so recomputes them once per block.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s", re.M)


def fused_computation_stats(hlo_text: str) -> tuple[int, int]:
  """(instructions, selects) of the largest fused computations of an
  optimised HLO module's text: the most instructions in one, and the most
  ``select`` instructions in one."""
  most_lines = most_selects = 0
  for comp in re.split(r"\n(?=\S.*\{\s*$)", hlo_text, flags=re.M):
    if not comp.lstrip("%").startswith("fused_computation"):
      continue
    most_lines = max(most_lines, len(_INSTRUCTION.findall(comp)))
    most_selects = max(most_selects, comp.count(" select("))
  return most_lines, most_selects


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--model", default="clip-vit-b16",
                 help="preset whose vision blocks are stacked "
                 "(default %(default)s)")
  p.add_argument("--depths", default="3,12",
                 help="comma-separated numbers of blocks K "
                 "(default %(default)s)")
  p.add_argument("--images", type=int, default=30,
                 help="images per pass (default 30: a 1-shot 5-way step)")
  p.add_argument("--rank", type=int, default=16,
                 help="LoRA rank (default %(default)s)")
  p.add_argument("--dropout", type=float, default=0.25,
                 help="LoRA dropout rate in [0, 1) (default %(default)s)")
  p.add_argument("--masks", default="bernoulli",
                 choices=("bernoulli", "packed"),
                 help="how dropout masks are drawn; packed needs a rate "
                 "that is a multiple of 1/256 or 1/65536 (default "
                 "%(default)s)")
  p.add_argument("--repeats", type=int, default=3,
                 help="timed runs per depth, after one untimed "
                 "(default %(default)s)")
  p.add_argument("--hlo_only", action="store_true",
                 help="compile and report the HLO facts, no timing")
  args = p.parse_args(argv)
  # Every bad argument is named in one usage error, not only the first.
  errors = []
  try:
    depths = [int(d) for d in args.depths.split(",")]
  except ValueError:
    depths = []
    errors.append(f"--depths {args.depths!r}: expected integers separated "
                  "by commas, e.g. 3,12")
  if any(d < 1 for d in depths):
    errors.append(f"--depths {args.depths!r}: every depth must be at "
                  "least 1")
  for flag in ("images", "rank", "repeats"):
    if getattr(args, flag) < 1:
      errors.append(f"--{flag} {getattr(args, flag)}: expected an integer "
                    ">= 1")
  if not 0.0 <= args.dropout < 1.0:
    errors.append(f"--dropout {args.dropout}: expected a rate in [0, 1)")

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxfsl.models import PRESETS
  from jaxfsl.models.layers import LORA_COLLECTION, Block, packed_draw_bits
  from jaxfsl.protocols.episodic.engine import CPU_COMPILER_OPTIONS

  if (args.masks == "packed" and 0.0 < args.dropout < 1.0
      and packed_draw_bits(1.0 - args.dropout) is None):
    errors.append(f"--dropout {args.dropout} with --masks packed: expected "
                  "a multiple of 1/256 (or of 1/65536), which packed masks "
                  "keep exactly, e.g. 0.25; or --masks bernoulli")
  if args.model not in PRESETS:
    errors.append(f"--model {args.model!r}: expected a preset, one of "
                  f"{sorted(PRESETS)}")
  if errors:
    p.error("; ".join(errors))
  v = PRESETS[args.model].vision
  tokens = (v.image_size // v.patch_size) ** 2 + 1
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(
      (args.images, tokens, v.width)).astype(np.float32))
  block = Block(heads=v.heads, mlp_dim=v.mlp_dim, act=v.act,
                norm_eps=v.norm_eps, lora_scaling=2.0,
                lora_dropout=args.dropout, lora_dropout_masks=args.masks)
  params = block.init({"params": jax.random.PRNGKey(0)}, x[:1])["params"]
  compiler_options = (CPU_COMPILER_OPTIONS
                      if jax.devices()[0].platform == "cpu" else None)

  def adapter():
    def w(*shape):
      return jnp.asarray(0.01 * rng.standard_normal(shape), jnp.float32)
    return {t: {"a": w(v.width, args.rank), "b": w(args.rank, v.width)}
            for t in ("q", "k", "v")}

  results = []
  for depth in depths:
    adapters = [{"attn": adapter()} for _ in range(depth)]

    def loss(adapters, x, key):
      for i, a in enumerate(adapters):
        x = block.apply({"params": params, LORA_COLLECTION: a}, x,
                        deterministic=False,
                        rngs={"dropout": jax.random.fold_in(key, i)})
      return jnp.sum(jnp.square(x[:, 0]))

    key = jax.random.PRNGKey(1)
    compiled = jax.jit(jax.grad(loss), compiler_options=compiler_options
                       ).lower(adapters, x, key).compile()
    lines, selects = fused_computation_stats(compiled.as_text())
    row = {"model": args.model, "depth": depth, "images": args.images,
           "dropout": args.dropout, "masks": args.masks,
           "largest_fusion_instructions": lines,
           "largest_fusion_selects": selects}
    if not args.hlo_only:
      jax.block_until_ready(compiled(adapters, x, key))
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(adapters, x, key))
        times.append(time.perf_counter() - start)
      median = statistics.median(times)
      row.update(seconds=median, seconds_per_block=median / depth,
                 seconds_all=times)
    row["uptime_load"] = list(os.getloadavg())
    print(json.dumps(row), flush=True)
    results.append(row)
  return results


if __name__ == "__main__":
  main()
