"""Replicated state is held once, and a replicated condition skips work.

Every registered rule, attack and compressor runs 20 steps under both
runtimes; their replicated leaves carry no worker axis, agree on every
device, and the two runtimes agree.
"""

from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax import worker_axis
from tests import helpers

NUM_WORKERS = 16
NUM_STEPS = 20
F = 2

# One valid construction per registered name (a new entry needs a row).
RULES = {
    "adaptive_robust_clipping": dict(num_byzantine=F),
    "bulyan": dict(num_byzantine=F),
    "byzantine_sgd": dict(variance_bound=1.0, diameter=10.0,
                          num_steps=NUM_STEPS),
    "centered_clipping": dict(radius=1.0),
    "geometric_median": {},
    "krum": dict(num_byzantine=F),
    "majority_vote": {},
    "mean": {},
    "mean_around_median": dict(num_byzantine=F),
    "median": {},
    "minimum_diameter_averaging": dict(num_byzantine=F, max_subsets=200),
    "multi_krum": dict(num_byzantine=F),
    "phocas": dict(num_byzantine=F),
    "static_clipping": dict(max_norm=1.0),
    "trimmed_mean": dict(num_byzantine=F),
    "zeno": dict(num_suspicious=F, learning_rate=0.1, rho=1e-3),
}
ATTACKS = {name: dict(num_byzantine=F) for name in alg.attacks.ATTACKS}
COMPRESSORS = helpers.COMPRESSOR_EXAMPLES


def test_every_registered_transform_has_a_case():
  assert set(RULES) == set(alg.aggregators.AGGREGATORS)
  assert set(COMPRESSORS) == set(alg.compressors.COMPRESSORS)


def _tx(kind, name):
  if kind == "rule":
    rule = alg.aggregators.AGGREGATORS[name](**RULES[name])
    return dist.aggregate(rule)
  if kind == "attack":
    return optax.chain(alg.attacks.ATTACKS[name](**ATTACKS[name]),
                       dist.aggregate(alg.aggregators.median()))
  compressor = alg.compressors.COMPRESSORS[name](**COMPRESSORS[name])
  return dist.aggregate(alg.aggregators.mean(), compressor=compressor,
                        error_feedback=True)


# Rules whose state depends on the model need it held once.
READS_PARAMS = ("byzantine_sgd", "zeno")


def _step(tx, replicated_params=False):
  validation = helpers.worker_batches(99, 1, 16)
  validation = (validation[0][0], validation[1][0])
  return dist.data_parallel(
      helpers.mlp_loss, optax.chain(tx, optax.sgd(0.05)),
      extra_args=lambda state: {
          "value_fn": lambda p: helpers.mlp_loss(p, validation)},
      replicated_params=replicated_params)


def _run(runtime):
  state = runtime.init(helpers.mlp_params(jax.random.key(0)))
  for t in range(NUM_STEPS):
    state, _ = runtime.step(
        state, helpers.worker_batches(t, NUM_WORKERS, 4))
  return state


CASES = ([("rule", n) for n in sorted(RULES)]
         + [("attack", n) for n in sorted(ATTACKS)]
         + [("compressor", n) for n in sorted(COMPRESSORS)])


@pytest.mark.parametrize("kind,name", CASES)
def test_replicated_state_is_held_once_and_agrees_everywhere(kind, name):
  step = _step(_tx(kind, name), replicated_params=name in READS_PARAMS)
  mesh = jax.make_mesh((8,), (dist.WORKERS,))
  sim = _run(dist.simulate(step, NUM_WORKERS))
  shm = _run(dist.on_mesh(step, mesh, NUM_WORKERS))
  # The per-worker layout, as a plain vmap gives it to every leaf.
  stacked = jax.eval_shape(
      jax.vmap(step.init, in_axes=None, axis_size=NUM_WORKERS,
               axis_name=dist.WORKERS),
      helpers.mlp_params(jax.random.key(0)))
  mask = jax.tree.leaves(dist.replication_mask(stacked))
  assert any(mask), "TrainState.step at least is replicated"
  for leaf, ref, replicated in zip(jax.tree.leaves(shm),
                                   jax.tree.leaves(stacked), mask,
                                   strict=True):
    if replicated:
      assert leaf.shape == ref.shape[1:]
      assert leaf.sharding.spec == jax.sharding.PartitionSpec()
    else:
      assert leaf.shape == ref.shape
  for leaf, ref in zip(jax.tree.leaves(sim), jax.tree.leaves(shm)):
    assert leaf.shape == ref.shape
  for leaf, replicated in zip(jax.tree.leaves(shm), mask):
    if replicated:
      copies = [np.asarray(s.data) for s in leaf.addressable_shards]
      for copy in copies[1:]:
        np.testing.assert_array_equal(copy, copies[0])
  assert int(shm.step) == int(sim.step) == NUM_STEPS
  # A 16-bit message's mean is rounded once per sum, and the two runtimes
  # sum in different orders (and XLA widens 16-bit collectives on CPU).
  tol = (dict(rtol=0.1, atol=1e-4) if name in ("bfloat16", "float16")
         else dict(rtol=2e-5, atol=2e-6))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol),
               sim.params, shm.params)


