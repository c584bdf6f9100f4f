"""Local AdaAlter: equivalences with plain references, then properties.

Runs of one configuration are shared through ``_run`` (cached), so each
runtime is compiled once for the module.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from tests import helpers

PARAMS = helpers.mlp_params(jax.random.key(0))
PARAM_BYTES = sum(4 * x.size for x in jax.tree.leaves(PARAMS))
LR, WD = 0.1, 0.01
# eps of each denominator form: e = eps (1e-3) or t' * eps**2 (9e-4 at t'=1).
EPS = {"constant": 1e-3, "paper": 0.03}
STEPS = 6
TOL = dict(rtol=2e-5, atol=2e-6)


def _runtime(tx, runtime, num_workers):
  step = dist.data_parallel(helpers.mlp_loss, tx)
  if runtime == "simulate":
    return dist.simulate(step, num_workers)
  return dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)),
                      num_workers)


def _batch(t, num_workers, same):
  x, y = helpers.worker_batches(t, num_workers, 4)
  if same:   # Every worker sees worker 0's batch.
    x, y = np.broadcast_to(x[:1], x.shape), np.broadcast_to(y[:1], y.shape)
  return x, y


@functools.cache
def _run(period, denominator="constant", runtime="simulate", num_workers=8,
         same=False, steps=STEPS):
  """(runtime, states after each step, metrics) of local AdaAlter."""
  tx = dist.local_adaalter(LR, period, EPS[denominator], WD,
                           denominator=denominator)
  rt = _runtime(tx, runtime, num_workers)
  state = rt.init(PARAMS)
  states, metrics = [], []
  for t in range(steps):
    state, m = rt.step(state, _batch(t, num_workers, same))
    states.append(jax.tree.map(np.asarray, state))
    metrics.append(jax.tree.map(np.asarray, m))
  return rt, states, metrics


def _grads(w, t, num_workers, same):
  x, y = _batch(t, num_workers, same)
  return [jax.grad(helpers.mlp_loss)(w[i], (x[i], y[i]))
          for i in range(num_workers)]


def _adaalter_reference(num_workers, same, denominator="constant"):
  """Plain single-process AdaAlter on the workers' mean gradient; its
  accumulator adds the mean of the squared gradients (one square when the
  gradients agree)."""
  w = PARAMS
  b = jax.tree.map(jnp.zeros_like, w)
  for t in range(STEPS):
    g = _grads([w] * num_workers, t, num_workers, same)
    mean = jax.tree.map(lambda *a: sum(a) / num_workers, *g)
    square = jax.tree.map(lambda *a: sum(x * x for x in a) / num_workers, *g)
    eps = EPS[denominator]
    e = eps if denominator == "constant" else eps**2
    w = jax.tree.map(lambda p, m, d: p - LR * (m / jnp.sqrt(d + e) + WD * p),
                     w, mean, b)
    b = jax.tree.map(lambda d, s: d + s, b, square)
  return w, b


def _local_reference(period, num_workers, denominator):
  """Local AdaAlter as the authors' code runs it, in plain JAX."""
  w = [PARAMS] * num_workers
  b = jax.tree.map(jnp.zeros_like, PARAMS)
  a = [b] * num_workers
  since = 0
  for t in range(STEPS):
    since += 1
    eps = EPS[denominator]
    e = eps if denominator == "constant" else since * eps**2
    g = _grads(w, t, num_workers, False)
    w = [jax.tree.map(lambda p, gg, d: p - LR * (gg / jnp.sqrt(d + e)
                                                  + WD * p), w[i], g[i], b)
         for i in range(num_workers)]
    a = [jax.tree.map(lambda acc, gg: acc + gg * gg, a[i], g[i])
         for i in range(num_workers)]
    if since == period:
      mean_w = jax.tree.map(lambda *x: sum(x) / num_workers, *w)
      b = jax.tree.map(lambda *x: sum(x) / num_workers, *a)
      w, a, since = [mean_w] * num_workers, [b] * num_workers, 0
  return w, a, b


def _close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), **(tol or TOL)), a, b)


