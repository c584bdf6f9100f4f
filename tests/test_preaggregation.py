"""Pre-aggregations (NNM, bucketing, clipping, ARC) and their composition."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax import distributed as dist
from distoptax import worker_axis
from distoptax.algorithms import aggregators
from distoptax.algorithms.aggregators import clipping
from distoptax.algorithms.aggregators import preaggregation as pre
from tests import references


@functools.lru_cache(maxsize=None)
def nnm_batched(f):
  stage = pre.nearest_neighbor_mixing(f)
  return jax.jit(jax.vmap(
      lambda x: stage.update(x, stage.init(None, x.shape[0]))[0]))


@pytest.mark.parametrize("n,f", [(7, 2), (10, 4)])
def test_nnm_matches_reference(n, f):
  rng = np.random.default_rng(n)
  stacks = []
  for b in range(40):
    x = rng.normal(size=(n, 5))
    if b % 4 == 1:
      x[:f] = x[-1]  # Mimic: more copies than one neighbourhood can hold.
    elif b % 4 == 2:
      x[:f] += 8.0
    elif b % 4 == 3:
      x = rng.integers(-1, 2, size=(n, 5)).astype(float)  # Exact ties.
    stacks.append(x.astype(np.float32))
  out = nnm_batched(f)(jnp.asarray(np.stack(stacks)))
  for b, x in enumerate(stacks):
    np.testing.assert_allclose(out[b], references.ref_nnm(x, f), rtol=1e-5,
                               atol=1e-6, err_msg=f"stack {b}")


def test_nnm_keeps_each_row_in_its_own_neighbourhood():
  # Five copies of worker 4 and f = 1: rows 0..3 have 4 neighbours at
  # distance 0 with lower indices; each must still average itself.
  x = np.zeros((6, 2), np.float32)
  x[:5] = 1.0
  x[5] = [3.0, 3.0]
  out = np.asarray(nnm_batched(1)(jnp.asarray(x[None]))[0])
  np.testing.assert_allclose(out[5], (4 * 1.0 + 3.0) / 5)
  np.testing.assert_allclose(out[:5], 1.0)


def test_nnm_nonfinite_rows_stay_marked_and_honest_rows_stay_finite():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(9, 4)).astype(np.float32)
  x[2] = np.nan
  x[6, 1] = np.inf
  out = np.asarray(nnm_batched(2)(jnp.asarray(x[None]))[0])
  assert np.all(np.isnan(out[[2, 6]]))
  honest = [0, 1, 3, 4, 5, 7, 8]
  assert np.all(np.isfinite(out[honest]))
  np.testing.assert_allclose(out, references.ref_nnm(x, 2), rtol=1e-5,
                             atol=1e-6)
  # Composed with Krum, the output is finite and one of the mixed rows.
  rule = pre.pre_aggregated(pre.nearest_neighbor_mixing(2), aggregators.krum(2))
  agg, state = jax.jit(rule.update)(jnp.asarray(x), rule.init(None, 9))
  assert np.all(np.isfinite(agg))
  assert state.rule.selected[2] == 0 and state.rule.selected[6] == 0


def test_nnm_with_f_zero_gives_the_mean_in_every_row():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(5, 3)).astype(np.float32)
  out = np.asarray(nnm_batched(0)(jnp.asarray(x[None]))[0])
  np.testing.assert_allclose(out, np.broadcast_to(x.mean(0), x.shape),
                             rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n,s", [(10, 2), (7, 3), (5, 1), (4, 8)])
def test_bucketing_matches_reference_and_splits_its_key(n, s):
  stage = pre.bucketing(s, seed=3)
  assert stage.num_outputs(n) == math.ceil(n / s)
  update = jax.jit(stage.update)
  state = stage.init(None, n)
  # Its own salted stream: not the one aggregate(seed=3) draws from.
  np.testing.assert_array_equal(state.key, worker_axis.transform_key(
      3, "distoptax.algorithms.aggregators.bucketing"))
  rng = np.random.default_rng(n)
  perms = []
  for _ in range(3):
    x = rng.normal(size=(n, 4)).astype(np.float32)
    key, next_key = jax.random.split(jax.random.wrap_key_data(state.key))
    perm = np.asarray(jax.random.permutation(key, n))
    out, state = update(jnp.asarray(x), state)
    assert out.shape == (math.ceil(n / s), 4)
    np.testing.assert_allclose(out, references.ref_bucketing(x, perm, s),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(state.key, jax.random.key_data(next_key))
    perms.append(tuple(perm))
  if n > 4:
    assert len(set(perms)) > 1  # A new permutation every step.


def test_bucketing_state_is_identical_on_every_worker():
  stage = pre.bucketing(2, seed=0)
  rule = pre.pre_aggregated(stage, aggregators.multi_krum(1))
  tx = dist.aggregate(rule)
  rng = np.random.default_rng(4)
  grads = jnp.asarray(rng.normal(size=(10, 3)).astype(np.float32))

  def step(g):
    state = tx.init(g)
    out, state = tx.update(g, state)
    out, state = tx.update(g, state)
    return out, state

  out, state = jax.jit(jax.vmap(step, axis_name=dist.WORKERS))(grads)
  for leaf in jax.tree.leaves((out, state)):
    arr = np.asarray(leaf)
    np.testing.assert_array_equal(arr, np.broadcast_to(arr[:1], arr.shape))
  assert state.rule_state.rule.selected.shape == (10, 5)


def test_bucketing_isolates_a_nonfinite_row_in_one_bucket():
  stage = pre.bucketing(3)
  x = np.ones((9, 2), np.float32)
  x[4] = np.nan
  out, _ = jax.jit(stage.update)(jnp.asarray(x), stage.init(None, 9))
  bad = ~np.all(np.isfinite(np.asarray(out)), axis=1)
  assert bad.sum() == 1
  np.testing.assert_array_equal(np.asarray(out)[~bad], 1.0)


def test_clipping_preaggregations_match_the_stack_functions():
  rng = np.random.default_rng(5)
  x = jnp.asarray((rng.normal(size=(7, 4)) * rng.uniform(0.1, 9, (7, 1)))
                  .astype(np.float32))
  for stage, fn in [(pre.static_clipping(1.5),
                     lambda x: clipping.clip_to_norm(x, 1.5)),
                    (pre.adaptive_robust_clipping(2),
                     lambda x: clipping.adaptive_robust_clip(x, 2))]:
    out, state = jax.jit(stage.update)(x, stage.init(None, 7))
    np.testing.assert_array_equal(out, jax.jit(fn)(x))
    assert stage.num_outputs(7) == 7
  with pytest.raises(ValueError, match=r"n > 2f; got n=4, f=2"):
    pre.adaptive_robust_clipping(2).init(None, 4)
  for bad in (-1.0, 0, np.float32(0.0), float("nan")):
    with pytest.raises(ValueError,
                       match=r"static_clipping needs max_norm > 0"):
      pre.static_clipping(bad)
  with pytest.raises(ValueError,
                     match=r"integer num_byzantine f >= 0; got f=1.0"):
    pre.nearest_neighbor_mixing(1.0)


def test_pre_aggregated_equals_manual_composition():
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(9, 4)).astype(np.float32))
  nnm = pre.nearest_neighbor_mixing(2)
  rule = pre.pre_aggregated(nnm, aggregators.krum(2))
  out, state = jax.jit(rule.update)(x, rule.init(None, 9))
  mixed = nnm_batched(2)(x[None])[0]
  k = aggregators.krum(2)
  want, kstate = jax.jit(k.update)(mixed, k.init(None, 9))
  np.testing.assert_array_equal(out, want)
  np.testing.assert_array_equal(state.rule.selected, kstate.selected)
  assert state.pre == (nnm.init(None, 9),)


def test_chain_of_preaggregations_and_row_counts():
  rule = pre.pre_aggregated(
      [pre.static_clipping(2.0), pre.bucketing(2),
       pre.nearest_neighbor_mixing(1)],
      aggregators.multi_krum(1))
  state = rule.init(None, 11)  # 11 workers -> 6 buckets -> Krum on 6 rows.
  assert state.rule.selected.shape == (6,)
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(11, 3)).astype(np.float32))
  x = x.at[0].set(jnp.nan)
  out, new_state = jax.jit(rule.update)(x, state)
  assert np.all(np.isfinite(out))  # Clipping zeroed the NaN row first.
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_downstream_precondition_is_checked_on_the_bucket_count():
  rule = pre.pre_aggregated(pre.bucketing(2), aggregators.krum(2))
  with pytest.raises(ValueError, match=r"krum needs n > 2f \+ 2; got n=5, "
                     r"f=2"):
    rule.init(None, 10)
  with pytest.raises(ValueError, match=r"got n=5, f=2"):
    jax.jit(rule.update)(jnp.zeros((10, 3)),
                         pre.pre_aggregated(pre.bucketing(2),
                                            aggregators.krum(1)).init(None, 10))
  with pytest.raises(ValueError, match=r"nearest_neighbor_mixing needs n > 2f;"
                     r" got n=4, f=2"):
    pre.pre_aggregated(pre.nearest_neighbor_mixing(2),
                       aggregators.krum(0)).init(None, 4)
  with pytest.raises(ValueError, match=r"bucket_size s >= 1; got s=0"):
    pre.bucketing(0)
  with pytest.raises(ValueError, match=r"PreAggregation stages"):
    pre.pre_aggregated([aggregators.krum(1)], aggregators.krum(1))


# ------------------------------------------------- extreme Byzantine rows
FLOAT32_MAX = np.finfo(np.float32).max
TINY = float(np.finfo(np.float32).tiny)  # CPU flushes results below it.
N, F, D = 11, 2, 8
STAGE_ARGS = {"adaptive_robust_clipping": (F,), "bucketing": (2,),
              "nearest_neighbor_mixing": (F,), "static_clipping": (1.5,)}
# What each clipping stage must return exactly (float64 references).
CLIPPING_REFERENCES = {
    "adaptive_robust_clipping": lambda x: references.ref_arc(x, F),
    "static_clipping": lambda x: references.ref_clip(x, 1.5),
}


def extreme_stack(rng, kind):
  """Honest Gaussian rows, F Byzantine rows of ``kind`` at random places."""
  x = rng.normal(size=(N, D)).astype(np.float32)
  rows = rng.choice(N, F, replace=False)
  signs = rng.choice([-1.0, 1.0], size=(F, D)).astype(np.float32)
  values = {"nan": np.full((F, D), np.nan, np.float32),
            "inf": np.inf * signs,
            "max": FLOAT32_MAX * signs,
            "1e38": np.full((F, D), 1e38, np.float32),
            "2^126": np.float32(2.0 ** 126) * signs,
            "1e20": np.float32(1e20) * signs}
  if kind == "one_max":
    x[rows, rng.integers(D)] = FLOAT32_MAX
  else:
    x[rows] = values[kind]
  return x, rows


def test_every_preaggregation_has_stage_arguments():
  assert sorted(STAGE_ARGS) == sorted(aggregators.PREAGGREGATORS)


@pytest.mark.parametrize("name", sorted(aggregators.PREAGGREGATORS))
def test_stage_confines_extreme_byzantine_rows(name):
  """F rows of NaN, inf or finite values up to the float32 maximum.

  Every stage leaves at least ``num_outputs - F`` finite rows inside the
  honest rows' per-coordinate range widened to include 0 (clipping scales
  towards 0; a bucket or a neighbourhood without a Byzantine row averages
  honest rows). The clipping stages must moreover return their float64
  reference exactly, every row within the threshold: a row they fail to
  clip is one of the F allowed outliers above, but not here.
  """
  stage = aggregators.PREAGGREGATORS[name](*STAGE_ARGS[name])
  update = jax.jit(stage.update)
  rng = np.random.default_rng(12)
  outputs = stage.num_outputs(N)
  for kind in ("nan", "inf", "max", "1e38", "2^126", "one_max", "1e20"):
    for trial in range(3):
      x, rows = extreme_stack(rng, kind)
      out, _ = update(jnp.asarray(x), stage.init(None, N))
      out = np.asarray(out, np.float64)
      msg = f"{name}, {kind} #{trial}: Byzantine rows {rows}"
      assert out.shape == (outputs, D), msg
      honest = np.delete(x, rows, axis=0).astype(np.float64)
      low = np.minimum(honest.min(0), 0) - 1e-6
      high = np.maximum(honest.max(0), 0) + 1e-6
      inside = np.all((out >= low) & (out <= high), axis=1)
      assert inside.sum() >= outputs - F, f"{msg}: rows inside {inside}"
      if name in CLIPPING_REFERENCES:
        with np.errstate(invalid="ignore"):  # inf * 0, then set to 0.
          want = CLIPPING_REFERENCES[name](x)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=TINY,
                                   err_msg=msg)
