"""The communication core: rounds and their bytes, masks, keys, bf16 bytes."""

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.algorithms import attacks
from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.distributed.powersgd import powersgd
from tests import helpers

NUM_WORKERS = 4
FLOATS = 6   # Entries of the toy model.


@dist.replicated_fields("step")
class ToyState(NamedTuple):
  """State of the two-round toy protocol.

  Attributes:
    step: replicated step counter.
    comm: per-worker communication stats.
  """

  step: jax.Array
  comm: dist.CommStats


def two_round_protocol(period, calls=None):
  """A toy protocol of two rounds.

  Round 1 all-reduces every step; round 2 all-gathers when
  ``step % period == 0`` (a replicated condition). ``calls`` counts the
  executions of round 2's branch.
  """

  def init_fn(params):
    del params
    return ToyState(jnp.zeros((), jnp.int32),
                    comm_stats.init_comm_stats(capacity=2))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    rounds = dist.Rounds(state.comm)
    total = rounds.all_reduce(updates)

    def gathered(u):
      if calls is not None:
        jax.debug.callback(lambda: calls.append(1))
      return rounds.all_gather(u)

    rows = rounds.cond(state.step % period == 0, gathered,
                       lambda u: jnp.zeros((dist.num_workers(),) + u.shape,
                                           u.dtype), updates)
    out = total / dist.num_workers() + 0.0 * rows.sum(0)
    return out, ToyState(state.step + 1, rounds.finish())

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _loss(w, target):
  return 0.5 * jnp.sum((w - target) ** 2)


def _targets(n=NUM_WORKERS, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, FLOATS)),
                     jnp.float32)


def test_two_rounds_record_their_bytes_and_a_skipped_round_does_not_run():
  calls = []
  tx = optax.chain(two_round_protocol(period=2, calls=calls), optax.sgd(0.1))
  rt = dist.simulate(dist.data_parallel(_loss, tx), NUM_WORKERS)
  state = rt.init(jnp.zeros(FLOATS))
  total = 0
  for t in range(4):
    before = len(calls)
    state, metrics = rt.step(state, _targets())
    ran = t % 2 == 0
    assert (len(calls) > before) == ran
    (stats,) = dist.find_comm_stats(state.opt_state)
    np.testing.assert_array_equal(
        stats.rounds.kind, np.tile([0, 1 if ran else -1], (NUM_WORKERS, 1)))
    np.testing.assert_array_equal(
        stats.rounds.bytes,
        np.tile([4 * FLOATS, 4 * FLOATS if ran else 0], (NUM_WORKERS, 1)))
    np.testing.assert_array_equal(metrics["all_reduce_bytes"], 4 * FLOATS)
    np.testing.assert_array_equal(metrics["all_gather_bytes"],
                                  4 * FLOATS if ran else 0)
    expected = [dist.Round("all_reduce", 4 * FLOATS)]
    if ran:
      expected.append(dist.Round("all_gather", 4 * FLOATS))
    assert dist.clock_rounds(state) == expected
    total += 4 * FLOATS * (2 if ran else 1)
    assert dist.total_bytes(jax.tree.map(lambda a: a[0], stats)) == total


@pytest.mark.parametrize("num_workers", [8, 16])
def test_on_a_mesh_the_guarded_all_gather_sits_in_a_conditional(num_workers):
  tx = optax.chain(two_round_protocol(period=2), optax.sgd(0.1))
  step = dist.data_parallel(_loss, tx)
  mesh = jax.make_mesh((8,), (dist.WORKERS,))
  rt = dist.on_mesh(step, mesh, num_workers)
  state = rt.init(jnp.zeros(FLOATS))
  batch = _targets(num_workers)
  compiled = rt.lower(state, batch).compile().as_text()
  blocks, _ = helpers.hlo_computations(compiled)
  branches = set()
  for body in blocks.values():
    for line in body.splitlines():
      if " conditional(" in line:
        branches |= set(re.findall(
            r"(?:branch_computations=\{|, |true_computation=|"
            r"false_computation=)%([\w.\-]+)", line))
  assert branches
  with_gather = {k for k, v in blocks.items() if "all-gather(" in v}
  assert with_gather and with_gather <= branches
  sim = dist.simulate(step, num_workers)
  sim_state = sim.init(jnp.zeros(FLOATS))
  for _ in range(3):
    state, _ = rt.step(state, batch)
    sim_state, _ = sim.step(sim_state, batch)
  assert dist.clock_rounds(state) == dist.clock_rounds(sim_state) == [
      dist.Round("all_reduce", 4 * FLOATS), dist.Round("all_gather",
                                                        4 * FLOATS)]


