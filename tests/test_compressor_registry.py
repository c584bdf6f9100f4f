"""Contract of every registered compressor inside ``dist.aggregate``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax import worker_axis
from distoptax.algorithms.compressors import base as compressor_base
from distoptax.distributed import comm_stats
from tests import helpers

EXAMPLES = helpers.COMPRESSOR_EXAMPLES


def _make(name):
  return alg.compressors.COMPRESSORS[name](**EXAMPLES[name])


def _gathering_mean():
  """The mean rule declared non-mean: forces the all_gather path."""
  return alg.aggregators.mean()._replace(is_mean=False)


def test_every_registered_compressor_has_an_example():
  assert set(EXAMPLES) == set(alg.compressors.COMPRESSORS)


def _paths(name):
  paths = ["all_gather"]
  if _make(name).summable:
    paths.append("all_reduce")
  return paths


CASES = [(name, path) for name in sorted(EXAMPLES) for path in _paths(name)]


@pytest.mark.parametrize("name,path", CASES)
def test_wire_bytes_are_the_bytes_the_collective_receives(name, path):
  compressor = _make(name)
  rule = alg.aggregators.mean() if path == "all_reduce" else _gathering_mean()
  tx = optax.chain(dist.aggregate(rule, compressor=compressor),
                   optax.sgd(0.1))
  params, hlo, recorded = helpers.mesh_step_bytes(tx, f"{path}_bytes")
  message = compressor.encode(jax.random.key(0), params)
  assert recorded == comm_stats.tree_bytes(message)
  assert helpers.collective_operand_bytes(hlo, path) == recorded


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_coded_bytes_follow_the_declared_code(name):
  compressor = _make(name)
  tx = dist.aggregate(_gathering_mean(), compressor=compressor)
  grads = jax.random.normal(jax.random.key(1), (4, 300))

  def step(g):
    state = tx.init(g)
    return tx.update(g, state)[1].comm

  comm = jax.vmap(step, axis_name=dist.WORKERS)(grads)
  if compressor.coded_bits is None:
    np.testing.assert_array_equal(comm.coded_bytes, comm.all_gather_bytes)
    return
  # The step key of aggregate(seed=0) (its salted stream) and each worker's
  # key from it.
  stream = worker_axis.transform_key(0, "distoptax.distributed.aggregate")
  step_key = jax.random.split(jax.random.wrap_key_data(stream))[0]
  for i in range(4):
    key = step_key if compressor.shared_key else jax.random.fold_in(
        step_key, i)
    bits = int(compressor.coded_bits(compressor.encode(key, grads[i])))
    assert int(comm.coded_bytes[i]) == -(-bits // 8)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_encode_decode_keep_structure_and_compile_once(name):
  compressor = _make(name)
  traces = []

  @jax.jit
  def round_trip(key, x):
    traces.append(1)
    return compressor.decode(compressor.encode(key, x))

  x = {"w": jax.random.normal(jax.random.key(2), (6, 40)),
       "b": jnp.linspace(-1.0, 1.0, 17)}
  out = round_trip(jax.random.key(0), x)
  round_trip(jax.random.key(1), jax.tree.map(lambda a: a * 2.0, x))
  assert len(traces) == 1
  assert jax.tree.structure(out) == jax.tree.structure(x)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(x)):
    assert a.shape == b.shape and a.dtype == b.dtype
  message = compressor.encode(jax.random.key(0), x)
  for leaf in jax.tree.leaves(message):
    assert isinstance(leaf, jax.Array)


def test_identity_equals_no_compression():
  grads = jax.random.normal(jax.random.key(3), (4, 50))

  def run(tx):
    def step(g):
      return tx.update(g, tx.init(g))[0]
    return jax.vmap(step, axis_name=dist.WORKERS)(grads)

  plain = run(dist.aggregate(alg.aggregators.mean()))
  for rule in (alg.aggregators.mean(), _gathering_mean()):
    compressed = run(dist.aggregate(
        rule, compressor=alg.compressors.identity()))
    np.testing.assert_allclose(compressed, plain, rtol=1e-6, atol=1e-7)


def test_leaf_messages_send_only_their_arrays():
  message = compressor_base.LeafMessage({"x": jnp.zeros(3, jnp.uint8)},
                                        (3,), jnp.float32)
  assert comm_stats.tree_bytes(message) == 3


NON_FLOAT_DTYPES = (jnp.int32, jnp.uint8, jnp.bool_, jnp.complex64)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_non_float_updates_are_a_type_error_naming_the_dtype(name):
  """Every compressor but the identity computes on real floats; an integer,
  boolean or complex leaf is a TypeError naming the compressor, the leaf
  and its dtype (not a silently rounded or garbage message)."""
  compressor = _make(name)
  floats = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
  for dtype in NON_FLOAT_DTYPES:
    updates = {"b": floats[0], "w": floats.astype(dtype)}
    encode = jax.jit(compressor.encode)
    if name == "identity":  # Sends the update as it is, any dtype.
      out = compressor.decode(encode(jax.random.key(0), updates))
      np.testing.assert_array_equal(out["w"], updates["w"])
      continue
    with pytest.raises(TypeError, match=(
        rf"{name} needs real floating-point updates; got dtype "
        rf"{jnp.dtype(dtype).name} at \['w'\]")):
      encode(jax.random.key(0), updates)
  # Every floating dtype is accepted.
  for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
    jax.jit(compressor.encode)(jax.random.key(0),
                               {"w": floats.astype(dtype)})
