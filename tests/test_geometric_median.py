"""The smoothed-Weiszfeld geometric median against NumPy and scipy."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

# The module itself: the package re-exports a function of this name, which
# hides the submodule from `from ... import geometric_median`.
gm = importlib.import_module(
    "distoptax.algorithms.aggregators.geometric_median")


def np_weiszfeld(x, z, nu, iterations):
  """RFA's smoothed Weiszfeld in float64 (Pillutla et al., arXiv:1912.13445).

  beta_i = 1 / max(nu, |z - x_i|), z <- sum_i beta_i x_i / sum_i beta_i.
  """
  x = x.astype(np.float64)
  z = np.asarray(z, np.float64)
  for _ in range(iterations):
    beta = 1.0 / np.maximum(nu, np.linalg.norm(x - z, axis=1))
    z = beta @ x / beta.sum()
  return z


def byzfl_geometric_median(x, nu=0.1, iterations=3):
  """ByzFL's convention (card A5): zero start, nu = 0.1, T = 3, no test."""
  return np_weiszfeld(x, np.zeros(x.shape[1]), nu, iterations)


def objective(x, z):
  return np.linalg.norm(x.astype(np.float64) - z, axis=1).sum()


def run(rule, stack):
  n = jax.tree.leaves(stack)[0].shape[0]
  return jax.jit(rule.update)(stack, rule.init(None, n))


CARD_EXAMPLE = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]],
                        np.float32)


def test_peer_convention_differs_and_ours_converges():
  byzfl = byzfl_geometric_median(CARD_EXAMPLE)
  np.testing.assert_allclose(byzfl, [3.78788764, 4.78788764, 5.78788764],
                             rtol=1e-8)
  same = gm.geometric_median(init="zeros", smoothing=0.1, max_iterations=3,
                             tolerance=0.0)
  out, state = run(same, CARD_EXAMPLE)
  np.testing.assert_allclose(out, byzfl, rtol=1e-6)
  assert int(state.iterations) == 3
  out, state = run(gm.geometric_median(), CARD_EXAMPLE)
  np.testing.assert_allclose(out, [4.0, 5.0, 6.0], rtol=1e-6)
  assert np.abs(out - byzfl).max() > 0.2
  assert int(state.iterations) < 100


@pytest.mark.parametrize("init", ["coordinate_median", "mean", "zeros"])
def test_iterates_match_numpy_weiszfeld(init):
  rng = np.random.default_rng(0)
  for trial in range(3):
    n, d = rng.integers(3, 12), rng.integers(1, 40)
    x = (rng.normal(size=(n, d)) * 2 + rng.normal(size=d)).astype(np.float32)
    z0 = {"coordinate_median": np.median(x, axis=0),
          "mean": x.mean(axis=0), "zeros": np.zeros(d)}[init]
    for iterations in (1, 6):
      rule = gm.geometric_median(init=init, max_iterations=iterations,
                                 tolerance=0.0, smoothing=1e-3)
      out, state = run(rule, x)
      ref = np_weiszfeld(x, z0, 1e-3, iterations)
      np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5,
                                 err_msg=f"{trial} {iterations}")
      assert int(state.iterations) == iterations


def test_converges_to_the_minimiser_of_the_sum_of_distances():
  rng = np.random.default_rng(1)
  for trial in range(8):
    n, d = rng.integers(3, 10), rng.integers(1, 5)
    x = (rng.normal(size=(n, d)) * rng.uniform(0.5, 5)
         + rng.normal(size=d) * 3).astype(np.float32)
    out, state = run(gm.geometric_median(), x)
    out = np.asarray(out, np.float64)
    best = optimize.minimize(
        lambda z: objective(x, z), np.median(x, axis=0).astype(np.float64),
        method="Nelder-Mead",
        options=dict(xatol=1e-10, fatol=1e-12, maxiter=20000, maxfev=40000))
    assert objective(x, out) <= best.fun * (1 + 1e-6), trial
    # The true median's first-order condition: unit vectors sum to ~0.
    assert np.linalg.norm(out - best.x) <= 1e-3 * (1 + np.abs(best.x).max())
    assert int(state.iterations) <= 100


def test_stops_at_the_tolerance():
  x = np.random.default_rng(2).normal(size=(9, 50)).astype(np.float32)
  _, loose = run(gm.geometric_median(tolerance=1e-2), x)
  _, tight = run(gm.geometric_median(tolerance=1e-6), x)
  assert 1 <= int(loose.iterations) < int(tight.iterations) < 100
  out, state = run(gm.geometric_median(max_iterations=0), x)
  np.testing.assert_allclose(out, np.median(x, axis=0), rtol=1e-6)
  assert int(state.iterations) == 0


