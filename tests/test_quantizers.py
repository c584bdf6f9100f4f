"""Statistical tests of the stochastic quantizers, with tests that can fail.

Every unbiased quantizer here rounds coordinate ``i`` to one of two
neighbouring values ``lo_i < lo_i + step_i`` with probability ``p_i`` of the
upper one, so its exact variance is ``step_i**2 p_i (1 - p_i)``. The oracles
below compute ``(step_i, p_i)`` from each paper's definition, in float64.

Test statistics, over ``R`` independent draws (family-wise level 1e-4):

* per coordinate ``z_i = mean_error_i / sqrt(var_i / R)``, Bonferroni over
  the coordinates with ``R p_i (1 - p_i) >= 25`` (where the normal
  approximation of a binomial mean holds);
* along ``x``, ``z_x = <x, mean_error> / sqrt(sum_i x_i**2 var_i / R)``,
  which detects a scale error;
* coordinates with ``var_i = 0`` (on the grid) must come back exactly.

A biased variant (scale off by 1%, or deterministic rounding) must be
rejected; the number of draws is chosen so that the expected ``z_x`` of the
1% error exceeds the threshold by 5.
"""

import math
from statistics import NormalDist
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax.algorithms import compressors
from distoptax.algorithms.compressors.qsgd import elias_omega_length
from distoptax.algorithms.compressors import rounding
from distoptax.algorithms.compressors import zipml
from distoptax.experiments import datasets

ALPHA = 1e-4


# ---------------------------------------------------------------------------
# Oracles: (step_i, p_i) of each definition, float64.


def _qsgd_oracle(x, s, bucket=None):
  d = len(x)
  size = bucket or d
  v = np.pad(x, (0, -d % size)).reshape(-1, size)
  norm = np.linalg.norm(v, axis=1, keepdims=True)
  y = s * np.abs(v) / np.where(norm > 0, norm, 1.0)
  step = np.broadcast_to(norm / s, v.shape)
  return step.reshape(-1)[:d], (y - np.floor(y)).reshape(-1)[:d]


def _terngrad_oracle(x):
  scale = np.abs(x).max()
  y = np.abs(x) / scale
  return np.full_like(x, scale), y - np.floor(y)


def _natural_oracle(x):
  t = np.abs(x)
  tiny = 2.0**-126  # Subnormals round between 0 and 2**-126.
  low = np.where(t < tiny, 0.0, 2.0**np.floor(np.log2(np.maximum(t, tiny))))
  step = np.where(t < tiny, tiny, low)
  return step, np.where(t > 0, (t - low) / step, 0.0)


def _zipml_oracle(x, bits):
  step = (x.max() - x.min()) / (2**bits - 1)
  y = (x - x.min()) / step
  return np.full_like(x, step), y - np.floor(y)


def _gaussian(d, seed):
  return np.random.default_rng(seed).normal(size=d).astype(np.float32)


def _natural_input(d, seed):
  x = _gaussian(d, seed)
  x[:4] = [0.25, -8.0, 0.0, 3e-39]  # Exact, exact, exact, subnormal.
  return x


CASES = {
    "qsgd_s1": (lambda: compressors.qsgd(1), lambda x: _qsgd_oracle(x, 1),
                lambda: _gaussian(64, 1)),
    "qsgd_s4_bucket16": (lambda: compressors.qsgd(4, bucket_size=16),
                         lambda x: _qsgd_oracle(x, 4, 16),
                         lambda: _gaussian(70, 2)),
    "terngrad": (compressors.terngrad, _terngrad_oracle,
                 lambda: _gaussian(64, 3)),
    "natural": (compressors.natural, _natural_oracle,
                lambda: _natural_input(64, 4)),
    "zipml_3bit": (lambda: zipml.stochastic_rounding(3),
                   lambda x: _zipml_oracle(x, 3), lambda: _gaussian(64, 5)),
}


