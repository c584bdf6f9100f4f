"""Order statistics and the coordinate-wise rules against NumPy references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import distributed as dist
from distoptax.algorithms import aggregators
from distoptax.algorithms.aggregators import coordinatewise
from distoptax.algorithms.aggregators import order_stats
from tests import references


def stacks(n, d, seed):
  """Random stacks: continuous, heavy ties, and duplicated rows (mimic)."""
  rng = np.random.default_rng(seed)
  normal = rng.normal(size=(n, d)).astype(np.float32)
  ties = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
  mimic = normal.copy()
  mimic[: n // 3 + 1] = normal[n - 1]  # copies of the last honest worker
  return {"normal": normal, "ties": ties, "mimic": mimic}


ARRAY_RULES = {
    "trimmed_mean": (order_stats.trimmed_mean_over_workers,
                     references.np_trimmed_mean),
    "mean_around_median": (order_stats.mean_around_median_over_workers,
                           references.np_meamed),
    "phocas": (order_stats.phocas_over_workers, references.np_phocas),
}

# ---------------------------------------------------------------------------
# The networks and the order-statistics helpers.


@pytest.mark.parametrize("n", range(1, order_stats.NETWORK_MAX_WORKERS + 1))
def test_batcher_network_sorts(n):
  pairs = order_stats._batcher_comparators(n)
  rng = np.random.default_rng(n)
  values = rng.integers(0, 4, size=(100, n))
  values[:n + 1] = np.tril(np.ones((n + 1, n), int), -1)  # 0-1 staircases
  for row in values:
    v = list(row)
    for a, b in pairs:
      if v[a] > v[b]:
        v[a], v[b] = v[b], v[a]
    assert v == sorted(row)


def test_pruned_networks_are_smaller():
  n = 32
  full = 2 * len(order_stats._batcher_comparators(n))

  def ops(need):
    return sum(lo + hi for _, _, lo, hi in order_stats._pruned_network(need))

  assert ops((order_stats._LIVE,) * n) == full == 382
  assert ops(order_stats._median_need(n)) == 282
  trim = (0,) * 1 + (order_stats._SUM,) * (n - 2) + (0,) * 1
  assert ops(trim) == 90


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 13, 16, 32, 33])
def test_sort_matches_numpy_exactly(n):
  sort = jax.jit(order_stats.sort_over_workers)
  for kind, x in stacks(n, 300, n).items():
    np.testing.assert_array_equal(sort(x), np.sort(x, axis=0), err_msg=kind)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 13, 16, 32, 64, 70])
def test_median_matches_numpy_exactly(n):
  median = jax.jit(order_stats.median_over_workers)
  for kind, x in stacks(n, 300, n).items():
    np.testing.assert_array_equal(median(x), np.median(x, axis=0),
                                  err_msg=kind)


def test_helpers_keep_low_precision_dtypes_and_shapes():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 3, 2)),
                  jnp.bfloat16)
  ref = np.sort(np.asarray(x, np.float32), axis=0)
  out = order_stats.sort_over_workers(x)
  assert out.dtype == jnp.bfloat16 and out.shape == x.shape
  np.testing.assert_array_equal(np.asarray(out, np.float32), ref)
  for fn in (order_stats.median_over_workers,
             lambda x: order_stats.trimmed_mean_over_workers(x, 2),
             lambda x: order_stats.mean_around_median_over_workers(x, 2),
             lambda x: order_stats.phocas_over_workers(x, 2)):
    out = fn(x)
    assert out.dtype == jnp.bfloat16 and out.shape == (3, 2)
  np.testing.assert_array_equal(
      np.asarray(order_stats.median_over_workers(x), np.float32), ref[3])


def test_sanitize_maps_only_nan():
  x = jnp.array([jnp.nan, jnp.inf, -jnp.inf, 1.0, -0.0])
  np.testing.assert_array_equal(order_stats.sanitize(x),
                                [np.inf, np.inf, -np.inf, 1.0, 0.0])
  ints = jnp.arange(3)
  assert order_stats.sanitize(ints) is ints


def test_nan_sorts_last_like_inf():
  x = jnp.array([[jnp.nan, 1.0], [2.0, -jnp.inf], [-1.0, jnp.nan]])
  np.testing.assert_array_equal(order_stats.sort_over_workers(x),
                                [[-1.0, -np.inf], [2.0, 1.0],
                                 [np.inf, np.inf]])


@pytest.mark.parametrize("name", sorted(ARRAY_RULES))
@pytest.mark.parametrize("n,f", [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2),
                                 (8, 0), (8, 3), (13, 4), (32, 8), (32, 15),
                                 (70, 20)])
def test_array_rules_match_numpy(name, n, f):
  fn, ref = ARRAY_RULES[name]
  jitted = jax.jit(lambda x: fn(x, f))
  for kind, x in stacks(n, 400, 100 * n + f).items():
    np.testing.assert_allclose(jitted(x), ref(x, f), rtol=3e-6, atol=1e-6,
                               err_msg=kind)


@pytest.mark.parametrize("n", [5, 8])
def test_mean_around_median_any_number_dropped(n):
  # Bulyan's second stage drops 2f of theta values, often more than half.
  x = stacks(n, 300, n)["ties"]
  for drop in range(n):
    fn = jax.jit(order_stats.mean_around_median_over_workers,
                 static_argnums=1)
    np.testing.assert_allclose(
        fn(x, drop),
        references.np_mean_of_closest(x, n - drop, references.np_median(x)),
        rtol=1e-6, atol=1e-6, err_msg=f"drop={drop}")


@pytest.mark.parametrize("name", ["mean_around_median", "phocas"])
def test_two_sided_ties_are_patched_on_large_leaves(name):
  # Continuous values, plus a few coordinates with ties on both sides of the
  # centre at the cut-off: only those blocks take the row-by-row path.
  fn, ref = ARRAY_RULES[name]
  n, f, d = 10, 3, 9000
  rng = np.random.default_rng(7)
  x = rng.normal(size=(n, d)).astype(np.float32)
  cols = rng.choice(d, 12, replace=False)
  x[:, cols] = rng.choice([-2.0, -1.0, 0.0, 1.0, 2.0], size=(n, 12))
  x[:, cols[0]] = [1, -1, 1, -1, 0, 0, 1, -1, 1, -1]  # ties at the cut-off
  out = jax.jit(lambda x: fn(x, f))(x)
  np.testing.assert_allclose(out, ref(x, f), rtol=3e-6, atol=1e-6)
  # Many tied coordinates: every coordinate is recomputed.
  x = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
  np.testing.assert_allclose(jax.jit(lambda x: fn(x, f))(x), ref(x, f),
                             rtol=3e-6, atol=1e-6)


def test_ties_go_to_the_lowest_worker_index():
  # |1 - 4| == |7 - 4|: the value of the lower worker index is kept.
  x = jnp.array([[1.0], [4.0], [7.0]])
  np.testing.assert_allclose(
      order_stats.mean_around_median_over_workers(x, 1), [2.5])
  np.testing.assert_allclose(
      order_stats.mean_around_median_over_workers(x[::-1], 1), [5.5])
  y = jnp.array([[3.0], [-1.0], [1.0], [-3.0], [0.0]])  # centre 0
  np.testing.assert_allclose(order_stats.phocas_over_workers(y, 2),
                             [0.0])  # keeps -1 (worker 1) and 1 (worker 2)
  np.testing.assert_allclose(
      order_stats.mean_around_median_over_workers(y, 1), [0.75])  # 3 < -3


@pytest.mark.parametrize("fn", [order_stats.trimmed_mean_over_workers,
                                order_stats.phocas_over_workers])
def test_helpers_reject_n_at_most_2f(fn):
  with pytest.raises(ValueError, match=r"n > 2f.*n=4, f=2"):
    fn(jnp.zeros((4, 3)), 2)


def test_helpers_reject_empty_stacks_and_bad_drop():
  with pytest.raises(ValueError, match="n >= 1"):
    order_stats.median_over_workers(jnp.zeros((0, 3)))
  with pytest.raises(ValueError, match=r"n=3, f=3"):
    order_stats.mean_around_median_over_workers(jnp.zeros((3, 2)), 3)


# ---------------------------------------------------------------------------
# The rules.

RULES = {
    "median": lambda f: coordinatewise.median(),
    "trimmed_mean": coordinatewise.trimmed_mean,
    "mean_around_median": coordinatewise.mean_around_median,
    "phocas": coordinatewise.phocas,
    "geometric_median": lambda f: aggregators.geometric_median(),
}
COORDINATEWISE = ("median", "trimmed_mean", "mean_around_median", "phocas")


def apply(rule, stack):
  n = jax.tree.leaves(stack)[0].shape[0]
  return jax.jit(rule.update)(stack, rule.init(None, n))[0]


@pytest.mark.parametrize("name", ["trimmed_mean", "mean_around_median",
                                  "phocas"])
def test_f_zero_is_the_mean(name):
  x = stacks(9, 200, 3)["normal"]
  np.testing.assert_allclose(apply(RULES[name](0), x),
                             x.astype(np.float64).mean(0), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("name", sorted(RULES))
def test_identical_rows_give_that_row(name):
  row = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
  out = apply(RULES[name](2), np.stack([row] * 6))
  if name == "median":
    np.testing.assert_array_equal(out, row)
  else:  # up to the rounding of a sum of six equal terms
    np.testing.assert_allclose(out, row, rtol=2e-7)


@pytest.mark.parametrize("name", sorted(RULES))
def test_permutation_invariant(name):
  x = stacks(11, 50, 5)["normal"]
  rule = RULES[name](3)
  perm = np.random.default_rng(1).permutation(11)
  np.testing.assert_allclose(apply(rule, x[perm]), apply(rule, x),
                             rtol=1e-5, atol=1e-6)


def test_rules_match_numpy_on_pytrees():
  rng = np.random.default_rng(4)
  tree = {"w": rng.normal(size=(9, 3, 2)).astype(np.float32),
          "b": rng.integers(-2, 3, size=(9, 5)).astype(np.float32)}
  refs = {"median": lambda x: references.np_median(x),
          "trimmed_mean": lambda x: references.np_trimmed_mean(x, 3),
          "mean_around_median": lambda x: references.np_meamed(x, 3),
          "phocas": lambda x: references.np_phocas(x, 3)}
  for name, ref in refs.items():
    out = apply(RULES[name](3), tree)
    for key in tree:
      np.testing.assert_allclose(out[key], ref(tree[key]), rtol=3e-6,
                                 atol=1e-6, err_msg=f"{name}/{key}")


BAD_VALUES = (np.nan, np.inf, -np.inf, 1e30, -1e30)


def byzantine_stacks(n, f, d, seed):
  """f rows replaced by non-finite or huge values, in every combination."""
  rng = np.random.default_rng(seed)
  honest = rng.normal(size=(n, d)).astype(np.float32)
  for values in itertools.product(BAD_VALUES, repeat=2):
    x = honest.copy()
    rows = rng.choice(n, f, replace=False)
    for k, row in enumerate(rows):
      x[row] = values[k % 2]
    x[rows[0], 0] = 5.0  # a finite entry in a Byzantine row
    yield x, np.delete(honest, rows, axis=0)


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("n,f", [(5, 2), (8, 3)])
def test_f_bad_rows_give_finite_output(name, n, f):
  rule = RULES[name](f)
  update = jax.jit(rule.update)
  state = rule.init(None, n)
  for x, _ in byzantine_stacks(n, f, 6, n + f):
    out = update(x, state)[0]
    assert np.all(np.isfinite(out)), (name, x)


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
def test_output_stays_in_the_honest_range(name):
  n, f = 9, 4
  update = jax.jit(RULES[name](f).update)
  for x, honest in byzantine_stacks(n, f, 30, 11):
    out = np.asarray(update(x, RULES[name](f).init(None, n))[0])
    assert np.all(out >= honest.min(0)) and np.all(out <= honest.max(0))


@pytest.mark.parametrize("name", ["mean_around_median", "phocas"])
def test_output_stays_near_the_centre(name):
  # Within distance D of the centre, D = the honest values' largest distance
  # to it (the centre is itself inside the honest range).
  n, f = 9, 4
  update = jax.jit(RULES[name](f).update)
  center = order_stats.median_over_workers if name == "mean_around_median" \
      else lambda x: order_stats.trimmed_mean_over_workers(x, f)
  for x, honest in byzantine_stacks(n, f, 30, 12):
    c = np.asarray(center(x))
    assert np.all(c >= honest.min(0)) and np.all(c <= honest.max(0))
    reach = np.abs(honest - c).max(0)
    out = np.asarray(update(x, RULES[name](f).init(None, n))[0])
    assert np.all(np.abs(out - c) <= reach * (1 + 1e-6) + 1e-6)


def test_mean_around_median_can_leave_the_honest_range():
  # Honest {0, 10, 10}, Byzantine 10.5: the paper's rule keeps 10.5.
  x = jnp.array([[0.0], [10.0], [10.0], [10.5]])
  for name in ("mean_around_median", "phocas"):
    np.testing.assert_allclose(apply(RULES[name](1), x), [61.0 / 6])


@pytest.mark.parametrize("name", ["trimmed_mean", "mean_around_median",
                                  "phocas"])
def test_n_at_most_2f_is_rejected_at_init_and_trace(name):
  rule = RULES[name](2)
  with pytest.raises(ValueError, match=rf"{name} needs n > 2f; got n=4, f=2"):
    rule.init(None, 4)
  with pytest.raises(ValueError, match=r"got n=4, f=2"):
    rule.update(jnp.zeros((4, 3)), rule.init(None, 5))
  rule.init(None, 5)


def test_median_checks_an_optional_f():
  with pytest.raises(ValueError, match=r"median needs n > 2f; got n=6, f=3"):
    coordinatewise.median(num_byzantine=3).init(None, 6)
  coordinatewise.median(num_byzantine=2).init(None, 5)
  coordinatewise.median().init(None, 2)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2", None])
def test_num_byzantine_must_be_a_nonnegative_int(bad):
  with pytest.raises(ValueError, match="integer num_byzantine"):
    coordinatewise.trimmed_mean(bad)
  if bad is not None:
    with pytest.raises(ValueError, match="integer num_byzantine"):
      coordinatewise.median(num_byzantine=bad)


def test_rules_run_inside_dist_aggregate():
  n = 6
  rng = np.random.default_rng(9)
  grads = {"w": rng.normal(size=(n, 4, 3)).astype(np.float32),
           "b": rng.normal(size=(n, 3)).astype(np.float32)}
  grads["w"][0] = np.nan  # one Byzantine worker
  for name, make in RULES.items():
    rule = make(1)
    tx = dist.aggregate(rule)

    def step(g, tx=tx):
      return tx.update(g, tx.init(g))[0]

    out = jax.jit(jax.vmap(step, axis_name=dist.WORKERS))(grads)
    expected = apply(rule, grads)
    for o, e in zip(jax.tree.leaves(out), jax.tree.leaves(expected)):
      assert np.all(np.isfinite(o)), name
      np.testing.assert_allclose(o, np.broadcast_to(e, o.shape), rtol=1e-5,
                                 atol=1e-6, err_msg=name)