def test_distances_are_over_the_whole_pytree():
  # Per-leaf geometric medians differ from the median of the joined vector.
  rng = np.random.default_rng(3)
  a = rng.normal(size=(7, 2)).astype(np.float32)
  b = rng.normal(size=(7, 3)).astype(np.float32) * 4
  rule = gm.geometric_median(max_iterations=8, tolerance=0.0, init="mean",
                             smoothing=1e-3)
  out, _ = run(rule, {"a": a, "b": b})
  joined = np.concatenate([a, b], axis=1)
  ref = np_weiszfeld(joined, joined.mean(0), 1e-3, 8)
  np.testing.assert_allclose(np.concatenate([out["a"], out["b"]]), ref,
                             rtol=2e-5, atol=2e-5)
  per_leaf = np_weiszfeld(a, a.mean(0), 1e-3, 8)
  assert np.abs(per_leaf - ref[:2]).max() > 1e-3


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_rows_get_zero_weight(bad):
  rng = np.random.default_rng(4)
  honest = rng.normal(size=(7, 6)).astype(np.float32)
  x = np.concatenate([honest[:3], np.full((2, 6), 1.0, np.float32),
                      honest[3:]])
  x[3, 2] = bad  # one non-finite entry spoils the whole row
  x[4] = bad
  out, state = run(gm.geometric_median(), x)
  ref, _ = run(gm.geometric_median(), honest)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
  weights = np.asarray(state.weights)
  assert weights.shape == (9,) and np.all(weights[3:5] == 0.0)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("init", ["coordinate_median", "mean", "zeros"])
@pytest.mark.parametrize("huge", [1e30, 3e38])
def test_huge_rows_do_not_overflow(init, huge):
  rng = np.random.default_rng(5)
  honest = rng.normal(size=(6, 100)).astype(np.float32)
  # Entries above 2**127 once gave NaN or a median pulled to -inf: the
  # reciprocal of their scale was subnormal (flushed to 0) and the mean
  # start overflowed.
  signs = np.where(rng.normal(size=(2, 100)) > 0, 1, -1)
  x = np.concatenate([honest, (huge * signs).astype(np.float32)])
  out, _ = run(gm.geometric_median(init=init), x)
  out = np.asarray(out)
  assert np.all(np.isfinite(out))
  # Two far points out of eight pull the median a bounded distance.
  ref, _ = run(gm.geometric_median(), honest)
  spread = np.linalg.norm(honest - np.asarray(ref), axis=1).max()
  assert np.linalg.norm(out - ref) <= 2 * spread
  # Updates whose squares overflow float32 still give the same median.
  scaled, _ = run(gm.geometric_median(init=init), honest * 1e25)
  np.testing.assert_allclose(np.asarray(scaled) / 1e25, ref, rtol=1e-4,
                             atol=1e-5)


def test_all_rows_nonfinite_gives_nan():
  out, _ = run(gm.geometric_median(), np.full((3, 2), np.inf, np.float32))
  assert np.all(np.isnan(out))


def test_keeps_dtypes_and_state_structure():
  x = {"w": jnp.ones((5, 2, 3), jnp.bfloat16), "b": jnp.zeros((5, 4))}
  rule = gm.geometric_median()
  state0 = rule.init(None, 5)
  out, state = jax.jit(rule.update)(x, state0)
  assert out["w"].dtype == jnp.bfloat16 and out["w"].shape == (2, 3)
  assert out["b"].dtype == jnp.float32
  assert jax.tree.structure(state) == jax.tree.structure(state0)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state0)):
    assert a.shape == b.shape and a.dtype == b.dtype


@pytest.mark.parametrize("kwargs,match", [
    (dict(smoothing=0.0), "smoothing > 0"),
    (dict(tolerance=-1.0), "tolerance >= 0"),
    (dict(max_iterations=-1), "max_iterations >= 0"),
    (dict(max_iterations=2.5), "max_iterations >= 0"),
    (dict(init="median"), "init must be one of"),
    (dict(num_byzantine=-1), "integer num_byzantine"),
])
def test_rejects_bad_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gm.geometric_median(**kwargs)


def test_checks_an_optional_f():
  rule = gm.geometric_median(num_byzantine=2)
  with pytest.raises(ValueError, match=r"n > 2f; got n=4, f=2"):
    rule.init(None, 4)
  with pytest.raises(ValueError, match=r"got n=4, f=2"):
    rule.update(jnp.zeros((4, 3)), gm.GeometricMedianState(
        jnp.zeros(4), jnp.zeros((), jnp.int32)))
  rule.init(None, 5)
