"""Dense bit and radix packing: exact layout, exact round trips, static sizes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax.algorithms.compressors import packing

ALIGN = packing.ALIGNMENT


def _reference_pack(codes, bits, word_dtype):
  """The documented layout, in NumPy: planes of ALIGN-multiple length + tail."""
  word_bits = 8 * np.dtype(word_dtype).itemsize
  group = word_bits // math.gcd(bits, word_bits)
  per_group = bits * group // word_bits
  n = len(codes)
  full = n // (group * ALIGN) * ALIGN
  rest = n - group * full

  def stream(chunk):
    """Little-endian bit stream of consecutive codes, as words."""
    bit_matrix = (chunk[:, None].astype(np.uint64)
                  >> np.arange(bits, dtype=np.uint64)) & 1
    stream_bytes = np.packbits(bit_matrix.astype(np.uint8).reshape(-1),
                               bitorder="little")
    if word_bits == 32:
      stream_bytes = np.pad(stream_bytes, (0, -len(stream_bytes) % 4))
      return stream_bytes.view("<u4")
    return stream_bytes

  main = np.zeros(per_group * full, word_dtype)
  for i in range(full):
    words = stream(codes[[j * full + i for j in range(group)]])
    for k in range(per_group):
      main[k * full + i] = words[k]
  tail = stream(codes[group * full:])[:-(-rest * bits // word_bits)]
  return np.concatenate([main, tail[:rest and len(tail)].astype(word_dtype)])


def _reference_radix(digits, radix):
  k = packing.digits_per_byte(radix)
  n = len(digits)
  full = n // (k * ALIGN) * ALIGN
  out = [sum(int(digits[j * full + i]) * radix**j for j in range(k))
         for i in range(full)]
  tail = np.pad(digits[k * full:], (0, -(n - k * full) % k)).reshape(-1, k)
  out += [sum(int(d) * radix**j for j, d in enumerate(row)) for row in tail]
  return np.asarray(out, np.uint8)


def _lengths(bits, word_dtype):
  group = 8 * np.dtype(word_dtype).itemsize // math.gcd(
      bits, 8 * np.dtype(word_dtype).itemsize)
  return [0, 1, group - 1 or 1, group * ALIGN, 2 * group * ALIGN + 37]


_pack = jax.jit(packing.pack, static_argnums=1,
                static_argnames="word_dtype")
_unpack = jax.jit(packing.unpack, static_argnums=(1, 2))


@pytest.mark.parametrize("word_dtype", [np.uint8, np.uint32])
@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 9, 16, 31, 32])
def test_pack_matches_layout_and_round_trips(bits, word_dtype):
  rng = np.random.default_rng(bits)
  for n in _lengths(bits, word_dtype):
    for codes in (rng.integers(0, 2**bits, n, dtype=np.uint64),
                  np.zeros(n, np.uint64),                 # all zeros
                  np.full(n, 2**bits - 1, np.uint64)):    # all maximal
      codes = codes.astype(np.uint32)
      words = _pack(jnp.asarray(codes), bits, word_dtype=word_dtype)
      assert words.dtype == word_dtype
      assert words.shape == (packing.packed_length(n, bits, word_dtype),)
      assert words.shape[0] == -(-n * bits // (8 * np.dtype(
          word_dtype).itemsize))
      np.testing.assert_array_equal(
          words, _reference_pack(codes, bits, word_dtype))
      np.testing.assert_array_equal(_unpack(words, bits, n), codes)


def test_pack_keeps_only_the_low_bits_and_accepts_any_shape():
  codes = jnp.asarray([[5, 12], [7, 255]], jnp.int32)
  words = packing.pack(codes, 2)
  np.testing.assert_array_equal(packing.unpack(words, 2, 4),
                                [1, 0, 3, 3])


@pytest.mark.parametrize("radix", [2, 3, 4, 5, 7, 16, 17, 255, 256])
def test_pack_radix_matches_layout_and_round_trips(radix):
  rng = np.random.default_rng(radix)
  k = packing.digits_per_byte(radix)
  for n in (0, 1, k - 1 or 1, k * ALIGN, 2 * k * ALIGN + 3):
    for digits in (rng.integers(0, radix, n), np.zeros(n, np.int64),
                   np.full(n, radix - 1)):
      packed = packing.pack_radix(jnp.asarray(digits), radix)
      assert packed.shape == (-(-n // k),) and packed.dtype == np.uint8
      np.testing.assert_array_equal(packed, _reference_radix(digits, radix))
      np.testing.assert_array_equal(
          packing.unpack_radix(packed, radix, n), digits)


def test_ternary_goes_five_to_a_byte():
  assert packing.digits_per_byte(3) == 5
  assert packing.radix_packed_length(1000, 3) == 200


def test_radix_division_is_exact_for_every_byte():
  """unpack_radix divides by powers of the radix with a multiply-shift."""
  for radix in (3, 5, 7, 15, 255):
    k = packing.digits_per_byte(radix)
    values = np.arange(radix**k)
    digits = (values[:, None] // radix**np.arange(k)) % radix
    unpacked = packing.unpack_radix(
        packing.pack_radix(jnp.asarray(digits.reshape(-1)), radix), radix,
        digits.size)
    np.testing.assert_array_equal(np.asarray(unpacked).reshape(-1, k),
                                  digits, err_msg=f"radix {radix}")


def test_pack_with_passes_each_segment_its_offset():
  n, bits = 3 * 4 * ALIGN + 5, 2
  x = jnp.arange(n, dtype=jnp.float32)
  seen = []

  def codes(v, offset):
    seen.append((offset, v.shape[0]))
    return (jnp.arange(v.shape[0]) + offset) % 4  # == v % 4 iff offsets ok

  words = packing.pack_with(codes, (x,), bits)
  np.testing.assert_array_equal(words, packing.pack(jnp.arange(n) % 4, bits))
  assert [s for s, _ in seen] == [0, 384, 768, 1152, 1536]
  values = packing.unpack_with(
      lambda c, offset: c.astype(jnp.int32) * 10 + offset % 7, words, bits, n)
  expected = [(i % 4) * 10 for i in range(n)]
  offsets = np.repeat([0, 384, 768, 1152, 1536], [384] * 4 + [5])
  np.testing.assert_array_equal(values, np.asarray(expected) + offsets % 7)


def test_pack_with_and_radix_with_equal_plain_packing():
  x = jnp.asarray(np.random.default_rng(0).normal(size=5 * ALIGN * 2 + 9),
                  jnp.float32)

  def digit(v, offset):
    del offset
    return (v > 0.5).astype(jnp.uint32) + (v > -0.5)

  np.testing.assert_array_equal(
      packing.pack_radix_with(digit, (x,), 3),
      packing.pack_radix(digit(x, 0), 3))
  np.testing.assert_array_equal(
      packing.pack_with(digit, (x,), 2), packing.pack(digit(x, 0), 2))


def test_bits_for():
  assert [packing.bits_for(m) for m in (1, 2, 3, 4, 5, 8, 9, 2**32)] == [
      1, 1, 2, 2, 3, 3, 4, 32]


@pytest.mark.parametrize("call, match", [
    (lambda: packing.bits_for(0), "num_values.*0"),
    (lambda: packing.bits_for(2.5), "num_values.*2.5"),
    (lambda: packing.pack(jnp.zeros(3), 0), "bits.*0"),
    (lambda: packing.pack(jnp.zeros(3), 33), "bits.*33"),
    (lambda: packing.pack(jnp.zeros(3), 2, word_dtype=jnp.uint16),
     "word_dtype"),
    (lambda: packing.unpack(jnp.zeros(3, jnp.uint8), 2, 4), "need 1 words"),
    (lambda: packing.digits_per_byte(1), "radix.*1"),
    (lambda: packing.unpack_radix(jnp.zeros(3, jnp.uint8), 3, 5),
     "need 1 bytes"),
])
def test_invalid_arguments_raise_value_errors_naming_them(call, match):
  with pytest.raises(ValueError, match=match):
    call()
