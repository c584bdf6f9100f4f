"""Top-k, global top-k, random-k and threshold sparsifiers, and the contract.

The contract itself is ``helpers.check_compressor_contract``, shared with
``test_threelc.py``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax import algorithms as alg
from distoptax.algorithms.compressors import randomk
from distoptax.algorithms.compressors import selection
from distoptax.algorithms.compressors import topk
from tests import helpers
from tests import references


def _adversarial_inputs(d, sample_size, rng):
  """Inputs that defeat the sampled threshold (ties, planted samples)."""
  sample = selection.sample_positions(d, sample_size)
  planted_high = rng.normal(size=d)
  planted_high[sample] = 100.0
  planted_low = rng.normal(size=d)
  planted_low[sample] = 0.0
  nans = rng.normal(size=d)
  nans[::7] = np.nan
  tied_block = rng.normal(size=d)
  tied_block[rng.integers(0, d, d // 5)] = 2.0
  tied_block[rng.integers(0, d, d // 5)] = -2.0
  return np.stack([
      rng.normal(size=d),
      np.ones(d),                               # all tied
      np.zeros(d),
      np.where(rng.random(d) < 0.5, -0.0, 0.0),  # signed zeros tie
      rng.integers(-3, 4, size=d),              # few distinct magnitudes
      planted_high,                             # sample above: N < k
      planted_low,                              # sample below: N > cap
      nans,
      tied_block,
      np.inf * np.sign(rng.normal(size=d)),
  ]).astype(np.float32)


# ------------------------------------------------------------------ selection


@pytest.mark.parametrize("k", [1, 300, 1499])
def test_top_k_indices_equal_numpy_on_adversarial_inputs(k):
  d, m = 3001, 64   # d > 4 m: the sampled-threshold path with its fallbacks
  batch = _adversarial_inputs(d, m, np.random.default_rng(k))
  select = jax.jit(jax.vmap(
      lambda x: selection.top_k_indices(x, k, sample_size=m)))
  got = np.asarray(select(jnp.asarray(batch)))
  for row, x in zip(got, batch):
    np.testing.assert_array_equal(row, references.reference_top_k(x, k))


def test_top_k_indices_sorted_path_and_small_dtypes():
  rng = np.random.default_rng(1)
  x = rng.integers(-5, 6, size=700).astype(np.float32)
  for k in (0, 1, 350, 700):   # d <= 4 * sample_size: stable sort
    got = selection.top_k_indices(jnp.asarray(x), k)
    np.testing.assert_array_equal(got, references.reference_top_k(x, k))
  select = jax.jit(lambda y: selection.top_k_indices(y, 50, sample_size=16))
  for dtype in (jnp.bfloat16, jnp.float16):
    y = jnp.asarray(rng.normal(size=2000), dtype)
    np.testing.assert_array_equal(select(y),
                                  references.reference_top_k(np.asarray(y), 50))


def test_find_threshold_reaches_the_window_through_ties():
  ones = jnp.ones(1000)   # every count but 0 and 1000 needs the index stage
  for k, cap in [(333, 333), (999, 1000)]:
    words, count = jax.jit(lambda x: selection.find_threshold(
        x, selection.magnitude_key, k, cap, jnp.int32(0)))(ones)
    assert k <= int(count) <= cap
    assert int(count) == int(np.unpackbits(
        np.asarray(words).view(np.uint8)).sum())


def test_compact_lists_set_positions_in_order():
  rng = np.random.default_rng(2)
  mask = rng.random(1000) < 0.05
  want = np.flatnonzero(mask)
  got = jax.jit(lambda m: selection.compact(
      selection.pack_bits(m), want.size + 5, fill=-1))(jnp.asarray(mask))
  np.testing.assert_array_equal(got[:want.size], want)
  np.testing.assert_array_equal(got[want.size:], -1)


# ---------------------------------------------------------------------- top-k


def test_top_k_is_contractive_and_selects_the_reference_set():
  rng = np.random.default_rng(3)
  for d, fraction in [(1, 0.5), (10, 0.1), (257, 0.05)]:
    c = topk.top_k(fraction=fraction)
    k = max(1, math.ceil(round(fraction * d, 6)))
    for x in (rng.normal(size=d), rng.integers(-2, 3, size=d)):
      x = jnp.asarray(x, jnp.float32)
      message = c.encode(jax.random.key(0), {"x": x})
      np.testing.assert_array_equal(
          message["x"].arrays["indices"],
          references.reference_top_k(np.asarray(x), k))
      y = c.decode(message)["x"]
      err = float(jnp.sum((x - y) ** 2))
      assert err <= (1 - k / d) * float(jnp.sum(x ** 2)) * (1 + 1e-6) + 1e-9


def test_global_top_k_equals_top_k_of_the_concatenation():
  rng = np.random.default_rng(4)
  tree = {"a": jnp.asarray(rng.integers(-3, 4, size=(4, 5)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=7), jnp.bfloat16),
          "c": jnp.float32(9.0)}
  c = topk.global_top_k(k=6)
  message = c.encode(jax.random.key(0), tree)
  flat = np.concatenate([np.asarray(l, np.float32).ravel()
                         for l in jax.tree.leaves(tree)])
  want = references.reference_top_k(flat, 6)
  np.testing.assert_array_equal(message.arrays["indices"], want)
  dense = np.zeros_like(flat)
  dense[want] = flat[want]
  out = c.decode(message)
  assert jax.tree.structure(out) == jax.tree.structure(tree)
  got = np.concatenate([np.asarray(l, np.float32).ravel()
                        for l in jax.tree.leaves(out)])
  np.testing.assert_array_equal(got, dense)
  assert out["b"].dtype == jnp.bfloat16 and out["c"].shape == ()


def test_budgets_are_validated():
  for factory in (topk.top_k, topk.global_top_k, randomk.random_k):
    with pytest.raises(ValueError, match="exactly one of fraction and k"):
      factory()
    with pytest.raises(ValueError, match="exactly one"):
      factory(0.1, k=3)
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\]; got "
                       r"fraction=1.5"):
      factory(1.5)
    with pytest.raises(ValueError, match="integer k >= 1; got k=0"):
      factory(k=0)
  with pytest.raises(ValueError, match="tau >= 0; got tau=-1"):
    alg.compressors.threshold(-1.0)
  with pytest.raises(ValueError, match="integer capacity >= 1"):
    alg.compressors.threshold(0.1, capacity=0)


# ------------------------------------------------------------------- random-k


def _monte_carlo(compressor, x, num_keys):
  keys = jax.random.split(jax.random.key(5), num_keys)
  run = jax.jit(jax.vmap(lambda key: compressor.decode(
      compressor.encode(key, {"x": x}))["x"]))
  return np.asarray(run(keys), np.float64)


def _passes_unbiasedness_test(samples, x, z=5.0):
  """z-test per coordinate of the Monte Carlo mean against x."""
  mean = samples.mean(0)
  stderr = samples.std(0, ddof=1) / np.sqrt(samples.shape[0]) + 1e-12
  return bool(np.all(np.abs(mean - np.asarray(x)) <= z * stderr))


def test_random_k_is_unbiased_and_the_unscaled_variant_is_rejected():
  x = jnp.linspace(-1.0, 2.0, 10)
  samples = _monte_carlo(randomk.random_k(k=3), x, 4000)
  assert _passes_unbiasedness_test(samples, x)
  unscaled = _monte_carlo(randomk.random_k(k=3, scaled=False), x, 4000)
  assert not _passes_unbiasedness_test(unscaled, x)
  # Exact second moment: E|C(x) - x|^2 = (d/k - 1)|x|^2.
  err = np.sum((samples - np.asarray(x)) ** 2, axis=1)
  expected = (10 / 3 - 1) * float(jnp.sum(x ** 2))
  assert abs(err.mean() - expected) < 5 * err.std() / np.sqrt(err.size)


@pytest.mark.parametrize("d,k", [(6, 2), (6, 5), (40, 3)])
def test_random_indices_are_a_uniform_subset(d, k):
  keys = jax.random.split(jax.random.key(6), 3000)
  idx = np.asarray(jax.jit(jax.vmap(
      lambda key: randomk.random_indices(key, d, k)))(keys))
  assert np.all(np.diff(idx, axis=1) > 0) and idx.min() >= 0
  assert idx.max() < d
  counts = np.bincount(idx.ravel(), minlength=d)
  p = k / d
  assert np.all(np.abs(counts - 3000 * p) < 5 * np.sqrt(3000 * p * (1 - p)))
  if d == 6:   # every pair equally likely, as for a uniform k-subset
    pairs = np.zeros((d, d))
    for row in idx:
      pairs[np.ix_(row, row)] += 1
    q = k * (k - 1) / (d * (d - 1))
    off = pairs[~np.eye(d, dtype=bool)]
    assert np.all(np.abs(off - 3000 * q) < 5 * np.sqrt(3000 * q * (1 - q)))


def test_random_k_messages_sum_before_decoding_with_shared_indices():
  c = randomk.random_k(fraction=0.25)
  key = jax.random.key(7)
  rng = np.random.default_rng(7)
  xs = [{"w": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
         "b": jnp.asarray(rng.normal(size=5), jnp.float32)}
        for _ in range(3)]
  encode, decode = jax.jit(c.encode), jax.jit(c.decode)
  messages = [encode(key, x) for x in xs]
  decoded = [decode(m) for m in messages]
  for leaf in ("w", "b"):   # identical indices on every worker
    masks = [np.asarray(d[leaf]) != 0 for d in decoded]
    assert all(np.array_equal(masks[0], m) for m in masks)
  total = jax.tree.map(lambda *m: sum(m), *messages)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               decode(total), jax.tree.map(lambda *d: sum(d), *decoded))
  other = decode(encode(jax.random.key(8), xs[0]))
  assert not np.array_equal(np.asarray(other["w"]) != 0,
                            np.asarray(decoded[0]["w"]) != 0)


# ------------------------------------------------------------------ threshold


def test_threshold_wire_format_overflow_and_empty_message():
  c = alg.compressors.threshold(1.0, capacity=3)
  encode = jax.jit(c.encode)
  x = jnp.array([2.0, -0.5, -1.5, 1.0, 3.0, 0.0, -4.0])
  message = encode(jax.random.key(0), x)
  np.testing.assert_array_equal(message.arrays["indices"], [0, 2, 4])
  np.testing.assert_array_equal(message.arrays["values"], [2.0, -1.5, 3.0])
  assert set(message.arrays) == {"indices", "values"}
  # -4.0 overflows the capacity: 3 pairs sent.
  assert int(c.coded_bits(message)) == 32 + 3 * 64
  np.testing.assert_array_equal(
      c.decode(message), [2.0, 0.0, -1.5, 0.0, 3.0, 0.0, 0.0])
  empty = encode(jax.random.key(0), jnp.full((7,), 0.5))
  np.testing.assert_array_equal(empty.arrays["indices"], [7, 7, 7])
  np.testing.assert_array_equal(c.decode(empty), np.zeros(7))
  assert int(c.coded_bits(empty)) == 32


# ------------------------------------------------------------------- contract


def _sizes(tree):
  return [int(np.prod(l.shape)) for l in jax.tree.leaves(tree)]


def _items(tree):
  return [jnp.dtype(l.dtype).itemsize for l in jax.tree.leaves(tree)]


def _per_leaf(count):
  def wire(tree):
    return sum(count(d) * (4 + s) for d, s in zip(_sizes(tree),
                                                  _items(tree)))
  return wire


CONTRACT = {
    "top_k": (lambda: topk.top_k(fraction=0.2),
              _per_leaf(lambda d: max(1, math.ceil(round(0.2 * d, 6))))),
    "global_top_k": (
        lambda: topk.global_top_k(k=9),
        lambda tree: 9 * (4 + max(_items(tree)))),
    "random_k": (
        lambda: randomk.random_k(k=4),
        lambda tree: 20 + sum(min(4, d) * s for d, s in zip(_sizes(tree),
                                                            _items(tree)))),
    "threshold": (
        lambda: alg.compressors.threshold(0.5, capacity=5),
        lambda tree: sum(min(5, d) * (4 + s)
                         for d, s in zip(_sizes(tree), _items(tree)))),
}


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_compressor_contract(name):
  factory, wire_bytes = CONTRACT[name]
  helpers.check_compressor_contract(factory(), wire_bytes)