def _row(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def _rows_equal(tree):
  for leaf in jax.tree.leaves(tree):
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))


# ---------------------------------------------------------------------------
# Equivalences.


@pytest.mark.parametrize("denominator", alg.local.DENOMINATORS)
def test_period_one_with_identical_gradients_is_adaalter(denominator):
  _, states, _ = _run(1, denominator, same=True)
  w, b = _adaalter_reference(8, same=True, denominator=denominator)
  _close(_row(states[-1].params, 3), w)
  _close(_row(states[-1].opt_state.inner_state.denominator, 5), b)


def test_period_one_is_adaalter_on_the_mean_gradient():
  _, states, _ = _run(1)
  w, b = _adaalter_reference(8, same=False)
  _close(_row(states[-1].params, 0), w)
  _close(_row(states[-1].opt_state.inner_state.denominator, 0), b)


@pytest.mark.parametrize("denominator", alg.local.DENOMINATORS)
def test_period_three_matches_the_reference_algorithm(denominator):
  n = 4
  _, states, _ = _run(3, denominator, num_workers=n)
  w, a, b = _local_reference(3, n, denominator)
  inner = states[-1].opt_state.inner_state
  tol = dict(rtol=1e-4, atol=1e-5)   # Sums of squares, summed in any order.
  for i in range(n):
    _close(_row(states[-1].params, i), w[i], **tol)
    _close(_row(inner.accumulator, i), a[i], **tol)
    _close(_row(inner.denominator, i), b, **tol)


def test_a_broken_sync_is_caught_by_the_reference():
  """Negative control: without the accumulator average (state policy
  "keep") the denominator never moves and the models differ."""
  inner = alg.local.local_adaalter_step(LR, EPS["constant"], WD)
  tx = dist.local_sgd(inner, 3, state_policy="keep")
  rt = _runtime(tx, "simulate", 4)
  state = rt.init(PARAMS)
  for t in range(STEPS):
    state, _ = rt.step(state, _batch(t, 4, False))
  w, _, _ = _local_reference(3, 4, "constant")
  with pytest.raises(AssertionError):
    _close(_row(state.params, 0), w[0])


# ---------------------------------------------------------------------------
# The state across syncs.


def test_denominators_are_bit_identical_across_workers_after_every_sync():
  _, states, _ = _run(2, runtime="on_mesh")
  for t, state in enumerate(states):
    inner = state.opt_state.inner_state
    if (t + 1) % 2 == 0:
      _rows_equal(inner.denominator)
      _rows_equal(inner.accumulator)
      jax.tree.map(np.testing.assert_array_equal, inner.denominator,
                   inner.accumulator)
      np.testing.assert_array_equal(inner.local_steps, 0)
    else:
      # Between syncs: the denominator is frozen, accumulators differ.
      jax.tree.map(np.testing.assert_array_equal, inner.denominator,
                   states[t - 1].opt_state.inner_state.denominator
                   if t else jax.tree.map(np.zeros_like, inner.denominator))
      assert not np.array_equal(inner.accumulator["w1"][0],
                                inner.accumulator["w1"][1])
      np.testing.assert_array_equal(inner.local_steps, 1)


def test_the_paper_denominator_grows_with_the_local_steps():
  tx = alg.local.local_adaalter_step(1.0, 0.5, denominator="paper")
  state = tx.init(jnp.zeros(1))
  outs = []
  for _ in range(3):
    u, state = tx.update(jnp.zeros(1) + 1.0, state)
    outs.append(float(u[0]))
  # B stays 0 between syncs: 1 / sqrt(t' * 0.25).
  np.testing.assert_allclose(outs, [-1 / np.sqrt(0.25 * k) for k in (1, 2, 3)],
                             rtol=1e-6)
  np.testing.assert_array_equal(state.accumulator, 3.0)
  np.testing.assert_array_equal(state.denominator, 0.0)


def test_weight_decay_is_not_preconditioned():
  tx = alg.local.local_adaalter_step(0.5, 1.0, 0.1)
  w = jnp.array([2.0])
  state = tx.init(w)._replace(denominator=jnp.array([3.0]))
  u, _ = tx.update(jnp.array([4.0]), state, w)
  np.testing.assert_allclose(u, -0.5 * (4.0 / 2.0 + 0.1 * 2.0), rtol=1e-6)


