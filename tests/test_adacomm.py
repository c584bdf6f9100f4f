"""AdaComm: the period rule first, then the transform on the runtimes.

Runs of one configuration are shared through ``_run`` (cached), so each
runtime is compiled once for the module.
"""

import functools
import math

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
STEPS = 10
LOSS_BYTES = 4   # One float32 loss per recomputation.


# ---------------------------------------------------------------------------
# The rule (algorithms.local.adacomm_period).


@pytest.mark.parametrize("tau_0", [1, 2, 3, 4, 8, 13])
def test_a_constant_loss_keeps_tau_0(tau_0):
  for loss in (0.3, 1.0, 7.25):
    assert int(alg.local.adacomm_period(loss, loss, tau_0, 16)) == tau_0


@pytest.mark.parametrize("tau_0", [1, 2, 3, 4, 8, 13])
def test_a_loss_ratio_of_one_half(tau_0):
  want = math.ceil(tau_0 * math.sqrt(0.5))
  assert int(alg.local.adacomm_period(1.5, 3.0, tau_0, 16)) == want
  # Paddle's form: tau_0 inside the root.
  want = math.ceil(math.sqrt(0.5 * tau_0))
  assert int(alg.local.adacomm_period(1.5, 3.0, tau_0, 16,
                                      form="paddle")) == want


def test_the_learning_rate_ratio_sits_under_the_root():
  # The rate halved (eta_0 / eta = 2) cancels a halved loss.
  assert int(alg.local.adacomm_period(1.0, 2.0, 8, 16, lr_ratio=2.0)) == 8
  assert int(alg.local.adacomm_period(1.0, 1.0, 8, 16, lr_ratio=2.0)) == (
      math.ceil(8 * math.sqrt(2.0)))
  assert int(alg.local.adacomm_period(1.0, 1.0, 8, 16, form="paddle",
                                      lr_ratio=2.0)) == 4


def test_the_period_is_clipped_to_one_and_tau_max():
  assert int(alg.local.adacomm_period(100.0, 1.0, 4, 6)) == 6
  assert int(alg.local.adacomm_period(1e-9, 1.0, 4, 6)) == 1
  assert int(alg.local.adacomm_period(0.0, 1.0, 4, 6)) == 1
  # Paddle's default cap.
  assert int(alg.local.adacomm_period(1e4, 1.0, 16, 16, form="paddle")) == 16


def test_an_undefined_ratio_keeps_the_previous_period():
  for loss, initial in [(np.nan, 1.0), (1.0, 0.0), (-1.0, 1.0),
                        (np.inf, 1.0)]:
    assert int(alg.local.adacomm_period(loss, initial, 4, 8,
                                        previous=3)) == 3


def test_the_rule_is_traceable_and_int32():
  f = jax.jit(lambda f, f0: alg.local.adacomm_period(f, f0, 8, 16))
  out = f(jnp.float32(0.5), jnp.float32(1.0))
  assert out.dtype == jnp.int32 and out.shape == () and int(out) == 6


def test_choose_initial_period_on_a_toy_error_runtime_trade_off():
  """A fixed time budget: loss = start / (steps done) + drift * (tau - 1),
  steps done = budget / ((tau * compute + comm) / tau)."""

  def measure(tau, compute=1.0, comm=6.0, budget=100.0, drift=0.02):
    steps = budget * tau / (tau * compute + comm)
    return 10.0 / steps + drift * (tau - 1)

  candidates = (1, 2, 4, 8, 16, 32)
  best = min(candidates, key=measure)
  assert alg.local.choose_initial_period(measure, candidates) == best == 4
  # No communication cost: synchronous SGD (tau 1) wins.
  assert alg.local.choose_initial_period(
      lambda tau: measure(tau, comm=0.0), candidates) == 1
  # Ties go to the larger period; non-finite losses are skipped.
  assert alg.local.choose_initial_period(lambda tau: 1.0, (2, 8, 4)) == 8
  assert alg.local.choose_initial_period(
      lambda tau: np.nan if tau == 2 else float(tau), (2, 4, 3)) == 3
  with pytest.raises(ValueError, match="no candidate in \\[1, 2\\]"):
    alg.local.choose_initial_period(lambda tau: np.nan, (1, 2))


# ---------------------------------------------------------------------------
# The transform, fed the losses by hand.


