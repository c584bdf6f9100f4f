"""FedAsync and FedBuff: equivalences first, then a reference, then errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import distributed as dist
from distoptax.algorithms import local as local_math
from distoptax.distributed.fedasync import (
    STALENESS_FUNCTIONS,
    arrival_batches,
    clients,
    fedasync,
    fedbuff,
    staleness_function)
from tests import helpers

NUM_WORKERS = 8
LOCAL_STEPS = 3
LR = 0.1
PARAMS = helpers.mlp_params(jax.random.key(0))
TOL = dict(rtol=2e-5, atol=2e-6)


def _data(seed, num_workers=NUM_WORKERS, events=None):
  """Per-worker local minibatches ``[(E,) n, H, b, ...]``."""
  rng = np.random.default_rng(seed)
  lead = (num_workers, LOCAL_STEPS) if events is None else (
      events, num_workers, LOCAL_STEPS)
  x = rng.normal(size=lead + (4, 5)).astype(np.float32)
  y = rng.normal(size=lead + (4,)).astype(np.float32)
  return x, y


def _schedule(events, seed=0):
  """Arrivals from the clock: heterogeneous workers, one task each."""
  clock = dist.Clock(
      dist.stragglers.ComputeModel(NUM_WORKERS, 1.0,
                                   imbalance=tuple(range(1, 9)), seed=seed),
      dist.topologies.ParameterServerTopology(NUM_WORKERS, bandwidth=1e9,
                                              latency=0.0))
  _, plan = dist.async_schedule(clock, clock.compute_steps(clock.init()),
                                events)
  return plan


def _runtime(server, runtime="simulate", rho=0.0, buffer_size=1):
  step = clients(helpers.mlp_loss, server, optax.sgd(LR),
                 proximal_rho=rho, buffer_size=buffer_size)
  if runtime == "simulate":
    return dist.simulate(step, NUM_WORKERS)
  return dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)),
                      NUM_WORKERS)


def _run(rt, workers, staleness, seed=0):
  state = rt.init(PARAMS)
  data = _data(seed, events=len(workers))
  metrics = []
  for t, (w, s) in enumerate(zip(workers, staleness)):
    batch = arrival_batches(jax.tree.map(lambda a: a[t], data),
                            int(w), int(s))
    state, m = rt.step(state, batch)
    metrics.append(jax.tree.map(np.asarray, m))
  return state, metrics


def _local_sgd(start, data, rho):
  """H plain SGD steps on one client's minibatches (the reference)."""
  w = start
  for h in range(LOCAL_STEPS):
    g = jax.grad(helpers.mlp_loss)(w, (data[0][h], data[1][h]))
    g = local_math.proximal_gradient(g, w, start, rho)
    w = jax.tree.map(lambda p, d: p - LR * d, w, g)
  return w


def _reference(workers, staleness, *, mix, weight_fn, max_staleness,
               buffer_size=1, rho=0.0, seed=0):
  """FedAsync / FedBuff written out with a Python list of server models."""
  data = _data(seed, events=len(workers))
  history = [PARAMS]
  buffer = jax.tree.map(jnp.zeros_like, PARAMS)
  buffered = 0
  for t, (w, s) in enumerate(zip(workers, staleness)):
    version = len(history) - 1
    read_version = max(t - s, 0) // buffer_size
    u = min(version - read_version, max_staleness, version)
    start = history[version - u]
    client = (data[0][t, w], data[1][t, w])
    trained = _local_sgd(start, client, rho)
    x = history[-1]
    weight = float(weight_fn(jnp.asarray(u)))
    if mix:
      history.append(jax.tree.map(
          lambda a, b: (1 - mix * weight) * a + mix * weight * b, x,
          trained))
      continue
    buffer = jax.tree.map(lambda b, a, c: b + weight * (a - c), buffer,
                          start, trained)
    buffered += 1
    if buffered == buffer_size:
      history.append(jax.tree.map(lambda a, b: a - b / buffer_size, x,
                                  buffer))
      buffer = jax.tree.map(jnp.zeros_like, buffer)
      buffered = 0
  return history[-1]


def _close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), **(tol or TOL)), a, b)


@functools.cache
def _clock_plan(events=12):
  plan = _schedule(events)
  return plan.worker, plan.staleness


# ---------------------------------------------------------------------------
# Equivalences.


