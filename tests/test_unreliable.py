"""RPS over unreliable networks: p = 0, p = 1, drops, runtimes, bytes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.distributed import communication
from distoptax.distributed import unreliable
from tests import helpers

N = 8
STEPS = 3


def _train(tx, replicated=False):
  step = dist.data_parallel(helpers.mlp_loss, tx,
                            replicated_params=replicated)
  run = dist.simulate(step, N)
  state = run.init(helpers.mlp_params(jax.random.key(0)))
  for t in range(STEPS):
    state, _ = run.step(state, helpers.worker_batches(t, N, 4))
  return state


def test_no_drops_is_synchronous_data_parallel_sgd():
  rps = _train(optax.chain(optax.sgd(0.1), unreliable.rps(0.0)))
  sync = _train(optax.chain(dist.aggregate(alg.aggregators.mean()),
                            optax.sgd(0.1)), replicated=True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, np.broadcast_to(b, a.shape), rtol=1e-5, atol=1e-6),
               rps.params, sync.params)
  assert int(np.asarray(rps.opt_state[1].total_dropped).sum()) == 0


def test_all_dropped_is_independent_sgd_per_worker():
  rps = _train(optax.chain(optax.sgd(0.1), unreliable.rps(1.0)))
  for i in range(N):
    params = helpers.mlp_params(jax.random.key(0))
    for t in range(STEPS):
      x, y = helpers.worker_batches(t, N, 4)
      g = jax.grad(helpers.mlp_loss)(params, (x[i], y[i]))
      params = jax.tree.map(lambda p, d: p - 0.1 * d, params, g)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a[i], b, rtol=1e-5, atol=1e-6), rps.params, params)
  dropped = np.asarray(rps.opt_state[1].dropped)
  np.testing.assert_array_equal(dropped, 2 * (N - 1))   # Up and down.
  np.testing.assert_array_equal(np.asarray(rps.opt_state[1].delivered_bytes),
                                0)


def test_partial_drops_mix_blocks_as_specified():
  p = 0.4
  n, width = 4, 3
  x = jnp.asarray(np.random.default_rng(0).normal(size=(n, n * width)),
                  jnp.float32)
  u = jnp.asarray(np.random.default_rng(1).normal(size=(n, n * width)),
                  jnp.float32)
  tx = unreliable.rps(p, seed=3)

  def step(xi, ui):
    state = tx.init(xi)
    out, new = tx.update(ui, state, xi)
    return xi + out, new

  new_x, state = jax.vmap(step, axis_name=dist.WORKERS)(x, u)
  key, _ = communication.step_keys(dist.transform_key(3, unreliable.KEY_NAME))
  up, down = (np.asarray(m) for m in unreliable.drop_masks(key, n, p))
  v = np.asarray(x + u).reshape(n, n, width)
  avg = np.stack([(up[:, j, None] * v[:, j]).sum(0) / up[:, j].sum()
                  for j in range(n)])
  expected = np.where(down[:, :, None], avg[None], v).reshape(n, -1)
  np.testing.assert_allclose(new_x, expected, rtol=1e-5, atol=1e-6)
  others = ~np.eye(n, dtype=bool)
  lost = (~up & others).sum(1) + (~down & others).sum(0)
  np.testing.assert_array_equal(state.dropped, lost)
  assert 0 < lost.sum() < 2 * n * (n - 1)
  arrived = (up & others).sum(1) + (down & others).sum(0)
  np.testing.assert_array_equal(state.delivered_bytes, arrived * width * 4)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_probability_outside_the_unit_interval_errors(p):
  with pytest.raises(ValueError, match="drop_probability"):
    unreliable.rps(p)


def test_update_without_params_errors():
  tx = unreliable.rps(0.1)
  with pytest.raises(ValueError, match="needs each worker's params"):
    jax.vmap(lambda u: tx.update(u, tx.init(u)), axis_name=dist.WORKERS)(
        jnp.ones((2, 4)))


def test_simulate_equals_on_mesh_and_bytes_match_the_program():
  tx = optax.chain(optax.sgd(0.1), unreliable.rps(0.3))
  step = dist.data_parallel(helpers.mlp_loss, tx)
  s1, s2, hlo = helpers.simulate_matches_mesh(step, N, 3)
  (stats,) = dist.find_comm_stats(s2.opt_state)
  size = sum(x.size for x in jax.tree.leaves(s1.params)) // N   # 49 floats.
  width = -(-size // N)
  assert int(np.asarray(stats.all_gather_bytes)[0]) == 4 * width == (
      helpers.collective_operand_bytes(hlo, "all_gather"))
  assert dist.clock_rounds(s2) == [
      dist.Round("reduce_scatter", 4 * N * width),
      dist.Round("all_gather", 4 * width)]
  assert _reduce_scatter_operand_bytes(hlo) == 4 * N * width


def _reduce_scatter_operand_bytes(hlo_text):
  """Operand bytes of the float32 reduce-scatters of a StableHLO module.

  Like ``helpers.collective_operand_bytes``, whose all-reduce rule (the
  signature follows the reduction body) a reduce-scatter shares.
  """
  lines = hlo_text.splitlines()
  total = 0
  for i, line in enumerate(lines):
    if '"stablehlo.reduce_scatter"' in line:
      signature = next(l for l in lines[i:] if l.lstrip().startswith("}) :"))
      operands = signature.split(") -> ")[0].split(" : (")[-1]
      for dims in re.findall(r"tensor<((?:\d+x)*)f32>", operands):
        total += 4 * int(np.prod([int(d) for d in dims.split("x") if d]))
  assert total, "no reduce-scatter in the program"
  return total


def test_more_workers_than_devices():
  n = 16
  tx = optax.chain(optax.sgd(0.1), unreliable.rps(0.3))
  step = dist.data_parallel(helpers.mlp_loss, tx)
  s1, s2, _ = helpers.simulate_matches_mesh(step, n, 2)
  np.testing.assert_array_equal(s1.opt_state[1].dropped,
                                s2.opt_state[1].dropped)
