r"""Where the time of the engine's compiled train step goes, by kind of op.

  python tools/profile_step.py --model clip-vit-b16 --out /tmp/prof

Compiles ``jaxfsl.benchmarking.JaxStep`` (the engine's step, as the
benchmark times it), runs ``--steps`` steps under ``jax.profiler`` and sums
the durations of the executed XLA ops (thunks) of the step, each put in one
category from its HLO op name and opcode (``categorize``): dense / LoRA /
attention matmuls, attention softmax, LayerNorm, GELU and other MLP
element-wise work, dropout-mask random bits, copies/transposes/slices,
optimiser, losses, other. Prints one JSON line: seconds and fractions per
category, the top ops, the traced seconds per step and the load average.
Proportions are what to read on a shared machine: absolute times move with
the load. (Loops and conditionals are containers: only their leaf ops are
counted; XLA:CPU may run independent ops concurrently, so the sum can
exceed the wall time.)
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import time

CONTAINERS = ("while", "conditional", "call")
_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MOVES = {"copy", "copy-start", "copy-done", "transpose", "bitcast", "reshape",
          "slice", "dynamic-slice", "dynamic-update-slice", "concatenate",
          "pad", "broadcast", "gather", "scatter", "tuple",
          "get-tuple-element"}


_HEADER = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_SHAPE = re.compile(r"=\s*\w+\[([\d,]*)\]")
_FREE = ("parameter", "constant", "broadcast", "bitcast", "tuple",
         "get-tuple-element", "iota")


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """instruction name -> (opcode, op_name metadata) for every instruction."""
  ops = {}
  for line in hlo_text.splitlines():
    m = _LINE.match(line)
    if m:
      name_meta = _OP_NAME.search(line)
      ops[m.group(1)] = (m.group(2), name_meta.group(1) if name_meta else "")
  return ops


def fusion_weights(hlo_text: str) -> dict[str, dict[str, float]]:
  """fusion instruction name -> {category: share} from its fused
  computation's instructions, each weighted by its output elements.

  XLA fuses e.g. a LayerNorm's backward with the dropout-mask bits of the
  LoRA branches it feeds; the fusion's own op name names only its root,
  so its time is split over what it computes.
  """
  computations: dict[str, collections.Counter] = {}
  calls: dict[str, str] = {}
  current = None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and "=" not in line.split("(")[0]:
      current = header.group(1)
      computations[current] = collections.Counter()
      continue
    if line.strip() == "}":
      current = None
      continue
    m = _LINE.match(line)
    if not m:
      continue
    name, opcode = m.group(1), m.group(2)
    call = _CALLS.search(line)
    if opcode == "fusion" and call:
      calls[name] = call.group(1)
    if current is None or opcode in _FREE:
      continue
    shape = _SHAPE.search(line)
    elements = 1
    if shape and shape.group(1):
      for d in shape.group(1).split(","):
        elements *= int(d)
    meta = _OP_NAME.search(line)
    cat = categorize(opcode, meta.group(1) if meta else "", name)
    if cat is not None:
      computations[current][cat] += elements
  weights = {}
  for name, comp in calls.items():
    counts = computations.get(comp)
    if counts:
      total = sum(counts.values())
      weights[name] = {k: v / total for k, v in counts.items()}
  return weights


def categorize(opcode: str, op_name: str, name: str) -> str | None:
  """The category of one executed op (None: a container, not counted)."""
  if opcode in CONTAINERS or name.startswith(CONTAINERS):
    return None
  path = op_name.lower()
  if any(k in path for k in ("dropout_mask", "_bernoulli", "threefry",
                             "_uniform",
                             "random_bits", "random_split",
                             "random_fold_in")):
    return "dropout masks / rng"
  if any(k in path for k in ("adam", "optax", "apply_updates", "scale_by",
                             "optimizer")):
    return "optimiser"
  is_dot = opcode in ("dot", "convolution") or "dot" in name or \
      path.endswith("dot_general")
  if is_dot:
    if "_lora" in path:
      return "matmul: LoRA branch"
    # XLA drops the op name of some dots (the attention einsums among
    # them): they land here.
    return "matmul: dense + attention"
  if opcode in _MOVES or name.startswith(("copy", "transpose", "bitcast",
                                          "slice", "concatenate")):
    return "copies / transposes / slices"
  if "/attn/" in path:
    return "attention softmax / scaling"
  if re.search(r"/ln(1|2|_pre|_post)?/|layernorm|layer_norm", path):
    return "layernorm"
  if "/mlp/" in path or "gelu" in path:
    return "gelu / mlp element-wise"
  if any(k in path for k in ("loss", "relation", "l2_normalize", "logsumexp",
                             "log_softmax", "losses")):
    return "losses / features"
  return "other"


def breakdown(trace_events: list[dict], ops: dict[str, tuple[str, str]],
              weights: dict[str, dict[str, float]] | None = None
              ) -> tuple[dict[str, float], collections.Counter]:
  """Seconds per category and per op, from a perfetto trace's events; a
  fusion's time is split by ``weights`` (``fusion_weights``) when given."""
  weights = weights or {}
  per_cat: dict[str, float] = collections.defaultdict(float)
  per_op: collections.Counter = collections.Counter()
  for e in trace_events:
    if e.get("ph") != "X":
      continue
    name = e.get("name", "")
    if name not in ops:
      continue
    opcode, op_name = ops[name]
    cat = categorize(opcode, op_name, name)
    if cat is None:
      continue
    seconds = e.get("dur", 0) / 1e6
    for part, share in weights.get(name, {cat: 1.0}).items():
      per_cat[part] += seconds * share
    per_op[f"{name} [{cat}]"] += seconds
  return dict(per_cat), per_op


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--model", default="clip-vit-b16")
  p.add_argument("--shot", type=int, default=1)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--steps", type=int, default=2, help="traced steps")
  p.add_argument("--option", action="append", default=[],
                 metavar="NAME=VALUE",
                 help="EngineConfig field, or lora.<field> (e.g. "
                 "lora.dropout_masks=packed); repeatable")
  p.add_argument("--out", required=True, help="trace directory")
  args = p.parse_args(argv)

  import jax

  from jaxfsl import benchmarking
  from jaxfsl.protocols.episodic.engine import EpisodeEngine

  options = {}
  for item in args.option:
    key, _, value = item.partition("=")
    options[key] = benchmarking.parse_option_value(value)
  config = benchmarking.default_engine_config(args.shot, "svl_ra", **options)
  model = benchmarking.load(args.model, args.dtype)
  step = benchmarking.JaxStep(EpisodeEngine(model, config), 1)
  compile_seconds = step.compile()
  stage1, _ = benchmarking.stage_steps(config)
  jax.block_until_ready(step(stage1))
  hlo = step.compiled.as_text()
  ops, weights = hlo_ops(hlo), fusion_weights(hlo)
  os.makedirs(args.out, exist_ok=True)
  # The optimised HLO beside the trace: what each fusion in top_ops fuses.
  with open(os.path.join(args.out, "step.hlo.txt"), "w") as f:
    f.write(hlo)
  start = time.perf_counter()
  jax.profiler.start_trace(args.out, create_perfetto_trace=True)
  for _ in range(args.steps):
    jax.block_until_ready(step(stage1))
  jax.profiler.stop_trace()
  traced = (time.perf_counter() - start) / args.steps
  path = sorted(glob.glob(os.path.join(args.out, "plugins", "profile", "*",
                                       "perfetto_trace.json.gz")))[-1]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_cat, per_op = breakdown(events, ops, weights)
  total = sum(per_cat.values())
  report = {
      "model": args.model, "shot": args.shot, "dtype": args.dtype,
      "options": options, "compile_seconds": compile_seconds,
      "traced_seconds_per_step": traced,
      "op_seconds_per_step": total / args.steps,
      "fractions": {k: round(v / total, 4) for k, v in
                    sorted(per_cat.items(), key=lambda kv: -kv[1])},
      "top_ops": [(k, round(v / args.steps, 4))
                  for k, v in per_op.most_common(15)],
      "uptime_load": list(os.getloadavg()),
      "trace": path,
  }
  print(json.dumps(report))
  return report


if __name__ == "__main__":
  main()
