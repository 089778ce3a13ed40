"""jaxfsl.optim against torch.optim.AdamW + CosineAnnealingLR (CPU torch)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfsl import optim

torch = pytest.importorskip("torch")

STEPS = 20


def torch_lrs(total_steps, base_lr, min_lr, period_factor, n):
  """The LR torch uses at each of n optimizer steps (scheduler after step)."""
  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.AdamW([p], lr=base_lr)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(
      opt, T_max=period_factor * total_steps, eta_min=min_lr)
  lrs = []
  for _ in range(n):
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
  return np.array(lrs)


@pytest.mark.parametrize("total_steps,base_lr,min_lr,factor", [
    (STEPS, 2e-4, 1e-6, 8),   # the release
    (STEPS, 0.1, 1e-3, 1),    # a full half-period in STEPS steps
])
def test_release_schedule_matches_torch(total_steps, base_lr, min_lr, factor):
  sched = optim.release_schedule(total_steps, base_lr, min_lr, factor)
  got = np.asarray(sched(jnp.arange(STEPS + 1)))
  want = torch_lrs(total_steps, base_lr, min_lr, factor, STEPS + 1)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_release_schedule_closed_form():
  t = 250
  sched = optim.release_schedule(t)
  t_max = 8 * t
  for k in (0, 1, 125, 249, t_max // 2, t_max):
    want = 1e-6 + (2e-4 - 1e-6) * (1 + math.cos(math.pi * k / t_max)) / 2
    np.testing.assert_allclose(float(sched(k)), want, rtol=1e-6)
  np.testing.assert_allclose(float(sched(0)), 2e-4, rtol=1e-7)
  np.testing.assert_allclose(float(sched(t_max)), 1e-6, rtol=1e-5)
  # Traceable in the step count.
  jitted = jax.jit(sched)(jnp.int32(125))
  np.testing.assert_allclose(jitted, float(sched(125)), rtol=1e-7)


def run_torch(params0, grads_fn, total_steps, kw):
  ps = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params0]
  opt = torch.optim.AdamW(ps, lr=kw["base_lr"], betas=kw["betas"],
                          eps=kw["eps"], weight_decay=kw["weight_decay"])
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(
      opt, T_max=kw["period_factor"] * total_steps, eta_min=kw["min_lr"])
  for k in range(STEPS):
    opt.zero_grad()
    grads = grads_fn(k, [p.detach().numpy() for p in ps])
    for p, g in zip(ps, grads, strict=True):
      p.grad = torch.from_numpy(np.asarray(g, np.float32).copy())
    opt.step()
    sched.step()
  return [p.detach().numpy().copy() for p in ps]


def run_optax(params0, grads_fn, total_steps, kw):
  tx = optim.release_optimizer(total_steps, **kw)
  params = {"a": jnp.asarray(params0[0]), "b": jnp.asarray(params0[1])}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for k in range(STEPS):
    ga, gb = grads_fn(k, [np.asarray(params["a"]), np.asarray(params["b"])])
    grads = {"a": jnp.asarray(ga, jnp.float32),
             "b": jnp.asarray(gb, jnp.float32)}
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return [np.asarray(params["a"]), np.asarray(params["b"])]


RELEASE_KW = dict(base_lr=2e-4, betas=(0.9, 0.999), eps=1e-8,
                  weight_decay=1e-2, min_lr=1e-6, period_factor=8)
# Large LR, decay and a fast schedule so that each ingredient (which step's LR,
# decay before/after the Adam step, bias correction) moves parameters by far
# more than float32 rounding.
AGGRESSIVE_KW = dict(base_lr=0.05, betas=(0.8, 0.95), eps=1e-3,
                     weight_decay=0.5, min_lr=1e-3, period_factor=1)


def lora_like_params(seed):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(12, 4)).astype(np.float32),
          rng.normal(size=(4, 12)).astype(np.float32) * 0.1]


@pytest.mark.parametrize("kw", [RELEASE_KW, AGGRESSIVE_KW],
                         ids=["release", "aggressive"])
def test_adamw_matches_torch_fixed_gradients(kw):
  params0 = lora_like_params(0)
  rng = np.random.default_rng(1)
  # Gradient k is independent of the parameters, so both sides get bit-equal
  # inputs and any gap is the optimizer's.
  seq = [[rng.normal(size=p.shape).astype(np.float32) * (k % 3 + 0.5)
          for p in params0] for k in range(STEPS)]
  grads_fn = lambda k, _: seq[k]
  want = run_torch(params0, grads_fn, STEPS, kw)
  got = run_optax(params0, grads_fn, STEPS, kw)
  for g, w, p0 in zip(got, want, params0, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    # The displacement too, which is what a wrong LR step or decay order
    # would change (for the release's tiny LR the parameters barely move).
    # Tolerance: torch rounds p twice per step (decay, then the Adam step),
    # optax once, so p drifts by a few float32 ulps of |p| ~ 2 over the run.
    np.testing.assert_allclose(g - p0, w - p0, rtol=1e-4, atol=4e-6)


def test_adamw_matches_torch_on_a_least_squares_problem():
  params0 = lora_like_params(2)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(16, 12)).astype(np.float32)
  y = rng.normal(size=(16, 12)).astype(np.float32)

  def grads_fn(_, params):
    a, b = (p.astype(np.float64) for p in params)
    r = x @ a @ b - y  # loss = 0.5 * mean(r^2)
    dr = r / r.size
    return [x.T @ dr @ b.T, a.T @ x.T @ dr]

  for kw in (RELEASE_KW, AGGRESSIVE_KW):
    want = run_torch(params0, grads_fn, STEPS, kw)
    got = run_optax(params0, grads_fn, STEPS, kw)
    for g, w in zip(got, want, strict=True):
      np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_optimizer_arguments_reach_optax():
  # A single step from zero moments: p1 = p0 (1 - lr wd) - lr * g/(|g| + eps).
  # Betas exact in float32 so that optax's float32 bias correction is exact.
  tx = optim.release_optimizer(10, base_lr=0.1, betas=(0.5, 0.75), eps=0.5,
                               weight_decay=0.2)
  p0 = jnp.array([1.0, -2.0])
  g = jnp.array([0.5, -1.5])
  upd, _ = tx.update(g, tx.init(p0), p0)
  want = -0.1 * 0.2 * p0 - 0.1 * g / (jnp.abs(g) + 0.5)
  np.testing.assert_allclose(upd, want, rtol=1e-6)