def _fed(tx, losses, num_workers=2):
  """Runs ``tx`` under vmap with per-step per-worker losses given by hand;
  returns the period after each step."""

  def step(w, state, g, v):
    u, state = tx.update(g, state, w, value=v, unknown_arg=3)
    return optax.apply_updates(w, u), state

  w = jnp.zeros((num_workers, 2))
  state = jax.vmap(tx.init, axis_name=dist.WORKERS)(w)
  f = jax.jit(jax.vmap(step, axis_name=dist.WORKERS))
  periods, states = [], []
  for v in losses:
    w, state = f(w, state, jnp.ones((num_workers, 2)),
                 jnp.asarray(v, jnp.float32))
    periods.append(int(state.local.period[0]))
    states.append(state)
  return periods, states


def test_transform_constant_loss_keeps_tau_0_for_many_syncs():
  periods, states = _fed(dist.adacomm(optax.sgd(0.1), 3, 8),
                         [[0.7, 1.3]] * 12)
  assert periods == [3] * 12
  assert int(states[-1].local.num_syncs[0]) == 4


@pytest.mark.parametrize("tau_0", [4, 8, 5])
def test_transform_loss_ratio_one_half(tau_0):
  # F_0 = mean(1, 3) = 2 at step 0; the first sync sees mean(0.5, 1.5) = 1.
  losses = [[1.0, 3.0]] + [[0.5, 1.5]] * (tau_0 - 1)
  periods, states = _fed(dist.adacomm(optax.sgd(0.1), tau_0, 16), losses)
  assert periods[:-1] == [tau_0] * (tau_0 - 1)
  assert periods[-1] == math.ceil(tau_0 * math.sqrt(0.5))
  np.testing.assert_array_equal(states[-1].initial_loss, 2.0)
  np.testing.assert_array_equal(states[-1].loss, 1.0)


def test_transform_interval_waits_for_the_first_sync_after_it():
  """Period 2, interval 5: recomputations at step 0 and at the syncs that
  end steps 6 and 12 (>= 5 steps after the previous one)."""
  losses = [[4.0, 4.0]] + [[1.0, 1.0]] * 12
  periods, states = _fed(dist.adacomm(optax.sgd(0.1), 2, 8, interval=5),
                         losses)
  # ceil(sqrt(1/4) * 2) = 1 from the sync ending step 6 (index 5).
  assert periods == [2] * 5 + [1] * 8
  comm = [int(s.comm.all_reduce_bytes[0]) for s in states]
  assert comm == [4, 0, 0, 0, 0, 4] + [0] * 4 + [4, 0, 0]


def test_transform_interval_in_simulated_seconds():
  """Period 2, interval 2.5 s, time t at step t: the sync at t = 1 comes 1 s
  after step 0 and keeps the period; the sync at t = 3 recomputes it (to 1,
  so every later step syncs); then t = 6 and t = 9 recompute (>= 2.5 s
  after the previous), t = 4, 5, 7, 8 do not."""
  tx = dist.adacomm(optax.sgd(0.1), 2, 8, interval_seconds=2.5)

  def step(w, state, g, v, t):
    u, state = tx.update(g, state, w, value=v, simulated_seconds=t)
    return optax.apply_updates(w, u), state

  w = jnp.zeros((2, 2))
  state = jax.vmap(tx.init, axis_name=dist.WORKERS)(w)
  f = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, 0, None),
                       axis_name=dist.WORKERS))
  comm = []
  for t, v in enumerate([[4.0, 4.0]] + [[1.0, 1.0]] * 9):
    w, state = f(w, state, jnp.ones((2, 2)), jnp.asarray(v), float(t))
    comm.append(int(state.comm.all_reduce_bytes[0]))
  assert comm == [4, 0, 0, 4, 0, 0, 4, 0, 0, 4]
  np.testing.assert_array_equal(state.updated_at, 9.0)
  assert int(state.local.period[0]) == 1


def test_transform_interval_in_seconds_needs_the_clock():
  tx = dist.adacomm(optax.sgd(0.1), 2, interval_seconds=1.0)

  def step(w, g):
    return tx.update(g, tx.init(w), w, value=jnp.ones(()))

  with pytest.raises(ValueError, match="needs simulated_seconds="):
    jax.vmap(step, axis_name=dist.WORKERS)(jnp.zeros((2, 3)),
                                            jnp.ones((2, 3)))