def test_byzantine_sgd_state_grows_with_workers_once_not_squared():
  tx = dist.aggregate(alg.aggregators.byzantine_sgd(
      variance_bound=1.0, diameter=10.0, num_steps=NUM_STEPS))
  state = dist.simulate(_step(tx, True), NUM_WORKERS).init(
      helpers.mlp_params(jax.random.key(0)))
  agg = state.opt_state[0]
  d = sum(x.size for x in jax.tree.leaves(helpers.mlp_params(
      jax.random.key(0))))
  rule_bytes = sum(x.nbytes for x in jax.tree.leaves(agg.rule_state))
  # Held once: B_i for every worker and x_1 (float32), a few [n] vectors;
  # not one copy of all that per worker (n x n x d).
  assert rule_bytes == 4 * ((NUM_WORKERS + 1) * d + 2 * NUM_WORKERS + 2)


# A step whose only communication is a mean of the parameters every
# ``PERIOD`` steps (a local-SGD-like sync), on a replicated condition.
PERIOD = 4


def _periodic_step(on_sync=None):
  base = dist.data_parallel(helpers.mlp_loss, optax.sgd(0.1))

  def sync(params):
    if on_sync is not None:
      jax.debug.callback(on_sync)
    return dist.pmean(params)

  def update(state, batch):
    state, metrics = base.update(state, batch)
    params = lax.cond(state.step % PERIOD == 0, sync, lambda p: p,
                      state.params)
    return state._replace(params=params), metrics

  return dist.WorkerStep(base.init, update, base.axis_name)


@pytest.mark.parametrize("num_workers", [8, 16])
def test_a_skipped_collective_sits_inside_an_hlo_conditional(num_workers):
  rt = dist.on_mesh(_periodic_step(), jax.make_mesh((8,), (dist.WORKERS,)),
                    num_workers)
  state = rt.init(helpers.mlp_params(jax.random.key(0)))
  batch = helpers.worker_batches(0, num_workers, 4)
  hlo = rt.lower(state, batch).compile().as_text()
  comps, entry = helpers.hlo_computations(hlo)
  assert "conditional(" in comps[entry]
  always, anywhere = helpers.collective_reach(hlo, "all-reduce(")
  assert not always
  assert anywhere


@pytest.mark.parametrize("runtime", ["simulate", "on_mesh"])
def test_the_sync_branch_runs_only_on_sync_steps(runtime):
  calls = []
  step = _periodic_step(on_sync=lambda: calls.append(1))
  if runtime == "simulate":
    rt = dist.simulate(step, 8)
  else:
    rt = dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)), 8)
  state = rt.init(helpers.mlp_params(jax.random.key(0)))
  for t in range(2 * PERIOD + 1):
    state, _ = rt.step(state, helpers.worker_batches(t, 8, 4))
  jax.effects_barrier()
  # Steps 4 and 8 sync (the counter after the update); under simulate the
  # callback runs once per sync, on a mesh once per device and sync.
  per_sync = 1 if runtime == "simulate" else 8
  assert len(calls) == 2 * per_sync
  # Between syncs the workers' models drift apart; at a sync they agree.
  params = np.asarray(jax.tree.leaves(state.params)[0])
  assert not np.allclose(params[0], params[1])


class _LeakyState(NamedTuple):
  count: jax.Array


worker_axis.replicated_fields("count")(_LeakyState)


def _leaky():
  """Declares ``count`` replicated but adds the worker's index to it."""

  def init(params):
    del params
    return _LeakyState(jnp.zeros((), jnp.int32))

  def update(updates, state, params=None, **extra):
    del params, extra
    return updates, _LeakyState(state.count + dist.worker_index())

  return optax.GradientTransformationExtraArgs(init, update)


