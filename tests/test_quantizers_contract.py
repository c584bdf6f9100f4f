"""Contract tests of every quantizing compressor and of the majority vote."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax.algorithms import aggregators
from distoptax.algorithms import compressors
from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.algorithms.compressors import casts
from distoptax.algorithms.compressors import packing
from distoptax.algorithms.compressors import zipml
from distoptax.distributed import comm_stats
from tests import helpers

NUM_WORKERS = 4


def _cast_bytes(d):
  return 2 * d


# name -> (factory, bytes of the message of one leaf of d coordinates)
COMPRESSORS = types.MappingProxyType({
    "float16": (casts.float16, _cast_bytes),
    "bfloat16": (casts.bfloat16, _cast_bytes),
    "qsgd_s1": (lambda: compressors.qsgd(1), lambda d: 4 + math.ceil(2 * d / 8)),
    "qsgd_s4_bucket16": (lambda: compressors.qsgd(4, bucket_size=16),
                         lambda d: 4 * max(1, math.ceil(d / 16))
                         + math.ceil(4 * d / 8)),
    "terngrad": (compressors.terngrad, lambda d: 4 + math.ceil(d / 5)),
    "terngrad_clipped": (lambda: compressors.terngrad(clip_stddevs=2.5),
                         lambda d: 4 + math.ceil(d / 5)),
    "natural": (compressors.natural, lambda d: d + math.ceil(d / 8)),
    "sign": (compressors.sign, lambda d: math.ceil(d / 8)),
    "scaled_sign": (compressors.scaled_sign, lambda d: 4 + math.ceil(d / 8)),
    "zipml_4bit": (lambda: zipml.stochastic_rounding(4),
                   lambda d: 8 + math.ceil(4 * d / 8)),
})


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {
      "w": jnp.asarray(rng.normal(size=(3, 50)), jnp.float32),
      "b": jnp.asarray(rng.normal(size=(7,)), jnp.float32),
      "h": jnp.asarray(rng.normal(size=(2, 700)), jnp.bfloat16),
      "empty": jnp.zeros((0, 4), jnp.float32),
  }


@pytest.fixture(params=sorted(COMPRESSORS))
def name(request):
  return request.param


def test_shapes_and_dtypes_are_static_and_preserved(name):
  c = COMPRESSORS[name][0]()
  tree = _tree(0)
  key = jax.random.key(0)
  message = jax.jit(c.encode)(key, tree)
  abstract = jax.eval_shape(c.encode, key, tree)
  assert jax.tree.structure(abstract) == jax.tree.structure(message)
  for a, m in zip(jax.tree.leaves(abstract), jax.tree.leaves(message)):
    assert a.shape == m.shape and a.dtype == m.dtype
  out = jax.jit(c.decode)(message)
  assert jax.tree.structure(out) == jax.tree.structure(tree)
  for o, x in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
    assert o.shape == x.shape and o.dtype == x.dtype
    assert bool(jnp.all(jnp.isfinite(o)))


def test_jits_once(name):
  c = COMPRESSORS[name][0]()
  traces = []

  @jax.jit
  def round_trip(key, tree):
    traces.append(1)
    message = c.encode(key, tree)
    bits = c.coded_bits(message) if c.coded_bits else jnp.zeros((), jnp.int32)
    return c.decode(message), bits

  for seed in range(3):
    round_trip(jax.random.key(seed), _tree(seed))
  assert len(traces) == 1


def test_message_bytes_are_the_documented_wire_format(name):
  factory, leaf_bytes = COMPRESSORS[name]
  tree = _tree(1)
  message = jax.eval_shape(factory().encode, jax.random.key(0), tree)
  expected = sum(leaf_bytes(x.size) for x in jax.tree.leaves(tree))
  assert comm_stats.tree_bytes(message) == expected


def _stacked_grads(seed):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(NUM_WORKERS, 5, 3)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(NUM_WORKERS, 3)), jnp.float32)}


def test_aggregate_is_the_mean_of_the_decoded_messages(name):
  c = COMPRESSORS[name][0]()
  # Summable casts also take the all-gather path; the others always do.
  for compressor in [c, c._replace(summable=False)] if c.summable else [c]:
    _check_aggregate(compressor)


def _check_aggregate(c):
  tx = dist.aggregate(alg.aggregators.mean(), compressor=c, seed=3)
  grads = _stacked_grads(4)
  state = jax.vmap(tx.init, axis_name=dist.WORKERS)(grads)
  out, new_state = jax.jit(jax.vmap(lambda g, s: tx.update(g, s),
                                    axis_name=dist.WORKERS))(grads, state)
  # The documented keys: fold_in(step_key, worker) with step_key the first
  # half of a split of the state's key.
  step_key = jax.random.split(jax.random.wrap_key_data(state.key[0]))[0]
  messages = [c.encode(jax.random.fold_in(step_key, i),
                       jax.tree.map(lambda g, i=i: g[i], grads))
              for i in range(NUM_WORKERS)]
  decoded = [c.decode(m) for m in messages]
  mean = jax.tree.map(lambda *d: sum(d) / NUM_WORKERS, *decoded)
  # The all-reduce of a cast adds the messages in the wire dtype.
  tolerance = 1e-6
  if c.summable:
    wire_dtype = jax.tree.leaves(messages[0])[0].dtype
    tolerance = 2 * NUM_WORKERS * float(jnp.finfo(wire_dtype).eps)
  for o, m in zip(jax.tree.leaves(out), jax.tree.leaves(mean)):
    np.testing.assert_allclose(o, np.broadcast_to(m, o.shape),
                               rtol=tolerance, atol=tolerance)
  comm = new_state.comm
  wire = comm_stats.tree_bytes(messages[0])
  if c.summable:
    assert int(comm.all_reduce_bytes[0]) == wire
  else:
    assert int(comm.all_gather_bytes[0]) == wire
  for i, m in enumerate(messages):
    coded = wire if c.coded_bits is None else (int(c.coded_bits(m)) + 7) // 8
    assert int(comm.coded_bytes[i]) == coded


def test_trains_under_simulate_with_four_workers(name):
  c = COMPRESSORS[name][0]()
  paths = [c, c._replace(summable=False)] if c.summable else [c]
  params = helpers.mlp_params(jax.random.key(0))
  grads_like = jax.tree.map(jnp.zeros_like, params)
  wire = comm_stats.tree_bytes(c.encode(jax.random.key(0), grads_like))
  for compressor in paths:
    tx = optax.chain(dist.aggregate(alg.aggregators.mean(),
                                    compressor=compressor),
                     optax.sgd(0.05))
    run = dist.simulate(dist.data_parallel(helpers.mlp_loss, tx),
                        NUM_WORKERS)
    state = run.init(params)
    losses = []
    for t in range(3):
      state, metrics = run.step(
          state, helpers.worker_batches(t, NUM_WORKERS, 8))
      losses.append(np.asarray(metrics["loss"]))
      kind = ("all_reduce_bytes" if compressor.summable
              else "all_gather_bytes")
      np.testing.assert_array_equal(metrics[kind], wire)
    assert np.all(np.isfinite(losses))
    helpers.assert_replicated(state.params)


def test_majority_vote_of_signs():
  grads = jnp.asarray([[0.5, -1.0, 2.0, -0.1],
                       [0.1, -3.0, -2.0, 0.2],
                       [-0.4, 1.0, 2.0, -0.3],
                       [0.2, -1.0, -2.0, 0.0]])
  tx = dist.aggregate(aggregators.majority_vote(),
                      compressor=compressors.sign())
  state = jax.vmap(tx.init, axis_name=dist.WORKERS)(grads)
  out, new_state = jax.vmap(lambda g, s: tx.update(g, s),
                            axis_name=dist.WORKERS)(grads, state)
  # Votes per coordinate: +3-1, -3+1, tie, tie (0.0 votes +1).
  np.testing.assert_array_equal(out, np.broadcast_to([1.0, -1.0, 0.0, 0.0],
                                                     (4, 4)))
  assert int(new_state.comm.all_gather_bytes[0]) == 1
  assert not aggregators.majority_vote().is_mean


def test_error_feedback_fixes_the_scaled_sign_on_a_quadratic():
  """EF-signSGD: workers hold |w - c_i|^2 / 2, the optimum is mean(c).

  Without error feedback the iterates stall at a biased point; with it they
  reach a neighbourhood of the optimum of size O(learning rate).
  """
  centres = jnp.asarray(np.random.default_rng(0).normal(
      size=(NUM_WORKERS, 6)), jnp.float32)

  def distance(error_feedback):
    opt = optax.chain(dist.aggregate(alg.aggregators.mean(),
                                     compressor=compressors.scaled_sign(),
                                     error_feedback=error_feedback),
                      optax.sgd(0.02))

    def step(w, state, centre):
      updates, state = opt.update(w - centre, state, w)
      return optax.apply_updates(w, updates), state

    w = jnp.zeros((NUM_WORKERS, 6))
    state = jax.vmap(opt.init, axis_name=dist.WORKERS)(w)
    mapped = jax.jit(jax.vmap(step, axis_name=dist.WORKERS))
    for _ in range(400):
      w, state = mapped(w, state, centres)
    helpers.assert_replicated(w)
    return float(jnp.linalg.norm(w[0] - centres.mean(0)))

  start = float(jnp.linalg.norm(centres.mean(0)))
  assert distance(True) < 0.1 * start
  assert distance(False) > 0.5 * start


def test_factories_reject_bad_arguments():
  for call, match in [
      (lambda: compressors.qsgd(0), "num_levels.*0"),
      (lambda: compressors.qsgd(2.0), "num_levels.*2.0"),
      (lambda: compressors.qsgd(2**23 + 1), "num_levels"),
      (lambda: compressors.qsgd(4, bucket_size=0), "bucket_size.*0"),
      (lambda: compressors.terngrad(clip_stddevs=0.0), "clip_stddevs.*0.0"),
      (lambda: zipml.stochastic_rounding(17), "num_bits.*17"),
      (lambda: zipml.double_sampling(jax.random.key(0), jnp.zeros(3), 2),
       "features"),
  ]:
    with pytest.raises(ValueError, match=match):
      call()


def test_wire_sizes_per_coordinate():
  d = 10_000
  x = {"x": jax.ShapeDtypeStruct((d,), jnp.float32)}
  bits = {n: 8 * comm_stats.tree_bytes(jax.eval_shape(
      COMPRESSORS[n][0]().encode, jax.random.key(0), x)) / d
          for n in ("qsgd_s1", "terngrad", "natural", "sign")}
  assert bits == pytest.approx({"qsgd_s1": 2.0032, "terngrad": 1.6032,
                                "natural": 9.0, "sign": 1.0})
  assert packing.bits_for(2 * 7 + 1) == 4  # QSGD s <= 7: 4-bit codes.