def test_masked_round_records_its_participants():
  mask = jnp.array([True, False, True, True])
  x = _targets()

  def step(v, m, stats):
    rounds = dist.Rounds(stats)
    mean = rounds.mean(v, weight=m, normalizer="participants")
    rows = rounds.all_gather(v, mask=m)
    return mean, rows, rounds.finish()

  stats = jax.vmap(lambda _: comm_stats.init_comm_stats())(x)
  mean, rows, stats = jax.jit(jax.vmap(step, axis_name=dist.WORKERS))(
      x, mask, stats)
  np.testing.assert_allclose(mean[0], x[np.asarray(mask)].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(rows[0][1], 0.0)
  np.testing.assert_array_equal(stats.rounds.participated,
                                np.stack([mask, mask], axis=1))
  # The normaliser travels with the mean: 4 bytes more.
  np.testing.assert_array_equal(stats.rounds.bytes[:, 0], 4 * FLOATS + 4)
  rounds = dist.clock_rounds(stats)
  assert [(r.kind, r.bytes) for r in rounds] == [
      ("all_reduce", 4 * FLOATS + 4), ("all_gather", 4 * FLOATS)]
  for r in rounds:
    np.testing.assert_array_equal(r.participants, mask)
  # The clock waits only for the participants.
  clock = dist.Clock(dist.ComputeModel(NUM_WORKERS, 0.0),
                     dist.RingTopology(NUM_WORKERS, bandwidth=1e9,
                                       latency=1.0))
  start = clock.restore({**clock.init()._asdict(),
                         "time": [0.0, 50.0, 0.0, 0.0]})
  times = clock.communicate(start, rounds).time
  assert times[1] == 50.0 and times[0] == times[2] == times[3] < 50.0


@pytest.mark.parametrize("compressor", ["identity", "gather"])
def test_masked_exchange_is_the_mean_over_participants(compressor):
  c = alg.compressors.identity()
  if compressor == "gather":
    c = c._replace(summable=False)
  x = _targets()
  mask = jnp.array([1, 1, 0, 1])

  def step(v, m, stats):
    rounds = dist.Rounds(stats)
    out = dist.exchange(rounds, v, compressor=c, rule=alg.aggregators.mean(),
                        rule_state=(), key=jax.random.key(0), mask=m)
    return out.aggregate, rounds.finish()

  stats = jax.vmap(lambda _: comm_stats.init_comm_stats())(x)
  out, stats = jax.vmap(step, axis_name=dist.WORKERS)(x, mask, stats)
  np.testing.assert_allclose(out, np.broadcast_to(
      x[np.asarray(mask) == 1].mean(0), out.shape), rtol=1e-6)
  extra = 4 if compressor == "identity" else 1   # count / flag
  (round_,) = dist.clock_rounds(stats)
  assert round_.bytes == 4 * FLOATS + extra
  np.testing.assert_array_equal(round_.participants, mask == 1)


def test_nobody_participating_gives_zero_and_no_round():
  x = _targets()

  def step(v, stats):
    rounds = dist.Rounds(stats)
    out = dist.exchange(rounds, v, compressor=alg.compressors.identity(),
                        rule=alg.aggregators.mean(), rule_state=(),
                        key=jax.random.key(0), mask=False)
    return out.aggregate, rounds.finish()

  stats = jax.vmap(lambda _: comm_stats.init_comm_stats())(x)
  out, stats = jax.vmap(step, axis_name=dist.WORKERS)(x, stats)
  np.testing.assert_array_equal(out, 0.0)
  assert dist.clock_rounds(stats) == []


def test_traced_byte_counts_inside_jit():
  """A sparse message: 8 bytes per non-zero entry, counted inside jit."""
  x = jnp.array([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0],
                 [0.0, 0.0, 0.0]])

  def step(v, stats):
    rounds = dist.Rounds(stats)
    nonzero = jnp.count_nonzero(v).astype(jnp.int32)
    rounds.all_gather(v, wire_bytes=8 * nonzero, coded_bytes=nonzero)
    return rounds.finish()

  words = jnp.array([2**32 - 10, 3], jnp.uint32)
  stats = jax.vmap(lambda _: comm_stats.init_comm_stats()._replace(
      total_bytes=words))(x)
  stats = jax.jit(jax.vmap(step, axis_name=dist.WORKERS))(x, stats)
  sent = 8 * np.array([2, 1, 3, 0])
  np.testing.assert_array_equal(stats.all_gather_bytes, sent)
  np.testing.assert_array_equal(stats.rounds.bytes[:, 0], sent)
  np.testing.assert_array_equal(stats.coded_bytes, sent // 8)
  for i in range(NUM_WORKERS):   # 64-bit exact past the carry.
    assert dist.total_bytes(jax.tree.map(lambda a: a[i], stats)) == (
        3 * 2**32 + 2**32 - 10 + sent[i])
  assert dist.total_coded_bytes(stats) == np.mean(sent // 8)
  # The clock gets the largest message of the round.
  assert dist.clock_rounds(stats) == [dist.Round("all_gather", 24)]


def test_an_invalid_traced_count_is_reported_on_the_host():
  def step(v, stats):
    rounds = dist.Rounds(stats)
    rounds.all_reduce(v, wire_bytes=jnp.int32(4) - jnp.sum(v).astype(
        jnp.int32))
    return rounds.finish()

  x = jnp.array([[1.0], [9.0]])
  stats = jax.jit(jax.vmap(step, axis_name=dist.WORKERS))(
      x, jax.vmap(lambda _: comm_stats.init_comm_stats())(x))
  np.testing.assert_array_equal(stats.all_reduce_bytes, [3, -1])
  assert dist.total_bytes(jax.tree.map(lambda a: a[0], stats)) == 3
  with pytest.raises(ValueError, match="invalid"):
    dist.total_bytes(jax.tree.map(lambda a: a[1], stats))
  with pytest.raises(ValueError, match="invalid byte count"):
    dist.clock_rounds(stats)


def test_record_accepts_traced_counts():
  def step(n):
    stats = comm_stats.record(comm_stats.init_comm_stats(),
                              all_gather_bytes=n, coded_bytes=n // 2)
    return comm_stats.record(stats, all_reduce_bytes=n)

  stats = jax.jit(step)(jnp.int32(10))
  assert int(stats.all_reduce_bytes) == 10
  assert int(stats.all_gather_bytes) == 0
  assert dist.total_bytes(stats) == 20
  assert dist.total_coded_bytes(stats) == 15
  assert dist.clock_rounds(stats) == [dist.Round("all_reduce", 10)]


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(wire_bytes=-1), ValueError, r"wire_bytes must lie in \[0, 2\*\*31\); "
     r"got -1"),
    (dict(wire_bytes=2**31), ValueError, "got 2147483648"),
    (dict(wire_bytes=1.5), TypeError, "integer byte count; got 1.5"),
    (dict(wire_bytes=True), TypeError, "integer byte count; got True"),
    (dict(wire_bytes=jnp.ones(2, jnp.int32)), ValueError, r"shape \(2,\)"),
    (dict(coded_bytes=jnp.float32(3.0)), TypeError, "integer dtype; got "
     "float32"),
])
def test_bad_byte_counts_are_refused_at_trace_time(kwargs, error, match):
  def step(v):
    rounds = dist.Rounds(comm_stats.init_comm_stats())
    rounds.all_reduce(v, **kwargs)
    return rounds.finish()

  with pytest.raises(error, match=match):
    jax.vmap(step, axis_name=dist.WORKERS)(jnp.ones((2, 3)))


