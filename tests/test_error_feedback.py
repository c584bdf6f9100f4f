"""Error feedback in ``dist.aggregate`` with the biased compressors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.algorithms.compressors import randomk
from distoptax.algorithms.compressors import threelc
from distoptax.algorithms.compressors import topk
from tests import references

NUM_WORKERS = 4


def _quadratic(w, centre):
  return 0.5 * jnp.sum((w - centre) ** 2)


def _run(tx, centres, steps):
  runtime = dist.simulate(dist.data_parallel(_quadratic, tx), NUM_WORKERS)
  state = runtime.init(jnp.zeros(centres.shape[1]))
  for _ in range(steps):
    state, _ = runtime.step(state, centres)
  return state


@pytest.mark.parametrize("units", ["gradient", "update"])
def test_error_feedback_converges_where_plain_top_k_stalls(units):
  """Workers' f_i = |w - c_i|^2 / 2 with c_i[0] = +-10 and c_i[1:] = 1.

  The optimum of the mean is w* = (0, 1, ..., 1). Every worker's largest
  gradient entry is coordinate 0 (+-10 at w_0 = 0, averaging to 0), so
  top-1 without error feedback only ever sends coordinate 0 and
  coordinates 1..7 never move. With error feedback they accumulate in the
  memory until sent. The step size 1/(t + 8) is Mem-SGD's with shift d/k.
  """
  centres = np.ones((NUM_WORKERS, 8), np.float32)
  centres[:, 0] = [10.0, -10.0, 10.0, -10.0]
  optimum = centres.mean(0)
  lr = lambda t: 1.0 / (t + 8.0)
  distances = {}
  for ef in (False, True):
    agg = dist.aggregate(alg.aggregators.mean(),
                         compressor=topk.top_k(k=1), error_feedback=ef)
    if units == "gradient":   # memory of gradients, lr outside (GRACE)
      tx = optax.chain(agg, optax.sgd(lr))
    else:                     # memory of updates, lr folded in (EF-SGD)
      tx = optax.chain(optax.scale_by_learning_rate(lr), agg)
    state = _run(tx, jnp.asarray(centres), 600)
    w = np.asarray(state.params)
    if not ef:
      np.testing.assert_array_equal(w[:, 1:], 0.0)   # a real stall
    distances[ef] = float(np.linalg.norm(w[0] - optimum))
  assert distances[False] == pytest.approx(np.sqrt(7.0))
  assert distances[True] < 0.1


def test_memory_is_what_the_message_failed_to_carry():
  """e_1 = u_1 - C(u_1), e_2 = (u_2 + e_1) - C(u_2 + e_1), per worker."""
  rng = np.random.default_rng(0)
  c = topk.top_k(k=2)
  agg = dist.aggregate(alg.aggregators.mean(), compressor=c,
                       error_feedback=True)
  tree = lambda: {"a": rng.normal(size=(NUM_WORKERS, 6)),
                  "b": rng.normal(size=(NUM_WORKERS, 2, 3))}
  updates = [jax.tree.map(lambda u: jnp.asarray(u, jnp.float32), tree())
             for _ in range(2)]
  step = jax.jit(jax.vmap(agg.update, axis_name=dist.WORKERS))
  state = jax.jit(jax.vmap(agg.init, axis_name=dist.WORKERS))(updates[0])
  expected = jax.tree.map(lambda u: np.zeros(u.shape), updates[0])
  for u in updates:
    _, state = step(u, state)
    for name in ("a", "b"):
      p = np.asarray(u[name], np.float64) + expected[name]
      sent = np.zeros_like(p)
      for i in range(NUM_WORKERS):
        flat = p[i].ravel()
        keep = references.reference_top_k(flat.astype(np.float32), 2)
        sent[i].reshape(-1)[keep] = flat[keep]
      expected[name] = p - sent
      np.testing.assert_allclose(state.error[name], expected[name],
                                 rtol=1e-6, atol=1e-6)
  assert not np.allclose(expected["a"][0], expected["a"][1])  # per worker


@pytest.mark.parametrize("name", ["top_k", "threshold", "three_lc",
                                  "random_k_unscaled"])
def test_sent_plus_memory_equals_the_sum_of_inputs(name):
  """With the mean rule: sum_t out_t + mean_i e_i,T = sum_t mean_i u_i,t."""
  compressor = {
      "top_k": lambda: topk.top_k(fraction=0.25),
      "threshold": lambda: alg.compressors.threshold(0.8, capacity=3),
      "three_lc": lambda: threelc.three_lc(1.5),
      "random_k_unscaled": lambda: randomk.random_k(k=3, scaled=False),
  }[name]()
  agg = dist.aggregate(alg.aggregators.mean(), compressor=compressor,
                       error_feedback=True)
  rng = np.random.default_rng(1)
  inputs = jnp.asarray(rng.normal(size=(5, NUM_WORKERS, 12)), jnp.float32)
  step = jax.jit(jax.vmap(agg.update, axis_name=dist.WORKERS))
  state = jax.jit(jax.vmap(agg.init, axis_name=dist.WORKERS))(inputs[0])
  total = np.zeros(12)
  for u in inputs:
    out, state = step(u, state)
    total += np.asarray(out[0], np.float64)
  np.testing.assert_allclose(
      total + np.asarray(state.error, np.float64).mean(0),
      np.asarray(inputs, np.float64).sum(0).mean(0), rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(state.error)).max() > 0
