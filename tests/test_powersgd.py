"""PowerSGD over the worker axis: equivalences, replication, bytes, contract."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.distributed.powersgd import powersgd
from distoptax.distributed.powersgd import PowerSGDState
from tests import helpers

NUM_WORKERS = 4


def _mapped(fn):
  return jax.jit(jax.vmap(fn, axis_name=dist.WORKERS))


def _stack(tree, n=NUM_WORKERS):
  return jax.tree.map(lambda p: jnp.stack([p] * n), tree)


def _init(tx, params, n=NUM_WORKERS):
  return jax.vmap(tx.init, axis_name=dist.WORKERS)(_stack(params, n))


def _worker_updates(seed, params, n=NUM_WORKERS, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=(n,) + p.shape), dtype), params)


def _is_masked(x):
  return isinstance(x, optax.MaskedNode)


def _ref_orth(a):
  """Thin QR with a non-negative R diagonal (what Gram-Schmidt returns)."""
  q, r = np.linalg.qr(a)
  return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def _ref_step(ms, q):
  """One PowerSGD step in float64 NumPy: output, Q-bar, P-hat."""
  ms = np.asarray(ms, np.float64)
  m_bar = ms.mean(0)
  p_hat = _ref_orth(m_bar @ _ref_orth(np.asarray(q, np.float64)))
  q_bar = np.mean([m.T @ p_hat for m in ms], axis=0)
  return p_hat @ q_bar.T, q_bar, p_hat


# Shapes covering Gram-Schmidt (r <= 2), QR (r > 2), r = n_rows, r = n_cols,
# a 3-D leaf, a vector and a scalar.
SHAPES = {"a": (3, 5), "b": (5, 4), "c": (2, 6), "d": (2, 3, 4), "v": (7,),
          "s": ()}


def _shape_params(shapes=SHAPES):
  return {k: jnp.zeros(s) for k, s in shapes.items()}


@pytest.mark.parametrize("error_against,matrix_view", [
    ("aggregate", "first_dim"), ("local", "last_dim")])
def test_full_rank_equals_the_mean(error_against, matrix_view):
  params = _shape_params()
  tx = powersgd(8, min_compression_rate=0.0, error_against=error_against,
                matrix_view=matrix_view)
  state = _init(tx, params)
  q = state.q
  assert all(not _is_masked(q[k]) for k in "abcd")
  assert _is_masked(q["v"]) and _is_masked(q["s"])
  update = _mapped(tx.update)
  for seed in range(3):
    grads = _worker_updates(seed, params)
    out, state = update(grads, state)
    for k in params:
      np.testing.assert_allclose(
          out[k], np.broadcast_to(np.mean(grads[k], 0), out[k].shape),
          rtol=2e-5, atol=2e-5, err_msg=k)
  if error_against == "local":
    # r = n_rows: P-hat spans every column, nothing is left over. With
    # r = n_cols < n_rows it spans the mean's columns only.
    for k in "abcd":
      n_rows, n_cols = state.error[k].shape[1:]
      if n_rows <= n_cols:
        np.testing.assert_allclose(state.error[k], 0.0, atol=2e-5)
      else:
        assert np.abs(np.asarray(state.error[k])).max() > 1e-2


@pytest.mark.parametrize("rank,error_against", [
    (1, "aggregate"), (2, "local"), (3, "aggregate"), (3, "local")])
def test_two_steps_match_a_numpy_reference(rank, error_against):
  """Output, warm-started Q and memories against a float64 re-implementation.

  Rank 1 and 2 orthogonalize by Gram-Schmidt, rank 3 by QR.
  """
  params = {"w": jnp.zeros((16, 12))}
  tx = powersgd(rank, error_against=error_against, matrix_view="first_dim")
  state = _init(tx, params)
  q = np.asarray(state.q["w"][0])
  errors = np.zeros((NUM_WORKERS, 16, 12))
  update = _mapped(tx.update)
  for seed in range(2):
    grads = _worker_updates(seed, params)
    ms = np.asarray(grads["w"], np.float64) + errors
    out, state = update(grads, state)
    ref_out, q_bar, p_hat = _ref_step(ms, q)
    np.testing.assert_allclose(out["w"], np.broadcast_to(ref_out, out[
        "w"].shape), rtol=1e-4, atol=1e-5)
    # Warm start: the state's Q is the Q-bar computed in this step.
    np.testing.assert_allclose(state.q["w"], np.broadcast_to(q_bar, state.q[
        "w"].shape), rtol=1e-4, atol=1e-5)
    if error_against == "aggregate":
      errors = ms - ref_out
    else:
      errors = ms - np.einsum("rk,wck->wrc", p_hat,
                              np.einsum("wrc,rk->wck", ms, p_hat))
    np.testing.assert_allclose(state.error["w"], errors, rtol=1e-4,
                               atol=1e-5)
    q = q_bar
  np.testing.assert_array_equal(state.step, np.full(NUM_WORKERS, 2))


def test_last_dim_view_is_first_dim_on_the_pytorch_layout():
  """A Flax kernel (h, w, in, out) is compressed as PyTorch's (out, in, h, w).

  The rows are the output features and the fan-in is flattened in the
  array's order, so the "last_dim" view of a Flax layout equals the
  "first_dim" view of the same kernel with its last axis moved first.
  """
  flax_params = {"conv": jnp.zeros((3, 3, 4, 6)), "dense": jnp.zeros((10, 8))}
  to_torch = lambda t: jax.tree.map(lambda x: jnp.moveaxis(x, -1, 0), t)
  last = powersgd(1, matrix_view="last_dim")
  first = powersgd(1, matrix_view="first_dim")
  last_state, first_state = _init(last, flax_params), _init(
      first, to_torch(flax_params))
  last_update, first_update = _mapped(last.update), _mapped(first.update)
  for seed in range(2):
    grads = _worker_updates(seed, flax_params)
    last_out, last_state = last_update(grads, last_state)
    first_out, first_state = first_update(
        jax.tree.map(lambda x: jnp.moveaxis(x, -1, 1), grads), first_state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, jnp.moveaxis(b, 1, -1), rtol=1e-5, atol=1e-6), last_out, first_out)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               (last_state.q, last_state.error),
               (first_state.q, first_state.error))


def test_outputs_and_q_are_replicated_while_errors_differ():
  params = helpers.mlp_params(jax.random.key(0), d_in=6, hidden=9)
  tx = powersgd(1)
  state = _init(tx, params)
  update = _mapped(tx.update)
  for seed in range(3):
    out, state = update(_worker_updates(seed, params), state)
    helpers.assert_replicated(out)
    helpers.assert_replicated((state.q, state.step, state.comm))
  error = np.asarray(state.error["w1"])
  assert np.unique(error.reshape(NUM_WORKERS, -1), axis=0).shape[0] == (
      NUM_WORKERS)


def test_cold_start_draws_a_fresh_shared_q_every_step():
  params = {"w": jnp.zeros((8, 6))}
  warm, cold = powersgd(1), powersgd(1, warm_start=False)
  warm_state, cold_state = _init(warm, params), _init(cold, params)
  np.testing.assert_array_equal(warm_state.q["w"], cold_state.q["w"])
  qs = [np.asarray(cold_state.q["w"])]
  warm_update, cold_update = _mapped(warm.update), _mapped(cold.update)
  for seed in range(2):
    grads = _worker_updates(seed, params)
    warm_out, warm_state = warm_update(grads, warm_state)
    cold_out, cold_state = cold_update(grads, cold_state)
    if seed == 0:  # The same first projection.
      np.testing.assert_allclose(warm_out["w"], cold_out["w"], rtol=1e-6)
    helpers.assert_replicated(cold_state.q)
    qs.append(np.asarray(cold_state.q["w"]))
  # Fresh draws, not the Q-bar of the step.
  assert not np.allclose(qs[1], warm_state.q["w"])
  assert not np.allclose(qs[0], qs[1]) and not np.allclose(qs[1], qs[2])


@pytest.mark.parametrize("warm_start", [True, False])
def test_warm_start_is_power_iteration(warm_start):
  """A fixed mean matrix: warm start converges to its best rank-1 part."""
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(10, 10)))
  v, _ = np.linalg.qr(rng.normal(size=(8, 8)))
  sigma = np.array([3.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.0, 0.0])
  m = u[:, :8] @ np.diag(sigma) @ v.T
  best = sigma[0] * np.outer(u[:, 0], v[:, 0])
  # Workers hold different matrices with mean m.
  noise = rng.normal(size=(NUM_WORKERS, 10, 8))
  grads = {"w": jnp.asarray(m + noise - noise.mean(0), jnp.float32)}
  tx = powersgd(1, error_feedback=False, warm_start=warm_start)
  state = _init(tx, {"w": jnp.zeros((10, 8))})
  update = _mapped(tx.update)
  for _ in range(15):
    out, state = update(grads, state)
  gap = np.linalg.norm(np.asarray(out["w"][0]) - best)
  if warm_start:
    assert gap < 1e-4
  else:
    assert gap > 0.1


def test_error_conventions_lose_nothing_and_give_the_same_outputs():
  """mean(new memories) = mean(compensated updates) - output, every step.

  So the two conventions keep different memories per worker but the same
  mean memory, and give the same outputs.
  """
  params = helpers.mlp_params(jax.random.key(1), d_in=8, hidden=10)
  txs = [powersgd(1, error_against=e, matrix_view="first_dim")
         for e in ("aggregate", "local")]
  states = [_init(tx, params) for tx in txs]
  updates = [_mapped(tx.update) for tx in txs]
  for seed in range(4):
    grads = _worker_updates(seed, params)
    outs = []
    for i, (update, state) in enumerate(zip(updates, states)):
      compensated = np.asarray(grads["w1"]) + np.asarray(state.error["w1"])
      out, states[i] = update(grads, state)
      outs.append(out)
      np.testing.assert_allclose(
          np.mean(states[i].error["w1"], 0),
          compensated.mean(0) - np.asarray(out["w1"][0]), atol=2e-6)
      # The projection never expands the mean.
      assert (np.linalg.norm(out["w1"][0])
              <= np.linalg.norm(compensated.mean(0)) + 1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                         atol=1e-5), *outs)
  errors = [np.asarray(state.error["w1"]) for state in states]
  assert not np.allclose(errors[0], errors[1], atol=1e-2)
  for state in states:
    assert _is_masked(state.error["b1"]) and _is_masked(state.error["w2"])


def _quadratic_loss(params, centres):
  return sum(0.5 * jnp.sum((p - c) ** 2) for p, c in
             zip(jax.tree.leaves(params), jax.tree.leaves(centres)))


BYTES_SHAPES = {"w": (6, 10), "conv": (4, 3, 5), "b": (10,), "small": (2, 3)}


@pytest.mark.parametrize("matrix_view,floats", [
    # w: P 6 + Q 10; conv as 4 x 15: 4 + 15 (as 5 x 12: 5 + 12);
    # b and small ((2 + 3) * 2 >= 6) uncompressed: 10 + 6.
    ("first_dim", 6 + 10 + 4 + 15 + 10 + 6),
    ("last_dim", 6 + 10 + 12 + 5 + 10 + 6),
])
def test_wire_bytes_equal_factor_bytes_and_the_lowered_program(matrix_view,
                                                               floats):
  tx = optax.chain(powersgd(1, matrix_view=matrix_view), optax.sgd(0.1))
  step = dist.data_parallel(_quadratic_loss, tx)
  rt = dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)), 8)
  params = _shape_params(BYTES_SHAPES)
  state = rt.init(params)
  batch = _worker_updates(0, params, n=8)
  hlo = rt.lower(state, batch).as_text()
  for _ in range(2):
    state, metrics = rt.step(state, batch)
  (stats,) = dist.find_comm_stats(state.opt_state)
  np.testing.assert_array_equal(stats.all_reduce_bytes, np.full(8, 4 * floats))
  np.testing.assert_array_equal(stats.all_gather_bytes, np.zeros(8))
  np.testing.assert_array_equal(metrics["all_reduce_bytes"],
                                np.full(8, 4 * floats))
  assert dist.total_bytes(stats) == 2 * 4 * floats
  assert helpers.collective_operand_bytes(hlo, "all_reduce") == 4 * floats
  assert helpers.collective_operand_bytes(hlo, "all_gather") == 0


@pytest.mark.parametrize("rate,compressed", [(2.0, False), (1.9, True)])
def test_compresses_only_when_pytorchs_rule_says_so(rate, compressed):
  # (4 + 4) * 1 * rate < 16 holds for rate 1.9, not for rate 2.
  params = {"w": jnp.zeros((4, 4)), "v": jnp.zeros(100)}
  tx = powersgd(1, min_compression_rate=rate)
  state = _init(tx, params)
  assert _is_masked(state.q["w"]) != compressed
  assert _is_masked(state.q["v"])  # Vectors: never.
  _, state = _mapped(tx.update)(_worker_updates(0, params), state)
  expected = 4 * ((4 + 4) if compressed else 16) + 4 * 100
  np.testing.assert_array_equal(state.comm.all_reduce_bytes,
                                np.full(NUM_WORKERS, expected))


def test_start_iter_runs_the_plain_mean_first():
  params = {"w": jnp.zeros((8, 6)), "b": jnp.zeros(6)}
  tx = powersgd(1, start_iter=2)
  state0 = _init(tx, params)
  state = state0
  update = _mapped(tx.update)
  for seed in range(3):
    grads = _worker_updates(seed, params)
    out, state = update(grads, state)
    if seed < 2:
      for k in params:
        np.testing.assert_allclose(out[k][0], np.mean(grads[k], 0),
                                   rtol=1e-6, atol=1e-7)
      np.testing.assert_array_equal(state.q["w"], state0.q["w"])
      np.testing.assert_array_equal(state.error["w"], 0.0)
      np.testing.assert_array_equal(state.comm.all_reduce_bytes, 4 * 54)
    else:
      assert not np.allclose(out["w"][0], np.mean(grads["w"], 0), atol=1e-3)
      assert np.abs(np.asarray(state.error["w"])).max() > 1e-3
      np.testing.assert_array_equal(state.comm.all_reduce_bytes,
                                    4 * (8 + 6 + 6))
  assert dist.total_bytes(state.comm) == 4 * (2 * 54 + 20)


def test_rounds_are_recorded_one_in_the_warm_up_then_p_and_q():
  """start_iter=1: the plain all-reduce, then the P round and the Q round."""
  params = {"w": jnp.zeros((8, 6)), "b": jnp.zeros(6)}
  tx = optax.chain(powersgd(1, start_iter=1), optax.sgd(0.1))
  rt = dist.simulate(dist.data_parallel(_quadratic_loss, tx), NUM_WORKERS)
  state = rt.init(params)
  expected = [
      [dist.Round("all_reduce", 4 * 54)],
      # "last_dim" view 6 x 8: P (6) with the bias (6), then Q (8).
      [dist.Round("all_reduce", 4 * (6 + 6)), dist.Round("all_reduce", 4 * 8)],
  ]
  for rounds in expected:
    state, _ = rt.step(state, _worker_updates(0, params))
    assert dist.clock_rounds(state) == rounds
  (stats,) = dist.find_comm_stats(state.opt_state)
  assert dist.total_bytes(jax.tree.map(lambda a: a[0], stats)) == 4 * (
      54 + 20)


def test_zero_updates_give_zero_not_nan():
  params = {"w": jnp.zeros((16, 12))}
  zeros = _stack(params)
  for rank in (1, 3):  # Gram-Schmidt and QR.
    tx = powersgd(rank)
    state = _init(tx, params)
    update = _mapped(tx.update)
    for _ in range(2):
      out, state = update(zeros, state)
      for leaf in jax.tree.leaves((out, state)):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
      for leaf in jax.tree.leaves(out):
        np.testing.assert_array_equal(leaf, 0.0)


def test_bfloat16_updates_travel_in_bfloat16():
  params = {"w": jnp.zeros((8, 6), jnp.bfloat16), "b": jnp.zeros(6,
                                                                 jnp.bfloat16)}
  tx = powersgd(1)
  state = _init(tx, params)
  grads = _worker_updates(0, params, dtype=jnp.bfloat16)
  out, state = _mapped(tx.update)(grads, state)
  assert out["w"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.bfloat16
  assert state.error["w"].dtype == jnp.float32
  assert state.q["w"].dtype == jnp.float32
  np.testing.assert_array_equal(state.comm.all_reduce_bytes,
                                2 * (8 + 6 + 6))


@pytest.mark.parametrize("kwargs", [
    dict(start_iter=0), dict(start_iter=1),
    dict(warm_start=False, error_against="local", min_compression_rate=0.0),
])
def test_jits_once_ignores_extra_args_and_keeps_its_state_stable(kwargs):
  params = {"w": jnp.zeros((6, 5)), "b": jnp.zeros(5)}
  tx = powersgd(2, **kwargs)
  traces = []

  def fn(g, s, v):
    traces.append(None)
    return tx.update(g, s, None, value=v, unknown_arg=3)

  update = _mapped(fn)
  state0 = _init(tx, params)
  state = state0
  for seed in range(3):
    _, state = update(_worker_updates(seed, params), state,
                      jnp.ones(NUM_WORKERS) * seed)
  assert len(traces) == 1 and update._cache_size() == 1
  assert isinstance(state, PowerSGDState)
  assert jax.tree.structure(state) == jax.tree.structure(state0)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state0)):
    assert a.shape == b.shape and a.dtype == b.dtype


def test_sgd_with_rank_one_powersgd_reaches_the_uncompressed_loss():
  """Least squares W (12 x 10) + b, workers hold different data.

  Rank 1 with error feedback ends at the uncompressed loss; without error
  feedback it is still far away after the same number of steps (the
  test can fail).
  """
  rng = np.random.default_rng(0)
  x = rng.normal(size=(NUM_WORKERS, 32, 12)).astype(np.float32)
  w_true = rng.normal(size=(12, 10)).astype(np.float32)
  y = (x @ w_true + 0.1 * rng.normal(size=(NUM_WORKERS, 32, 10))).astype(
      np.float32)
  union = (x.reshape(-1, 12), y.reshape(-1, 10))
  zeros = {"w": jnp.zeros((12, 10)), "b": jnp.zeros(10)}

  def loss(params, batch):
    bx, by = batch
    return 0.5 * jnp.mean(jnp.sum((bx @ params["w"] + params["b"] - by) ** 2,
                                  -1))

  def final_loss(first):
    tx = optax.chain(first, optax.sgd(0.05))
    rt = dist.simulate(dist.data_parallel(loss, tx), NUM_WORKERS)
    state = rt.init(zeros)
    for _ in range(200):
      state, _ = rt.step(state, (x, y))
    return float(loss(dist.worker_slice(state.params), union))

  initial = float(loss(zeros, union))
  plain = final_loss(dist.aggregate(alg.aggregators.mean()))
  assert plain < 1e-2 * initial
  assert final_loss(powersgd(1)) < 1.02 * plain
  assert final_loss(powersgd(1, error_feedback=False)) > 10 * plain


def test_the_batch_split_over_workers_does_not_matter():
  """The same 24 examples per step on 2 or 4 workers: the same training."""
  tx = optax.chain(powersgd(2), optax.sgd(0.1, momentum=0.9))
  step = dist.data_parallel(helpers.mlp_loss, tx)
  params = helpers.mlp_params(jax.random.key(4), d_in=6, hidden=9)
  finals = []
  for n in (2, 4):
    rt = dist.simulate(step, n)
    state = rt.init(params)
    for t in range(4):
      x, y = helpers.worker_batches(t, 4, 6, d_in=6)
      state, _ = rt.step(state, (x.reshape(n, -1, 6), y.reshape(n, -1)))
    finals.append(dist.worker_slice(state.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-5), *finals)


@pytest.mark.parametrize("num_workers,start_iter", [(8, 0), (16, 2)])
def test_simulate_equals_on_mesh(num_workers, start_iter):
  tx = optax.chain(powersgd(2, start_iter=start_iter),
                   optax.sgd(0.1, momentum=0.9))
  step = dist.data_parallel(helpers.mlp_loss, tx)
  params = helpers.mlp_params(jax.random.key(3), d_in=6, hidden=9)
  mesh = jax.make_mesh((8,), (dist.WORKERS,))
  states = []
  for rt in (dist.simulate(step, num_workers),
             dist.on_mesh(step, mesh, num_workers)):
    state = rt.init(params)
    for t in range(4):
      state, _ = rt.step(state,
                         helpers.worker_batches(t, num_workers, 5, d_in=6))
    states.append(state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-6), *states)
  helpers.assert_replicated(states[1].params)


@pytest.mark.parametrize("kwargs,match", [
    (dict(rank=0), "rank must be an int >= 1; got 0"),
    (dict(rank=1.5), "rank must be an int >= 1; got 1.5"),
    (dict(rank=1, min_compression_rate=-1.0), "min_compression_rate"),
    (dict(rank=1, start_iter=-1), "start_iter must be an int >= 0; got -1"),
    (dict(rank=1, error_against="server"), "'aggregate', 'local'.*'server'"),
    (dict(rank=1, matrix_view="rows"), "'first_dim', 'last_dim'.*'rows'"),
])
def test_rejects_bad_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    powersgd(**kwargs)


def test_outside_a_worker_axis_the_error_names_the_axis():
  tx = powersgd(1)
  params = {"w": jnp.zeros((8, 6))}
  with pytest.raises(NameError, match="workers"):
    tx.init(params)
  state = jax.tree.map(lambda x: x[0], _init(tx, params))
  with pytest.raises(NameError, match="workers"):
    tx.update(params, state)