def test_static_step_total_past_2_31_is_refused():
  def step(v):
    rounds = dist.Rounds(comm_stats.init_comm_stats())
    rounds.all_reduce(v, wire_bytes=2**30)
    rounds.all_reduce(v, wire_bytes=2**30)
    return rounds.finish()

  with pytest.raises(ValueError, match="one step's wire bytes.*2147483648"):
    jax.vmap(step, axis_name=dist.WORKERS)(jnp.ones((2, 3)))


def test_more_rounds_than_the_capacity_is_a_clear_error():
  def step(v):
    rounds = dist.Rounds(comm_stats.init_comm_stats(capacity=1))
    rounds.all_reduce(v)
    rounds.all_reduce(v)
    return rounds.finish()

  with pytest.raises(ValueError, match=r"capacity=1.*capacity=2"):
    jax.vmap(step, axis_name=dist.WORKERS)(jnp.ones((2, 3)))


def test_misuse_of_rounds_and_exchange_is_refused():
  with pytest.raises(TypeError, match="CommStats; got dict"):
    dist.Rounds({})
  with pytest.raises(TypeError, match="no round record"):
    dist.Rounds(dist.CommStats(*[jnp.zeros(())] * 5))

  def twice(v):
    rounds = dist.Rounds(comm_stats.init_comm_stats())
    rounds.finish()
    return rounds.all_reduce(v)

  with pytest.raises(RuntimeError, match="finish"):
    jax.vmap(twice, axis_name=dist.WORKERS)(jnp.ones((2, 3)))

  def krum_masked(v):
    return dist.exchange(dist.Rounds(comm_stats.init_comm_stats()), v,
                         compressor=alg.compressors.identity(),
                         rule=alg.aggregators.krum(0), rule_state=(),
                         key=jax.random.key(0), mask=True)

  with pytest.raises(ValueError, match="a mask needs a mean rule"):
    jax.vmap(krum_masked, axis_name=dist.WORKERS)(jnp.ones((4, 3)))
  with pytest.raises(ValueError, match="normalizer.*'weights'"):
    dist.exchange(None, None, compressor=None, rule=None, rule_state=(),
                  key=None, normalizer="weights")


