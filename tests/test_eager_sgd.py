"""eager-SGD: partial all-reduce semantics, schedule, runtimes, bytes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import distributed as dist
from distoptax.distributed import eager as esgd
from tests import helpers

N = 8


def _rounds(tx, grads):
  """Runs ``tx`` on the per-round gradients ``grads [T, n, d]``."""

  def run(g_seq):
    state = tx.init(g_seq[0])
    outs = []
    for g in g_seq:
      out, state = tx.update(g, state)
      outs.append(out)
    return jnp.stack(outs), state

  return jax.vmap(run, in_axes=1, out_axes=(1, 0),
                  axis_name=dist.WORKERS)(grads)


def test_everyone_ready_is_synchronous_sgd():
  g = jnp.asarray(np.random.default_rng(0).normal(size=(3, N, 5)),
                  jnp.float32)
  out, _ = _rounds(esgd.eager_sgd(np.ones((3, N), bool)), g)
  np.testing.assert_allclose(out[:, 0], g.mean(1), rtol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_k_of_p_ready_takes_k_over_p_of_the_step(k):
  g = jnp.ones((1, N, 4)) * jnp.arange(1.0, 5.0)
  ready = np.zeros((1, N), bool)
  ready[0, :k] = True
  out, _ = _rounds(esgd.eager_sgd(ready), g)
  np.testing.assert_array_equal(out[0, 0], k / N * np.arange(1.0, 5.0))


def test_a_missed_gradient_arrives_later_and_none_is_lost():
  rng = np.random.default_rng(1)
  g = jnp.asarray(rng.normal(size=(4, N, 3)), jnp.float32)
  ready = np.ones((4, N), bool)
  ready[0, 2] = ready[1, 2] = False   # Worker 2 busy for two rounds.
  out, state = _rounds(esgd.eager_sgd(ready), g)
  g = np.asarray(g)
  np.testing.assert_allclose(out[0, 0], (g[0].sum(0) - g[0, 2]) / N,
                             rtol=1e-5)
  np.testing.assert_allclose(out[1, 0], (g[1].sum(0) - g[1, 2]) / N,
                             rtol=1e-5)
  # Round 2 carries worker 2's round-0 gradient (stale), not a fresh one.
  np.testing.assert_allclose(
      out[2, 0], (g[2].sum(0) - g[2, 2] + g[0, 2]) / N, rtol=1e-5)
  # Nothing lost: every gradient a worker computed was applied once.
  computed = g.sum((0, 1)) - g[1, 2] - g[2, 2]
  np.testing.assert_allclose(out[:, 0].sum(0) * N, computed, rtol=1e-5)
  np.testing.assert_array_equal(state.sent, [4, 4, 2, 4, 4, 4, 4, 4])
  assert not np.any(state.busy)


def _clock(imbalance, seed=0):
  return dist.Clock(
      dist.ComputeModel(N, 1.0, imbalance=imbalance, seed=seed,
                        straggler=dist.InjectedDelay(0.25, 2.0)),
      dist.RingTopology(N, bandwidth=1e9, latency=1e-3))


def test_schedule_modes_limiter_and_reproducibility():
  clock = _clock(None)
  _, sync = esgd.eager_schedule(clock, 40, mode="sync", message_bytes=400)
  assert sync.ready.all()
  _, solo = esgd.eager_schedule(clock, 40, mode="solo", message_bytes=400,
                                limiter=4)
  _, major = esgd.eager_schedule(clock, 40, mode="majority",
                                 message_bytes=400, limiter=4)
  np.testing.assert_array_equal(solo.forced, (np.arange(40) + 1) % 4 == 0)
  assert solo.ready[solo.forced].all() and major.ready[major.forced].all()
  assert solo.end[-1] < major.end[-1] < sync.end[-1]
  assert solo.ready.mean() < major.ready.mean() < 1.0
  free = ~major.forced
  assert np.all(major.ready[free, major.initiator[free]])
  # From the seed: chunks give the same schedule, and again.
  state, first = esgd.eager_schedule(clock, 20, mode="majority",
                                     message_bytes=400, limiter=4)
  _, second = esgd.eager_schedule(clock, 20, mode="majority",
                                  message_bytes=400, limiter=4, state=state,
                                  first_round=20)
  np.testing.assert_array_equal(
      np.concatenate([first.ready, second.ready]), major.ready)
  np.testing.assert_allclose(np.concatenate([first.end, second.end]),
                             major.end)


def test_clear_errors():
  with pytest.raises(ValueError, match="unknown mode 'half'"):
    esgd.eager_schedule(_clock(None), 2, mode="half", message_bytes=0)
  with pytest.raises(ValueError, match=r"bool\[T, n\]"):
    esgd.eager_sgd(np.ones(N, bool))
  with pytest.raises(ValueError, match=r"shape \(T, 8\).*got shape \(2, 4\)"):
    _rounds(esgd.eager_sgd(np.ones((2, 4), bool)), jnp.ones((1, N, 2)))


def test_simulate_equals_on_mesh_and_bytes_match_the_program():
  _, plan = esgd.eager_schedule(_clock(None), 5, mode="majority",
                                message_bytes=196, limiter=3)
  tx = optax.chain(esgd.eager_sgd(plan.ready), optax.sgd(0.1))
  step = dist.data_parallel(helpers.mlp_loss, tx, replicated_params=True)
  s1, s2, hlo = helpers.simulate_matches_mesh(step, N, 5)
  (stats,) = dist.find_comm_stats(s2.opt_state)
  recorded = int(np.asarray(stats.all_reduce_bytes)[0])
  assert recorded == helpers.collective_operand_bytes(hlo, "all_reduce") == 196
  np.testing.assert_array_equal(np.asarray(s1.opt_state[0].sent),
                                plan.ready.sum(0))
