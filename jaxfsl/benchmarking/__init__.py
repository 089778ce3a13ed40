"""Benchmarking jaxfsl's training steps: timing, memory, compile and FLOP
figures, for both protocols.

``tools/benchmark.py`` is the command-line front end; everything reusable is
here so that tests, notebooks and ``tools/profile_step.py`` can call it.
The PyTorch reference step (``--against torch``) is
``tools/torch_reference.py``: this package imports no torch.

Modules, by concern:
  measure    wall time of JAX calls (interleaved, medians, spread), bytes,
             peak memory, the machine's fields (device, load, versions).
  compile    cold and warm-cache compile seconds, XLA's memory analysis.
  episodic   the episode engine's step: the model, the engine config a job
             runs (configs/base.py), synthetic episodes, ``JaxStep``.
  host_wait  the fraction of wall time the device waits on the episode
             input pipeline.
  report     the episodic report's derived figures (images/s, FLOPs, MFU,
             episodes/hour) and the comparison with PyTorch.
  driver     ``BenchmarkConfig`` and ``run``: the episodic benchmark.
  fewshot    ``FewshotBenchmarkConfig`` and ``run_fewshot``: the few-shot
             trainer's iterations/s beside its input pipeline's images/s.

FLOP accounting (model FLOPs of forward + backward with a frozen backbone)
is ``jaxfsl.flops``; its names are re-exported here.
"""

from jaxfsl.benchmarking.compile import compile_cold_and_warm, compiled_memory
from jaxfsl.benchmarking.driver import (
  BenchmarkConfig,
  parse_option_value,
  run,
)
from jaxfsl.benchmarking.episodic import (
  DTYPES,
  JaxStep,
  default_engine_config,
  load,
  stage_steps,
  synthetic_episodes,
)
from jaxfsl.benchmarking.fewshot import FewshotBenchmarkConfig, run_fewshot
from jaxfsl.benchmarking.host_wait import host_wait, synthetic_sampler
from jaxfsl.benchmarking.measure import (
  interleaved,
  load_average,
  machine,
  max_rss_bytes,
  median,
  peak_memory_bytes,
  spread,
  timed,
  tree_bytes,
)
from jaxfsl.flops import (
  PEAK_TFLOPS,
  TINY_STEP_FLOPS,
  FlopCount,
  peak_tflops,
  step_flops,
  vision_flops,
)

__all__ = [
    "BenchmarkConfig", "DTYPES", "FewshotBenchmarkConfig", "FlopCount",
    "JaxStep", "PEAK_TFLOPS", "TINY_STEP_FLOPS", "compile_cold_and_warm",
    "compiled_memory", "default_engine_config", "host_wait", "interleaved",
    "load", "load_average", "machine", "max_rss_bytes", "median",
    "parse_option_value", "peak_memory_bytes", "peak_tflops", "run",
    "run_fewshot", "spread", "stage_steps", "step_flops",
    "synthetic_episodes", "synthetic_sampler", "timed", "tree_bytes",
    "vision_flops",
]