def test_each_transform_has_its_own_key_stream():
  """aggregate(seed=0) and gaussian(seed=0) draw from different keys.

  The aggregate's per-worker keys are read off its output (QSGD is
  stochastic), the attack's off its noise: both follow their documented
  rule (split the state's key, fold in the worker index), and the two key
  sets are disjoint.
  """
  x = _targets()
  qsgd = alg.compressors.qsgd(num_levels=2)
  agg = dist.aggregate(alg.aggregators.mean(), compressor=qsgd, seed=0)
  attack = attacks.gaussian(NUM_WORKERS - 1, std=1.0, seed=0)

  def run(tx):
    def step(v):
      state = tx.init(v)
      return tx.update(v, state)[0], state
    return jax.vmap(step, axis_name=dist.WORKERS)(x)

  agg_out, agg_state = run(agg)
  attack_out, attack_state = run(attack)

  def worker_keys(key_data):
    step_key = jax.random.split(jax.random.wrap_key_data(key_data))[0]
    return [jax.random.fold_in(step_key, i) for i in range(NUM_WORKERS)]

  agg_keys = worker_keys(agg_state.key[0])
  decoded = [qsgd.decode(qsgd.encode(k, x[i])) for i, k in
             enumerate(agg_keys)]
  np.testing.assert_allclose(agg_out[0], np.mean(decoded, 0), rtol=1e-6)
  attack_keys = worker_keys(jax.tree.leaves(attack_state)[0][0])
  for i, k in enumerate(attack_keys[:-1]):   # The Byzantine workers.
    noise = jax.random.normal(jax.random.split(k, 1)[0], (FLOATS,))
    np.testing.assert_allclose(attack_out[i], noise, rtol=1e-6)
  agg_bits = {tuple(np.asarray(jax.random.key_data(k))) for k in agg_keys}
  attack_bits = {tuple(np.asarray(jax.random.key_data(k)))
                 for k in attack_keys}
  assert len(agg_bits) == len(attack_bits) == NUM_WORKERS
  assert not agg_bits & attack_bits
  # Salted by name: a fixed stream per (seed, name), different names differ.
  a = dist.transform_key(0, "distoptax.distributed.aggregate")
  np.testing.assert_array_equal(agg_state.key[0], a)
  assert not np.array_equal(
      a, dist.transform_key(0, "distoptax.distributed.powersgd"))


def test_powersgd_as_a_compressor_says_it_goes_in_the_chain():
  with pytest.raises(TypeError, match="optax.chain.*powersgd"):
    dist.aggregate(alg.aggregators.mean(), compressor=powersgd(1))
  with pytest.raises(TypeError, match="Compressor.*got 'qsgd'"):
    dist.aggregate(alg.aggregators.mean(), compressor="qsgd")