def _draws(compressor, x, num_draws, seed=0, chunk=20000):
  run = jax.jit(jax.vmap(
      lambda k: compressor.decode(compressor.encode(k, jnp.asarray(x)))))
  keys = jax.random.split(jax.random.key(seed), num_draws)
  return np.concatenate([np.asarray(run(keys[i:i + chunk]), np.float64)
                         for i in range(0, num_draws, chunk)])


def _statistics(draws, x, step, p):
  """(max |z_i|, its threshold, z_x, its threshold, exact-coordinate error)."""
  x = np.asarray(x, np.float64)
  r = draws.shape[0]
  error = draws.mean(0) - x
  var = step**2 * p * (1 - p)
  exact = var == 0
  usable = r * p * (1 - p) >= 25
  z = error[usable] / np.sqrt(var[usable] / r)
  z_x = x @ error / np.sqrt(np.sum(x**2 * var) / r)
  z_crit = NormalDist().inv_cdf(1 - ALPHA / (4 * usable.sum()))
  z_x_crit = NormalDist().inv_cdf(1 - ALPHA / 4)
  exact_error = np.max(np.abs(error[exact]) / np.maximum(np.abs(x[exact]),
                                                          1e-30),
                       initial=0.0)
  return np.max(np.abs(z)), z_crit, z_x, z_x_crit, exact_error


def _draws_for_power(x, step, p):
  """Draws so that a 1% scale error has expected z_x >= threshold + 5."""
  x = np.asarray(x, np.float64)
  var = step**2 * p * (1 - p)
  per_draw = 0.01 * np.sum(x**2) / np.sqrt(np.sum(x**2 * var))
  z_x_crit = NormalDist().inv_cdf(1 - ALPHA / 4)
  return int(math.ceil(((z_x_crit + 5) / per_draw)**2))


@pytest.mark.parametrize("name", sorted(CASES))
def test_unbiased_and_variance_matches_the_exact_formula(name):
  factory, oracle, make_x = CASES[name]
  compressor, x = factory(), make_x()
  assert compressor.unbiased
  step, p = oracle(np.asarray(x, np.float64))
  draws = _draws(compressor, x, 20000)
  max_z, z_crit, z_x, z_x_crit, exact_error = _statistics(draws, x, step, p)
  assert max_z <= z_crit, (max_z, z_crit)
  assert abs(z_x) <= z_x_crit, (z_x, z_x_crit)
  assert exact_error <= 1e-6
  # E||C(x) - x||^2 = sum_i step_i^2 p_i (1 - p_i), within 5 standard errors.
  squared = np.sum((draws - x)**2, axis=1)
  expected = np.sum(step**2 * p * (1 - p))
  assert abs(squared.mean() - expected) <= 5 * squared.std() / math.sqrt(
      len(squared)), (squared.mean(), expected)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_one_percent_scale_error_is_rejected(name):
  factory, oracle, make_x = CASES[name]
  compressor, x = factory(), make_x()
  step, p = oracle(np.asarray(x, np.float64))
  num_draws = _draws_for_power(x, step, p)
  assert num_draws <= 300000, num_draws  # The test stays cheap.
  biased = compressor._replace(decode=lambda m: jax.tree.map(
      lambda a: 1.01 * a, compressor.decode(m)))
  draws = _draws(biased, x, num_draws, seed=1)
  _, _, z_x, z_x_crit, _ = _statistics(draws, x, step, p)
  assert abs(z_x) > z_x_crit, (z_x, z_x_crit)


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic_rounding_is_rejected(name, monkeypatch):
  factory, oracle, make_x = CASES[name]
  x = make_x()
  step, p = oracle(np.asarray(x, np.float64))
  # Every "random" word at 2**31: rounding to nearest, a fixed function.
  monkeypatch.setattr(
      rounding, "random_bits",
      lambda key, shape, offset=0: jnp.full(shape, 2**31, jnp.uint32))
  draws = _draws(factory(), x, 2000, seed=2)
  max_z, z_crit, _, _, _ = _statistics(draws, x, step, p)
  assert max_z > z_crit, (max_z, z_crit)