@pytest.mark.parametrize("num_workers", [8, 16])
@pytest.mark.parametrize("runtime", ["simulate", "on_mesh"])
def test_replicated_state_that_depends_on_a_worker_fails_loudly(
    runtime, num_workers):
  step = dist.data_parallel(helpers.mlp_loss,
                            optax.chain(_leaky(), optax.sgd(0.1)))
  if runtime == "simulate":
    rt = dist.simulate(step, num_workers)
  else:
    rt = dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)),
                      num_workers)
  state = rt.init(helpers.mlp_params(jax.random.key(0)))
  with pytest.raises(ValueError, match=r"replicated.*per-worker.*count"):
    rt.step(state, helpers.worker_batches(0, num_workers, 4))


def test_replicated_wrapper_holds_a_server_optimizer_once():
  tx = optax.chain(dist.aggregate(alg.aggregators.mean()),
                   dist.replicated(optax.adam(0.01)))
  rt = dist.simulate(dist.data_parallel(helpers.mlp_loss, tx), 8)
  state = rt.init(helpers.mlp_params(jax.random.key(0)))
  state, _ = rt.step(state, helpers.worker_batches(0, 8, 4))
  adam = state.opt_state[1].inner[0]
  for mu, p in zip(jax.tree.leaves(adam.mu),
                   jax.tree.leaves(helpers.mlp_params(jax.random.key(0)))):
    assert mu.shape == p.shape
  # Before aggregation the gradients differ per worker: refused.
  bad = optax.chain(dist.replicated(optax.adam(0.01)),
                    dist.aggregate(alg.aggregators.mean()))
  rt = dist.simulate(dist.data_parallel(helpers.mlp_loss, bad), 8)
  state = rt.init(helpers.mlp_params(jax.random.key(0)))
  with pytest.raises(ValueError, match="replicated"):
    rt.step(state, helpers.worker_batches(0, 8, 4))


def test_replication_mask_and_its_declaration():
  state = dist.TrainState(jnp.zeros((), jnp.int32), {"w": jnp.ones(2)},
                          (dist.AggregateState((), jnp.zeros(2),
                                               ()), optax.EmptyState()))
  mask = dist.replication_mask(state)
  assert mask.step is True and mask.params == {"w": False}
  assert mask.opt_state[0].key is True
  with pytest.raises(ValueError, match=r"\['nope'\].*_LeakyState"):
    worker_axis.replicated_fields("nope")(_LeakyState)
  with pytest.raises(TypeError, match="NamedTuple"):
    worker_axis.replicated_fields("x")(dict)


def test_worker_slice_leaves_replicated_leaves_alone():
  rt = dist.simulate(_periodic_step(), 4)
  state = rt.init(helpers.mlp_params(jax.random.key(0)))
  one = dist.worker_slice(state, 2)
  assert one.step.shape == ()
  for a, b in zip(jax.tree.leaves(one.params),
                  jax.tree.leaves(helpers.mlp_params(jax.random.key(0)))):
    assert a.shape == b.shape


def test_outside_a_runtime_the_error_names_the_runtimes():
  tx = dist.aggregate(alg.aggregators.mean())
  with pytest.raises(NameError, match=r"simulate or on_mesh.*jax\.vmap"):
    tx.init({"w": jnp.zeros(2)})


@pytest.mark.parametrize("batch,match", [
    ((jnp.ones((3, 4, 5)), jnp.ones((4, 4))), r"num_workers=4.*\[0\].*3"),
    ((jnp.ones(()), jnp.ones((4, 4))), r"\[0\].*\(\)"),
])
def test_a_batch_without_the_worker_axis_is_refused(batch, match):
  rt = dist.simulate(_periodic_step(), 4)
  state = rt.init(helpers.mlp_params(jax.random.key(0)))
  with pytest.raises(ValueError, match=match):
    rt.step(state, batch)


def test_empty_params_are_refused():
  rt = dist.simulate(_periodic_step(), 4)
  with pytest.raises(ValueError, match="no arrays"):
    rt.init({})


@pytest.mark.parametrize("name", READS_PARAMS)
def test_rules_that_read_the_model_refuse_per_worker_models(name):
  rt = dist.simulate(_step(_tx("rule", name)), 8)
  state = rt.init(helpers.mlp_params(jax.random.key(0)))
  with pytest.raises(ValueError, match=r"replicated.*rule_state"):
    rt.step(state, helpers.worker_batches(0, 8, 4))