@pytest.mark.parametrize("kind", ["cast", "params"])
def test_bfloat16_bytes_are_what_the_algorithm_hands_to_the_collective(kind):
  """2 bytes an entry, as in the lowered program (XLA's CPU backend widens
  the compiled all-reduce to float32; third_party_notes/runtime.md)."""
  if kind == "cast":
    tx = optax.chain(dist.aggregate(
        alg.aggregators.mean(), compressor=alg.compressors.bfloat16()),
                     optax.sgd(0.1))
    params, hlo, recorded = helpers.mesh_step_bytes(tx, "all_reduce_bytes")
  else:
    tx = optax.chain(powersgd(1), optax.sgd(0.1))
    params = {"w": jnp.zeros((8, 6), jnp.bfloat16),
              "b": jnp.zeros(6, jnp.bfloat16)}
    loss = lambda p, b: sum(_loss(p[k], b[k]).astype(jnp.float32)
                            for k in p)
    rt = dist.on_mesh(dist.data_parallel(loss, tx),
                      jax.make_mesh((8,), (dist.WORKERS,)), 8)
    state = rt.init(params)
    batch = jax.tree.map(lambda p: jnp.ones((8,) + p.shape, p.dtype), params)
    hlo = rt.lower(state, batch).as_text()
    state, _ = rt.step(state, batch)
    (stats,) = dist.find_comm_stats(state.opt_state)
    recorded = int(np.asarray(stats.all_reduce_bytes)[0])
  entries = (sum(x.size for x in jax.tree.leaves(params)) if kind == "cast"
             else 8 + 6 + 6)   # PowerSGD: P, Q and the bias.
  assert recorded == 2 * entries
  assert "bf16" in hlo
  assert helpers.collective_operand_bytes(hlo, "all_reduce") == recorded


# --------------------------------------------------------------------------
# Transport "sparse_allreduce": SparCML's sparse all-reduce in the exchange.
# --------------------------------------------------------------------------

SPARSE_COMPRESSORS = {
    "top_k": lambda: alg.compressors.top_k(k=5),
    "global_top_k": lambda: alg.compressors.global_top_k(k=9),
    "threshold": lambda: alg.compressors.threshold(2.0, capacity=12),
}


def _sparse_exchange_step(compressor, transport, **options):
  """A worker step: one exchange of ``batch`` (a pytree), its mean and
  rounds."""

  def init(params):
    return dist.TrainState(jnp.zeros((), jnp.int32), params,
                           comm_stats.init_comm_stats(4))

  def update(state, batch):
    rounds = dist.Rounds(state.opt_state)
    rule = alg.aggregators.mean()
    out = dist.exchange(
        rounds, batch, compressor=compressor, rule=rule,
        rule_state=rule.init(batch, dist.num_workers()),
        key=jax.random.key(3), transport=transport,
        transport_options=options or None)
    return (state._replace(step=state.step + 1, opt_state=rounds.finish()),
            out.aggregate)

  return dist.WorkerStep(init, update, dist.WORKERS)


def _integer_updates(n, seed=0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.integers(-6, 7, (n, 4, 8)), jnp.float32),
          "b": jnp.asarray(rng.integers(-6, 7, (n, 20)), jnp.float32)}


def _run_exchange(rt, batch):
  state = rt.init(jnp.zeros((1,)))
  state, mean = rt.step(state, batch)
  return jax.tree.map(np.asarray, mean), comm_stats.clock_rounds(
      state.opt_state)


@pytest.mark.parametrize("name", sorted(SPARSE_COMPRESSORS))
def test_sparse_transport_equals_the_all_gather_path(name):
  n = 16                       # Two workers per fake device on the mesh.
  batch = _integer_updates(n)
  compressor = SPARSE_COMPRESSORS[name]()
  mesh = jax.make_mesh((8,), (dist.WORKERS,))
  results = {}
  for transport in communication.TRANSPORTS:
    step = _sparse_exchange_step(compressor, transport)
    results[transport, "simulate"] = _run_exchange(dist.simulate(step, n),
                                                   batch)
    results[transport, "mesh"] = _run_exchange(dist.on_mesh(step, mesh, n),
                                               batch)
  reference, gathered = results["default", "simulate"]
  assert [r.kind for r in gathered] == ["all_gather"]
  # The reference mean by hand: decode every worker's message, average.
  messages = jax.vmap(compressor.encode, in_axes=(None, 0))(
      jax.random.key(0), batch)
  by_hand = jax.tree.map(lambda x: np.mean(np.asarray(x), axis=0),
                         jax.vmap(compressor.decode)(messages))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[0], b),
               reference, by_hand)
  for (transport, runtime), (mean, stages) in results.items():
    jax.tree.map(np.testing.assert_array_equal, mean, reference)
    if transport == "sparse_allreduce":
      assert [r.kind for r in stages] == ["reduce_scatter", "all_gather",
                                          "all_gather"], runtime
      assert stages == results["sparse_allreduce", "simulate"][1]
      # The all-to-all hands [n, c1] (int32 index, float32 value) pairs.
      assert stages[0].bytes % (n * 8) == 0 and stages[1].bytes == 8


