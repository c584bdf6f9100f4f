"""Equivalences of the worker-axis runtime: minibatch SGD, vmap vs shard_map."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from tests import helpers

NUM_STEPS = 4


def _tx(compressor=None):
  return optax.chain(
      dist.aggregate(alg.aggregators.mean(), compressor=compressor),
      optax.sgd(0.1, momentum=0.9))


def _gather_identity():
  """The identity compressor declared non-summable: forces all_gather."""
  c = alg.compressors.identity()
  return c._replace(summable=False)


def _run(runtime, params, seed, batch_size=6):
  state = runtime.init(params)
  metrics = None
  for t in range(NUM_STEPS):
    batch = helpers.worker_batches(seed + t, runtime.num_workers, batch_size)
    state, metrics = runtime.step(state, batch)
  return state, metrics


@pytest.mark.parametrize("num_workers", [1, 3, 8])
@pytest.mark.parametrize("compressor", [None, "gather"])
def test_mean_aggregation_equals_minibatch_sgd(num_workers, compressor):
  compressor = _gather_identity() if compressor == "gather" else compressor
  params = helpers.mlp_params(jax.random.key(0))
  runtime = dist.simulate(
      dist.data_parallel(helpers.mlp_loss, _tx(compressor)), num_workers)
  state, _ = _run(runtime, params, seed=1)

  # Single device: one optimizer over the union of the workers' batches.
  tx = optax.sgd(0.1, momentum=0.9)
  ref_params, opt_state = params, tx.init(params)
  for t in range(NUM_STEPS):
    x, y = helpers.worker_batches(1 + t, num_workers, 6)
    union = (x.reshape(-1, x.shape[-1]), y.reshape(-1))
    grads = jax.grad(helpers.mlp_loss)(ref_params, union)
    updates, opt_state = tx.update(grads, opt_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)

  for w in range(num_workers):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a[w], b, rtol=2e-5, atol=1e-6), state.params, ref_params)
  assert int(state.step) == NUM_STEPS


@pytest.mark.parametrize("num_workers", [8, 16])
@pytest.mark.parametrize("compressor", [None, "gather"])
def test_simulate_equals_on_mesh(num_workers, compressor):
  assert jax.device_count() == 8, "conftest must provide 8 CPU devices"
  compressor = _gather_identity() if compressor == "gather" else compressor
  step = dist.data_parallel(helpers.mlp_loss, _tx(compressor))
  params = helpers.mlp_params(jax.random.key(3))
  mesh = jax.make_mesh((8,), (dist.WORKERS,))
  sim_state, sim_metrics = _run(dist.simulate(step, num_workers), params, 5)
  mesh_state, mesh_metrics = _run(
      dist.on_mesh(step, mesh, num_workers), params, 5)
  assert len(mesh_state.params["w1"].sharding.device_set) == 8
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-6, atol=1e-7), sim_state, mesh_state)
  np.testing.assert_allclose(sim_metrics["loss"], mesh_metrics["loss"],
                             rtol=1e-6)


@pytest.mark.parametrize("runtime", ["simulate", "on_mesh"])
def test_params_and_opt_state_stay_identical_on_all_workers(runtime):
  step = dist.data_parallel(helpers.mlp_loss, _tx())
  if runtime == "simulate":
    rt = dist.simulate(step, 16)
  else:
    rt = dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)), 16)
  state, metrics = _run(rt, helpers.mlp_params(jax.random.key(0)), seed=2)
  helpers.assert_replicated(state.params)
  helpers.assert_replicated(state.opt_state)
  # The workers saw different data, so their losses differ.
  assert np.unique(np.asarray(metrics["loss"])).size == 16


def test_worker_index_and_all_gather_order_agree_across_runtimes():
  def per_worker(x):
    return dist.all_gather(x), dist.worker_index(), dist.num_workers()

  step = dist.WorkerStep(
      init=lambda p: p,
      update=lambda s, b: (s, dict(zip(("gathered", "index", "n"),
                                       per_worker(b)))),
      axis_name=dist.WORKERS)
  batch = jnp.arange(16.0) * 10
  _, sim = dist.simulate(step, 16).step(jnp.zeros(16), batch)
  mesh = jax.make_mesh((8,), (dist.WORKERS,))
  _, shm = dist.on_mesh(step, mesh, 16).step(jnp.zeros(16), batch)
  for out in (sim, shm):
    np.testing.assert_array_equal(out["index"], np.arange(16))
    np.testing.assert_array_equal(out["n"], np.full(16, 16))
    np.testing.assert_array_equal(out["gathered"],
                                  np.tile(np.asarray(batch), (16, 1)))


def test_on_mesh_rejects_workers_not_multiple_of_devices():
  step = dist.data_parallel(helpers.mlp_loss, _tx())
  mesh = jax.make_mesh((8,), (dist.WORKERS,))
  with pytest.raises(ValueError, match=r"num_workers=12.*multiple.*\(8\)"):
    dist.on_mesh(step, mesh, 12)


def test_on_mesh_rejects_mesh_without_worker_axis():
  step = dist.data_parallel(helpers.mlp_loss, _tx())
  mesh = jax.make_mesh((8,), ("data",))
  with pytest.raises(ValueError, match="'workers'.*'data'"):
    dist.on_mesh(step, mesh, 8)


@pytest.mark.parametrize("bad", [0, -2])
def test_simulate_rejects_bad_num_workers(bad):
  step = dist.data_parallel(helpers.mlp_loss, _tx())
  with pytest.raises(ValueError, match=f"num_workers must be >= 1; got {bad}"):
    dist.simulate(step, bad)
  with pytest.raises(TypeError, match="num_workers must be an int"):
    dist.simulate(step, 2.0)


@pytest.mark.parametrize("compressor,op,field", [
    (None, "all_reduce", "all_reduce_bytes"),
    ("gather", "all_gather", "all_gather_bytes"),
])
def test_wire_bytes_equal_bytes_in_the_lowered_program(compressor, op, field):
  compressor = _gather_identity() if compressor == "gather" else compressor
  params, hlo, recorded = helpers.mesh_step_bytes(_tx(compressor), field)
  param_bytes = sum(x.size * 4 for x in jax.tree.leaves(params))
  assert recorded == param_bytes
  assert helpers.collective_operand_bytes(hlo, op) == recorded


def test_cumulative_wire_bytes_carry_past_32_bits():
  near_carry = jnp.array([2**32 - 10, 5], jnp.uint32)
  stats = dist.CommStats(jnp.int32(0), jnp.int32(0), near_carry,
                         jnp.int32(0), near_carry)
  stats = dist.comm_stats.record(stats, all_reduce_bytes=25)
  assert dist.total_bytes(stats) == 5 * 2**32 + 2**32 - 10 + 25
  stats = dist.comm_stats.record(stats, all_reduce_bytes=25,
                                 coded_bytes=jnp.int32(7))
  assert dist.total_coded_bytes(stats) == 5 * 2**32 + 2**32 - 10 + 25 + 7
  with pytest.raises(ValueError, match="2\\*\\*31"):
    dist.comm_stats.record(stats, all_gather_bytes=2**31)


def test_gradient_at_takes_the_gradient_at_another_model():
  """The loss and gradient at a model the step chooses (here, zeros)."""
  params = helpers.mlp_params(jax.random.key(0))
  anchor = jax.tree.map(jnp.zeros_like, params)
  step = dist.data_parallel(helpers.mlp_loss, _tx(),
                            gradient_at=lambda state: anchor)
  state, metrics = dist.simulate(step, 4).step(
      dist.simulate(step, 4).init(params), helpers.worker_batches(0, 4, 6))
  x, y = helpers.worker_batches(0, 4, 6)
  for w in range(4):
    np.testing.assert_allclose(metrics["loss"][w],
                               helpers.mlp_loss(anchor, (x[w], y[w])),
                               rtol=1e-6)
  grads = [jax.grad(helpers.mlp_loss)(anchor, (x[w], y[w])) for w in range(4)]
  mean = jax.tree.map(lambda *g: sum(g) / 4, *grads)
  # sgd(0.1, momentum=0.9) on the first step: params - 0.1 * mean gradient.
  jax.tree.map(lambda p, p0, g: np.testing.assert_allclose(
      p[0], p0 - 0.1 * g, rtol=1e-5, atol=1e-6), state.params, params, mean)


@pytest.mark.parametrize("grads", [
    {"w": jnp.ones((4, 3)), "extra": jnp.ones((4, 2))},
    {"w": jnp.ones((4, 5))},
])
def test_aggregate_refuses_updates_unlike_the_params(grads):
  tx = dist.aggregate(alg.aggregators.median())
  params = {"w": jnp.zeros(3)}

  def step(g):
    return tx.update(g, tx.init(params), params)[0]

  with pytest.raises(ValueError, match=r"params \{'w': 'float32\[3\]'\}"):
    jax.vmap(step, axis_name=dist.WORKERS)(grads)


def _echo_input_tx():
  """A transform whose update is its extra argument ``shift`` (a scalar)."""

  def update(updates, state, params=None, shift=None, **_):
    return jax.tree.map(lambda u: jnp.full_like(u, shift), updates), state

  return optax.GradientTransformationExtraArgs(lambda p: (), update)


@pytest.mark.parametrize("runtime", ["simulate", "on_mesh"])
def test_host_inputs_reach_tx_update_once_for_every_worker(runtime):
  step = dist.data_parallel(helpers.mlp_loss, _echo_input_tx())
  if runtime == "simulate":
    rt = dist.simulate(step, 8)
  else:
    rt = dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)), 16)
  state = rt.init(helpers.mlp_params(jax.random.key(0)))
  batch = helpers.worker_batches(0, rt.num_workers, 2)
  state, _ = rt.step(state, batch, inputs={"shift": jnp.float32(0.5)})
  first = jax.tree.leaves(state.params)[0]
  start = jax.tree.leaves(helpers.mlp_params(jax.random.key(0)))[0]
  np.testing.assert_array_equal(first, np.broadcast_to(
      np.asarray(start) + 0.5, first.shape))
  lowered = rt.lower(state, batch, inputs={"shift": jnp.float32(0.5)})
  inputs_info = lowered.args_info[0][2]   # (state, batch, inputs)
  assert inputs_info["shift"].shape == ()   # Enters once, not per worker.


def test_host_inputs_are_checked():
  step = dist.data_parallel(helpers.mlp_loss, _echo_input_tx(),
                            extra_args=lambda s: {"shift": 1.0})
  rt = dist.simulate(step, 2)
  state = rt.init(helpers.mlp_params(jax.random.key(0)))
  batch = helpers.worker_batches(0, 2, 2)
  with pytest.raises(TypeError, match="inputs must be a dict.*0.5"):
    rt.step(state, batch, inputs=0.5)
  with pytest.raises(ValueError, match=r"host inputs \['shift'\] are also "
                     "given by extra_args"):
    rt.step(state, batch, inputs={"shift": jnp.float32(0.5)})