def test_alpha_one_zero_staleness_is_sequential_sgd_over_clients():
  workers = [3, 0, 5, 5, 1, 7]
  state, _ = _run(_runtime(fedasync(1.0, max_staleness=4)),
                  workers, [0] * len(workers))
  data = _data(0, events=len(workers))
  x = PARAMS
  for t, w in enumerate(workers):
    x = _local_sgd(x, (data[0][t, w], data[1][t, w]), 0.0)
  _close(state.params, x)


def test_max_staleness_zero_makes_the_buffer_inert():
  workers = [1, 2, 3, 4, 5]
  server = fedasync(0.6, "polynomial", max_staleness=0)
  stale, _ = _run(_runtime(server), workers, [0, 1, 2, 3, 4])
  fresh, _ = _run(_runtime(server), workers, [0] * 5)
  _close(stale.params, fresh.params, rtol=0, atol=0)
  for leaf in jax.tree.leaves(stale.opt_state.models):
    assert leaf.shape[0] == 1


def test_fedbuff_with_buffer_one_and_rate_one_zero_staleness_is_sequential():
  workers = [2, 6, 6, 0]
  server = fedbuff(1.0, 1, "constant", max_staleness=2)
  state, _ = _run(_runtime(server), workers, [0] * 4)
  _close(state.params,
         _reference(workers, [0] * 4, mix=1.0,
                    weight_fn=staleness_function("constant"),
                    max_staleness=2))


# ---------------------------------------------------------------------------
# Against the written-out reference, with the clock's arrivals.


@pytest.mark.parametrize("name", sorted(STALENESS_FUNCTIONS))
def test_fedasync_matches_reference_under_clock_arrivals(name):
  workers, staleness = _clock_plan()
  assert staleness.max() > 3   # The schedule really is stale.
  server = fedasync(0.8, name, max_staleness=3)
  state, metrics = _run(_runtime(server, rho=0.5), workers, staleness)
  expected = _reference(workers, staleness, mix=0.8,
                        weight_fn=staleness_function(name),
                        max_staleness=3, rho=0.5)
  _close(state.params, expected)
  capped = int(np.sum(np.asarray(staleness) > 3))
  assert int(state.opt_state.num_capped) == capped
  assert int(state.opt_state.version) == len(workers)
  for t, m in enumerate(metrics):
    np.testing.assert_array_equal(
        m["arrival"], np.arange(NUM_WORKERS) == workers[t])


@pytest.mark.parametrize("buffer_size", [1, 3])
def test_fedbuff_matches_reference_under_clock_arrivals(buffer_size):
  workers, staleness = _clock_plan()
  server = fedbuff(1.0, buffer_size, max_staleness=4)
  state, _ = _run(_runtime(server, buffer_size=buffer_size), workers,
                  staleness)
  expected = _reference(workers, staleness, mix=None,
                        weight_fn=staleness_function("polynomial"),
                        max_staleness=4, buffer_size=buffer_size)
  _close(state.params, expected)
  assert int(state.opt_state.version) == len(workers) // buffer_size


def test_fedbuff_steps_only_every_k_arrivals():
  server = fedbuff(1.0, 3, max_staleness=2)
  rt = _runtime(server, buffer_size=3)
  state = rt.init(PARAMS)
  data = _data(5)
  before = jax.tree.map(np.asarray, state.params)
  for t in range(3):
    state, _ = rt.step(state, arrival_batches(data, t, 0))
    changed = not all(np.array_equal(a, np.asarray(b)) for a, b in zip(
        jax.tree.leaves(before), jax.tree.leaves(state.params)))
    assert changed == (t == 2)
  assert int(state.opt_state.num_buffered) == 0


def test_only_the_arriving_worker_counts():
  server = fedasync(0.5, "hinge", max_staleness=2)
  rt = _runtime(server)
  data = _data(1)
  other = jax.tree.map(lambda a: a.copy(), data)
  other[0][np.arange(NUM_WORKERS) != 4] = 1e3   # Everyone else: garbage.
  a, _ = rt.step(rt.init(PARAMS), arrival_batches(data, 4, 0))
  b, m = rt.step(rt.init(PARAMS), arrival_batches(other, 4, 0))
  _close(a.params, b.params, rtol=0, atol=0)
  param_bytes = sum(4 * x.size for x in jax.tree.leaves(PARAMS))
  np.testing.assert_array_equal(m["all_reduce_bytes"], param_bytes + 8)


# ---------------------------------------------------------------------------
# Runtimes, memory, replication.