def test_random_bits_equal_jax_random_bits_and_offsets_continue_the_draw():
  key = jax.random.fold_in(jax.random.key(5), 7)
  for shape in [(), (1,), (1000,), (3, 7)]:
    np.testing.assert_array_equal(rounding.random_bits(key, shape),
                                  jax.random.bits(key, shape, jnp.uint32))
  whole = jax.random.bits(key, (1000,), jnp.uint32)
  np.testing.assert_array_equal(rounding.random_bits(key, (300,), 700),
                                whole[700:])
  other = jax.random.key(1, impl="rbg")  # Falls back to jax.random.bits.
  assert rounding.random_bits(other, (4,)).shape == (4,)


def test_round_up_probability_is_exact_on_the_2_to_minus_32_grid():
  """P(up) = ceil(f 2**32) / 2**32: count the uint32 words below it."""
  fractions = np.array([0.0, 2.0**-32, 0.25, 0.5 + 2.0**-24, 1 - 2.0**-24],
                       np.float32)
  for f in fractions:
    threshold = int(math.ceil(float(f) * 2**32))
    words = jnp.asarray([max(threshold - 1, 0), threshold % 2**32,
                         2**32 - 1], jnp.uint32)
    up = rounding.round_up(words, jnp.asarray(f))
    np.testing.assert_array_equal(up, [threshold > 0, False, False])


# ---------------------------------------------------------------------------
# QSGD: Lemma 3.1 and Theorem 3.2 of arXiv:1610.02132.


def _qsgd_vectors():
  rng = np.random.default_rng(0)
  one_hot = np.zeros(256, np.float32)
  one_hot[17] = -3.0
  return {
      "gaussian": rng.normal(size=256).astype(np.float32),
      "heavy_tailed": rng.standard_t(1.5, size=256).astype(np.float32),
      "sparse": (rng.normal(size=256) * (rng.random(256) < 0.05)).astype(
          np.float32),
      "one_hot": one_hot,
  }


@pytest.mark.parametrize("s", [1, 4, 16])
def test_qsgd_variance_and_nonzeros_match_exact_formulas_and_bounds(s):
  c = compressors.qsgd(s)
  for name, v in _qsgd_vectors().items():
    d = len(v)
    v64 = v.astype(np.float64)
    norm2 = np.sum(v64**2)
    y = s * np.abs(v64) / np.sqrt(norm2)
    p = y - np.floor(y)
    variance = norm2 / s**2 * np.sum(p * (1 - p))
    nonzeros = np.sum(np.minimum(1.0, y))
    assert variance <= min(d / s**2, math.sqrt(d) / s) * norm2, name
    assert nonzeros <= s * (s + math.sqrt(d)), name
    draws = _draws(c, v, 4000, seed=s)
    squared = np.sum((draws - v64)**2, axis=1)
    counts = np.count_nonzero(draws, axis=1)
    for sample, exact in ((squared, variance), (counts, nonzeros)):
      error = abs(sample.mean() - exact)
      assert error <= 5 * sample.std() / math.sqrt(len(sample)) + 1e-9, (
          name, sample.mean(), exact)


def test_qsgd_input_on_the_grid_comes_back_unchanged_and_zero_is_zero():
  c = compressors.qsgd(5, bucket_size=3)
  v = jnp.array([3.0, 0.0, -4.0, 0.0, 0.0, 0.0, 1.0])  # Norms 5, 0, 1.
  for seed in range(5):
    np.testing.assert_array_equal(
        c.decode(c.encode(jax.random.key(seed), v)), v)


def _omega_bits(n):
  """The Elias omega code of n >= 1, as a string of bits."""
  n, code = int(n), "0"
  while n > 1:
    code = format(n, "b") + code
    n = n.bit_length() - 1
  return code


def _read_omega(bits, i):
  n = 1
  while bits[i] == "1":
    width = n + 1
    n = int(bits[i:i + width], 2)
    i += width
  return n, i + 1


def _elias_stream(norms, signed_levels, bucket):
  out = []
  for b, norm in enumerate(norms):
    out.append(format(struct.unpack("<I", struct.pack("<f", norm))[0],
                      "032b"))
    previous = 0
    for position, level in enumerate(
        signed_levels[b * bucket:(b + 1) * bucket], start=1):
      if level:
        out += [_omega_bits(position - previous), "1" if level < 0 else "0",
                _omega_bits(abs(level))]
        previous = position
  return "".join(out)


