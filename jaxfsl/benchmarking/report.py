"""Derived figures of the episodic report: throughput, FLOPs and MFU from
the timed step, and the comparison with the PyTorch reference."""

from __future__ import annotations

from typing import Any

from jaxfsl.benchmarking.measure import median, spread
from jaxfsl.flops import TINY_STEP_FLOPS, peak_tflops, step_flops


def images_per_step(config) -> int:
  """Images through the vision tower per stage-1 step of one episode,
  counted as the release runs them: the N = views * way * shot augmented
  views, plus the M = way * shot clean support images when a term needs
  them (with ``clean_from_views`` jaxfsl does less work for the same
  count)."""
  m = config.way * config.shot
  n = config.num_views * m
  return n + (m if config.method.needs_clean_pass else 0)


def throughput(model, config, times: dict[str, list[float]],
               episodes_per_batch: int, dtype: str, device_kind: str,
               device_count: int) -> dict[str, Any]:
  """The step's throughput fields from its measured seconds.

  Args:
    model: the backbone (its vision config sizes the FLOP count).
    config: the ``EngineConfig`` timed.
    times: ``interleaved``'s seconds; "jaxfsl" (stage-1 steps) and,
      optionally, "jaxfsl_stage2".
    episodes_per_batch: E.
    dtype: compute dtype name (for the device's peak).
    device_kind, device_count: the devices.

  Returns:
    ``images_per_episode_step``, ``step_seconds`` (median), its ``_all``,
    ``stage2_step_seconds``, ``images_per_second``, ``episodes_per_hour``
    (T steps, stage 1 and 2 weighed when both were timed) with its
    ``_basis``, ``step_tflop``, ``tflops_per_second``, ``mfu`` (None where
    the peak is unknown) and ``peak_tflops_per_device``.
  """
  e = episodes_per_batch
  images = images_per_step(config)
  seconds = median(times["jaxfsl"])
  flops = e * step_flops(model.config.vision, images, config.lora.rank,
                         config.lora.targets)
  tflops = flops / seconds / 1e12
  peak_tf = peak_tflops(device_kind, dtype)
  start, end = config.window
  if "jaxfsl_stage2" in times:
    seconds2 = median(times["jaxfsl_stage2"])
    episode_seconds = (end - start) * seconds + (
        config.steps - (end - start)) * seconds2
    basis = "stage1_and_stage2_measured"
  else:
    seconds2 = None
    episode_seconds = config.steps * seconds
    basis = "every_step_as_stage1"
  return {
      "images_per_episode_step": images,
      "step_seconds": seconds,
      "step_seconds_all": times["jaxfsl"],
      "stage2_step_seconds": seconds2,
      "images_per_second": e * images / seconds,
      "total_steps_per_episode": config.steps,
      "episodes_per_hour": 3600.0 * e / episode_seconds,
      "episodes_per_hour_basis": basis,
      "step_tflop": flops / 1e12,
      "tflops_per_second": tflops,
      "mfu": None if peak_tf is None else tflops / (peak_tf * device_count),
      "peak_tflops_per_device": peak_tf,
  }


def torch_comparison(times: dict[str, list[float]], episodes_per_batch: int,
                     step_tflop: float, reference) -> dict[str, Any]:
  """jaxfsl against the PyTorch reference timed interleaved with it.

  Args:
    times: ``interleaved``'s seconds with "jaxfsl" and "torch".
    episodes_per_batch: E of the jaxfsl step (torch runs one episode).
    step_tflop: model TFLOP of the jaxfsl step (all E episodes).
    reference: the reference step (``threads``, ``attn_implementation``,
      ``torch`` attributes).

  Returns:
    ``torch_step_seconds`` (+ ``_all``), ``torch_tflops_per_second``,
    ``speedup_vs_torch`` (episodes/s, jaxfsl over torch), its ``_paired``
    form (median of each round's adjacent pair, steadier under drifting
    load) with ``_all`` and ``_spread``, ``pairs``, the reference's
    settings, and ``speedup_caveat`` when the model is too small for the
    ratio to say anything about compute.
  """
  e = episodes_per_batch
  seconds = median(times["jaxfsl"])
  torch_seconds = median(times["torch"])
  flops = step_tflop * 1e12
  paired = [e * t / j for j, t in zip(times["jaxfsl"], times["torch"],
                                      strict=True)]
  out = {
      "torch_step_seconds": torch_seconds,
      "torch_step_seconds_all": times["torch"],
      "torch_tflops_per_second": flops / e / torch_seconds / 1e12,
      "speedup_vs_torch": (e / seconds) / (1.0 / torch_seconds),
      "speedup_vs_torch_paired": median(paired),
      "speedup_vs_torch_paired_all": paired,
      "speedup_vs_torch_paired_spread": spread(paired),
      "pairs": len(paired),
      "torch_threads": reference.threads,
      "torch_attn_implementation": reference.attn_implementation,
      "torch_version": reference.torch.__version__,
  }
  if flops / e < TINY_STEP_FLOPS:
    out["speedup_caveat"] = (
        f"a step of {flops / e / 1e9:.2f} GFLOP per episode: both sides "
        "are dominated by per-step overheads (Python, dispatch, kernel "
        "launches), not by compute; this speed-up says nothing about "
        "real backbones (time clip-vit-b16 for that)")
  return out
