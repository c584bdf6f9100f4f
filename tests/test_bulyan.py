"""Bulyan (recursive Krum, then mean around the median) against NumPy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax.algorithms import aggregators
from tests import references


def ref_one_shot_selection(x, f):
  """Flower 2025: the theta lowest Krum scores computed once on all n."""
  d = references.ref_squared_distances(x)
  n = len(x)
  scores = [sum(sorted(np.delete(d[i], i))[: n - f - 2]) for i in range(n)]
  return sorted(range(n), key=lambda i: (scores[i], i))[: n - 2 * f]


@functools.lru_cache(maxsize=None)
def batched(f):
  rule = aggregators.bulyan(f)
  return jax.jit(jax.vmap(
      lambda x: rule.update(x, rule.init(None, x.shape[0]))))


def stacks_for(n, f, seed, count=40, d=5):
  rng = np.random.default_rng(seed)
  out = []
  for b in range(count):
    x = rng.normal(size=(n, d))
    kind = b % 4
    if kind == 1:  # Mimic: Byzantine copies of an honest row.
      x[:f] = x[rng.integers(f, n)]
    elif kind == 2:  # Clustered outliers.
      x[:f] = rng.normal(size=(f, d)) + 6.0
    elif kind == 3:  # Small integers: exact ties in distances and values.
      x = rng.integers(-2, 3, size=(n, d)).astype(float)
    out.append(x.astype(np.float32))
  return out


@pytest.mark.parametrize("n,f", [(7, 1), (12, 2)])
def test_bulyan_matches_reference(n, f):
  stacks = stacks_for(n, f, seed=n)
  out, state = batched(f)(jnp.asarray(np.stack(stacks)))
  for b, x in enumerate(stacks):
    want, chosen = references.ref_bulyan(x, f)
    np.testing.assert_array_equal(np.flatnonzero(state.selected[b]), chosen,
                                  err_msg=f"stack {b}")
    np.testing.assert_allclose(out[b], want, rtol=1e-5, atol=1e-6,
                               err_msg=f"stack {b}")


def test_iterative_selection_is_not_flowers_one_shot():
  # The variant is pinned: on stacks where the paper's recursive selection
  # and the one-shot top-theta differ, we follow the recursion.
  rng = np.random.default_rng(1)
  n, f = 12, 2
  differing = []
  for _ in range(400):
    x = rng.normal(size=(n, 5))
    x[:f] = rng.normal(size=(f, 5)) * 0.3 + 1.5
    x = x.astype(np.float32)
    if sorted(references.ref_recursive_selection(x, f)) != sorted(
        ref_one_shot_selection(x, f)):
      differing.append(x)
    if len(differing) == 40:
      break
  assert len(differing) == 40
  _, state = batched(f)(jnp.asarray(np.stack(differing)))
  for b, x in enumerate(differing):
    np.testing.assert_array_equal(
        np.flatnonzero(state.selected[b]),
        sorted(references.ref_recursive_selection(x, f)))


def test_bulyan_with_f_zero_is_the_mean():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(7, 5)).astype(np.float32)
  out, state = batched(0)(jnp.asarray(x[None]))
  np.testing.assert_allclose(out[0], x.mean(0), rtol=1e-6, atol=1e-7)
  assert np.all(state.selected == 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30, "mixed"])
def test_nonfinite_rows_never_reach_the_output(bad):
  rng = np.random.default_rng(3)
  n, f = 12, 2
  stacks, rows_list = [], []
  for _ in range(40):  # The reference test's batch shape: no new compile.
    x = rng.normal(size=(n, 5)).astype(np.float32)
    rows = rng.choice(n, f, replace=False)
    if bad == "mixed":
      x[rows[0], 2] = np.nan
      x[rows[1]] = -np.inf
    else:
      x[rows] = bad
    stacks.append(x)
    rows_list.append(rows)
  out, state = batched(f)(jnp.asarray(np.stack(stacks)))
  for b, (x, rows) in enumerate(zip(stacks, rows_list)):
    assert np.all(np.isfinite(out[b]))
    if not (isinstance(bad, float) and np.isfinite(bad)):
      # Non-finite rows score +inf in every round. (Identical huge finite
      # rows are at distance 0 from each other and may win the last rounds,
      # where Krum sums a single neighbour; stage 2 then trims them.)
      assert not np.any(np.asarray(state.selected[b])[rows])
    honest = np.delete(x, rows, axis=0)
    assert np.all(out[b] >= honest.min(0) - 1e-6)
    assert np.all(out[b] <= honest.max(0) + 1e-6)


def test_permutation_equivariance_up_to_ties_and_pytree_leaves():
  # Late rounds sum one neighbour, where mutual nearest neighbours tie
  # exactly (d_ij = d_ji): the lowest index wins, so permuting the workers
  # may swap which of the two is selected. The rule is equivariant up to
  # that: on the permuted stack it selects what the reference selects.
  rng = np.random.default_rng(4)
  n, f = 12, 2
  rule = aggregators.bulyan(f)
  update = jax.jit(lambda t: rule.update(t, rule.init(None, n)))
  tree = lambda x: {"a": jnp.asarray(x[:, :4]).reshape(n, 2, 2),
                    "b": jnp.asarray(x[:, 4:])}
  flat = lambda t: np.concatenate([np.asarray(t["a"]).ravel(),
                                   np.asarray(t["b"])])
  for _ in range(3):
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:f] += 3.0
    for xp in (x, x[rng.permutation(n)]):
      out, state = update(tree(xp))
      want, chosen = references.ref_bulyan(xp, f)
      np.testing.assert_array_equal(np.flatnonzero(state.selected), chosen)
      np.testing.assert_allclose(flat(out), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,f", [(6, 1), (10, 2), (2, 0)])
def test_precondition_at_init_and_trace(n, f):
  rule = aggregators.bulyan(f)
  msg = rf"bulyan needs n >= 4f \+ 3; got n={n}, f={f}"
  with pytest.raises(ValueError, match=msg):
    rule.init(None, n)
  with pytest.raises(ValueError, match=msg):  # A state for 4f + 3 rows.
    jax.jit(rule.update)(jnp.zeros((n, 3)), rule.init(None, 4 * f + 3))
  with pytest.raises(ValueError, match=r"got f=-1"):
    aggregators.bulyan(-1)


def test_state_selected_mask():
  state = aggregators.bulyan(1).init(None, 7)
  assert state.selected.shape == (7,) and state.selected.dtype == jnp.float32