@pytest.mark.parametrize("s, bucket", [(1, None), (5, None), (3, 64)])
def test_qsgd_coded_bits_is_the_length_of_the_elias_stream(s, bucket):
  c = compressors.qsgd(s, bucket_size=bucket)
  v = _gaussian(300, 7)
  v[40:120] = 0.0  # A long gap.
  size = bucket or 300
  for seed in range(3):
    message = c.encode(jax.random.key(seed), jnp.asarray(v))
    norms = np.asarray(message.arrays["norms"])
    step = np.repeat(norms / s, size)[:300]
    decoded = np.asarray(c.decode(message), np.float64)
    signed = np.rint(decoded / np.where(step > 0, step, 1)).astype(np.int64)
    stream = _elias_stream(norms, signed, size)
    assert len(stream) == int(c.coded_bits(message))
    # The stream decodes back to the message (records of each bucket).
    i = 0
    for b, norm in enumerate(norms):
      assert struct.unpack("<f", struct.pack(
          "<I", int(stream[i:i + 32], 2)))[0] == norm
      i += 32
      position = 0
      recovered = np.zeros(size, np.int64)
      for _ in range(np.count_nonzero(signed[b * size:(b + 1) * size])):
        gap, i = _read_omega(stream, i)
        negative = stream[i] == "1"
        level, i = _read_omega(stream, i + 1)
        position += gap
        recovered[position - 1] = -level if negative else level
      np.testing.assert_array_equal(
          recovered[:len(signed[b * size:(b + 1) * size])],
          signed[b * size:(b + 1) * size])
    assert i == len(stream)


def test_elias_omega_length():
  values = np.concatenate([np.arange(1, 5000),
                           [2**16 - 1, 2**16, 2**24 + 1, 2**31, 2**32 - 1]])
  lengths = elias_omega_length(jnp.asarray(values, jnp.uint32))
  np.testing.assert_array_equal(
      lengths, [len(_omega_bits(int(n))) for n in values])


@pytest.mark.parametrize("s", [2, 4, 8, 16])
def test_qsgd_expected_bits_within_theorem_3_2(s):
  d = 1024
  c = compressors.qsgd(s)
  v = jnp.asarray(_gaussian(d, 8))
  keys = jax.random.split(jax.random.key(s), 200)
  bits = jax.jit(jax.vmap(lambda k: c.coded_bits(c.encode(k, v))))(keys)
  k = s * (s + math.sqrt(d))
  bound = (3 + 1.5 * math.log2(2 * (s**2 + d) / k)) * k + 32  # o(1) = 0.
  assert float(np.mean(bits)) <= bound, (float(np.mean(bits)), bound)


# ---------------------------------------------------------------------------
# TernGrad, natural compression, signs.


def test_terngrad_variance_bound_and_clipping():
  g = _gaussian(64, 3).astype(np.float64)
  scale = np.abs(g).max()
  variance = np.sum(np.abs(g) * (scale - np.abs(g)))
  assert variance <= scale * np.sum(np.abs(g))
  clipped = compressors.terngrad(clip_stddevs=1.0)
  assert not clipped.unbiased
  x = _gaussian(64, 9)
  bound = 1.0 * np.std(x.astype(np.float64))
  target = np.clip(x.astype(np.float64), -bound, bound)
  step, p = _terngrad_oracle(target)
  draws = _draws(clipped, x, 20000)
  max_z, z_crit, z_x, z_x_crit, _ = _statistics(draws, target, step, p)
  assert max_z <= z_crit and abs(z_x) <= z_x_crit
  with pytest.raises(ValueError, match="clip_stddevs.*-1"):
    compressors.terngrad(clip_stddevs=-1)


