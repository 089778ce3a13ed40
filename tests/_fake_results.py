"""Engine-shaped outputs and results dicts made by hand (no JAX, no
training), for the aggregation and report tests.

Import as ``import _fake_results`` from a test module in this folder.

The loss outputs follow the engine's contract: per episode, ``losses`` {term:
[5]} holds the mean over each evaluation segment of each term as it entered
the loss (weighted, 0 where inactive; only the variant's terms, so the parts
sum to ``total``), ``step_losses`` {term: [T]} the same per step. Evaluation
steps are k * int(T / 5), k = 1..4, and T; the extra terms are active in
steps [0, 3 * int(T / 5)) (timing "begin") and RA has no step-0 value.
"""

import numpy as np

from jaxfsl.io import aggregate

VARIANT_TERMS = {
    "none": ("vlm",),
    "svl": ("vlm", "anti_visual"),
    "ra": ("vlm", "relation"),
    "svl_ra": ("vlm", "anti_visual", "relation"),
    "visual": ("vlm", "visual"),
}
WEIGHTS = {"anti_visual": 0.1, "relation": 3.0, "visual": 1.0}


def schedule(steps, timing="begin"):
  """(evaluation steps, [start, end) window) by the release's rules."""
  f = steps // 5
  evals = [k * f for k in range(1, 5)] + [steps]
  length = 3 * f
  window = (0, length) if timing == "begin" else (steps - length, steps)
  return evals, window


def fake_outputs(num_episodes, seed=0, variant="svl_ra", steps=22,
                 timing="begin", with_step_losses=True):
  """run_batch-shaped numpy outputs; accuracies are k / 75 in float32."""
  rng = np.random.default_rng(seed)
  e = num_episodes
  acc = (rng.integers(0, 76, (e, 5)) / 75).astype(np.float32)
  stages = {"accuracy": acc}
  zero_shot = {"accuracy": (rng.integers(0, 76, e) / 75).astype(np.float32)}
  for m in aggregate.STAGE_METRICS:
    stages[m] = rng.random((e, 5)).astype(np.float32)
    zero_shot[m] = rng.random(e).astype(np.float32)
  evals, (start, end) = schedule(steps, timing)
  active = np.zeros(steps, bool)
  active[start:end] = True
  step_losses = {}
  for term in VARIANT_TERMS[variant]:
    if term == "vlm":
      v = 1.5 - np.linspace(0, 1, steps) + 0.1 * rng.random((e, steps))
    elif term == "relation":
      # The release's "KL" on raw cosines: either sign.
      v = WEIGHTS[term] * (rng.random((e, steps)) - 0.6) * active
      v[:, start] = 0.0  # No previous A_v at the window's first step.
    else:
      v = WEIGHTS[term] * (1 + rng.random((e, steps))) * active
    step_losses[term] = v.astype(np.float32)
  step_losses["total"] = sum(step_losses.values()).astype(np.float32)
  bounds = [0, *evals]
  losses = {t: np.stack([v[:, a:b].mean(axis=1) for a, b in
                         zip(bounds[:-1], bounds[1:], strict=True)],
                        axis=1).astype(np.float32)
            for t, v in step_losses.items()}
  out = {"stages": stages, "zero_shot": zero_shot, "losses": losses,
         "first_nonfinite_step": np.full((e,), -1, np.int32)}
  if with_step_losses:
    out["step_losses"] = step_losses
  return out


def fake_results(dataset="eurosat", method="CLIP-LoRA + SVL + RA", n=12,
                 seed=0, shot=1, complete=True, demo=False, variant="svl_ra",
                 steps=22, timing="begin", run_seed=1, model="test",
                 config=None, with_step_losses=True, with_schedule=True):
  """A results dict as the runner builds it (``seed`` seeds the fake
  numbers; ``run_seed`` is the job's seed)."""
  out = fake_outputs(n, seed, variant, steps, timing, with_step_losses)
  records = aggregate.episode_records(out, range(n))
  results = aggregate.summarize(records)
  results.update(
      dataset=dataset, way=5, shot=shot, query=15, steps=steps,
      seed=run_seed, variant=variant, method=method, model=model, demo=demo,
      note="pipeline check" if demo else "",
      episodes_expected=n if complete else n + 5, complete=complete,
      config=config if config is not None else {
          "seed": run_seed, "trainable": "lora", "method": {
              "variant": variant, "timing": timing}},
      run={}, episodes=records)
  if with_schedule:
    evals, window = schedule(steps, timing)
    results.update(eval_steps=evals, window=list(window))
  return results


def legacy_results(**kwargs):
  """Results as jaxfsl wrote them before per-step losses: no window /
  eval_steps keys, no step losses, every term logged unweighted (a
  ``visual`` row of zeros for variants without L_v)."""
  r = fake_results(with_step_losses=False, with_schedule=False, **kwargs)
  rng = np.random.default_rng(1)
  for e in r["episodes"]:
    e["losses"] = {"vlm": list(rng.random(5)), "anti_visual": list(
        rng.random(5)), "relation": list(rng.random(5) - 0.5),
                   "visual": [0.0] * 5, "total": list(1 + rng.random(5))}
  r.update({k: v for k, v in aggregate.summarize(r["episodes"]).items()
            if k in ("loss_means", "step_loss_mean", "step_loss_ci95")})
  return r