def test_sparse_transport_options_reach_the_sparse_all_reduce():
  n = 8
  batch = _integer_updates(n, seed=1)
  compressor = alg.compressors.top_k(k=3)
  step = _sparse_exchange_step(compressor, "sparse_allreduce",
                               algorithm="recursive_double")
  mean, stages = _run_exchange(dist.simulate(step, n), batch)
  reference, _ = _run_exchange(
      dist.simulate(_sparse_exchange_step(compressor, "default"), n), batch)
  jax.tree.map(np.testing.assert_array_equal, mean, reference)
  # log2(8) swaps of the merged partial sums: 6, 12, 24 pairs (two leaves
  # of 3 pairs each), 8 bytes a pair.
  assert [(r.kind, r.bytes) for r in stages] == [
      ("sendrecv", 48), ("sendrecv", 96), ("sendrecv", 192)]


@pytest.mark.parametrize("kwargs,match", [
    (dict(transport="ring"), "unknown transport 'ring'"),
    (dict(transport="sparse_allreduce",
          rule=alg.aggregators.median()), "mean rule"),
    (dict(transport="sparse_allreduce", mask=True), "takes no mask"),
    (dict(transport="sparse_allreduce", compressor=alg.compressors.qsgd(4)),
     "indices, values"),
    (dict(transport="sparse_allreduce",
          compressor=alg.compressors.identity()), "indices, values"),
    (dict(transport_options={"delta": 0.3}), "takes no transport_options"),
    (dict(transport="sparse_allreduce",
          transport_options={"algorithm": "tree"}), "unknown algorithm"),
])
def test_bad_transports_are_refused(kwargs, match):
  args = dict(compressor=alg.compressors.top_k(k=2),
              rule=alg.aggregators.mean(), key=jax.random.key(0))
  args.update(kwargs)

  def step(u):
    rounds = dist.Rounds(comm_stats.init_comm_stats(4))
    state = args["rule"].init(u, dist.num_workers())
    return dist.exchange(rounds, u, rule_state=state, **args).aggregate

  with pytest.raises(ValueError, match=match):
    jax.vmap(step, axis_name=dist.WORKERS)(jnp.ones((4, 6)))


@pytest.mark.parametrize("runtime", ["simulate", "on_mesh"])
def test_aggregate_with_the_sparse_transport_equals_the_default(runtime):
  """dist.aggregate(transport="sparse_allreduce") trains like the default
  all-gather path on integer-valued gradients (exact sums)."""
  rng = np.random.default_rng(0)
  grads = jnp.asarray(rng.integers(-8, 9, (8, 64)).astype(np.float32))
  finals = {}
  for transport in ("default", "sparse_allreduce"):
    tx = optax.chain(
        dist.aggregate(alg.aggregators.mean(),
                       compressor=alg.compressors.top_k(k=6),
                       transport=transport),
        optax.sgd(1.0))

    def loss_fn(w, g):
      return jnp.vdot(w, g[0])

    step = dist.data_parallel(loss_fn, tx, replicated_params=True)
    rt = (dist.simulate(step, 8) if runtime == "simulate" else
          dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)), 8))
    state = rt.init(jnp.zeros(64))
    for _ in range(3):
      state, metrics = rt.step(state, grads[:, None, :])
    finals[transport] = np.asarray(state.params)
  np.testing.assert_array_equal(finals["default"], finals["sparse_allreduce"])


def test_aggregate_refuses_an_unknown_transport():
  with pytest.raises(ValueError, match="unknown transport 'mpi'"):
    dist.aggregate(alg.aggregators.mean(), transport="mpi")
