"""Bounded-delay asynchronous SGD: equivalences, the cap, a reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.distributed.bounded_delay import (
    DELAY_POLICIES,
    bounded_delay,
    gradient_at)
from tests import helpers

NUM_WORKERS = 8
LR = 0.1
STEPS = 10
PARAMS = helpers.mlp_params(jax.random.key(0))
TOL = dict(rtol=2e-5, atol=2e-6)


_GRAD = jax.jit(jax.grad(helpers.mlp_loss))


def _runtime(tx, runtime="simulate", num_workers=NUM_WORKERS):
  step = dist.data_parallel(helpers.mlp_loss, tx, gradient_at=gradient_at,
                            replicated_params=True)
  if runtime == "simulate":
    return dist.simulate(step, num_workers)
  return dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)),
                      num_workers)


def _run(rt, steps=STEPS):
  """Final state and, per step, the delays each worker read with."""
  state = rt.init(PARAMS)
  delays = []
  for t in range(steps):
    delays.append(np.asarray(state.opt_state.delays))
    state, _ = rt.step(state, helpers.worker_batches(t, rt.num_workers, 4))
  return state, delays


def _reference(delays, steps=STEPS, num_workers=NUM_WORKERS):
  """SGD whose worker i reads leaf j of x_{t - delays[t][i, j]}."""
  history = [PARAMS]
  for t in range(steps):
    x, y = helpers.worker_batches(t, num_workers, 4)
    grads = []
    for i in range(num_workers):
      leaves, treedef = jax.tree.flatten(history[-1])
      d = np.broadcast_to(delays[t][i], (len(leaves),))
      read = treedef.unflatten([
          jax.tree.leaves(history[t - d[j]])[j] for j in range(len(leaves))])
      grads.append(_GRAD(read, (x[i], y[i])))
    mean = jax.tree.map(lambda *g: sum(g) / num_workers, *grads)
    history.append(jax.tree.map(lambda p, g: p - LR * g, history[-1], mean))
  return history


def _close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), **(tol or TOL)), a, b)


def test_delay_zero_is_synchronous_sgd():
  state, _ = _run(_runtime(bounded_delay(optax.sgd(LR, 0.9), 0)))
  sync_tx = optax.chain(dist.aggregate(alg.aggregators.mean()),
                        optax.sgd(LR, 0.9))
  rt = dist.simulate(dist.data_parallel(helpers.mlp_loss, sync_tx),
                     NUM_WORKERS)
  sync = rt.init(PARAMS)
  for t in range(STEPS):
    sync, _ = rt.step(sync, helpers.worker_batches(t, NUM_WORKERS, 4))
  _close(state.params, dist.worker_slice(sync.params))


POLICY_PARAMS = {"geometric": {"p": 0.05}}   # Draws beyond tau: clipped.


@pytest.mark.parametrize("policy", sorted(DELAY_POLICIES))
@pytest.mark.parametrize("inconsistent", [False, True])
def test_cap_holds_and_gradients_are_taken_at_the_stale_reads(policy,
                                                              inconsistent):
  tau, steps = 3, 9
  tx = bounded_delay(optax.sgd(LR), tau, policy,
                     policy_params=POLICY_PARAMS.get(policy),
                     inconsistent_reads=inconsistent, seed=1)
  state, delays = _run(_runtime(tx, num_workers=4), steps=steps)
  for t, d in enumerate(delays):
    assert d.min() >= 0
    assert d.max() <= min(tau, t), (t, d)
  # The cap binds: every policy reaches tau once enough iterates exist.
  assert max(d.max() for d in delays) == tau
  if policy == "uniform":
    assert min(d.min() for d in delays[tau:]) < tau
  _close(state.params, _reference(delays, steps=steps, num_workers=4)[-1])


def test_farthest_policy_picks_the_farthest_stored_iterate():
  tx = bounded_delay(optax.sgd(LR), 4, "adversarial_farthest")
  state, delays = _run(_runtime(tx, num_workers=2), steps=9)
  history = _reference(delays, steps=9, num_workers=2)
  for t in range(1, 9):
    flat = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(h)])
            for h in history[:t + 1]]
    lags = range(min(4, t) + 1)
    dist_sq = [np.sum((flat[t] - flat[t - k]) ** 2) for k in lags]
    assert delays[t][0, 0] == int(np.argmax(dist_sq)), t


def test_delays_are_reproducible_from_the_seed_and_differ_per_worker():
  make = lambda seed: _runtime(bounded_delay(optax.sgd(LR), 5, "uniform",
                                            seed=seed))
  rt = make(0)
  _, a = _run(rt, steps=6)
  _, b = _run(rt, steps=6)
  _, c = _run(make(1), steps=6)
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))
  assert len(np.unique(a[-1][:, 0])) > 1


def test_block_coordinate_writes_one_own_block_per_worker_with_momentum():
  tx = bounded_delay(optax.sgd(LR, momentum=0.9), 2, "uniform",
                     block_coordinate=True, seed=3)
  rt = _runtime(tx, num_workers=2)
  state = rt.init(PARAMS)
  names = sorted(PARAMS)   # Leaves b1, w1, w2: worker 0 owns b1 and w2.
  for t in range(8):
    before = jax.tree.map(np.asarray, state)
    state, _ = rt.step(state, helpers.worker_batches(t, 2, 4))
    moved = {k: not np.array_equal(before.params[k], state.params[k])
             for k in names}
    assert moved["w1"]                     # Worker 1's only block.
    assert moved["b1"] != moved["w2"], moved   # One of worker 0's blocks.
    # Momentum advances only for written blocks.
    for j, k in enumerate(names):
      trace_before = before.opt_state.inner_state[j][0].trace
      trace_after = np.asarray(state.opt_state.inner_state[j][0].trace)
      assert np.array_equal(trace_before, trace_after) == (not moved[k])


@pytest.mark.parametrize("options", [
    dict(policy="uniform", inconsistent_reads=True),
    dict(policy="adversarial_farthest"),
    dict(policy="geometric", block_coordinate=True)])
def test_simulate_equals_on_mesh(options):
  make = lambda: bounded_delay(optax.sgd(LR, momentum=0.5), 3, **options)
  sim, d_sim = _run(_runtime(make()), steps=6)
  mesh, d_mesh = _run(_runtime(make(), "mesh"), steps=6)
  np.testing.assert_array_equal(np.stack(d_sim), np.stack(d_mesh))
  _close(sim.params, mesh.params, rtol=1e-6, atol=1e-7)
  helpers.assert_replicated(mesh._replace(opt_state=mesh.opt_state._replace(
      delays=(), comm=())))


@pytest.mark.parametrize("tau", [0, 3])
def test_ring_buffer_holds_tau_plus_one_iterates(tau):
  state = _runtime(bounded_delay(optax.sgd(LR), tau)).init(PARAMS)
  for leaf, p in zip(jax.tree.leaves(state.opt_state.iterates),
                     jax.tree.leaves(PARAMS)):
    assert leaf.shape == (tau + 1,) + p.shape


def test_bad_arguments():
  with pytest.raises(ValueError, match="max_delay must be an int >= 0; got -1"):
    bounded_delay(optax.sgd(LR), -1)
  with pytest.raises(TypeError, match="max_delay must be an int"):
    bounded_delay(optax.sgd(LR), 2.0)
  with pytest.raises(ValueError, match="unknown delay policy 'poisson'"):
    bounded_delay(optax.sgd(LR), 2, "poisson")
  with pytest.raises(ValueError, match=r"p must lie in \(0, 1\]; got 0"):
    bounded_delay(optax.sgd(LR), 2, "geometric", policy_params={"p": 0})
  with pytest.raises(ValueError, match="constant delay .* got 5"):
    bounded_delay(optax.sgd(LR), 2, "constant", policy_params={"delay": 5})
  with pytest.raises(ValueError, match="unknown"):
    bounded_delay(optax.sgd(LR), 2, "uniform", policy_params={"p": 0.1})
  with pytest.raises(TypeError, match="inner must be an optax"):
    bounded_delay(lambda g: g, 2)
