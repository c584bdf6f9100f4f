"""CSER: equivalences first (synchronous SGD, the two forms), then the
runtimes, the bytes, the conditional, the block sparsifier and bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.algorithms.local import error_reset
from distoptax.distributed import comm_stats
from distoptax.distributed.cser import block_cser
from distoptax.distributed.cser import cser
from tests import helpers

NUM_WORKERS = 8
LR = 0.1
STEPS = 6
PARAMS = helpers.mlp_params(jax.random.key(0))
TOL = dict(rtol=2e-5, atol=2e-6)
block = error_reset.block_sparsifier


def _nesterov():
  return optax.sgd(LR, momentum=0.9, nesterov=True)


def _runtime(tx, runtime="simulate", num_workers=NUM_WORKERS):
  step = dist.data_parallel(helpers.mlp_loss, tx)
  if runtime == "simulate":
    return dist.simulate(step, num_workers)
  return dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)),
                      num_workers)


def _steps(rt, steps=STEPS):
  state = rt.init(PARAMS)
  metrics = []
  for t in range(steps):
    state, m = rt.step(state, helpers.worker_batches(t, rt.num_workers, 4))
    metrics.append(jax.tree.map(np.asarray, m))
  return state, metrics


@functools.cache
def _sync_reference():
  """Synchronous data-parallel Nesterov SGD on the mean gradient."""
  tx = optax.chain(dist.aggregate(alg.aggregators.mean()), _nesterov())
  return _steps(_runtime(tx))[0]


def _close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), **(tol or TOL)), a, b)


def _rows_close(tree, **tol):
  for leaf in jax.tree.leaves(tree):
    leaf = np.asarray(leaf)
    np.testing.assert_allclose(leaf, np.broadcast_to(leaf[:1], leaf.shape),
                               **(tol or dict(rtol=1e-6, atol=1e-7)))


# One construction per name; the runs below are cached on the name.
TRANSFORMS = {
    "reference": lambda: dist_cser(block(4), block(2), 2, "cser_reference"),
    "reference_direct": lambda: dist_cser(block(4), block(2), 2,
                                          "cser_reference", "direct"),
    "paper": lambda: dist_cser(block(8), block(2), 3, "cser"),
    "paper_direct": lambda: dist_cser(block(8), block(2), 3, "cser",
                                      "direct"),
    "csea": lambda: dist_cser(block(4), None, 1, "csea"),
    "csea_direct": lambda: dist_cser(block(4), None, 1, "csea", "direct"),
    "pl": lambda: dist_cser(None, block(2), 3, "cser_pl"),
    "pl_direct": lambda: dist_cser(None, block(2), 3, "cser_pl", "direct"),
    "randomk": lambda: dist_cser(
        alg.compressors.random_k(0.25, scaled=False),
        alg.compressors.random_k(0.5, scaled=False), 2, "cser_reference"),
    "randomk_direct": lambda: dist_cser(
        alg.compressors.random_k(0.25, scaled=False),
        alg.compressors.random_k(0.5, scaled=False), 2, "cser_reference",
        "direct"),
    "gathered": lambda: dist_cser(alg.compressors.top_k(k=3),
                                  alg.compressors.qsgd(num_levels=4), 2,
                                  "cser"),
}


def dist_cser(c1, c2, period, variant, form="residual"):
  return cser(_nesterov(), period, c1, c2, variant=variant, form=form)


@functools.cache
def _run(name, runtime="simulate", num_workers=NUM_WORKERS):
  rt = _runtime(TRANSFORMS[name](), runtime, num_workers)
  state, metrics = _steps(rt)
  return rt, state, metrics


# ---------------------------------------------------------------------------
# Equivalences.


@pytest.mark.parametrize("variant,c1,c2", [
    ("cser", block(1), block(1)),
    ("cser_reference", block(64), block(1)),
    ("cser_pl", None, block(1)),
    ("csea", block(1), None),
    ("cser", alg.compressors.identity(), alg.compressors.identity()),
])
def test_period_one_with_full_blocks_is_synchronous_sgd(variant, c1, c2):
  tx = cser(_nesterov(), 1, c1, c2, variant=variant)
  state = _steps(_runtime(tx))[0]
  _close(state.params, _sync_reference().params)
  _rows_close(state.params)
  np.testing.assert_allclose(
      np.concatenate([np.ravel(e) for e in
                      jax.tree.leaves(state.opt_state.error)]), 0,
      atol=1e-6)


def test_paper_form_with_an_identity_c1_is_synchronous_sgd_for_any_c2():
  tx = cser(_nesterov(), 3, alg.compressors.identity(), block(4))
  state = _steps(_runtime(tx))[0]
  _close(state.params, _sync_reference().params)


@pytest.mark.parametrize("name", ["reference", "paper", "csea", "pl",
                                  "randomk"])
def test_residual_and_direct_forms_agree(name):
  _, residual, r_metrics = _run(name)
  _, direct, d_metrics = _run(f"{name}_direct")
  _close(residual.params, direct.params, rtol=1e-5, atol=1e-6)
  assert direct.opt_state.error == ()
  for a, b in zip(r_metrics, d_metrics):
    np.testing.assert_array_equal(a["all_reduce_bytes"], b["all_reduce_bytes"])


def test_the_forms_differ_when_the_direct_form_averages_another_block():
  """A control: the agreement above is not vacuous. Another seed draws
  other blocks, and the models then differ."""
  _, residual, _ = _run("reference")
  tx = cser(_nesterov(), 2, block(4), block(2),
                 variant="cser_reference", form="direct", seed=1)
  other = _steps(_runtime(tx))[0]
  gap = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(residual.params),
                            jax.tree.leaves(other.params)))
  assert gap > 1e-4


@pytest.mark.parametrize("name", ["reference", "paper", "gathered"])
def test_models_minus_residuals_agree_on_every_worker(name):
  """x_i - e_i is the common point; the models themselves differ."""
  _, state, _ = _run(name)
  common = jax.tree.map(lambda x, e: x - e, state.params,
                        state.opt_state.error)
  _rows_close(common, rtol=1e-5, atol=1e-6)
  spread = max(float(np.ptp(np.asarray(x), axis=0).max())
               for x in jax.tree.leaves(state.params))
  assert spread > 1e-4
  helpers.assert_replicated(state.opt_state._replace(
      inner_state=(), error=(), comm=()))


def test_reset_with_block_one_empties_the_residual_every_period():
  tx = cser(_nesterov(), 2, block(8), block(1))
  rt = _runtime(tx)
  state = rt.init(PARAMS)
  for t in range(4):
    state, _ = rt.step(state, helpers.worker_batches(t, NUM_WORKERS, 4))
    norm = sum(float(np.abs(np.asarray(e)).max())
               for e in jax.tree.leaves(state.opt_state.error))
    assert (norm == 0) == ((t + 1) % 2 == 0)
  assert int(state.opt_state.num_resets) == 2


# ---------------------------------------------------------------------------
# Runtimes, bytes and the conditional.


def _message_bytes(compressor):
  return comm_stats.tree_bytes(jax.eval_shape(
      compressor.encode, jax.random.key(0), PARAMS))


@pytest.mark.parametrize("name,num_workers", [
    ("reference", 8), ("reference", 16), ("paper_direct", 8),
    ("gathered", 8)])
def test_simulate_equals_on_mesh(name, num_workers):
  _, sim, sim_metrics = _run(name, "simulate", num_workers)
  _, mesh, mesh_metrics = _run(name, "on_mesh", num_workers)
  tol = dict(rtol=1e-4, atol=1e-5)
  _close(sim.params, mesh.params, **tol)
  _close(sim.opt_state, mesh.opt_state, **tol)
  for a, b in zip(sim_metrics, mesh_metrics):
    for key in ("all_reduce_bytes", "all_gather_bytes"):
      np.testing.assert_array_equal(a[key], b[key])
  helpers.assert_replicated(mesh.opt_state._replace(
      inner_state=(), error=(), comm=()))


@pytest.mark.parametrize("name,c1,c2", [
    ("reference", block(4), block(2)),
    ("paper", block(8), block(2)),
    ("pl", None, block(2)),
])
def test_wire_bytes_per_round_and_as_in_the_program(name, c1, c2):
  rt, state, metrics = _run(name, "on_mesh", 8)
  b1 = 0 if c1 is None else _message_bytes(c1)
  b2 = _message_bytes(c2)
  period = {"reference": 2, "paper": 3, "pl": 3}[name]
  replace = name == "reference"
  expected = []
  for t, m in enumerate(metrics):
    on_period = (t + 1) % period == 0
    if replace:
      want = b2 if on_period else b1
    else:
      want = b1 + (b2 if on_period else 0)
    expected.append(want)
    np.testing.assert_array_equal(m["all_reduce_bytes"], want)
    np.testing.assert_array_equal(m["all_gather_bytes"], 0)
  (stats,) = dist.find_comm_stats(state.opt_state)
  assert dist.total_bytes(jax.tree.map(lambda a: a[0], stats)) == sum(
      expected)
  hlo = rt.lower(state, helpers.worker_batches(0, 8, 4)).as_text()
  # Both branches are in the program, each once.
  assert helpers.collective_operand_bytes(hlo, "all_reduce") == b1 + b2


def test_gathered_compressors_record_all_gather_bytes():
  _, _, metrics = _run("gathered")
  b1 = _message_bytes(alg.compressors.top_k(k=3))
  b2 = _message_bytes(alg.compressors.qsgd(num_levels=4))
  for t, m in enumerate(metrics):
    want = b1 + (b2 if (t + 1) % 2 == 0 else 0)
    np.testing.assert_array_equal(m["all_gather_bytes"], want)
    np.testing.assert_array_equal(m["all_reduce_bytes"], 0)


@pytest.mark.parametrize("name,num_workers", [("pl", 8), ("pl", 16)])
def test_the_period_reset_sits_inside_an_hlo_conditional(name, num_workers):
  rt, state, _ = _run(name, "on_mesh", num_workers)
  compiled = rt.lower(
      state, helpers.worker_batches(0, num_workers, 4)).compile().as_text()
  always, anywhere = helpers.collective_reach(compiled, "all-reduce(")
  assert anywhere and not always


def test_the_paper_form_c1_round_runs_every_step():
  rt, state, _ = _run("paper", "on_mesh", 8)
  compiled = rt.lower(state, helpers.worker_batches(0, 8, 4)).compile(
  ).as_text()
  assert helpers.collective_reach(compiled, "all-reduce(") == (True, True)


# ---------------------------------------------------------------------------
# Any compressor plugs in.


@pytest.mark.parametrize("name", sorted(helpers.COMPRESSOR_EXAMPLES))
def test_every_registered_compressor_plugs_in_as_c1_and_c2(name):
  compressor = alg.compressors.COMPRESSORS[name](
      **helpers.COMPRESSOR_EXAMPLES[name])
  tx = cser(_nesterov(), 2, compressor, compressor)
  rt = _runtime(tx, num_workers=4)
  state, metrics = _steps(rt, 2)
  assert all(np.all(np.isfinite(m["loss"])) for m in metrics)
  common = jax.tree.map(lambda x, e: x - e, state.params,
                        state.opt_state.error)
  _rows_close(common, rtol=1e-5, atol=1e-5)
  sent = [int(m["all_reduce_bytes"][0] + m["all_gather_bytes"][0])
          for m in metrics]
  assert sent[1] == 2 * sent[0] > 0   # C1 every step, C2 on the period.


# ---------------------------------------------------------------------------
# The block sparsifier and the algebra.


def test_block_sparsifier_meets_the_compressor_contract():
  def wire_bytes(tree):
    total = 0
    for leaf in jax.tree.leaves(tree):
      rows = leaf.shape[0] if leaf.shape else 1
      k, _ = error_reset.block_rows(rows, 4)
      total += k * (leaf.size // rows) * leaf.dtype.itemsize + 8
    return total
  helpers.check_compressor_contract(block(4), wire_bytes)


def test_block_sparsifier_draws_aligned_blocks_uniformly():
  c = block(3)   # 10 rows: k = 3, blocks start at 0, 3, 6, 9 (1 row).
  x = jnp.arange(1.0, 11.0)
  encode = jax.jit(lambda key: c.decode(c.encode(key, x)))
  starts = []
  for i in range(400):
    y = np.asarray(encode(jax.random.key(i)))
    kept = np.flatnonzero(y)
    np.testing.assert_array_equal(y[kept], np.asarray(x)[kept])
    assert kept.size == (1 if kept[0] == 9 else 3)
    starts.append(int(kept[0]))
  counts = np.bincount(starts, minlength=10)[[0, 3, 6, 9]]
  assert counts.sum() == 400 and counts.min() > 70


def test_summed_block_messages_decode_to_the_summed_blocks():
  c = block(4)
  key = jax.random.key(3)
  xs = [{"w": jnp.full((8, 2), float(i + 1)), "b": jnp.full((3,), 2.0 * i)}
        for i in range(3)]
  messages = [c.encode(key, x) for x in xs]
  total = jax.tree.map(lambda *a: sum(a), *messages)
  _close(c.decode(total), jax.tree.map(lambda *a: sum(a),
                                       *[c.decode(m) for m in messages]))


def test_overall_ratio_matches_the_recorded_bytes():
  """The reference schedule at R1 = 8, R2 = 2, H = 4 on a (64, 4) tensor."""
  params = {"w": jnp.zeros((64, 4))}
  tx = block_cser(LR, 8, 2)
  rt = dist.simulate(dist.data_parallel(
      lambda w, b: jnp.mean((b @ w["w"]) ** 2), tx), 2)
  state = rt.init(params)
  sent = 0
  for t in range(8):
    state, m = rt.step(state, jnp.ones((2, 3, 64)))
    sent += int(m["all_reduce_bytes"][0]) - 8   # Less the block's header.
  ratio = error_reset.overall_ratio(8, 2, 4, replace=True)
  assert 8 * 64 * 4 * 4 / sent == pytest.approx(ratio)


# ---------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("make,error,match", [
    (lambda: block_cser(LR, 2, 8), ValueError, "ratio2=8 exceeds"),
    (lambda: block_cser(LR, 8, 0.5), ValueError, "ratio2 must be"),
    (lambda: block_cser(LR, 8, 3), ValueError, "not an int"),
    (lambda: block_cser(LR, "8", 2), TypeError, "ratio1 must be"),
    (lambda: cser(_nesterov(), 0, block(4), block(2)), ValueError,
     "period must be an int >= 1; got 0"),
    (lambda: cser(_nesterov(), 2.0, block(4), block(2)), TypeError,
     "period must be a Python int"),
    (lambda: cser(_nesterov(), 2, "top_k", block(2)), TypeError,
     "c1 must be a Compressor.*'top_k'"),
    (lambda: cser(_nesterov(), 2, block(4), alg.aggregators.mean()),
     TypeError, "c2 must be a Compressor"),
    (lambda: cser("sgd", 2, block(4), block(2)), TypeError,
     "inner must be an optax"),
    (lambda: cser(_nesterov(), 2, block(4), block(2), variant="cesr"),
     ValueError, "variant must be one of.*'cesr'"),
    (lambda: cser(_nesterov(), 2, block(4), block(2), form="both"),
     ValueError, "form must be one of.*'both'"),
    (lambda: cser(_nesterov(), 2, None, block(2)), ValueError,
     "uses c1; got c1=None"),
    (lambda: cser(_nesterov(), 2, block(4), block(2),
                       variant="cser_pl"), ValueError, "does not use c1"),
    (lambda: cser(_nesterov(), 2, block(4), None, variant="csea"),
     ValueError, "period must be 1, got 2"),
    (lambda: cser(_nesterov(), 2, block(4), alg.compressors.top_k(k=3),
                       form="direct"), ValueError, "summable c2"),
    (lambda: block(0.5), ValueError, "ratio must be a finite"),
])
def test_bad_input_is_refused_naming_the_value(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_update_without_params_says_what_it_needs():
  tx = cser(_nesterov(), 2, block(4), block(2))
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(PARAMS, state)
