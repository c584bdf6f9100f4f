"""Distances, minimum-diameter averaging and the clipping rules.

Every rule is compared with a NumPy reference written from its paper.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax.algorithms import aggregators
from distoptax.algorithms.aggregators import clipping
from distoptax.algorithms.aggregators import distances
from distoptax.algorithms.aggregators import mda
from tests import references


dist_fn = jax.jit(distances.pairwise_squared_distances)
info_fn = jax.jit(distances.distance_info)


# ------------------------------------------------------------ distances
def test_raw_weights_regression_centred_gram():
  # Card d.6: rows = large common offset + small noise, float32, d = 1e6
  # (chunked path with a tail). Uncentred float32 Gram gives nonsense and
  # negative values; ours matches float64 to 1e-3 and is never negative.
  rng = np.random.default_rng(0)
  d = 1_000_003
  base = 1.0 + 0.05 * rng.normal(size=d)
  x = (base + 1e-4 * rng.normal(size=(4, d))).astype(np.float32)
  ref = references.ref_squared_distances(x)
  got = np.asarray(dist_fn(jnp.asarray(x)))
  off = ~np.eye(4, dtype=bool)
  np.testing.assert_allclose(got[off], ref[off], rtol=1e-3)
  assert np.all(got >= 0) and np.all(np.diag(got) == 0)
  np.testing.assert_array_equal(got, got.T)
  # The test can fail: the uncentred float32 Gram identity is far off.
  g = jax.jit(lambda x: jnp.dot(x, x.T, precision="highest"))(x)
  g = np.asarray(g, np.float64)
  naive = np.diag(g)[:, None] + np.diag(g)[None] - 2 * g
  assert np.max(np.abs(naive[off] - ref[off]) / ref[off]) > 0.1


def test_distances_of_a_pytree_sum_over_leaves_and_match_numpy():
  rng = np.random.default_rng(1)
  for n in (8,):
    x = rng.normal(size=(n, 7)).astype(np.float32) * 10 ** rng.uniform(
        -1, 1, size=(n, 1)).astype(np.float32)
    tree = {"a": jnp.asarray(x[:, :3]), "b": jnp.asarray(x[:, 3:]).reshape(
        n, 2, 2), "c": jnp.asarray(x[:, :0])}
    got = np.asarray(jax.jit(distances.pairwise_squared_distances)(tree))
    ref = references.ref_squared_distances(x)
    # Accuracy is relative to the squared norms around the centre.
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * ref.max())
    np.testing.assert_allclose(distances.flatten_workers(tree), x)


def test_chunked_and_single_product_paths_agree():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(8, 300_001)).astype(np.float32) + 5.0
  leaves = [jnp.asarray(x)]
  blocks = jax.jit(lambda l: distances._scaled_gram(l, 7, True))(leaves)
  single = jax.jit(lambda l: distances._scaled_gram(l, 7, False))(leaves)
  a = np.asarray(distances._mul_pow2(*distances._distance_parts(*blocks)[:2]))
  b = np.asarray(distances._mul_pow2(*distances._distance_parts(*single)[:2]))
  np.testing.assert_allclose(a, b, rtol=1e-5)
  np.testing.assert_allclose(a, references.ref_squared_distances(x),
                             rtol=1e-5)


@pytest.mark.parametrize("scale", [1e6, 1e10, 1e18, 3e38])
def test_huge_finite_rows_neither_overflow_nor_blur_honest_distances(scale):
  rng = np.random.default_rng(3)
  n = 10
  x = (0.01 * rng.normal(size=(n, 2000))).astype(np.float32)
  x[0] = scale          # Pulls the mean far away ...
  x[1] = -scale / 3     # ... and so does this one.
  x[2] = x[5] + 1e-3    # A subtle row near an honest one.
  info = info_fn(jnp.asarray(x))
  honest = np.arange(2, n)
  ref = references.ref_squared_distances(x)[np.ix_(honest, honest)]
  got = np.asarray(info.squared_distances)[np.ix_(honest, honest)]
  # Errors are relative to the honest spread (~0.4), not to the attack.
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.median(ref))
  assert not np.any(info.nonfinite)
  assert np.all(np.asarray(info.squared_distances) >= 0)


def test_nonfinite_rows_are_infinitely_far_with_zero_diagonal():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(6, 5)).astype(np.float32)
  x[1, 2] = np.nan
  x[4] = -np.inf
  info = info_fn(jnp.asarray(x))
  d = np.asarray(info.squared_distances)
  np.testing.assert_array_equal(info.nonfinite, [0, 1, 0, 0, 1, 0])
  assert np.all(np.diag(d) == 0)
  for i in (1, 4):
    assert np.all(np.isinf(np.delete(d[i], i)))
    assert np.all(np.isinf(np.delete(d[:, i], i)))
  good = [0, 2, 3, 5]
  np.testing.assert_allclose(d[np.ix_(good, good)],
                             references.ref_squared_distances(x[good]),
                             rtol=1e-5)


def test_combine_rows_ignores_zero_weight_nonfinite_rows():
  x = jnp.array([[1.0, 2.0], [jnp.nan, jnp.inf], [3.0, 4.0]])
  w = jnp.array([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
  for mask in (None, jnp.array([False, True, False])):
    out = np.asarray(distances.combine_rows(w, x, mask))
    np.testing.assert_array_equal(out[0], [2.0, 3.0])
    assert np.all(np.isnan(out[1]))


# ------------------------------------------------------------ MDA
@functools.lru_cache(maxsize=None)
def mda_update(f):
  rule = mda.minimum_diameter_averaging(f)
  return jax.jit(jax.vmap(
      lambda x: rule.update(x, rule.init(None, x.shape[0]))))


@pytest.mark.parametrize("n,f", [(5, 2), (9, 3)])
def test_mda_matches_brute_force_reference(n, f):
  rng = np.random.default_rng(5 + n)
  stacks = []
  for b in range(40):
    x = rng.normal(size=(n, 4))
    if b % 4 == 1:
      x[:f] = x[-1]                       # Mimic duplicates.
    elif b % 4 == 2:
      x[:f] = rng.normal(size=(f, 4)) * 20
    elif b % 4 == 3:
      x = rng.integers(-1, 2, size=(n, 4)).astype(float)  # Exact ties.
    stacks.append(x.astype(np.float32))
  out, state = mda_update(f)(jnp.asarray(np.stack(stacks)))
  for b, x in enumerate(stacks):
    want, subset = references.ref_mda(x, f)
    np.testing.assert_array_equal(np.flatnonzero(state.selected[b]), subset)
    np.testing.assert_allclose(out[b], want, rtol=1e-5, atol=1e-6)


def test_mda_with_nonfinite_rows_and_f_zero():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(9, 4)).astype(np.float32)
  x[0] = np.nan
  x[4, 1] = np.inf
  x[7] = 1e30
  # Same batch shape as the reference test: no new compilation.
  out, state = mda_update(3)(jnp.asarray(np.broadcast_to(x, (40, 9, 4))))
  assert np.all(np.isfinite(out))
  assert not np.any(np.asarray(state.selected[0])[[0, 4, 7]])
  rule = mda.minimum_diameter_averaging(0)
  mean, _ = jax.jit(rule.update)(jnp.asarray(x[1:4]), rule.init(None, 3))
  np.testing.assert_allclose(mean, x[1:4].mean(0), rtol=1e-6)


def test_mda_preconditions_and_subset_cap():
  with pytest.raises(ValueError, match=r"needs n > 2f; got n=6, f=3"):
    mda.minimum_diameter_averaging(3).init(None, 6)
  with pytest.raises(ValueError, match=r"needs n > 2f; got n=4, f=2"):
    jax.jit(mda.minimum_diameter_averaging(2).update)(
        jnp.zeros((4, 2)), mda.minimum_diameter_averaging(2).init(None, 5))
  with pytest.raises(ValueError,
                     match=r"C\(32, 8\) = 10518300 > max_subsets=100000; "
                     r"got n=32, f=8"):
    mda.minimum_diameter_averaging(8).init(None, 32)
  mda.minimum_diameter_averaging(8, max_subsets=10**8).init(None, 32)


# ------------------------------------------------------------ clipping
def test_static_clipping_rule_and_function_match_reference():
  rng = np.random.default_rng(7)
  x = (rng.normal(size=(7, 9)) * rng.uniform(0.1, 5, size=(7, 1))).astype(
      np.float32)
  x[3] = 0.0
  clip_fn = jax.jit(clipping.clip_to_norm)
  # A traced max_norm (as under optax.inject_hyperparams).
  rule_fn = jax.jit(lambda x, c: clipping.static_clipping(c).update(
      x, clipping.static_clipping(c).init(None, x.shape[0])))
  for c in (0.5, 2.0, 100.0):
    clipped = clip_fn(jnp.asarray(x), c)
    np.testing.assert_allclose(clipped, references.ref_clip(x, c), rtol=1e-5,
                               atol=1e-7)
    out, _ = rule_fn(jnp.asarray(x), c)
    np.testing.assert_allclose(out, references.ref_clip(x, c).mean(0),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n,f", [(4, 1), (9, 4), (6, 0)])
def test_arc_matches_reference(n, f):
  rng = np.random.default_rng(8 + n)
  rule = clipping.adaptive_robust_clipping(f)
  clip_fn = jax.jit(functools.partial(clipping.adaptive_robust_clip,
                                      num_byzantine=f))
  rule_fn = jax.jit(rule.update)
  for trial in range(6):
    x = rng.normal(size=(n, 5)) * rng.uniform(0.1, 10, size=(n, 1))
    if trial % 3 == 1:
      x[: max(f, 1)] *= 1e3
    if trial % 3 == 2:
      x[1] = x[0]  # Equal norms.
    x = x.astype(np.float32)
    np.testing.assert_allclose(clip_fn(jnp.asarray(x)),
                               references.ref_arc(x, f), rtol=1e-5, atol=1e-6)
    out, _ = rule_fn(jnp.asarray(x), rule.init(None, n))
    np.testing.assert_allclose(out, references.ref_arc(x, f).mean(0),
                               rtol=1e-5, atol=1e-6)


def test_arc_constant_is_the_papers():
  # k = floor(2 (f / n) (n - f)): 10 workers, 3 Byzantine -> k = 4.
  assert clipping.arc_num_clipped(10, 3) == 4
  assert clipping.arc_num_clipped(13, 4) == 5  # 72 / 13 = 5.5
  assert clipping.arc_num_clipped(7, 0) == 0
  # A wrong constant (e.g. k = f) would leave the 4th largest unclipped.
  x = jnp.asarray(np.arange(1.0, 11.0)[:, None], jnp.float32)
  out = np.asarray(clipping.adaptive_robust_clip(x, 3)).ravel()
  np.testing.assert_array_equal(out, [1, 2, 3, 4, 5, 6, 6, 6, 6, 6])


CLIPPING_RULES = (clipping.static_clipping(1.0),
                  clipping.adaptive_robust_clipping(3))
CLIPPERS = (jax.jit(CLIPPING_RULES[0].update),
            jax.jit(CLIPPING_RULES[1].update),
            jax.jit(lambda x: clipping.clip_to_norm(x, 1.0)),
            jax.jit(lambda x: clipping.adaptive_robust_clip(x, 3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e38])
def test_clipping_rules_stay_finite_with_bad_workers(bad):
  rng = np.random.default_rng(9)
  x = rng.normal(size=(7, 6)).astype(np.float32)
  x[[0, 5]] = bad
  x[2, 3] = -np.inf if np.isfinite(bad) else bad
  for rule, rule_fn in zip(CLIPPING_RULES, CLIPPERS[:2]):
    out, _ = rule_fn(jnp.asarray(x), rule.init(None, 7))
    assert np.all(np.isfinite(out))
  for fn in CLIPPERS[2:]:
    out = np.asarray(fn(jnp.asarray(x)))
    assert np.all(np.isfinite(out))
    if not np.isfinite(bad):
      np.testing.assert_array_equal(out[[0, 2, 5]], 0.0)


def test_worker_norms_do_not_overflow():
  x = jnp.asarray(np.array([[3e30, 4e30], [3.0, 4.0], [np.nan, 1.0]],
                           np.float32))
  norms = np.asarray(clipping.worker_norms(x))
  np.testing.assert_allclose(norms[:2], [5e30, 5.0], rtol=1e-6)
  assert norms[2] == np.inf


FLOAT32_MAX = float(np.finfo(np.float32).max)
# Results below the smallest normal float32 are flushed to zero on CPU.
TINY = float(np.finfo(np.float32).tiny)


def extreme_rows():
  """Finite float32 rows whose norms overflow or underflow when squared.

  Row 0 is the issue's case (1e38: the reciprocal of the largest entry is
  subnormal, so dividing by it flushes to zero on CPU); the others reach
  the float32 maximum, 2^126, and 1e-30 (squares flush to zero).
  """
  x = np.ones((8, 4), np.float32)
  x[1] = [1.0, 2.0, 0.5, -1.0]
  x[2] = 1e38
  x[3] = [FLOAT32_MAX, -FLOAT32_MAX, FLOAT32_MAX, -FLOAT32_MAX]
  x[4] = [FLOAT32_MAX, 1.0, 0.0, -3.0]
  x[5] = 2.0 ** 126
  x[6] = [1e-30, -2e-30, 0.0, 3e-30]
  x[7] = [0.0, -FLOAT32_MAX, 1e-30, 0.0]
  return x


def test_static_clipping_clips_rows_near_the_float32_maximum():
  # The reproduction: before the fix the mean was ~3.3e37.
  x = np.array([[1, 1], [1, 2], [1e38, 1e38]], np.float32)
  rule = clipping.static_clipping(1.0)
  out, _ = jax.jit(rule.update)(jnp.asarray(x), rule.init(None, 3))
  np.testing.assert_allclose(out, references.ref_clip(x, 1.0).mean(0),
                             rtol=1e-6)
  assert np.all(np.abs(np.asarray(out)) < 1.0)


@pytest.mark.parametrize("c", [1.0, 1e-32, 1e30])
def test_clipping_matches_float64_on_extreme_finite_rows(c):
  x = extreme_rows()
  clipped = np.asarray(jax.jit(clipping.clip_to_norm)(jnp.asarray(x), c))
  np.testing.assert_allclose(clipped, references.ref_clip(x, c), rtol=1e-6,
                             atol=TINY)
  assert np.all(np.linalg.norm(clipped.astype(np.float64), axis=1)
                <= c * (1 + 1e-6))
  out, _ = jax.jit(lambda x, c: clipping.static_clipping(c).update(
      x, clipping.static_clipping(c).init(None, 8)))(jnp.asarray(x), c)
  np.testing.assert_allclose(out, references.ref_clip(x, c).mean(0),
                             rtol=1e-6, atol=TINY)
  stage = aggregators.preaggregation.static_clipping(c)
  staged, _ = jax.jit(stage.update)(jnp.asarray(x), stage.init(None, 8))
  np.testing.assert_array_equal(staged, clipped)


@pytest.mark.parametrize("f", [1, 3])
def test_arc_matches_float64_on_extreme_finite_rows(f):
  x = extreme_rows()
  want = references.ref_arc(x, f)
  clipped = np.asarray(jax.jit(functools.partial(
      clipping.adaptive_robust_clip, num_byzantine=f))(jnp.asarray(x)))
  np.testing.assert_allclose(clipped, want, rtol=1e-6, atol=TINY)
  rule = clipping.adaptive_robust_clipping(f)
  out, _ = jax.jit(rule.update)(jnp.asarray(x), rule.init(None, 8))
  np.testing.assert_allclose(out, want.mean(0), rtol=1e-6, atol=TINY)
  stage = aggregators.preaggregation.adaptive_robust_clipping(f)
  staged, _ = jax.jit(stage.update)(jnp.asarray(x), stage.init(None, 8))
  np.testing.assert_array_equal(staged, clipped)


def test_centered_clipping_matches_float64_on_extreme_finite_rows():
  x = extreme_rows()
  steps = [x, x[::-1].copy(), -x]
  rule = clipping.centered_clipping(1.0, iterations=2)
  update = jax.jit(rule.update)
  state = rule.init(jnp.zeros(4), 8)
  for step, (xs, want) in enumerate(
      zip(steps, references.ref_centered_clipping(steps, 1.0, 2))):
    out, state = update(jnp.asarray(xs), state)
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=1e-7,
                               err_msg=f"step {step}")


def test_worker_norms_neither_overflow_nor_underflow():
  x = extreme_rows()
  want = np.linalg.norm(x.astype(np.float64), axis=1)
  got = np.asarray(jax.jit(clipping.worker_norms)(jnp.asarray(x)))
  fits = want <= FLOAT32_MAX
  np.testing.assert_allclose(got[fits], want[fits], rtol=1e-6, atol=0)
  # A norm beyond the float32 range (row 3: 2 * max) is +inf, as documented.
  assert not fits[3] and got[3] == np.inf
  # Around a centre: the differences are the extreme rows.
  centre = np.full(4, 1.0, np.float32)
  got = np.asarray(jax.jit(clipping.worker_norms)(
      jnp.asarray(x + centre), jnp.asarray(centre)))
  want = np.linalg.norm((x + centre).astype(np.float64) - centre, axis=1)
  np.testing.assert_allclose(got[fits], want[fits], rtol=1e-6, atol=0)


def test_clipping_argument_validation():
  with pytest.raises(ValueError, match=r"max_norm > 0; got max_norm=0"):
    clipping.static_clipping(0)
  with pytest.raises(ValueError,
                     match=r"adaptive_robust_clipping needs n > 2f; got n=6, "
                     r"f=3"):
    clipping.adaptive_robust_clipping(3).init(None, 6)
  with pytest.raises(ValueError, match=r"got n=4, f=2"):
    jax.jit(clipping.adaptive_robust_clipping(2).update)(
        jnp.zeros((4, 2)), clipping.adaptive_robust_clipping(2).init(None, 5))
  with pytest.raises(ValueError, match=r"radius > 0; got radius=-1"):
    clipping.centered_clipping(-1.0)
  with pytest.raises(ValueError, match=r"iterations >= 1; got iterations=0"):
    clipping.centered_clipping(1.0, iterations=0)
  with pytest.raises(ValueError, match=r"needs params at init"):
    clipping.centered_clipping(1.0).init(None, 3)


# ------------------------------------------------------------ centered clipping
@pytest.mark.parametrize("tau,iterations", [(0.5, 1), (2.0, 3), (1e9, 1)])
def test_centered_clipping_is_stateful_and_matches_reference(tau, iterations):
  rng = np.random.default_rng(10)
  n, d = 8, 6
  steps = [rng.normal(size=(n, d)).astype(np.float32) + 1.0
           for _ in range(4)]
  steps[1][2] = 50.0
  steps[2][[0, 3]] = np.nan
  steps[3][5] = np.inf
  rule = clipping.centered_clipping(tau, iterations=iterations)
  params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(())}
  state = rule.init(params, n)
  update = jax.jit(rule.update)
  want = references.ref_centered_clipping(steps, tau, iterations)
  for x, w in zip(steps, want):
    # "b" stays zero, so each worker's flattened update is its row of x.
    tree = {"w": jnp.asarray(x).reshape(n, 2, 3), "b": jnp.zeros((n,))}
    out, state = update(tree, state)
    np.testing.assert_allclose(np.asarray(out["w"]).ravel(), w, rtol=2e-5,
                               atol=2e-6)
    np.testing.assert_allclose(np.asarray(state.center["w"]).ravel(), w,
                               rtol=2e-5, atol=2e-6)
    assert np.all(np.isfinite(out["w"]))
  if tau == 1e9 and iterations == 1:
    # tau = inf, L = 1, from v0 = 0: the first step is the mean.
    np.testing.assert_allclose(want[0], steps[0].mean(0), rtol=1e-6)


def test_low_precision_leaves_keep_their_dtype():
  rng = np.random.default_rng(11)
  x = rng.normal(size=(7, 6)).astype(np.float32)
  tree = {"a": jnp.asarray(x, jnp.bfloat16),
          "b": jnp.asarray(x[:, :2], jnp.float16)}
  params = jax.tree.map(lambda l: l[0], tree)
  for rule in (aggregators.krum(2), clipping.centered_clipping(1.0)):
    out, _ = jax.jit(rule.update)(tree, rule.init(params, 7))
    assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float16
    assert out["a"].shape == (6,) and np.all(np.isfinite(
        np.asarray(out["a"], np.float32)))


def test_low_precision_leaves_with_huge_rows_are_clipped():
  # bfloat16 reaches about the float32 maximum: the stepwise path (factors
  # below the normal range) keeps each leaf's dtype too.
  x = np.ones((5, 3), np.float32)
  x[4] = 3e38
  tree = {"a": jnp.asarray(x, jnp.bfloat16)}
  want = references.ref_clip(np.asarray(tree["a"], np.float32), 1.0).mean(0)
  params = jax.tree.map(lambda l: l[0], tree)
  for rule in (clipping.static_clipping(1.0),
               clipping.centered_clipping(1.0)):
    out, _ = jax.jit(rule.update)(tree, rule.init(params, 5))
    assert out["a"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out["a"], np.float32), want,
                               rtol=1e-2)