def test_runtime_host_input_drives_the_seconds_interval():
  """The runtime hands its host inputs to tx.update: under simulate and
  on_mesh the loss is averaged at step 0 and at exactly the syncs that come
  >= 2.5 simulated seconds after the previous recomputation (time t at
  step t)."""
  tx = dist.adacomm(optax.sgd(0.2), 2, 8, interval_seconds=2.5)
  step = dist.data_parallel(helpers.mlp_loss, tx)
  runs = [dist.simulate(step, 8),
          dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)), 8)]
  batch = helpers.worker_batches(0, 8, 4)
  seen = []
  for rt in runs:
    state, comm, syncs = rt.init(PARAMS), [], []
    for t in range(10):
      state, _ = rt.step(state, batch, inputs={"simulated_seconds":
                                               jnp.float32(t)})
      comm.append(int(np.asarray(state.opt_state.comm.all_reduce_bytes)[0]))
      syncs.append(int(state.opt_state.local.num_syncs))
    seen.append(comm)
  expected, last = [], 0
  for t in range(10):
    synced = t and syncs[t] > syncs[t - 1]
    due = t == 0 or (synced and t - last >= 2.5)
    last = t if due else last
    expected.append(4 * due)
  assert seen[0] == seen[1] == expected
  assert sum(expected) >= 12, expected   # Step 0 and at least two more.


def test_transform_learning_rate_schedule_enters_the_ratio():
  schedule = lambda step: jnp.where(step < 2, 0.1, 0.05)
  losses = [[2.0, 2.0]] + [[1.0, 1.0]] * 3
  tx = dist.adacomm(optax.sgd(0.1), 4, 16, learning_rate=schedule)
  periods, _ = _fed(tx, losses)
  assert periods == [4, 4, 4, 4]   # sqrt(2 * 1/2) * 4: the two cancel.
  tx = dist.adacomm(optax.sgd(0.1), 4, 16)
  assert _fed(tx, losses)[0] == [4, 4, 4, 3]


# ---------------------------------------------------------------------------
# Runtimes, bytes and the conditional.


def _runtime(runtime, num_workers):
  tx = dist.adacomm(optax.sgd(0.2), 4, 8)
  step = dist.data_parallel(helpers.mlp_loss, tx)
  if runtime == "simulate":
    return dist.simulate(step, num_workers)
  return dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)),
                      num_workers)


@functools.cache
def _run(runtime, num_workers=8):
  rt = _runtime(runtime, num_workers)
  state = rt.init(PARAMS)
  metrics, periods, syncs = [], [], []
  batch = helpers.worker_batches(0, num_workers, 4)   # Each its own data.
  for _ in range(STEPS):
    state, m = rt.step(state, batch)
    metrics.append(jax.tree.map(np.asarray, m))
    periods.append(int(state.opt_state.local.period))
    syncs.append(int(state.opt_state.local.num_syncs))
  return rt, state, metrics, periods, syncs


def test_the_period_adapts_in_the_run():
  _, _, _, periods, syncs = _run("simulate")
  assert periods[0] == 4 and min(periods) < 4, periods
  # It syncs when since_sync + 1 reaches the period in force.
  since, period = 0, 4
  for t in range(STEPS):
    synced = since + 1 >= period
    since = 0 if synced else since + 1
    assert syncs[t] == (syncs[t - 1] if t else 0) + synced
    period = periods[t]


@pytest.mark.parametrize("num_workers", [8, 16])
def test_simulate_equals_on_mesh(num_workers):
  _, sim, sim_metrics, sim_periods, _ = _run("simulate", num_workers)
  _, mesh, mesh_metrics, mesh_periods, _ = _run("on_mesh", num_workers)
  assert sim_periods == mesh_periods
  tol = dict(rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), **tol), (sim.params, sim.opt_state),
               (mesh.params, mesh.opt_state))
  for a, b in zip(sim_metrics, mesh_metrics):
    np.testing.assert_array_equal(a["all_reduce_bytes"],
                                  b["all_reduce_bytes"])
  mask = jax.tree.leaves(dist.replication_mask(mesh.opt_state))
  leaves = jax.tree.leaves(mesh.opt_state)
  for leaf, replicated in zip(leaves, mask):
    if replicated:
      copies = [np.asarray(s.data) for s in leaf.addressable_shards]
      assert len(copies) == 8
      for copy in copies[1:]:
        np.testing.assert_array_equal(copy, copies[0])