# ---------------------------------------------------------------------------
# Runtimes, bytes and the conditional.


@pytest.mark.parametrize("num_workers", [8, 16])
def test_simulate_equals_on_mesh(num_workers):
  _, sim, sim_metrics = _run(2, num_workers=num_workers)
  _, mesh, mesh_metrics = _run(2, runtime="on_mesh", num_workers=num_workers)
  tol = dict(rtol=1e-4, atol=1e-5)
  _close((sim[-1].params, sim[-1].opt_state),
         (mesh[-1].params, mesh[-1].opt_state), **tol)
  for a, b in zip(sim_metrics, mesh_metrics):
    np.testing.assert_array_equal(a["all_reduce_bytes"],
                                  b["all_reduce_bytes"])


def test_wire_bytes_only_on_sync_rounds_and_as_in_the_program():
  rt, states, metrics = _run(2, runtime="on_mesh")
  for t, m in enumerate(metrics):
    synced = (t + 1) % 2 == 0
    # The pseudo-gradient and the accumulators: two models' worth.
    np.testing.assert_array_equal(m["all_reduce_bytes"],
                                  2 * PARAM_BYTES if synced else 0)
    np.testing.assert_array_equal(m["all_gather_bytes"], 0)
  state = rt.init(PARAMS)
  hlo = rt.lower(state, _batch(0, 8, False)).as_text()
  assert helpers.collective_operand_bytes(hlo, "all_reduce") == (
      2 * PARAM_BYTES)
  (stats,) = dist.find_comm_stats(states[-1].opt_state)
  assert dist.total_bytes(jax.tree.map(lambda a: a[0], stats)) == (
      STEPS // 2 * 2 * PARAM_BYTES)


@pytest.mark.parametrize("num_workers", [8, 16])
def test_the_sync_collectives_sit_inside_an_hlo_conditional(num_workers):
  rt, _, _ = _run(2, runtime="on_mesh", num_workers=num_workers)
  state = rt.init(PARAMS)
  compiled = rt.lower(state, _batch(0, num_workers, False)).compile()
  always, anywhere = helpers.collective_reach(compiled.as_text(),
                                              "all-reduce(")
  assert not always
  assert anywhere


# ---------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("make,error,match", [
    (lambda: dist.local_adaalter(LR, 0), ValueError,
     "period must be an int >= 1; got 0"),
    (lambda: dist.local_adaalter(LR, 2.0), TypeError,
     "period must be a Python int >= 1; got 2.0"),
    (lambda: dist.local_adaalter(LR, 2, denominator="t_eps"), ValueError,
     r"denominator must be one of \('constant', 'paper'\); got 't_eps'"),
    (lambda: dist.local_adaalter(LR, 2, eps=0.0), ValueError,
     "eps must be a finite number > 0; got 0.0"),
    (lambda: dist.local_adaalter(LR, 2, weight_decay=-0.1), ValueError,
     "weight_decay must be a finite number >= 0; got -0.1"),
    (lambda: dist.local_adaalter(-1.0, 2), ValueError,
     "learning_rate must be a finite number >= 0; got -1.0"),
    (lambda: dist.local_adaalter("0.1", 2), TypeError,
     "learning_rate must be a real number; got '0.1'"),
])
def test_bad_input_is_refused_naming_the_value(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_unknown_extra_args_are_ignored():
  tx = dist.local_adaalter(LR, 1, EPS["constant"], WD)

  def step(w, g):
    out, state = tx.update(g, tx.init(w), w, value=jnp.sum(g), unknown=3)
    return out, state.inner_state.denominator

  w = jnp.ones((3, 2))
  g = jnp.arange(6.0).reshape(3, 2)
  out, denominator = jax.jit(jax.vmap(step, axis_name=dist.WORKERS))(w, g)
  _rows_equal(out)
  np.testing.assert_allclose(denominator[0], np.mean(np.square(g), 0),
                             rtol=1e-6)
