"""SparCML sparse all-reduce: exact sums, the delta switch, overflow, bytes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax import distributed as dist
from distoptax.algorithms import compressors
from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.distributed import runtime
from distoptax.distributed import sparse_allreduce as sar
from tests import helpers

ALGORITHMS = sorted(sar.ALGORITHMS)


def _reduce(idx, val, d, capacity=8, **kw):
  """``sparse_all_reduce`` under ``vmap``: (SparseSum, CommStats) stacked."""

  def step(i, v):
    rounds = communication.Rounds(comm_stats.init_comm_stats(capacity))
    out = sar.sparse_all_reduce(rounds, sar.SparseVector(i, v), d, **kw)
    return out, rounds.finish()

  return jax.jit(jax.vmap(step, axis_name=dist.WORKERS))(
      jnp.asarray(idx, jnp.int32), jnp.asarray(val, jnp.float32))


def _dense_sum(idx, val, d):
  total = np.zeros(d, np.float64)
  for i, v in zip(np.asarray(idx).ravel(), np.asarray(val).ravel()):
    if 0 <= i < d:
      total[i] += v
  return total


def _integer_messages(seed, n, c, d, unused=0):
  """Random int32 indices (repeats, unsorted, ``unused`` slots = d) and
  integer values."""
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, d, size=(n, c)).astype(np.int32)
  if unused:
    idx[:, -unused:] = d
  val = rng.integers(-8, 9, size=(n, c)).astype(np.float32)
  return idx, val


def _fullest_block(idx, val, d, n):
  return int(np.max(np.count_nonzero(
      _dense_sum(idx, val, d).reshape(n, -1), axis=1)))


def _rung(capacity, fullest):
  """The block size stage 3 sends: the smallest rung that holds the fullest
  block."""
  return min(s for s in sar._ladder(capacity) if s >= fullest)  # pylint: disable=protected-access


def _kinds(stats):
  return [(r.kind, r.bytes) for r in comm_stats.clock_rounds(stats)]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("c,unused", [(6, 0), (20, 3), (64, 10)])
def test_sum_equals_dense_sum(algorithm, c, unused):
  n, d = 8, 200
  idx, val = _integer_messages(c, n, c, d, unused)
  out, _ = _reduce(idx, val, d, algorithm=algorithm,
                   bucket_capacity=c, block_capacity=d)
  expected = _dense_sum(idx, val, d)
  for w in range(n):
    np.testing.assert_array_equal(out.total[w], expected)
  assert int(out.fill[0]) == np.count_nonzero(expected)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("make", [lambda: compressors.top_k(k=12),
                                  lambda: compressors.threshold(2.0)])
def test_compressor_messages_sum_to_the_decoded_stack_sum(algorithm, make):
  n, d = 8, 300
  compressor = make()
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.integers(-4, 5, size=(n, d)), jnp.float32)
  messages = jax.vmap(compressor.encode, in_axes=(None, 0))(
      jax.random.key(0), x)
  decoded = jax.vmap(compressor.decode)(messages)
  arrays = messages.arrays
  out, _ = _reduce(arrays["indices"], arrays["values"], d,
                   algorithm=algorithm)
  np.testing.assert_array_equal(out.total[0], np.sum(decoded, axis=0))


def _disjoint(n, d, per_worker, value=1.0):
  """Worker i holds indices i, i + n, ... (``per_worker`` of them)."""
  idx = (np.arange(per_worker)[None, :] * n
         + np.arange(n)[:, None]).astype(np.int32)
  assert idx.max() < d
  return idx, np.full(idx.shape, value, np.float32)


@pytest.mark.parametrize("delta", [0.25, 0.5, None])
def test_split_switches_to_dense_just_past_delta(delta):
  n, d = 4, 64
  limit = int((0.5 if delta is None else delta) * d)   # K <= delta d.
  for per_worker, fill in ((limit // n, limit), (limit // n + 1, limit + n)):
    idx, val = _disjoint(n, d, per_worker)
    out, stats = _reduce(idx, val, d, delta=delta,
                         bucket_capacity=per_worker, block_capacity=d // n)
    assert int(out.fill[0]) == fill
    assert bool(out.dense[0]) == (fill > limit)
    assert not bool(out.leftover[0])
    np.testing.assert_array_equal(out.total[0], _dense_sum(idx, val, d))
    last = _kinds(stats)[-1]
    assert last == ("all_gather", (d // n) * 4 if fill > limit
                    else _rung(d // n, _fullest_block(idx, val, d, n)) * 8)


def test_split_switch_reads_the_sum_not_the_messages():
  # Every worker sends the same 20 indices: 80 pairs, fill 20 <= 32.
  n, d = 4, 64
  idx = np.tile(np.arange(0, 40, 2, dtype=np.int32), (n, 1))
  out, _ = _reduce(idx, np.ones(idx.shape), d, bucket_capacity=20,
                   block_capacity=16)
  assert int(out.fill[0]) == 20 and not bool(out.dense[0])
  np.testing.assert_array_equal(out.total[0], _dense_sum(idx, np.ones(
      idx.shape), d))


@pytest.mark.parametrize("delta,dense_from", [(0.25, None), (0.2, 2),
                                              (0.1, 1), (1 / 64, 0)])
def test_recursive_double_switches_when_its_bound_passes_delta(
    delta, dense_from):
  n, d, c = 8, 64, 4
  idx, val = _integer_messages(0, n, c, d)
  out, stats = _reduce(idx, val, d, algorithm="recursive_double",
                       delta=delta)
  np.testing.assert_array_equal(out.total[0], _dense_sum(idx, val, d))
  sent = [b for _, b in _kinds(stats)]
  bounds = [c, 2 * c, 4 * c]   # Pairs a partial sum can hold per round.
  expected = [d * 4 if dense_from is not None and t >= dense_from
              else bounds[t] * 8 for t in range(3)]
  assert sent == expected
  assert bool(out.dense[0]) == (dense_from is not None)


def test_bucket_overflow_sends_the_surplus_in_a_leftover_round():
  n, d, c = 4, 64, 8
  idx, val = _integer_messages(3, n, c, d)
  idx[2, :5] = [1, 2, 3, 1, 9]        # Worker 2: five pairs in range 0.
  idx[1, :4] = [17, 18, 17, 17]       # Worker 1: four in range 1.
  out, stats = _reduce(idx, val, d, bucket_capacity=2, block_capacity=16)
  assert bool(out.leftover[0]) and not bool(out.dense[0])
  expected = _dense_sum(idx, val, d)
  for w in range(n):
    np.testing.assert_array_equal(out.total[w], expected)
  assert int(out.fill[0]) == np.count_nonzero(expected)
  kinds = _kinds(stats)
  assert kinds[:2] == [("reduce_scatter", n * 2 * 8), ("all_gather", 8)]
  assert kinds[3] == ("all_gather", (c - 2) * 8) and len(kinds) == 4


def test_no_leftover_round_without_overflow():
  n, d, c = 4, 64, 8
  idx, val = _disjoint(n, d, c // n)  # Two pairs per range per worker.
  idx = idx.reshape(n, -1)
  out, stats = _reduce(idx, val, d, bucket_capacity=2, block_capacity=16)
  assert not bool(out.leftover[0])
  np.testing.assert_array_equal(out.total[0], _dense_sum(idx, val, d))
  assert [k for k, _ in _kinds(stats)] == ["reduce_scatter", "all_gather",
                                           "all_gather"]


def test_block_overflow_sends_dense_blocks_without_dropping():
  n, d = 4, 64
  idx, val = _disjoint(n, d, 2)       # Fill 8 <= 32, blocks of 2.
  out, stats = _reduce(idx, val, d, bucket_capacity=2, block_capacity=1)
  assert bool(out.dense[0]) and not bool(out.leftover[0])
  np.testing.assert_array_equal(out.total[0], _dense_sum(idx, val, d))
  assert _kinds(stats)[-1] == ("all_gather", (d // n) * 4)


def test_stage_three_bytes_follow_the_fill():
  n, d = 4, 256
  sent = []
  for m in (2, 30):          # Fullest blocks of 8 and 64 entries.
    idx, val = _disjoint(n, d, m)
    out, stats = _reduce(idx, val, d, bucket_capacity=30, block_capacity=64)
    assert not bool(out.dense[0])
    np.testing.assert_array_equal(out.total[0], _dense_sum(idx, val, d))
    sent.append(_kinds(stats)[-1][1])
  assert sent == [_rung(64, 8) * 8, 64 * 8] and _rung(64, 8) < 64


def test_no_overflow_at_the_exact_capacity():
  n, d = 4, 64
  # Worker i holds one pair per range (index 16 j + i // 2): buckets of 1,
  # two workers share each index, so every block fills 2 entries.
  idx = (np.arange(n)[None, :] * (d // n)
         + np.arange(n)[:, None] // 2).astype(np.int32)
  val = np.arange(1, idx.size + 1, dtype=np.float32).reshape(idx.shape)
  out, stats = _reduce(idx, val, d, bucket_capacity=1, block_capacity=2)
  assert not bool(out.dense[0]) and not bool(out.leftover[0])
  np.testing.assert_array_equal(out.total[0], _dense_sum(idx, val, d))
  assert _kinds(stats) == [("reduce_scatter", n * 1 * 8),
                           ("all_gather", 8), ("all_gather", 2 * 8)]


def _worker_step(d, **kw):
  def init(params):
    return runtime.TrainState(jnp.zeros((), jnp.int32), params,
                              comm_stats.init_comm_stats(8))

  def update(state, batch):
    rounds = communication.Rounds(state.opt_state)
    out = sar.sparse_all_reduce(rounds, sar.SparseVector(*batch), d, **kw)
    state = state._replace(step=state.step + 1, opt_state=rounds.finish())
    return state, {"total": out.total, "dense": out.dense,
                   "leftover": out.leftover}

  return runtime.WorkerStep(init, update, dist.WORKERS)


def _run(rt, batch):
  state = rt.init(jnp.zeros((1,)))
  state, metrics = rt.step(state, batch)
  return state, jax.tree.map(np.asarray, metrics)


CASES = [
    ("split_allgather", {"bucket_capacity": 5}, 6),     # Sparse.
    ("split_allgather", {"bucket_capacity": 1}, 6),     # Leftover round.
    ("split_allgather", {"bucket_capacity": 40}, 40),   # Dense blocks.
    ("recursive_double", {"delta": 0.05}, 6),           # Dense from the 2nd round.
]


@pytest.mark.parametrize("algorithm,kw,c", CASES)
def test_simulate_equals_on_mesh(algorithm, kw, c):
  n, d = 16, 128   # Two workers per device (8 workers per device: bytes).
  idx, val = _integer_messages(n + c, n, c, d, unused=1)
  batch = (jnp.asarray(idx), jnp.asarray(val))
  step = _worker_step(d, algorithm=algorithm, **kw)
  sim_state, sim = _run(dist.simulate(step, n), batch)
  mesh = jax.make_mesh((8,), (dist.WORKERS,))
  mesh_state, on = _run(dist.on_mesh(step, mesh, n), batch)
  for key in sim:
    np.testing.assert_array_equal(sim[key], on[key])
  np.testing.assert_array_equal(sim["total"][0], _dense_sum(idx, val, d))
  assert (comm_stats.clock_rounds(sim_state)
          == comm_stats.clock_rounds(mesh_state))


def _mesh_program(d, batch, **kw):
  rt = dist.on_mesh(_worker_step(d, **kw),
                    jax.make_mesh((8,), (dist.WORKERS,)), 8)
  state = rt.init(jnp.zeros((1,)))
  text = rt.lower(state, batch).as_text()
  state, metrics = rt.step(state, batch)
  return text, _kinds(state), metrics


def test_split_stage_bytes_match_the_lowered_program():
  n, d, c = 8, 128, 6
  idx, val = _integer_messages(5, n, c, d)
  batch = (jnp.asarray(idx), jnp.asarray(val))
  c1 = 4
  text, rounds, metrics = _mesh_program(d, batch, bucket_capacity=c1,
                                        block_capacity=12)
  assert not metrics["dense"][0] and not metrics["leftover"][0]
  # Every stage that can run is in the program once; the recorded rounds
  # of this (sparse, no overflow) run are the ones of its branch.
  a2a = helpers.collective_operand_bytes(text, "all_to_all")
  gathers = helpers.collective_operand_bytes(text, "all_gather")
  rung = _rung(12, _fullest_block(idx, val, d, n))
  assert rounds == [("reduce_scatter", a2a), ("all_gather", 8),
                    ("all_gather", rung * 8)]
  assert a2a == n * c1 * 8
  ladder = sar._ladder(12)  # pylint: disable=protected-access
  assert len(ladder) > 3
  # Counts and flags, every sparse rung, dense blocks, the leftover round.
  assert gathers == (8 + sum(s * 8 for s in ladder) + (d // n) * 4
                     + (c - c1) * 8)
  assert helpers.collective_operand_bytes(text, "all_reduce") == 0


def test_recursive_double_stage_bytes_match_the_lowered_program():
  n, d, c = 8, 128, 6
  idx, val = _integer_messages(6, n, c, d)
  batch = (jnp.asarray(idx), jnp.asarray(val))
  text, rounds, _ = _mesh_program(d, batch, algorithm="recursive_double",
                                  delta=0.15)
  # Bounds 6, 12, 24 pairs; 24 > 0.15 * 128: the last round is dense.
  assert [b for _, b in rounds] == [6 * 8, 12 * 8, d * 4]
  assert [k for k, _ in rounds] == ["sendrecv"] * 3   # Priced alpha + B/beta.
  assert helpers.collective_operand_bytes(
      text, "collective_permute") == 6 * 8 + 12 * 8 + d * 4
  for op in ("all_to_all", "all_gather", "all_reduce"):
    assert helpers.collective_operand_bytes(text, op) == 0


@pytest.mark.parametrize("kw,error,match", [
    ({"delta": 0.0}, ValueError, "delta"),
    ({"delta": 1.5}, ValueError, "delta"),
    ({"delta": -0.1}, ValueError, "delta"),
    ({"delta": "half"}, TypeError, "delta"),
    ({"bucket_capacity": 0}, ValueError, "bucket_capacity"),
    ({"block_capacity": -3}, ValueError, "block_capacity"),
    ({"block_capacity": 2.0}, TypeError, "block_capacity"),
    ({"algorithm": "ring"}, ValueError, "ring"),
])
def test_bad_arguments(kw, error, match):
  idx, val = _integer_messages(0, 4, 3, 16)
  with pytest.raises(error, match=match):
    _reduce(idx, val, 16, **kw)


def test_bad_messages():
  idx, val = _integer_messages(0, 4, 3, 16)
  with pytest.raises(ValueError, match=r"\(3,\) and \(2,\)"):
    _reduce(idx, val[:, :2], 16)
  with pytest.raises(ValueError, match="dim"):
    _reduce(idx, val, 0)
  with pytest.raises(TypeError, match="int32"):
    jax.vmap(lambda i, v: sar.sparse_all_reduce(
        communication.Rounds(comm_stats.init_comm_stats(8)),
        sar.SparseVector(i, v), 16), axis_name=dist.WORKERS)(
            jnp.asarray(val), jnp.asarray(val))


def test_recursive_double_needs_a_power_of_two():
  idx, val = _integer_messages(0, 6, 3, 16)
  with pytest.raises(ValueError, match="power-of-two number of workers; "
                     "got 6"):
    _reduce(idx, val, 16, algorithm="recursive_double")


def test_too_few_round_slots_is_an_error():
  idx, val = _integer_messages(0, 4, 3, 16)
  with pytest.raises(ValueError, match="capacity"):
    _reduce(idx, val, 16, capacity=2)


def test_cost_model_crossovers():
  d, beta, alpha = 10**6, 1e10, 0.0
  for n in (8, 32):
    dense = sar.dense_all_reduce_seconds(d, n, bandwidth=beta, latency=alpha)
    # All-gather of pairs beats the dense ring all-reduce below k/d = 1/n.
    below, above = int(0.9 * d / n), int(1.1 * d / n)
    assert sar.all_gather_seconds(below, n, bandwidth=beta,
                                  latency=alpha) < dense
    assert sar.all_gather_seconds(above, n, bandwidth=beta,
                                  latency=alpha) > dense
    # DSAR never costs more than dense while k <= delta d = d / 2.
    for k in (10, 1000, 100_000, 450_000):
      assert sar.split_allgather_seconds(
          k, d, n, bandwidth=beta, latency=alpha) < dense
    assert sar.split_allgather_seconds(
        550_000, d, n, bandwidth=beta, latency=alpha) > dense