@pytest.mark.parametrize("kind", ["fedasync", "fedbuff"])
def test_simulate_equals_on_mesh(kind):
  workers, staleness = _clock_plan()
  if kind == "fedasync":
    make = lambda: fedasync(0.7, "polynomial", max_staleness=3)
    k = 1
  else:
    make = lambda: fedbuff(0.9, 2, max_staleness=3)
    k = 2
  sim, _ = _run(_runtime(make(), buffer_size=k), workers, staleness)
  mesh, _ = _run(_runtime(make(), "mesh", buffer_size=k), workers,
                 staleness)
  _close(sim.params, mesh.params, rtol=1e-6, atol=1e-7)
  _close(sim.opt_state.models, mesh.opt_state.models, rtol=1e-6, atol=1e-7)
  # Everything but the per-worker record of who took part is replicated.
  helpers.assert_replicated(mesh._replace(opt_state=mesh.opt_state._replace(
      comm=())))


@pytest.mark.parametrize("max_staleness", [0, 4, 16])
def test_ring_buffer_holds_k_plus_one_models_and_no_more(max_staleness):
  state = _runtime(fedasync(0.5, max_staleness=max_staleness)).init(
      PARAMS)
  server = state.opt_state
  for leaf, p in zip(jax.tree.leaves(server.models), jax.tree.leaves(PARAMS)):
    assert leaf.shape == (max_staleness + 1,) + p.shape
  model_size = sum(p.size for p in jax.tree.leaves(PARAMS))
  comm = set(map(id, jax.tree.leaves(server.comm)))
  others = [x for x in jax.tree.leaves(server._replace(models=()))
            if id(x) not in comm]
  assert sum(np.size(x) for x in others) < model_size   # Counters only.
  buff = _runtime(fedbuff(1.0, 2, max_staleness=max_staleness),
                  buffer_size=2).init(PARAMS).opt_state
  assert sum(np.size(x) for x in jax.tree.leaves(buff.buffer)) == model_size


# ---------------------------------------------------------------------------
# Staleness functions and errors.


def test_staleness_functions_follow_the_papers_formulas():
  u = jnp.arange(8)
  np.testing.assert_allclose(
      staleness_function("polynomial", a=0.5)(u),
      1 / np.sqrt(np.arange(8) + 1.0), rtol=1e-6)
  hinge = np.asarray(staleness_function("hinge", a=10.0, b=4)(u))
  np.testing.assert_allclose(
      hinge, [1, 1, 1, 1, 1, 1 / 11, 1 / 21, 1 / 31], rtol=1e-6)
  np.testing.assert_array_equal(staleness_function("constant")(u),
                                np.ones(8))


@pytest.mark.parametrize("name, params, match", [
    ("polynomial", {"a": -0.5}, "a must be a finite number >= 0"),
    ("hinge", {"b": -1}, "b must be a finite number >= 0"),
    ("hinge", {"a": float("nan")}, "a must be a finite"),
    ("polynomial", {"c": 1.0}, "unknown"),
    ("exponential", {}, "unknown staleness function 'exponential'"),
])
def test_bad_staleness_functions(name, params, match):
  with pytest.raises(ValueError, match=match):
    staleness_function(name, **params)


def test_bad_arguments():
  with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\]; got 1.5"):
    fedasync(1.5, max_staleness=2)
  with pytest.raises(ValueError, match="max_staleness must be an int >= 0"):
    fedasync(0.5, max_staleness=-1)
  with pytest.raises(ValueError,
                     match="buffer_size must be an int >= 1; got 0"):
    fedbuff(1.0, 0, max_staleness=2)
  with pytest.raises(TypeError, match="buffer_size must be an int"):
    fedbuff(1.0, 2.0, max_staleness=2)
  with pytest.raises(ValueError, match="server_learning_rate"):
    fedbuff(0.0, 2, max_staleness=2)
  with pytest.raises(TypeError, match="staleness_fn"):
    fedasync(0.5, 3, max_staleness=2)
  with pytest.raises(ValueError, match="mu must be a finite number >= 0"):
    clients(helpers.mlp_loss, fedasync(0.5, max_staleness=1),
            optax.sgd(0.1), proximal_rho=-1.0)


def test_update_without_arrival_is_refused():
  tx = fedasync(0.5, max_staleness=1)
  state = jax.vmap(tx.init, axis_name=dist.WORKERS, axis_size=2)(
      jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="staleness= .* arrival="):
    jax.vmap(lambda g, s: tx.update(g, s), axis_name=dist.WORKERS)(
        jnp.zeros((2, 3)), state)
