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


def torch_steps(ps, opt, sched, grads_fn):
  """STEPS torch steps (scheduler after optimizer); returns (params, the
  LR of each step)."""
  lrs = []
  for k in range(STEPS):
    lrs.append(opt.param_groups[0]["lr"])
    opt.zero_grad()
    grads = grads_fn(k, [p.detach().numpy() for p in ps])
    for p, g in zip(ps, grads, strict=True):
      p.grad = torch.from_numpy(np.asarray(g, np.float32).copy())
    opt.step()
    sched.step()
  return [p.detach().numpy().copy() for p in ps], np.array(lrs)


def run_torch(params0, grads_fn, total_steps, kw):
  ps = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params0]
  opt = torch.optim.AdamW(ps, lr=kw["base_lr"], betas=kw["betas"],
                          eps=kw["eps"], weight_decay=kw["weight_decay"])
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(
      opt, T_max=kw["period_factor"] * total_steps, eta_min=kw["min_lr"])
  return torch_steps(ps, opt, sched, grads_fn)[0]


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


# --------------------------------------------------------------------- SGD

# CoOp's original settings (Dassl: SGD, momentum 0.9, weight decay 5e-4,
# cosine to 0, constant 1e-5 warmup), with a few warmup steps, and an
# aggressive set where decay-before-momentum and the warmup's restart of
# the cosine move parameters far beyond float32 rounding.
SGD_CASES = {
    "coop": dict(name="sgd", lr=2e-3, momentum=0.9, weight_decay=5e-4,
                 min_lr=0.0, period_factor=1.0, warmup_steps=3,
                 warmup_lr=1e-5),
    "aggressive": dict(name="sgd", lr=0.2, momentum=0.7, weight_decay=0.3,
                       min_lr=0.01, period_factor=1.5, warmup_steps=4,
                       warmup_lr=0.05),
}


def torch_sgd(params0, grads_fn, total_steps, kw):
  """torch.optim.SGD + SequentialLR(ConstantLR, CosineAnnealingLR): the
  scheduler stepped after each optimizer step. Returns (params, LRs)."""
  ps = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params0]
  opt = torch.optim.SGD(ps, lr=kw["lr"], momentum=kw["momentum"],
                        weight_decay=kw["weight_decay"])
  sched = torch.optim.lr_scheduler
  warm = sched.ConstantLR(opt, factor=kw["warmup_lr"] / kw["lr"],
                          total_iters=kw["warmup_steps"])
  cosine = sched.CosineAnnealingLR(opt, T_max=kw["period_factor"]
                                   * total_steps, eta_min=kw["min_lr"])
  seq = sched.SequentialLR(opt, [warm, cosine],
                           milestones=[kw["warmup_steps"]])
  return torch_steps(ps, opt, seq, grads_fn)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_with_warmup_matches_torch(case):
  kw = SGD_CASES[case]
  config = optim.OptimConfig(**kw)
  params0 = lora_like_params(4)
  rng = np.random.default_rng(5)
  seq = [[rng.normal(size=p.shape).astype(np.float32) * (k % 3 + 0.5)
          for p in params0] for k in range(STEPS)]
  grads_fn = lambda k, _: seq[k]
  want, want_lrs = torch_sgd(params0, grads_fn, STEPS, kw)

  got_lrs = np.asarray(optim.schedule_from_config(STEPS, config)(
      jnp.arange(STEPS)))
  np.testing.assert_allclose(got_lrs, want_lrs, rtol=1e-6)
  assert got_lrs[0] == np.float32(kw["warmup_lr"])
  # The cosine restarts at the warmup's end (Dassl's recount).
  np.testing.assert_allclose(got_lrs[kw["warmup_steps"]], kw["lr"],
                             rtol=1e-7)

  tx = optim.optimizer_from_config(STEPS, config)
  params = {"a": jnp.asarray(params0[0]), "b": jnp.asarray(params0[1])}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for k in range(STEPS):
    grads = {n: jnp.asarray(g) for n, g in zip("ab", seq[k], strict=True)}
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  for g, w, p0 in zip((params["a"], params["b"]), want, params0,
                      strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g) - p0, w - p0, rtol=1e-4,
                               atol=1e-6)


def test_sgd_decays_before_momentum():
  # Two steps, constant LR: torch's buf1 = g0 + wd p0; buf2 = m buf1 + g1 +
  # wd p1. Decoupled decay (AdamW-style) or decay after momentum differ.
  tx = optim.sgd(0.5, momentum=0.5, weight_decay=0.25)
  p0 = jnp.array([1.0, -2.0])
  g0, g1 = jnp.array([0.5, 1.0]), jnp.array([-1.0, 0.25])
  state = tx.init(p0)
  u0, state = tx.update(g0, state, p0)
  p1 = p0 + u0
  u1, _ = tx.update(g1, state, p1)
  buf1 = g0 + 0.25 * p0
  buf2 = 0.5 * buf1 + g1 + 0.25 * p1
  np.testing.assert_allclose(u0, -0.5 * buf1, rtol=1e-7)
  np.testing.assert_allclose(u1, -0.5 * buf2, rtol=1e-7)


def test_optim_config_resolve_and_errors():
  base = optim.OptimConfig(name="trainable", lr=1.0, warmup_steps=-1)
  coop = optim.resolve(base, dict(SGD_CASES["coop"], warmup_steps=-1),
                       epoch_steps=5)
  assert coop.name == "sgd" and coop.lr == 2e-3 and coop.warmup_steps == 5
  # No overrides (LoRA): the release's AdamW with the config's fields.
  lora = optim.resolve(base, {}, epoch_steps=1)
  assert (lora.name, lora.lr, lora.warmup_steps) == ("adamw", 1.0, 1)
  with pytest.raises(ValueError, match="resolve"):
    optim.optimizer_from_config(10, base)
  with pytest.raises(ValueError, match="warmup_steps 10"):
    optim.optimizer_from_config(10, optim.OptimConfig(warmup_steps=10))
  with pytest.raises(ValueError) as e:
    optim.OptimConfig(name="adam", momentum=1.0, warmup_steps=-2,
                      warmup_lr=-1.0)
  for key in ("optim.name", "optim.momentum", "optim.warmup_steps",
              "optim.warmup_lr"):
    assert key in str(e.value)


def test_adamw_without_warmup_is_the_release_optimizer():
  tx = optim.optimizer_from_config(STEPS, optim.OptimConfig(**{
      "lr": 0.05, "b1": 0.8, "b2": 0.95, "eps": 1e-3, "weight_decay": 0.5,
      "min_lr": 1e-3, "period_factor": 1.0}))
  ref = optim.release_optimizer(STEPS, **AGGRESSIVE_KW)
  p = {"a": jnp.ones((3,)), "b": -jnp.ones((2,))}
  g = {"a": jnp.arange(3.0), "b": jnp.array([0.5, -2.0])}
  s1, s2 = tx.init(p), ref.init(p)
  for _ in range(3):
    u1, s1 = tx.update(g, s1, p)
    u2, s2 = ref.update(g, s2, p)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
      np.testing.assert_array_equal(a, b)