def test_natural_exact_values_and_non_finite_inputs():
  c = compressors.natural()
  x = jnp.array([1.0, -0.5, 0.0, -0.0, 2.0**-126, 2.0**127, jnp.inf,
                 -jnp.inf, jnp.nan])
  out = np.asarray(c.decode(c.encode(jax.random.key(0), x)))
  np.testing.assert_array_equal(out[:8], np.asarray(x)[:8])
  assert np.isinf(out[8])
  big = jnp.full((64,), 1.5 * 2.0**127)  # Rounds to 2**127 or to inf.
  out = np.asarray(c.decode(c.encode(jax.random.key(1), big)))
  assert set(np.unique(out)) <= {np.float32(2.0**127), np.float32(np.inf)}
  x = _natural_input(64, 4).astype(np.float64)
  step, p = _natural_oracle(x)
  assert np.sum(step**2 * p * (1 - p)) <= np.sum(x**2) / 8  # omega = 1/8


def test_sign_and_scaled_sign():
  x = jnp.array([0.5, -2.0, 0.0, 3.0, -1.0])
  s = compressors.sign()
  np.testing.assert_array_equal(s.decode(s.encode(jax.random.key(0), x)),
                                [1.0, -1.0, 1.0, 1.0, -1.0])
  c = compressors.scaled_sign()
  out = np.asarray(c.decode(c.encode(jax.random.key(0), x)), np.float64)
  x64 = np.asarray(x, np.float64)
  np.testing.assert_allclose(out, 6.5 / 5 * np.where(x64 < 0, -1, 1))
  # Contraction: ||C(x) - x||^2 = (1 - ||x||_1^2 / (d ||x||_2^2)) ||x||_2^2.
  delta = np.sum(np.abs(x64))**2 / (5 * np.sum(x64**2))
  np.testing.assert_allclose(np.sum((out - x64)**2),
                             (1 - delta) * np.sum(x64**2), rtol=1e-6)
  assert not s.unbiased and not c.unbiased


# ---------------------------------------------------------------------------
# ZipML: model quantization and double sampling.


def test_quantize_model_keeps_structure_and_grid_values():
  params = {"w": jnp.array([[0.0, 1.0], [2.0, 3.0]]),
            "b": jnp.array([0.5, 0.5], jnp.bfloat16)}
  q = zipml.quantize_model(jax.random.key(0), params, 2)
  assert jax.tree.structure(q) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(params)):
    assert a.shape == b.shape and a.dtype == b.dtype
  np.testing.assert_array_equal(q["w"], params["w"])  # On the 2-bit grid.
  with pytest.raises(ValueError, match="num_bits.*0"):
    zipml.quantize_model(jax.random.key(0), params, 0)


def test_double_sampling_is_unbiased_and_single_sampling_is_not():
  data = datasets.least_squares(num_train=32, dim=6, seed=0)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  w = jnp.asarray(np.random.default_rng(1).normal(size=6), jnp.float32)
  exact = np.asarray(zipml.least_squares_gradient(w, x, x, y), np.float64)
  bits, num_draws = 2, 20000

  def both(key):
    q1, q2 = zipml.double_sampling(key, x, bits)
    return (zipml.least_squares_gradient(w, q1, q2, y),
            zipml.least_squares_gradient(w, q1, q1, y))

  keys = jax.random.split(jax.random.key(3), num_draws)
  double, single = (np.asarray(a, np.float64)
                    for a in jax.jit(jax.vmap(both))(keys))
  z_crit = NormalDist().inv_cdf(1 - ALPHA / (2 * 2 * 6))

  def z(draws, target):
    return (draws.mean(0) - target) / (draws.std(0) / math.sqrt(num_draws))

  assert np.max(np.abs(z(double, exact))) <= z_crit
  assert np.max(np.abs(z(single, exact))) > z_crit
  # The single-sample bias is diag(Var[Q(a_n)]) w averaged over samples.
  x64 = np.asarray(x, np.float64)
  step = (x64.max(0) - x64.min(0)) / (2**bits - 1)
  frac = (x64 - x64.min(0)) / step
  frac -= np.floor(frac)
  bias = np.mean(step**2 * frac * (1 - frac), axis=0) * np.asarray(w)
  assert np.max(np.abs(z(single, exact + bias))) <= z_crit
