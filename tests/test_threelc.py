"""3LC: exact lossless stages, the quantizer, the coded length, the contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax.algorithms.compressors import threelc
from tests import helpers

ZERO = threelc.ZERO_BYTE


def _byte_cases(rng):
  """Packed-byte streams: random and adversarial for zero-run encoding."""
  cases = [np.zeros(0, np.uint8)]
  for length in (1, 2, 13, 14, 15, 16, 27, 28, 29, 30, 43, 200):
    cases.append(np.full(length, ZERO))                   # one run
    cases.append(np.r_[7, np.full(length, ZERO), 242])    # run inside
  cases.append(rng.integers(0, ZERO, 100))                # no zero byte
  cases.append(np.tile([ZERO, 0], 40))                    # runs of one
  cases.append(np.full(50, 242))
  for density in (0.3, 0.9, 0.99):
    cases.append(np.where(rng.random(3000) < density, ZERO,
                          rng.integers(0, 243, 3000)))
  return [c.astype(np.uint8) for c in cases]


def test_zero_run_encoding_round_trips_and_uses_the_run_codes():
  rng = np.random.default_rng(0)
  for data in _byte_cases(rng):
    encoded = threelc.zero_run_encode(data)
    np.testing.assert_array_equal(threelc.zero_run_decode(encoded), data)
    assert encoded.dtype == np.uint8
    runs = np.diff(np.r_[0, np.flatnonzero(np.diff(data == ZERO)) + 1,
                         data.size])
    lengths = [r for r, z in zip(runs, data[np.r_[0, np.cumsum(runs)[:-1]]]
                                 == ZERO) if z] if data.size else []
    assert encoded.size == (np.count_nonzero(data != ZERO)
                            + sum(math.ceil(n / 14) for n in lengths))
  codes = {1: [ZERO], 2: [243], 13: [254], 14: [255], 15: [255, ZERO],
           16: [255, 243], 28: [255, 255], 29: [255, 255, ZERO],
           30: [255, 255, 243]}
  for length, code in codes.items():
    np.testing.assert_array_equal(
        threelc.zero_run_encode(np.full(length, ZERO)), code)
  with pytest.raises(ValueError, match="0..242"):
    threelc.zero_run_encode(np.array([243]))


def test_zero_run_length_on_device_equals_the_encoder():
  rng = np.random.default_rng(1)
  cases = _byte_cases(rng)
  length = jax.jit(threelc.zero_run_length)
  # One stream, cases separated by a non-zero byte (runs never merge).
  joined = np.concatenate([np.r_[c, 5] for c in cases]).astype(np.uint8)
  assert int(length(jnp.asarray(joined))) == threelc.zero_run_encode(
      joined).size == sum(threelc.zero_run_encode(c).size + 1 for c in cases)


def test_base3_packing_round_trips():
  rng = np.random.default_rng(2)
  batch = lambda n: jnp.asarray(rng.integers(-1, 2, size=(64, n)), jnp.int8)
  for n in (1, 6, 1003):   # lengths that are not multiples of 5
    q = batch(n)
    packed = jax.vmap(threelc.pack_ternary)(q)
    assert packed.shape == (64, -(-n // 5)) and packed.dtype == jnp.uint8
    assert int(packed.max()) <= 242
    back = jax.vmap(lambda p: threelc.unpack_ternary(p, n))(packed)
    np.testing.assert_array_equal(back, q)
  for value, byte in ((-1, 0), (0, ZERO), (1, 242)):
    np.testing.assert_array_equal(
        threelc.pack_ternary(jnp.full(10, value)), [byte, byte])
  # The last, padded byte holds zeros: 7 zeros pack to two 121s.
  np.testing.assert_array_equal(threelc.pack_ternary(jnp.zeros(7)),
                                [ZERO, ZERO])


def test_quantizer_levels_contraction_and_sparsity_in_s():
  x = jnp.asarray(np.random.default_rng(3).standard_t(3, size=5000),
                  jnp.float32)
  zero_fraction = []
  for s in (1.0, 1.25, 1.5, 1.75, 1.99):
    c = threelc.three_lc(s)
    message = jax.jit(c.encode)(jax.random.key(0), {"x": x})
    y = np.asarray(c.decode(message)["x"], np.float64)
    scale = float(message["x"].arrays["scale"])
    assert scale == pytest.approx(s * float(jnp.max(jnp.abs(x))))
    assert set(np.unique(y)) <= {-scale, 0.0, scale}
    xs = np.asarray(x, np.float64)
    bound = np.sum(xs ** 2) - (1 - (s - 1) ** 2) * np.max(xs ** 2)
    assert np.sum((xs - y) ** 2) <= bound * (1 + 1e-6)
    np.testing.assert_array_equal(y != 0, np.abs(xs) > scale / 2)
    zero_fraction.append(np.mean(y == 0))
  assert zero_fraction == sorted(zero_fraction) and zero_fraction[0] < 1
  with pytest.raises(ValueError, match=r"\[1, 2\); got sparsity_multiplier=2"):
    threelc.three_lc(2.0)
  with pytest.raises(ValueError, match="sparsity_multiplier=0.5"):
    threelc.three_lc(0.5)


def test_coded_bits_are_the_zero_run_encoded_stream():
  rng = np.random.default_rng(4)
  tree = {"dense": jnp.asarray(rng.normal(size=(40, 7)), jnp.float32),
          "sparse": jnp.asarray(rng.normal(size=7000) * (rng.random(7000)
                                                         < 0.01)),
          "zero": jnp.zeros((33,))}
  c = threelc.three_lc(1.0)
  message = jax.jit(c.encode)(jax.random.key(0), tree)
  bits = int(jax.jit(c.coded_bits)(message))
  leaves = jax.tree.leaves(message, is_leaf=lambda m: hasattr(m, "arrays"))
  assert bits == sum(
      8 * threelc.zero_run_encode(np.asarray(m.arrays["packed"])).size + 32
      for m in leaves)
  # An all-zero leaf: 7000 values -> 1400 bytes of 121 -> 100 run codes.
  zero = jax.jit(c.encode)(jax.random.key(0), jnp.zeros(7000))
  assert int(c.coded_bits(zero)) == 8 * 100 + 32
  assert 32 * 7000 / (8 * 100 + 32) <= 280   # the ZRE ratio cap
  np.testing.assert_array_equal(c.decode(zero), np.zeros(7000))


def test_three_lc_contract():
  helpers.check_compressor_contract(
      threelc.three_lc(1.5),
      lambda tree: sum(-(-int(np.prod(l.shape)) // 5) + 4
                       for l in jax.tree.leaves(tree)))
