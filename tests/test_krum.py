"""Krum and Multi-Krum against a NumPy reference written from the paper."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax import distributed as dist
from distoptax.algorithms import aggregators
from tests import references


# ---------------------------------------------------------------- reference
def near_ties(scores, index, rtol=1e-4):
  """Indices whose reference score is within rtol of scores[index]."""
  s = scores[index]
  return {i for i, v in enumerate(scores)
          if abs(v - s) <= rtol * max(abs(s), 1e-30)}


# ---------------------------------------------------------------- data
def random_stack(rng, n, d, f, kind):
  """Honest Gaussian rows plus f Byzantine rows of the given kind."""
  x = rng.normal(size=(n, d))
  if kind == "mimic":  # Byzantine rows copy an honest row: exact ties.
    x[:f] = x[rng.integers(f, n)]
  elif kind == "outliers":
    x[:f] = rng.normal(size=(f, d)) * 30 + 5
  elif kind == "duplicates":  # Honest duplicates too.
    x[f + 1] = x[f]
    x[:f] = x[-1]
  elif kind == "lattice":  # Small integers: many exact distance ties.
    x = rng.integers(-2, 3, size=(n, d)).astype(np.float64)
  return x.astype(np.float32)


def as_tree(x):
  """Splits the columns into a two-leaf pytree (distances sum over leaves)."""
  d = x.shape[1]
  return {"a": jnp.asarray(x[:, : d // 2]),
          "b": jnp.asarray(x[:, d // 2:]).reshape(x.shape[0], -1, 1)}


def flat_out(t):
  return np.concatenate([np.asarray(t["a"]).ravel(),
                         np.asarray(t["b"]).ravel()])


KINDS = ["gaussian", "mimic", "outliers", "duplicates", "lattice"]


@functools.lru_cache(maxsize=None)
def rule_of(name, f, m=None):
  return aggregators.krum(f) if name == "krum" else aggregators.multi_krum(f, m)


@functools.lru_cache(maxsize=None)
def jitted(name, f, m=None):
  """One jitted update per rule, reused across tests (compiles once a shape)."""
  rule = rule_of(name, f, m)
  return jax.jit(
      lambda t: rule.update(t, rule.init(None, aggregators.stack_size(t))))


@functools.lru_cache(maxsize=None)
def batched(name, f, m=None):
  rule = rule_of(name, f, m)
  return jax.jit(jax.vmap(
      lambda t: rule.update(t, rule.init(None, aggregators.stack_size(t)))))


@pytest.mark.parametrize("n,f", [(6, 1), (11, 3)])
def test_krum_matches_reference_on_many_stacks(n, f):
  update = batched("krum", f)
  rng = np.random.default_rng(n)
  stacks = [random_stack(rng, n, 6, f, KINDS[i % len(KINDS)])
            for i in range(60)]
  out, state = update(jax.tree.map(lambda *l: jnp.stack(l),
                                   *[as_tree(s) for s in stacks]))
  for b, x in enumerate(stacks):
    scores = references.ref_scores(x, f)
    want = references.ref_krum_index(x, f)
    got = int(np.argmax(state.selected[b]))
    assert state.selected[b].sum() == 1
    assert got in near_ties(scores, want), (b, got, want, scores)
    if KINDS[b % len(KINDS)] in ("lattice", "mimic"):
      # Integer grids and copies give exact ties: the lowest index wins.
      assert got == want, (b, got, want, scores)
    if len(near_ties(scores, want)) == 1 or np.array_equal(
        x[got], x[want]):
      # Krum returns its input bit for bit.
      np.testing.assert_array_equal(
          flat_out(jax.tree.map(lambda l: l[b], out)), x[got])


def test_exact_duplicates_tie_to_the_lowest_index():
  rng = np.random.default_rng(0)
  for _ in range(20):
    x = rng.normal(size=(9, 5)).astype(np.float32)
    x[[2, 5, 7]] = x[6]  # Mimic: three copies of worker 6.
    out, state = jitted("krum", 2)(jnp.asarray(x))
    assert int(np.argmax(state.selected)) == 2
    np.testing.assert_array_equal(out, x[6])


def test_krum_output_is_one_of_the_inputs_bitwise_on_a_pytree():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(7, 300_001)).astype(np.float32) * 1e-3 + 3.0
  tree = {"w": jnp.asarray(x[:, :300_000].reshape(7, 300, 1000)),
          "b": jnp.asarray(x[:, 300_000])}
  out, state = jitted("krum", 2)(tree)
  i = int(np.argmax(state.selected))
  assert i == references.ref_krum_index(x, 2)
  np.testing.assert_array_equal(out["w"], tree["w"][i])
  np.testing.assert_array_equal(out["b"], tree["b"][i])
  assert out["w"].dtype == jnp.float32


@pytest.mark.parametrize("n,f,m", [(8, 2, 3), (11, 3, None)])
def test_multi_krum_matches_reference(n, f, m):
  update = batched("multi_krum", f, m)
  rng = np.random.default_rng(10 + n)
  stacks = [random_stack(rng, n, 6, f, KINDS[i % len(KINDS)])
            for i in range(50)]
  out, state = update(jax.tree.map(lambda *l: jnp.stack(l),
                                   *[as_tree(s) for s in stacks]))
  mm = n - f if m is None else m
  for b, x in enumerate(stacks):
    scores = references.ref_scores(x, f)
    want, chosen = references.ref_multi_krum(x, f, mm)
    got = sorted(np.flatnonzero(state.selected[b]))
    assert len(got) == mm
    if KINDS[b % len(KINDS)] in ("lattice", "mimic"):
      assert got == chosen, (b, got, chosen, scores)
    if got != chosen:
      # Only allowed across a near-tie at the cut-off score.
      cut = sorted(scores)[mm - 1]
      differ = set(got) ^ set(chosen)
      assert all(abs(scores[i] - cut) <= 1e-4 * max(cut, 1e-30)
                 for i in differ), (b, got, chosen, scores)
      want = np.asarray(x, np.float64)[got].mean(0)
    np.testing.assert_allclose(flat_out(jax.tree.map(lambda l: l[b], out)),
                               want, rtol=1e-5, atol=1e-5)


def test_multi_krum_with_m_equal_n_is_the_mean_and_m_1_is_krum():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(9, 5)).astype(np.float32))
  mean, _ = jitted("multi_krum", 2, 9)(x)
  np.testing.assert_allclose(mean, np.mean(np.asarray(x), 0), rtol=1e-6,
                             atol=1e-6)
  one, _ = jitted("multi_krum", 2, 1)(x)
  k, _ = jitted("krum", 2)(x)
  np.testing.assert_array_equal(one, k)


@pytest.mark.parametrize("name", ["krum", "multi_krum"])
def test_permutation_invariance(name):
  rng = np.random.default_rng(3)
  update = jitted(name, 2)
  for _ in range(5):
    x = rng.normal(size=(9, 5)).astype(np.float32)
    x[:2] += 4.0
    perm = rng.permutation(9)
    a, sa = update(jnp.asarray(x))
    b, sb = update(jnp.asarray(x[perm]))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(sa.selected)[perm],
                                  np.asarray(sb.selected))


@pytest.mark.parametrize("name", ["krum", "multi_krum"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, "mixed", 1e30,
                                 3e38])
def test_nonfinite_or_huge_rows_from_f_workers_never_win(name, bad):
  rng = np.random.default_rng(4)
  n, f = 10, 3
  update = jitted(name, f)
  for trial in range(4):
    x = rng.normal(size=(n, 20)).astype(np.float32)
    rows = rng.choice(n, f, replace=False)
    if bad == "mixed":
      x[rows[0], 3] = np.nan
      x[rows[1]] = np.inf
      x[rows[2], ::2] = -np.inf
    else:
      x[rows] = np.float32(bad) * (1 if trial % 2 else -1)
    out, state = update(jnp.asarray(x))
    assert np.all(np.isfinite(out))
    assert not np.any(np.asarray(state.selected)[rows])
    honest = np.setdiff1d(np.arange(n), rows)
    assert np.all(np.abs(np.asarray(out)) <= np.abs(x[honest]).max(0) + 1e-6)


def test_a_huge_byzantine_row_cannot_blur_honest_distances():
  # With the mean as centre, a 1e10 row would drown honest distances in
  # rounding error (all honest rows would look equally close); the medoid
  # re-centring keeps Krum's choice equal to the exact one.
  rng = np.random.default_rng(5)
  n, f = 9, 2
  x = rng.normal(size=(n, 50_000)).astype(np.float32) * 1e-2
  x[3] *= 0.2  # The honest row Krum should pick: closest to everyone.
  x[0] = 1e10
  x[1] = x[3] + 0.05  # A subtle Byzantine row near the winner.
  out, state = jitted("krum", f)(jnp.asarray(x))
  assert int(np.argmax(state.selected)) == references.ref_krum_index(
      x, f) == 3


@pytest.mark.parametrize("n,f", [(6, 2), (4, 1), (2, 0)])
def test_krum_precondition_at_init_and_at_trace(n, f):
  for name, rule in [("krum", aggregators.krum(f)),
                     ("multi_krum", aggregators.multi_krum(f))]:
    msg = rf"{name} needs n > 2f \+ 2; got n={n}, f={f}"
    with pytest.raises(ValueError, match=msg):
      rule.init(None, n)
    with pytest.raises(ValueError, match=msg):  # A state for n + 4 rows.
      jax.jit(rule.update)(jnp.zeros((n, 3)), rule.init(None, n + 4))


def test_argument_validation():
  with pytest.raises(ValueError, match=r"krum needs an integer num_byzantine"):
    aggregators.krum(-1)
  with pytest.raises(ValueError, match=r"got f=1.5"):
    aggregators.multi_krum(1.5)
  with pytest.raises(ValueError, match=r"m >= 1; got m=0"):
    aggregators.multi_krum(1, 0)
  with pytest.raises(ValueError, match=r"1 <= m <= n; got m=9, n=7, f=1"):
    aggregators.multi_krum(1, 9).init(None, 7)


def test_state_is_a_float32_selection_mask():
  for name in ("krum", "multi_krum"):
    state = rule_of(name, 2).init(None, 9)
    assert state.selected.shape == (9,)
    assert state.selected.dtype == jnp.float32
    _, new = jitted(name, 2)(jnp.arange(45.0).reshape(9, 5) ** 1.5)
    assert new.selected.dtype == jnp.float32
    assert jax.tree.structure(new) == jax.tree.structure(state)


def test_scores_fail_if_the_neighbour_count_were_n_minus_f_minus_1():
  # A stack where the paper's n - f - 2 neighbours and ByzFL's n - f - 1
  # pick different winners: the test pins the paper's count.
  rng = np.random.default_rng(6)
  n, f = 7, 2
  found = 0
  for _ in range(300):
    x = rng.normal(size=(n, 2)).astype(np.float32)
    d = references.ref_squared_distances(x)
    byzfl = [np.sort(np.delete(d[i], i))[: n - f - 1].sum() for i in range(n)]
    paper = references.ref_krum_index(x, f)
    if int(np.argmin(byzfl)) != paper and len(near_ties(
        references.ref_scores(x, f), paper)) == 1:
      _, state = jitted("krum", f)(jnp.asarray(x))
      assert int(np.argmax(state.selected)) == paper
      found += 1
    if found == 3:
      break
  assert found == 3


def test_krum_inside_dist_aggregate_under_vmap():
  n = 9
  tx = dist.aggregate(rule_of("krum", 2))
  rng = np.random.default_rng(7)
  grads = jnp.asarray(rng.normal(size=(n, 5)).astype(np.float32))

  def step(g):
    return tx.update(g, tx.init(g))

  out, state = jax.jit(jax.vmap(step, axis_name=dist.WORKERS))(grads)
  want, _ = jitted("krum", 2)(grads)
  np.testing.assert_array_equal(out, np.broadcast_to(want, out.shape))
  assert state.rule_state.selected.shape == (n, n)
