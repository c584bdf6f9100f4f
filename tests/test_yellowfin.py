"""YellowFin: estimators against a NumPy transcription, the tuner, the loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import distributed as dist
from distoptax.algorithms.yellowfin import (
    Estimates,
    estimates,
    scale_by_yellowfin,
    single_step,
    yellowfin)
from distoptax.distributed.bounded_delay import bounded_delay, gradient_at

EPS = 1e-6


def numpy_yellowfin(grads, beta, width, lr0=1e-4, mu0=0.0):
  """The estimators and the tuned step, written out in float64 NumPy.

  A transcription of the paper's estimators as the authors' TensorFlow code
  computes them (zero-debiased EMAs, log-smoothed curvature extremes, the
  Vieta root, the warm-up cap), stepping ``x_{t+1} = x_t + mu (x_t -
  x_{t-1}) - lr g_t``. Returns per step (h_min, h_max, C, D, mu, lr) and
  the velocities.
  """
  window = np.zeros(width)
  ema = {"lmin": 0.0, "lmax": 0.0, "g2": 0.0, "gn": 0.0, "d": 0.0}
  gavg = np.zeros_like(grads[0])
  velocity = np.zeros_like(grads[0])
  out, velocities = [], []
  for t, g in enumerate(grads):
    g = np.asarray(g, np.float64)
    sq = float(np.sum(g ** 2))
    window[t % width] = sq + EPS
    valid = window[:min(width, t + 1)]
    ema["lmin"] = beta * ema["lmin"] + (1 - beta) * np.log(valid.min() + EPS)
    ema["lmax"] = beta * ema["lmax"] + (1 - beta) * np.log(valid.max() + EPS)
    ema["g2"] = beta * ema["g2"] + (1 - beta) * sq
    ema["gn"] = beta * ema["gn"] + (1 - beta) * np.sqrt(sq)
    gavg = beta * gavg + (1 - beta) * g
    deb = 1 - beta ** (t + 1)
    dist_t = (ema["gn"] / deb) / (ema["g2"] / deb + EPS)
    ema["d"] = beta * ema["d"] + (1 - beta) * dist_t
    h_min, h_max = np.exp(ema["lmin"] / deb), np.exp(ema["lmax"] / deb)
    var = max(EPS, ema["g2"] / deb - float(np.sum((gavg / deb) ** 2)))
    dist_ = ema["d"] / deb
    p = (dist_ + EPS) ** 2 * (h_min + EPS) ** 2 / 2 / (var + EPS)
    w3 = (-np.sqrt(p ** 2 + 4 / 27 * p ** 3) - p) / 2
    w = np.sign(w3) * abs(w3) ** (1 / 3)
    x = w - p / 3 / (w + EPS) + 1
    dr = max((h_max + EPS) / (h_min + EPS), 1 + EPS)
    mu = max(x ** 2, ((np.sqrt(dr) - 1) / (np.sqrt(dr) + 1)) ** 2)
    lr = (1 - np.sqrt(mu)) ** 2 / (h_min + EPS)
    lr = min(lr, lr * (t + 1) / 10 / width)
    if t == 0:
      mu, lr = mu0, lr0
    velocity = mu * velocity - lr * g
    out.append((h_min, h_max, var, dist_, mu, lr))
    velocities.append(velocity)
  return np.array(out), velocities


def _noisy_quadratic(steps, seed=0):
  """Gradients of f(x) = sum(h x^2)/2 with noise, along a YF trajectory."""
  h = np.array([0.5, 1.0, 4.0, 10.0], np.float32)
  return h, np.random.default_rng(seed).normal(
      size=(steps, 4)).astype(np.float32)


def _run_tx(tx, h, noise, x0):
  """YellowFin on the noisy quadratic; returns the gradients and states."""
  x = jnp.asarray(x0)
  state = tx.init(x)
  update = jax.jit(tx.update)
  grads, states = [], []
  for xi in noise:
    g = h * x + 0.1 * xi
    grads.append(np.asarray(g))
    u, state = update(g, state, x)
    states.append(state)
    x = optax.apply_updates(x, u)
  return grads, states, x


@pytest.mark.parametrize("beta, width", [(0.999, 20), (0.9, 5)])
def test_estimators_match_numpy_transcription(beta, width):
  h, noise = _noisy_quadratic(60)
  tx = scale_by_yellowfin(beta, width)
  x = jnp.ones(4)
  state = tx.init(x)
  update = jax.jit(tx.update)
  grads, rows, velocities = [], [], []
  for xi in noise:
    g = h * x + 0.1 * xi
    grads.append(np.asarray(g))
    u, state = update(g, state, x)
    x = x - u
    est = estimates(state, beta)
    rows.append([est.h_min, est.h_max, est.variance, est.distance,
                 state.momentum, state.learning_rate])
    velocities.append(np.asarray(state.velocity))
  expected, expected_v = numpy_yellowfin(grads, beta, width)
  rows = np.array(rows, np.float64)
  others = [0, 1, 3, 4, 5]
  np.testing.assert_allclose(rows[:, others], expected[:, others],
                             rtol=2e-4, atol=1e-7)
  # C = E|g|^2 - |E g|^2 cancels: float32 keeps ~1e-7 of E|g|^2.
  np.testing.assert_allclose(rows[:, 2], expected[:, 2], rtol=1e-3,
                             atol=1e-6 * expected[:, 1].max())
  np.testing.assert_allclose(np.array(velocities), np.array(expected_v),
                             rtol=2e-4, atol=1e-7)


def test_curvature_range_recovers_a_known_range():
  # Gradients whose squared norms cycle through [0.5, 8] inside each window.
  levels = np.array([0.5, 2.0, 8.0])
  grads = [np.sqrt(levels[t % 3]) * np.eye(3, dtype=np.float32)[t % 3]
           for t in range(400)]
  tx = scale_by_yellowfin(beta=0.9, curvature_window=6)
  state = tx.init(jnp.zeros(3))
  update = jax.jit(tx.update)
  for g in grads:
    _, state = update(jnp.asarray(g), state, jnp.zeros(3))
  est = estimates(state, 0.9)
  np.testing.assert_allclose([est.h_min, est.h_max], [0.5, 8.0], rtol=1e-4)
  # Means of the three unit directions: C = E|g|^2 - |E g|^2.
  mean_sq = levels.mean()
  np.testing.assert_allclose(est.variance,
                             mean_sq - np.sum(np.sqrt(levels) ** 2 / 9),
                             rtol=2e-2)


def test_single_step_solves_the_one_step_problem():
  rng = np.random.default_rng(0)
  for _ in range(20):
    h_min = rng.uniform(0.1, 2.0)
    est = Estimates(jnp.float32(h_min), jnp.float32(h_min * 1.0001),
                    jnp.float32(rng.uniform(0.01, 10)),
                    jnp.float32(rng.uniform(0.1, 5)))
    mu, lr = single_step(est)
    xs = np.linspace(0, 0.999, 200001)
    objective = xs ** 2 * float(est.distance) ** 2 + (
        (1 - xs) ** 4 * float(est.variance) / h_min ** 2)
    best = xs[np.argmin(objective)]
    np.testing.assert_allclose(np.sqrt(float(mu)), best, atol=2e-3)
    np.testing.assert_allclose(float(lr), (1 - np.sqrt(float(mu))) ** 2
                               / h_min, rtol=1e-4)


def test_momentum_respects_the_robust_region():
  est = Estimates(jnp.float32(1.0), jnp.float32(100.0),
                  jnp.float32(1e-12), jnp.float32(1.0))
  mu, _ = single_step(est)
  np.testing.assert_allclose(float(mu), (9 / 11) ** 2, rtol=1e-5)


def test_closed_loop_measures_the_algorithmic_momentum_when_synchronous():
  h, noise = _noisy_quadratic(80, seed=1)
  tx = yellowfin(closed_loop=True)
  x = jnp.ones(4)
  state = tx.init(x)
  update = jax.jit(tx.update)
  for t, xi in enumerate(noise):
    g = h * x + 0.1 * xi
    previous = state[0].momentum
    u, state = update(g, state, x, current_grads=g)
    x = optax.apply_updates(x, u)
    if t >= 2:
      # The measured total momentum is the momentum of the step before.
      np.testing.assert_allclose(state[0].total_momentum, previous,
                                 rtol=1e-3, atol=1e-4)
  assert abs(float(state[0].momentum_correction)) < 1e-3


def _stale_run(gain, steps=300, dim=4):
  """YellowFin (closed loop with ``gain``) inside bounded delay 4."""
  h = jnp.linspace(0.5, 10.0, dim)
  loss = lambda x, xi: 0.5 * jnp.sum(h * x ** 2) + 0.001 * jnp.sum(xi * x)
  tx = bounded_delay(yellowfin(closed_loop=True, closed_loop_gain=gain),
                     4, "constant")
  step = dist.data_parallel(
      loss, tx, gradient_at=gradient_at, replicated_params=True,
      extra_args=lambda s: {"current_grads": h * s.params})
  rt = dist.simulate(step, 1)
  state = rt.init(jnp.ones(dim))
  noise = np.random.default_rng(2).normal(size=(steps, 1, dim)).astype(
      np.float32)
  rows = []
  for xi in noise:
    state, _ = rt.step(state, xi)
    s = state.opt_state.inner_state[0]
    rows.append([float(s.total_momentum), float(s.momentum),
                 float(s.target_momentum)])
  return np.array(rows, np.float64)


def test_staleness_adds_momentum_and_the_loop_tracks_the_target():
  steps = 240
  open_loop = _stale_run(1e-12, steps)   # Measures, barely corrects.
  closed = _stale_run(0.05, steps)
  # Row t + 1 measures the total momentum of step t; steps 40..238 are the
  # tuner's transient, before the noise dominates the ratios.
  step, measured = slice(40, steps - 1), slice(41, steps)
  added = open_loop[measured, 0] - open_loop[step, 1]
  assert np.nanmedian(added) > 0.04   # Asynchrony-induced momentum.
  miss = {name: np.nanmedian(np.abs(run[measured, 0] - run[step, 2]))
          for name, run in (("open", open_loop), ("closed", closed))}
  assert miss["closed"] < 0.5 * miss["open"], miss
  # It does so by running below the target momentum.
  assert np.median(closed[step, 2] - closed[step, 1]) > 0.05


def test_inside_bounded_delay_simulate_equals_on_mesh():
  h = jnp.linspace(0.5, 4.0, 6)
  loss = lambda x, xi: 0.5 * jnp.sum(h * x ** 2) + 0.1 * jnp.sum(xi * x)

  def runtime(kind):
    tx = bounded_delay(yellowfin(closed_loop=True), 2, "uniform")
    step = dist.data_parallel(
        loss, tx, gradient_at=gradient_at, replicated_params=True,
        extra_args=lambda s: {"current_grads": h * s.params})
    if kind == "simulate":
      return dist.simulate(step, 8)
    return dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)), 8)

  noise = np.random.default_rng(3).normal(size=(6, 8, 6)).astype(np.float32)
  finals = []
  for kind in ("simulate", "mesh"):
    rt = runtime(kind)
    state = rt.init(jnp.ones(6))
    for xi in noise:
      state, _ = rt.step(state, xi)
    finals.append(state)
  np.testing.assert_allclose(finals[0].params, finals[1].params, rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(finals[0].opt_state.inner_state[0].momentum,
                             finals[1].opt_state.inner_state[0].momentum,
                             rtol=1e-5, atol=1e-7)


def test_bad_arguments():
  with pytest.raises(ValueError, match=r"beta must lie in \(0, 1\); got 1.0"):
    scale_by_yellowfin(beta=1.0)
  with pytest.raises(ValueError, match="curvature_window must be an int"):
    scale_by_yellowfin(curvature_window=0)
  with pytest.raises(ValueError, match="closed_loop_gain"):
    yellowfin(closed_loop=True, closed_loop_gain=0.0)
  with pytest.raises(ValueError, match="initial_momentum"):
    scale_by_yellowfin(initial_momentum=1.0)
  tx = yellowfin(closed_loop=True)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
