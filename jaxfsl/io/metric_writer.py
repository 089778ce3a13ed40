"""TensorBoard scalars of a job, written by process 0 only.

The writer is tensorboardX's ``SummaryWriter``. ``clu.metric_writers`` (the
kept library big_vision uses) was the first choice, but clu 0.0.12 imports
TensorFlow when the package is imported (``clu/metric_writers/__init__.py``
-> ``summary_writer`` -> ``import tensorflow``) and TensorFlow is not a
dependency of jaxfsl; tensorboardX writes the same event files without it.
The method names follow clu's ``MetricWriter`` (``write_scalars``,
``flush``, ``close``) so that switching later is local to this file.

Tags (x = the TensorBoard step):
  episode/accuracy, episode/zero_shot_accuracy   x = episode index
  running/accuracy_mean, running/accuracy_ci95, speed/episodes_per_hour
                                                 x = episodes done
  final/accuracy and final/<metric>              x = training step of the
                                                 evaluation (0 = zero-shot)
  loss/<term>          per-step loss term as it entered the loss, mean over
                       episodes; x = step, counted from 1
  segment_loss/<term>  (runs without per-step losses) the segment means;
                       x = the segment's last step
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from jaxfsl.io import aggregate


def is_main_process() -> bool:
  """Whether this process writes reports: JAX process 0, or any process
  that has not imported JAX (then it is the only one). The one place where
  jaxfsl decides who writes shared files."""
  jax = sys.modules.get("jax")
  return jax is None or jax.process_index() == 0


class TensorBoard:
  """A job's TensorBoard scalars (module docstring), from process 0 only.

  On other processes every method does nothing, so callers need no check.

  Args:
    logdir: the event files' folder (created if needed).
    enabled: defaults to ``is_main_process()``.
  """

  def __init__(self, logdir: str | os.PathLike[str],
               enabled: bool | None = None):
    self.logdir = os.fspath(logdir)
    self.enabled = is_main_process() if enabled is None else enabled
    self.writer = None
    if self.enabled:
      from tensorboardX import SummaryWriter

      self.writer = SummaryWriter(self.logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """``{tag: value}`` at ``step`` (clu's ``MetricWriter`` signature)."""
    if self.writer is None:
      return
    for tag, value in scalars.items():
      self.writer.add_scalar(tag, float(value), int(step))

  def batch(self, progress: Mapping[str, Any],
            accuracies: Sequence[float]) -> None:
    """After a batch: its episodes' accuracies and the running mean ± CI.

    Args:
      progress: the runner's progress dict (``records``, ``done``, optional
        ``rate`` in episodes per hour).
      accuracies: final accuracies (%) of every finished episode.
    """
    if self.writer is None:
      return
    for rec in progress["records"]:
      self.write_scalars(rec["index"], {
          "episode/accuracy": rec["accuracy"],
          "episode/zero_shot_accuracy": rec["zero_shot_accuracy"]})
    mean, ci = aggregate.mean_ci95(accuracies)
    scalars = {"running/accuracy_mean": mean}
    if ci is not None:  # None before the second episode.
      scalars["running/accuracy_ci95"] = ci
    if progress.get("rate"):
      scalars["speed/episodes_per_hour"] = progress["rate"]
    self.write_scalars(progress["done"], scalars)
    self.flush()

  def final(self, results: Mapping[str, Any]) -> None:
    """At the end: accuracy and analysis metrics per evaluation, and the
    per-step loss terms (mean over episodes)."""
    if self.writer is None or not results.get("episodes"):
      return
    steps = aggregate.evaluation_steps(results)
    num = len(results["stage_accuracy_mean"])
    xs = [0, *steps] if len(steps) == num else list(range(num + 1))
    zero = results.get("zero_shot_means", {})
    self.write_scalars(0, {"final/accuracy":
                           results["zero_shot_accuracy_mean"]})
    self.write_scalars(0, {f"final/{m}": v for m, v in zero.items()})
    for k, x in enumerate(xs[1:]):
      scalars = {"final/accuracy": results["stage_accuracy_mean"][k]}
      for m, values in results.get("stage_means", {}).items():
        scalars[f"final/{m}"] = values[k]
      self.write_scalars(x, scalars)
    per_step = results.get("step_loss_mean") or {}
    for term, values in per_step.items():
      for t, v in enumerate(values, 1):
        self.writer.add_scalar(f"loss/{term}", float(v), t)
    if not per_step:
      for term, values in (results.get("loss_means") or {}).items():
        for x, v in zip(xs[1:], values, strict=False):
          self.writer.add_scalar(f"segment_loss/{term}", float(v), x)
    self.flush()

  def flush(self) -> None:
    if self.writer is not None:
      self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None

  def __enter__(self) -> TensorBoard:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()