def test_wire_bytes_only_on_sync_rounds_and_as_in_the_program():
  rt, state, metrics, _, syncs = _run("on_mesh")
  previous = 0
  for t, m in enumerate(metrics):
    synced = syncs[t] > previous
    previous = syncs[t]
    # Every sync recomputes (interval 1) and averages the loss; step 0
    # averages the loss alone.
    want = (PARAM_BYTES + LOSS_BYTES) * synced + LOSS_BYTES * (t == 0)
    np.testing.assert_array_equal(m["all_reduce_bytes"], want)
    np.testing.assert_array_equal(m["all_gather_bytes"], 0)
  hlo = rt.lower(state, helpers.worker_batches(0, 8, 4)).as_text()
  assert helpers.collective_operand_bytes(hlo, "all_reduce") == (
      PARAM_BYTES + LOSS_BYTES)
  total = sum(dist.total_bytes(jax.tree.map(lambda a: a[0], s))
              for s in dist.find_comm_stats(state.opt_state))
  assert total == syncs[-1] * (PARAM_BYTES + LOSS_BYTES) + LOSS_BYTES


@pytest.mark.parametrize("num_workers", [8, 16])
def test_every_collective_sits_inside_an_hlo_conditional(num_workers):
  rt, state, _, _, _ = _run("on_mesh", num_workers)
  compiled = rt.lower(
      state, helpers.worker_batches(0, num_workers, 4)).compile().as_text()
  always, anywhere = helpers.collective_reach(compiled, "all-reduce(")
  assert not always
  assert anywhere


# ---------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("make,error,match", [
    (lambda: dist.adacomm(optax.sgd(0.1), 8, 4), ValueError,
     "tau_max must be >= tau_0; got tau_max=4 < tau_0=8"),
    (lambda: dist.adacomm(optax.sgd(0.1), 0), ValueError,
     "tau_0 must be an int >= 1; got 0"),
    (lambda: dist.adacomm(optax.sgd(0.1), 2.0), TypeError,
     "tau_0 must be a Python int >= 1; got 2.0"),
    (lambda: dist.adacomm(optax.sgd(0.1), 4, 8, interval=0), ValueError,
     "interval must be an int >= 1; got 0"),
    (lambda: dist.adacomm(optax.sgd(0.1), 4, 8, interval=1.5), TypeError,
     "interval must be a Python int >= 1; got 1.5"),
    (lambda: dist.adacomm(optax.sgd(0.1), 4, interval_seconds=0.0),
     ValueError, "interval_seconds must be a finite number > 0.*0.0"),
    (lambda: dist.adacomm(optax.sgd(0.1), 4, interval_seconds=float("nan")),
     ValueError, "interval_seconds must be a finite number > 0.*nan"),
    (lambda: dist.adacomm(optax.sgd(0.1), 4, interval_seconds="1"),
     TypeError, "interval_seconds must be a number or None; got '1'"),
    (lambda: dist.adacomm(optax.sgd(0.1), 4, interval=2,
                          interval_seconds=1.0),
     ValueError, "interval=2.*interval_seconds=1.0.*not both"),
    (lambda: dist.adacomm(optax.sgd(0.1), 4, form="sqrt"), ValueError,
     r"form must be one of \('paddle', 'paper'\); got 'sqrt'"),
    (lambda: dist.adacomm(optax.sgd(0.1), 4, learning_rate=0.1), TypeError,
     "learning_rate must be a schedule.*0.1"),
    (lambda: dist.adacomm(optax.sgd(0.1), 4, state_policy="avg"),
     ValueError, "state_policy must be one of.*'avg'"),
    (lambda: alg.local.adacomm_period(1.0, 1.0, 4, 8, form="root"),
     ValueError, "form must be one of.*'root'"),
    (lambda: alg.local.choose_initial_period(lambda t: 1.0, ()),
     ValueError, "at least one candidate"),
    (lambda: alg.local.choose_initial_period(lambda t: 1.0, (0, 2)),
     ValueError, "candidate period must be an int >= 1; got 0"),
])
def test_bad_input_is_refused_naming_the_value(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_update_without_value_says_what_it_needs():
  tx = dist.adacomm(optax.sgd(0.1), 2)

  def step(w, g):
    return tx.update(g, tx.init(w), w)

  with pytest.raises(ValueError, match="needs value=.*training loss"):
    jax.vmap(step, axis_name=dist.WORKERS)(jnp.zeros((2, 3)),
                                            jnp.ones((2, 3)))
