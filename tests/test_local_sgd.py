"""Local SGD and its recipes: equivalences first, then properties.

Runs of the same configuration are shared through ``_run`` (cached), so
each runtime is compiled once for the whole module.
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

NUM_WORKERS = 8
LR = 0.1
STEPS = 6
PARAMS = helpers.mlp_params(jax.random.key(0))
PARAM_BYTES = sum(4 * x.size for x in jax.tree.leaves(PARAMS))
TOL = dict(rtol=2e-5, atol=2e-6)

# The transforms of this issue, built the same way each time they are asked
# for (the caches below key on the name). FedYogi and FedAdagrad are
# FedAdam's transform with another replicated server rule (tested by hand
# below), so the runtimes run FedAdam alone.
TRANSFORMS = {
    "keep_adam": lambda: dist.local_sgd(optax.adam(0.01), 3),
    "average_adam": lambda: dist.local_sgd(
        optax.adam(0.01), 3, state_policy="average"),
    "reset_adam": lambda: dist.local_sgd(
        optax.adam(0.01), 3, state_policy="reset"),
    "fedavg": lambda: dist.fedavg(LR, 3),
    "fedprox": lambda: dist.fedprox(LR, 2, 0.5),
    "fedadam": lambda: dist.fedadam(LR, 2, 0.01),
    "diloco": lambda: dist.diloco(0.01, 2),
    "post_local_sgd": lambda: dist.post_local_sgd(LR, 2, 3, 0.9),
    "slsgd": lambda: dist.slsgd(LR, 2, 0.5, num_trimmed=1),
    "compressed": lambda: dist.local_sgd(
        optax.sgd(LR), 2, compressor=alg.compressors.top_k(k=3),
        error_feedback=True),
}


def _runtime(tx, runtime, num_workers):
  step = dist.data_parallel(helpers.mlp_loss, tx)
  if runtime == "simulate":
    return dist.simulate(step, num_workers)
  return dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)),
                      num_workers)


@functools.cache
def _cached_runtime(name, runtime="simulate", num_workers=NUM_WORKERS):
  """One compiled runtime per TRANSFORMS entry, runtime and worker count."""
  return _runtime(TRANSFORMS[name](), runtime, num_workers)


def _steps(rt, steps, state=None):
  if state is None:
    state = rt.init(PARAMS)
  metrics = []
  for t in range(steps):
    state, m = rt.step(state, helpers.worker_batches(t, rt.num_workers, 4))
    metrics.append(jax.tree.map(np.asarray, m))
  return state, metrics


@functools.cache
def _run(name, runtime="simulate", num_workers=NUM_WORKERS, steps=STEPS):
  """(runtime, final state, per-step metrics) of a TRANSFORMS entry."""
  rt = _cached_runtime(name, runtime, num_workers)
  state, metrics = _steps(rt, steps)
  return rt, state, metrics


@functools.cache
def _sync_reference(momentum, steps=STEPS):
  """Synchronous data-parallel SGD: aggregate(mean) then SGD (momentum)."""
  tx = optax.chain(dist.aggregate(alg.aggregators.mean()),
                   optax.sgd(LR, momentum=momentum))
  return _steps(_runtime(tx, "simulate", NUM_WORKERS), steps)[0]


def _close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), **(tol or TOL)), a, b)


def _rows_equal(tree):
  for leaf in jax.tree.leaves(tree):
    leaf = np.asarray(leaf)
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))


def _rows_close(tree):
  """Workers' models after a sync: x - w_i added to w_i rounds once."""
  for leaf in jax.tree.leaves(tree):
    leaf = np.asarray(leaf)
    np.testing.assert_allclose(leaf, np.broadcast_to(leaf[:1], leaf.shape),
                               rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# Equivalences.


@pytest.mark.parametrize("policy", dist.STATE_POLICIES)
def test_period_one_is_synchronous_data_parallel_sgd(policy):
  tx = dist.local_sgd(optax.sgd(LR, momentum=0.9), 1, state_policy=policy)
  local = _steps(_runtime(tx, "simulate", NUM_WORKERS), STEPS)[0]
  # Momentum is linear in the gradient: the mean of the workers' buffers is
  # the buffer of the mean gradient. Reset drops the buffer every step.
  sync = _sync_reference(None if policy == "reset" else 0.9)
  _close(local.params, sync.params)
  _rows_equal(local.params)


def test_fedavg_with_one_local_step_is_fedsgd():
  local = _steps(_runtime(dist.fedavg(LR, 1), "simulate", NUM_WORKERS),
                 STEPS)[0]
  _close(local.params, _sync_reference(None).params)


def test_slsgd_without_trimming_and_alpha_one_is_fedavg():
  slsgd = _steps(_runtime(dist.slsgd(LR, 3, 1.0), "simulate", NUM_WORKERS),
                 STEPS)[0]
  _close(slsgd.params, _run("fedavg")[1].params)


def _local_models(x, round_, period, num_workers, opt=None, opt_states=None):
  """Each worker's model after ``period`` steps from ``x`` (plain JAX)."""
  models = []
  for i in range(num_workers):
    w = x
    for h in range(period):
      t = round_ * period + h
      batch = jax.tree.map(lambda a: a[i],
                           helpers.worker_batches(t, num_workers, 4))
      g = jax.grad(helpers.mlp_loss)(w, batch)
      if opt is None:
        w = jax.tree.map(lambda p, d: p - LR * d, w, g)
      else:
        u, opt_states[i] = opt.update(g, opt_states[i], w)
        w = optax.apply_updates(w, u)
    models.append(w)
  return models


def test_slsgd_matches_its_reference_code():
  """x <- alpha * TrMean_b(models) + (1 - alpha) * x (ecml2019-slsgd)."""
  n, period, alpha, b, rounds = 5, 2, 0.5, 1, 2
  tx = dist.slsgd(LR, period, alpha, num_trimmed=b)
  state = _steps(_runtime(tx, "simulate", n), rounds * period)[0]
  x = PARAMS
  for r in range(rounds):
    models = _local_models(x, r, period, n)
    stacked = jax.tree.map(lambda *m: np.sort(np.stack(m), axis=0), *models)
    trimmed = jax.tree.map(lambda s: s[b:n - b].mean(0), stacked)
    x = jax.tree.map(lambda t, p: alpha * t + (1 - alpha) * p, trimmed, x)
  _close(dist.worker_slice(state.params, 3), x)
  _close(state.opt_state.global_params, x)


def test_diloco_matches_a_plain_reference():
  """AdamW states persist on the workers; Nesterov SGD on the mean delta."""
  n, period, rounds = NUM_WORKERS, 2, 2
  state = _run("diloco", steps=rounds * period)[1]
  inner = optax.adamw(0.01, 0.9, 0.95, weight_decay=0.1)
  outer = optax.sgd(0.7, 0.9, nesterov=True)
  inner_states = [inner.init(PARAMS) for _ in range(n)]
  x, outer_state = PARAMS, outer.init(PARAMS)
  for r in range(rounds):
    models = _local_models(x, r, period, n, inner, inner_states)
    mean = jax.tree.map(lambda *m: sum(m) / n, *models)
    delta = jax.tree.map(lambda a, b: a - b, x, mean)
    u, outer_state = outer.update(delta, outer_state, x)
    x = optax.apply_updates(x, u)
  _close(state.opt_state.global_params, x, rtol=1e-4, atol=1e-5)
  _close(dist.worker_slice(state.params, 1), x, rtol=1e-4, atol=1e-5)
  adam = state.opt_state.inner_state[0]
  for i in range(n):   # Each worker's own AdamW moments, never averaged.
    _close(jax.tree.map(lambda a: a[i], adam.mu), inner_states[i][0].mu,
           rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", alg.local.FEDOPT_KINDS)
def test_fedopt_pseudo_gradient_sign_by_hand(kind):
  """Linear loss: worker i's gradient is a constant c_i, so by hand
  Delta = mean(local) - x = -lr * period * mean(c) each round."""
  lr, period, eta, b1, b2, tau = 0.1, 2, 0.05, 0.9, 0.99, 1e-3
  c = np.array([[1.0, -2.0, 0.5], [3.0, -1.0, -0.5]], np.float32)
  factory = {"adam": dist.fedadam, "yogi": dist.fedyogi}.get(kind)
  if factory is None:
    tx = dist.fedadagrad(lr, period, eta, b1, tau)
  else:
    tx = factory(lr, period, eta, b1, b2, tau)
  loss = lambda w, g: jnp.sum(g * w)
  rt = dist.simulate(dist.data_parallel(loss, tx), 2)
  state = rt.init(jnp.zeros(3))
  for _ in range(2 * period):
    state, _ = rt.step(state, jnp.asarray(c))
  x, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
  for _ in range(2):
    delta = -lr * period * c.mean(0)
    m = b1 * m + (1 - b1) * delta
    if kind == "adam":
      v = b2 * v + (1 - b2) * delta**2
    elif kind == "yogi":
      v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
    else:
      v = v + delta**2
    x = x + eta * m / (np.sqrt(v) + tau)
  np.testing.assert_allclose(state.params[0], x, rtol=1e-5)
  # The server moves the way the clients moved.
  np.testing.assert_array_equal(np.sign(state.params[0]),
                                np.sign(-c.mean(0)))


def test_fedprox_local_steps_by_hand():
  """Constant gradients c_i; the anchor is the model of the last sync."""
  lr, mu, period = 0.5, 0.4, 2
  c = np.array([[1.0, -1.0], [3.0, 2.0]], np.float32)
  rt = dist.simulate(dist.data_parallel(
      lambda w, g: jnp.sum(g * w), dist.fedprox(lr, period, mu)), 2)
  state = rt.init(jnp.zeros(2))
  x = np.zeros(2)
  w = np.zeros((2, 2))
  for t in range(2 * period):
    w = w - lr * (c + mu * (w - x))
    if (t + 1) % period == 0:
      x = w.mean(0)
      w = np.tile(x, (2, 1))
    state, _ = rt.step(state, jnp.asarray(c))
    np.testing.assert_allclose(state.params, w, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(state.opt_state.global_params, x, rtol=1e-6)


def test_post_local_sgd_warm_up_is_synchronous_sgd():
  _, state, metrics = _run("post_local_sgd", steps=7)
  _, after_warm_up, _ = _run("post_local_sgd", steps=3)
  _close(after_warm_up.params, _sync_reference(0.9, steps=3).params)
  _rows_equal(after_warm_up.opt_state.inner_state)   # Momentum agrees.
  # The last warm-up step made the common model the global one.
  _close(after_warm_up.opt_state.global_params,
         dist.worker_slice(after_warm_up.params, 0))
  # Gradients every warm-up step (+ the model once), then syncs every 2.
  recorded = [int(m["all_reduce_bytes"][0]) for m in metrics]
  p = PARAM_BYTES
  assert recorded == [p, p, 2 * p, 0, p, 0, p]
  assert int(state.opt_state.num_syncs) == 2


# ---------------------------------------------------------------------------
# The inner-state policies.


def test_state_policies_at_a_sync():
  """Adam, period 3: states agree up to the sync, then keep / average /
  reset."""
  states = {policy: _run(f"{policy}_adam", steps=3)[1]
            for policy in dist.STATE_POLICIES}
  keep = states["keep"].opt_state.inner_state[0]
  average = states["average"].opt_state.inner_state[0]
  reset = states["reset"].opt_state.inner_state[0]
  # Keep: each worker's own moments, which differ.
  assert not np.allclose(keep.mu["w1"][0], keep.mu["w1"][1])
  # Average: the mean of those, the same on every worker.
  _rows_equal(average.mu)
  _rows_equal(average.nu)
  _close(jax.tree.map(lambda a: a[0], average.mu),
         jax.tree.map(lambda a: a.mean(0), keep.mu))
  _close(jax.tree.map(lambda a: a[0], average.nu),
         jax.tree.map(lambda a: a.mean(0), keep.nu))
  np.testing.assert_array_equal(average.count, 3)
  # Reset: a fresh Adam state.
  for leaf in jax.tree.leaves((reset.mu, reset.nu)):
    np.testing.assert_array_equal(leaf, 0.0)
  np.testing.assert_array_equal(reset.count, 0)
  # The sync itself does not depend on the policy.
  _close(states["keep"].params, states["reset"].params)
  # Averaging is a second all-reduce, its bytes recorded: Adam's mu and nu.
  (stats,) = dist.find_comm_stats(states["average"].opt_state)
  np.testing.assert_array_equal(stats.rounds.bytes[0],
                                [PARAM_BYTES, 2 * PARAM_BYTES])
  (stats,) = dist.find_comm_stats(states["reset"].opt_state)
  np.testing.assert_array_equal(stats.rounds.bytes[0], [PARAM_BYTES, 0])


# ---------------------------------------------------------------------------
# Runtimes, bytes and the conditional.


SIM_VS_MESH = ([(name, 8) for name in TRANSFORMS
                if name not in ("keep_adam", "reset_adam")]
               + [("fedavg", 16), ("slsgd", 16)])


@pytest.mark.parametrize("name,num_workers", SIM_VS_MESH)
def test_simulate_equals_on_mesh(name, num_workers):
  _, sim, sim_metrics = _run(name, "simulate", num_workers)
  _, mesh, mesh_metrics = _run(name, "on_mesh", num_workers)
  tol = dict(rtol=1e-4, atol=1e-5)
  _close(sim.params, mesh.params, **tol)
  _close(sim.opt_state, mesh.opt_state, **tol)
  for a, b in zip(sim_metrics, mesh_metrics):
    for key in ("all_reduce_bytes", "all_gather_bytes"):
      np.testing.assert_array_equal(a[key], b[key])
  # Replicated leaves are held once and agree on every device.
  mask = jax.tree.leaves(dist.replication_mask(mesh.opt_state))
  for leaf, replicated in zip(jax.tree.leaves(mesh.opt_state), mask):
    if replicated:
      copies = [np.asarray(s.data) for s in leaf.addressable_shards]
      assert len(copies) == 8
      for copy in copies[1:]:
        np.testing.assert_array_equal(copy, copies[0])
  assert mesh.opt_state.global_params["w1"].shape == PARAMS["w1"].shape


@pytest.mark.parametrize("name,op,per_sync", [
    ("fedavg", "all_reduce", PARAM_BYTES),
    ("average_adam", "all_reduce", 3 * PARAM_BYTES),
    ("slsgd", "all_gather", PARAM_BYTES),
])
def test_wire_bytes_only_on_sync_rounds_and_as_in_the_program(name, op,
                                                              per_sync):
  rt, state, metrics = _run(name, "on_mesh", 8)
  period = int(state.opt_state.period)
  field = f"{op}_bytes"
  other = ("all_gather_bytes" if op == "all_reduce" else "all_reduce_bytes")
  for t, m in enumerate(metrics):
    synced = (t + 1) % period == 0
    np.testing.assert_array_equal(m[field], per_sync if synced else 0)
    np.testing.assert_array_equal(m[other], 0)
  hlo = rt.lower(state, helpers.worker_batches(0, 8, 4)).as_text()
  assert helpers.collective_operand_bytes(hlo, op) == per_sync
  (stats,) = dist.find_comm_stats(state.opt_state)
  syncs = STEPS // period
  assert dist.total_bytes(jax.tree.map(lambda a: a[0], stats)) == (
      syncs * per_sync)
  assert int(state.opt_state.num_syncs) == syncs


@pytest.mark.parametrize("name,num_workers,collective", [
    ("fedavg", 8, "all-reduce("),
    ("fedavg", 16, "all-reduce("),
    ("slsgd", 8, "all-gather("),
])
def test_the_sync_collective_sits_inside_an_hlo_conditional(
    name, num_workers, collective):
  rt, state, _ = _run(name, "on_mesh", num_workers)
  compiled = rt.lower(
      state, helpers.worker_batches(0, num_workers, 4)).compile().as_text()
  always, anywhere = helpers.collective_reach(compiled, collective)
  assert anywhere
  for c in ("all-reduce(", "all-gather("):
    assert not helpers.collective_reach(compiled, c)[0]


# ---------------------------------------------------------------------------
# Properties.


def test_the_period_is_replicated_state_a_wrapper_may_rewrite():
  rt = _cached_runtime("fedavg")   # Period 3.
  state, metrics = _steps(rt, 1)
  assert int(metrics[0]["all_reduce_bytes"][0]) == 0
  assert int(state.opt_state.since_sync) == 1
  state = state._replace(opt_state=state.opt_state._replace(
      period=jnp.int32(1)))
  state, m = rt.step(state, helpers.worker_batches(1, NUM_WORKERS, 4))
  assert int(m["all_reduce_bytes"][0]) == PARAM_BYTES
  assert int(state.opt_state.since_sync) == 0
  _rows_close(state.params)


def test_a_worker_transform_sees_the_pseudo_gradient():
  """A sign-flipping worker (x100) drags FedAvg out of the honest models'
  range; SLSGD's trimmed mean (alpha 1) stays inside it."""
  n, period = 5, 2
  attack = alg.attacks.sign_flip(1, scale=100.0)
  honest = _local_models(PARAMS, 0, period, n)[1:]
  low = jax.tree.map(lambda *m: np.min(np.stack(m), 0), *honest)
  high = jax.tree.map(lambda *m: np.max(np.stack(m), 0), *honest)
  slack = 1e-6
  for tx, inside in [
      (dist.slsgd(LR, period, 1.0, num_trimmed=1, worker_transform=attack),
       True),
      (dist.fedavg(LR, period, worker_transform=attack), False)]:
    x = _steps(_runtime(tx, "simulate", n), period)[0].opt_state.global_params
    within = jax.tree.leaves(jax.tree.map(
        lambda v, lo, hi: np.all((v >= lo - slack) & (v <= hi + slack)),
        x, low, high))
    assert all(within) == inside


def test_inject_hyperparams_schedules_the_inner_rate_and_mu():
  static = ("period", "seed")
  schedule = optax.constant_schedule(LR)
  tx = optax.inject_hyperparams(dist.fedprox, static_args=static)(
      learning_rate=schedule, period=2, mu=0.5)
  state = _steps(_runtime(tx, "simulate", NUM_WORKERS), STEPS)[0]
  _close(state.params, _run("fedprox")[1].params)
  with pytest.raises(TypeError, match=r"period.*static_args"):
    optax.inject_hyperparams(dist.fedprox)(
        learning_rate=LR, period=2, mu=0.5).init(PARAMS)
  with pytest.raises(TypeError, match=r"seed.*static_args"):
    optax.inject_hyperparams(dist.fedprox, static_args="period")(
        learning_rate=LR, period=2, mu=0.5).init(PARAMS)
  # SLSGD's alpha shapes the replicated global model: refused, named.
  tx = optax.inject_hyperparams(
      dist.slsgd, static_args=static + ("num_trimmed",))(
          learning_rate=LR, period=2, alpha=0.5)
  rt = _runtime(tx, "simulate", NUM_WORKERS)
  with pytest.raises(ValueError, match="replicated.*global_params"):
    _steps(rt, 1)


def test_counters_and_shapes_of_the_state():
  _, state, _ = _run("fedavg")
  s = state.opt_state
  assert isinstance(s, dist.LocalSGDState)
  assert s.step.shape == s.period.shape == s.since_sync.shape == ()
  assert int(s.step) == STEPS and int(s.period) == 3
  assert int(s.num_syncs) == 2 and int(s.since_sync) == 0
  _rows_close(state.params)
  _close(dist.worker_slice(state.params, 2), s.global_params)


# ---------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("make,error,match", [
    (lambda: dist.local_sgd(optax.sgd(LR), 0), ValueError,
     "period must be an int >= 1; got 0"),
    (lambda: dist.local_sgd(optax.sgd(LR), -3), ValueError, "got -3"),
    (lambda: dist.local_sgd(optax.sgd(LR), 1.5), TypeError,
     "period must be a Python int >= 1; got 1.5"),
    (lambda: dist.local_sgd(optax.sgd(LR), True), TypeError, "got True"),
    (lambda: dist.local_sgd(optax.sgd(LR), "2"), TypeError, "got '2'"),
    (lambda: dist.local_sgd(optax.sgd(LR), jnp.int32(2)), TypeError,
     "static_args"),
    (lambda: dist.local_sgd(optax.sgd(LR), 2, state_policy="averge"),
     ValueError, r"state_policy must be one of \('keep', 'average', "
     r"'reset'\); got 'averge'"),
    (lambda: dist.local_sgd(optax.sgd(LR), 2, warmup_steps=-1), ValueError,
     "warmup_steps must be an int >= 0; got -1"),
    (lambda: dist.local_sgd(optax.sgd(LR), 2, warmup_steps=2.0), TypeError,
     "warmup_steps.*got 2.0"),
    (lambda: dist.local_sgd("sgd", 2), TypeError,
     "inner must be an optax GradientTransformation.*'sgd'"),
    (lambda: dist.local_sgd(optax.sgd(LR), 2, outer=0.7), TypeError,
     "outer must be.*0.7"),
    (lambda: dist.local_sgd(optax.sgd(LR), 2, compressor="qsgd"), TypeError,
     "compressor must be a Compressor.*'qsgd'"),
    (lambda: dist.local_sgd(optax.sgd(LR), 2, rule="mean"), TypeError,
     "rule must be an AggregationRule.*'mean'"),
    (lambda: dist.fedprox(LR, 2, -0.1), ValueError,
     "mu must be a finite number >= 0; got -0.1"),
    (lambda: dist.fedprox(LR, 2, float("nan")), ValueError, "got nan"),
    (lambda: dist.fedprox(LR, 2, "0.1"), TypeError, "mu.*'0.1'"),
    (lambda: dist.local_sgd(optax.sgd(LR), 2, -1.0), ValueError,
     "got -1.0"),
    (lambda: dist.slsgd(LR, 2, 0.0), ValueError,
     r"alpha must lie in \(0, 1\]; got 0.0"),
    (lambda: dist.slsgd(LR, 2, 1.5), ValueError, "got 1.5"),
    (lambda: dist.slsgd(LR, 2, -0.2), ValueError, "got -0.2"),
    (lambda: dist.slsgd(LR, 2, "1"), TypeError, "alpha.*'1'"),
    (lambda: dist.slsgd(LR, 2, 0.5, num_trimmed=-1), ValueError, "-1"),
    (lambda: alg.local.fedopt_server(0.1, kind="adamw"), ValueError,
     r"kind must be one of \('adagrad', 'adam', 'yogi'\); got 'adamw'"),
    (lambda: dist.fedadam(LR, 2, 0.01, tau=0.0), ValueError,
     r"tau must lie in \(0.0, inf\); got 0.0"),
    (lambda: dist.fedyogi(LR, 2, 0.01, b1=1.0), ValueError,
     r"b1 must lie in \[0.0, 1.0\); got 1.0"),
    (lambda: dist.fedadam(LR, 2, 0.01, initial_accumulator=-1.0),
     ValueError, "initial_accumulator.*got -1.0"),
])
def test_bad_input_is_refused_naming_the_value(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_too_many_trimmed_workers_for_the_runtime():
  with pytest.raises(ValueError, match=r"n=4"):
    _runtime(dist.slsgd(LR, 2, 0.5, num_trimmed=2), "simulate", 4).init(
        PARAMS)


def test_update_without_params_says_what_it_needs():
  tx = dist.fedavg(LR, 2)

  def step(g):
    return tx.update(g, tx.init(g))

  with pytest.raises(ValueError, match="needs params"):
    jax.vmap(step, axis_name=dist.WORKERS)(jnp.ones((2, 3)))


def test_unknown_extra_args_are_ignored():
  tx = dist.local_sgd(optax.adam(0.01), 1, state_policy="average",
                      rule=alg.aggregators.median())

  def step(w, g):
    state = tx.init(w)
    out, state = tx.update(g, state, w, value=jnp.sum(g), unknown_arg=3)
    return out, state.num_syncs

  w = jnp.zeros((3, 2))
  g = jnp.arange(6.0).reshape(3, 2)
  out, syncs = jax.jit(jax.vmap(step, axis_name=dist.WORKERS))(w, g)
  np.testing.assert_array_equal(syncs, 1)
  _rows_equal(out)   # Every worker moves to the same global model.
