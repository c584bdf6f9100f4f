"""Contract tests run over every communicating transform in the registry."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist

NUM_WORKERS = 4


def _non_summable_identity():
  return alg.compressors.identity()._replace(summable=False)


TRANSFORMS = types.MappingProxyType({
    "aggregate_mean": lambda: dist.aggregate(alg.aggregators.mean()),
    "aggregate_mean_identity": lambda: dist.aggregate(
        alg.aggregators.mean(), compressor=alg.compressors.identity()),
    "aggregate_mean_all_gather": lambda: dist.aggregate(
        alg.aggregators.mean(), compressor=_non_summable_identity()),
    "powersgd_rank1": lambda: dist.powersgd(1),
    "powersgd_rank1_compress_all": lambda: dist.powersgd(
        1, min_compression_rate=0.0),
})


def _params():
  return {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}


def _worker_grads(seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=(NUM_WORKERS,) + p.shape),
                            jnp.float32), _params())


def _mapped(fn):
  return jax.jit(jax.vmap(fn, axis_name=dist.WORKERS))


@pytest.fixture(params=sorted(TRANSFORMS))
def tx(request):
  return TRANSFORMS[request.param]()


def _init(tx):
  stacked = jax.tree.map(lambda p: jnp.stack([p] * NUM_WORKERS), _params())
  return jax.vmap(tx.init, axis_name=dist.WORKERS)(stacked)


def test_jits_once_and_ignores_unknown_extra_args(tx):
  update = _mapped(lambda g, s, v: tx.update(g, s, None, value=v,
                                             unknown_arg=3))
  state = _init(tx)
  for seed in range(3):
    _, state = update(_worker_grads(seed), state, jnp.ones(NUM_WORKERS) * seed)
  assert update._cache_size() == 1


def test_state_structure_dtype_and_shape_are_stable(tx):
  update = _mapped(lambda g, s: tx.update(g, s))
  state0 = _init(tx)
  state = state0
  for seed in range(3):
    _, state = update(_worker_grads(seed), state)
  assert jax.tree.structure(state) == jax.tree.structure(state0)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state0)):
    assert a.shape == b.shape and a.dtype == b.dtype


# Lossy on purpose: the first step is a rank-1 approximation of the mean.
NOT_EXACT_MEAN = ("powersgd_rank1_compress_all",)


def test_output_is_identical_on_every_worker_and_is_the_mean(request, tx):
  grads = _worker_grads(7)
  out, _ = _mapped(lambda g, s: tx.update(g, s))(grads, _init(tx))
  exact = request.node.callspec.params["tx"] not in NOT_EXACT_MEAN
  for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
    np.testing.assert_array_equal(o, np.broadcast_to(o[:1], o.shape))
    if exact:
      np.testing.assert_allclose(o[0], np.mean(g, axis=0), rtol=1e-6,
                                 atol=1e-7)
    assert o.dtype == g.dtype


def test_converges_on_a_quadratic(tx):
  """Workers hold f_i(w) = |w - c_i|^2 / 2; the mean converges to mean(c)."""
  centres = _worker_grads(11)
  opt = optax.chain(tx, optax.sgd(0.2))

  def step(params, state, centre):
    grads = jax.tree.map(lambda p, c: p - c, params, centre)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = jax.tree.map(lambda p: jnp.stack([p] * NUM_WORKERS), _params())
  state = jax.vmap(opt.init, axis_name=dist.WORKERS)(params)
  mapped = _mapped(step)
  for _ in range(100):
    params, state = mapped(params, state, centres)
  for p, c in zip(jax.tree.leaves(params), jax.tree.leaves(centres)):
    np.testing.assert_allclose(p, np.broadcast_to(c.mean(0), p.shape),
                               atol=1e-5)


def test_outside_a_worker_axis_the_error_names_the_axis(tx):
  with pytest.raises(NameError, match="workers"):
    tx.init(_params())
  state = _init(tx)
  with pytest.raises(NameError, match="workers"):
    tx.update(_params(), jax.tree.map(lambda x: x[0], state))
