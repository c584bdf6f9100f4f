r"""Dense packing of small unsigned integer codes into machine words.

Two layouts, both lossless, vectorized and of static size:

* **Bit packing** (:func:`pack` / :func:`unpack`): ``n`` codes of ``b`` bits
  occupy exactly :math:`\lceil n b / w \rceil` words of ``w`` bits
  (``uint8`` or ``uint32``). Codes are taken in *groups* of
  ``g = w / gcd(b, w)``, the fewest whose bits fill whole words
  (``w_g = b g / w`` words: 4 codes of 2 bits in a byte, 8 codes of 3 bits
  in 3 bytes). Within a group, code ``j`` occupies bits ``[j b, (j+1) b)``
  of the group's little-endian bit stream (bit ``t`` is bit ``t mod w`` of
  word ``t // w``), so codes straddle word boundaries when ``b`` does not
  divide ``w``.
* **Radix packing** (:func:`pack_radix` / :func:`unpack_radix`): ``k``
  digits of radix ``r`` per byte as the base-``r`` number
  :math:`\sum_j c_j r^j`, with ``k`` the largest such that
  :math:`r^k \le 256`; ternary values go five to a byte (1.6 bits each,
  3LC's base-3\ :sup:`5` encoding) instead of four at 2 bits.

Both are *planar*, so that XLA can fuse the packing with the code that
computes the codes (stochastic rounding) into vectorized loops. With ``g``
codes per group (``k`` digits per byte), the first ``g q`` codes form ``g``
contiguous planes of ``q`` codes, ``q`` the largest multiple of
:data:`ALIGNMENT` (128) with ``g q <= n``; group ``i < q`` takes code ``i``
of every plane (codes ``i, q + i, ..., (g-1) q + i``) and its word ``k`` is
stored at position ``k q + i``. The ``t = n - g q`` trailing codes follow
in plain order (groups of ``g`` consecutive codes, the last padded with zeros)
cut to :math:`\lceil t b / w \rceil` words, so the total stays exactly
dense. Measured on a CPU, fused stochastic rounding ran about 5x slower with
the interleaved layout (``numpy.packbits`` order: stride-``g`` reads) or with
planes at offsets that are not multiples of the vector width.

The number of bits for ``m`` distinct values is :func:`bits_for`, the fewest
``b`` with :math:`2^b \ge m` (at least 1).
"""

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_WORD_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint32))


def bits_for(num_values: int) -> int:
  r"""Fewest bits that hold ``num_values`` distinct codes, :math:`\lceil
  \log_2 m \rceil` (at least 1).

  Args:
    num_values: number of distinct codes ``m >= 1``.

  Returns:
    The code width in bits.

  Example:
    >>> from distoptax.algorithms.compressors import packing
    >>> [packing.bits_for(m) for m in (1, 2, 3, 5, 9, 256, 257)]
    [1, 1, 2, 3, 4, 8, 9]
  """
  if (isinstance(num_values, bool) or not isinstance(num_values,
                                                      (int, np.integer))
      or num_values < 1):
    raise ValueError(f"num_values must be an integer >= 1; got {num_values!r}")
  return max(1, (int(num_values) - 1).bit_length())


def _check_bits(bits: int) -> int:
  if (isinstance(bits, bool) or not isinstance(bits, (int, np.integer))
      or not 1 <= bits <= 32):
    raise ValueError(f"bits must be an integer in [1, 32]; got {bits!r}")
  return int(bits)


def _word_dtype(word_dtype) -> np.dtype:
  dtype = np.dtype(word_dtype)
  if dtype not in _WORD_DTYPES:
    raise ValueError(
        f"word_dtype must be uint8 or uint32; got {word_dtype!r}")
  return dtype


def packed_length(num_codes: int, bits: int, word_dtype=jnp.uint8) -> int:
  r"""Words that :func:`pack` returns: :math:`\lceil n b / w \rceil`.

  Args:
    num_codes: number of codes ``n``.
    bits: code width ``b`` in ``[1, 32]``.
    word_dtype: ``uint8`` or ``uint32``.

  Returns:
    The number of words.
  """
  word_bits = 8 * _word_dtype(word_dtype).itemsize
  return -(-int(num_codes) * _check_bits(bits) // word_bits)


def _layout(bits: int, word_bits: int) -> tuple[int, int]:
  group = word_bits // math.gcd(bits, word_bits)  # codes per group
  return group, bits * group // word_bits  # and words per group


def _overlaps(bits: int, word_bits: int) -> list[tuple[int, int, int]]:
  """Where the codes of a group meet its words.

  Returns:
    ``(j, k, offset)`` for every code slot ``j`` that shares bits with word
    ``k``; ``offset`` is the code's first bit minus the word's (negative
    when the code starts in an earlier word).
  """
  group, words_per_group = _layout(bits, word_bits)
  return [(j, k, j * bits - k * word_bits)
          for k in range(words_per_group) for j in range(group)
          if j * bits < (k + 1) * word_bits and (j + 1) * bits > k * word_bits]


def _shift_left(x: jax.Array, offset: int) -> jax.Array:
  """``x << offset``, or ``x >> -offset`` for a negative offset."""
  if offset >= 0:
    return x << jnp.uint32(offset)
  return x >> jnp.uint32(-offset)


def _group_words(planes: list[jax.Array], bits: int,
                 word_bits: int) -> list[jax.Array]:
  """The words of groups given as code planes (uint32, one per slot)."""
  words = [None] * _layout(bits, word_bits)[1]
  for j, k, offset in _overlaps(bits, word_bits):
    piece = _shift_left(planes[j], offset)
    words[k] = piece if words[k] is None else words[k] | piece
  return words


def _group_codes(words: list[jax.Array], bits: int,
                 word_bits: int) -> list[jax.Array]:
  """The code planes of groups given as word planes (uint32)."""
  codes = [None] * _layout(bits, word_bits)[0]
  for j, k, offset in _overlaps(bits, word_bits):
    piece = _shift_left(words[k], -offset)
    codes[j] = piece if codes[j] is None else codes[j] | piece
  if bits == 32:
    return codes
  return [code & jnp.uint32((1 << bits) - 1) for code in codes]


CodeFn = Callable[..., jax.Array]


ALIGNMENT = 128  # Plane length granularity, in codes.


def _segments(num_codes: int, group: int) -> tuple[int, int]:
  """Plane length ``q`` (a multiple of ALIGNMENT) and tail length ``t``."""
  full = int(num_codes) // (group * ALIGNMENT) * ALIGNMENT
  return full, int(num_codes) - group * full


def _tail_words(codes: jax.Array, bits: int, word_bits: int) -> jax.Array:
  """Plain-order packing of a short tail (uint32 words)."""
  group, _ = _layout(bits, word_bits)
  rest = codes.shape[0]
  grid = jnp.pad(codes, (0, -rest % group)).reshape(-1, group)
  words = _group_words([grid[:, j] for j in range(group)], bits, word_bits)
  words = jnp.stack(words, axis=1).reshape(-1)
  return words[:-(-rest * bits // word_bits)]


def _tail_codes(words: jax.Array, bits: int, word_bits: int,
                rest: int) -> jax.Array:
  """Inverse of _tail_words: ``rest`` codes (uint32)."""
  group, words_per_group = _layout(bits, word_bits)
  groups = -(-rest // group)
  grid = jnp.pad(words, (0, groups * words_per_group - words.shape[0]))
  grid = grid.reshape(groups, words_per_group)
  codes = _group_codes([grid[:, k] for k in range(words_per_group)], bits,
                       word_bits)
  return jnp.stack(codes, axis=1).reshape(-1)[:rest]


def _check_inputs(inputs: Sequence[jax.Array]) -> int:
  sizes = {tuple(a.shape) for a in inputs}
  if len(sizes) != 1 or len(next(iter(sizes))) != 1:
    raise ValueError(
        f"inputs must be 1-D arrays of one length; got shapes {sorted(sizes)}")
  return next(iter(sizes))[0]


def materialized(x: jax.Array) -> jax.Array:
  """``x`` itself, computed once rather than fused into each consumer.

  :func:`pack_with` passes every plane of packed words through it. XLA's
  CPU backend fuses a producer made of cheap integer operations (the
  Threefry hash of stochastic rounding) into every consumer, and runs such
  loops unvectorized when they end in a concatenation. A packed word feeds
  ``g`` unpacked codes, so a program that both packs and unpacks (error
  feedback decodes its own message) ran the rounding ``g`` more times:
  ``decode(encode(x))`` of QSGD with ``s = 1`` cost 14x a copy instead of
  2x, and concatenating a fused plane with the tail 8x.
  ``lax.optimization_barrier`` does not help (XLA's CPU pipeline removes
  barriers before fusion); a scan over a pair axis, which XLA does not fuse
  into its consumers, does, for about one pass over the words.

  Args:
    x: 1-D array.

  Returns:
    An array equal to ``x``.
  """
  pair = jnp.stack([x, jnp.zeros_like(x)], axis=1)
  return jnp.cumsum(pair, axis=1, dtype=x.dtype)[:, 0]


def pack_with(fn: CodeFn, inputs: Sequence[jax.Array], bits: int, *,
              word_dtype=jnp.uint8) -> jax.Array:
  """Packs the codes ``fn`` computes from ``inputs``, one plane at a time.

  Equal to ``pack(fn(*inputs, offset=0), bits)`` when ``fn`` is
  elementwise, but ``fn`` is called on contiguous segments (each plane and
  the tail): ``fn(*segments, offset=start)`` with ``start`` the index of the
  segment's first element. XLA then fuses ``fn`` into the packing as
  vectorized loops (an expensive ``fn`` such as stochastic rounding fused
  into the packing of one array ran about 5x slower on a CPU).

  Args:
    fn: ``fn(*segments, offset=int) -> codes`` of the segments' length
      (integer, only the low ``bits`` bits kept); ``offset`` lets it draw
      the random bits of those positions.
    inputs: 1-D arrays of one length ``n``.
    bits: code width ``b`` in ``[1, 32]``.
    word_dtype: ``uint8`` (default) or ``uint32``.

  Returns:
    1-D array of :func:`packed_length` words.
  """
  bits = _check_bits(bits)
  dtype = _word_dtype(word_dtype)
  word_bits = 8 * dtype.itemsize
  n = _check_inputs(inputs)
  mask = jnp.uint32((1 << bits) - 1) if bits < 32 else None

  def codes(start: int, stop: int) -> jax.Array:
    out = fn(*[a[start:stop] for a in inputs], offset=start)
    out = out.astype(jnp.uint32)
    return out if mask is None else out & mask

  group, _ = _layout(bits, word_bits)
  full, rest = _segments(n, group)
  parts = []
  if full:
    planes = [codes(j * full, (j + 1) * full) for j in range(group)]
    # The cast keeps the low word_bits bits of each word.
    parts.extend(materialized(word.astype(dtype))
                 for word in _group_words(planes, bits, word_bits))
  if rest:
    parts.append(_tail_words(codes(group * full, n), bits,
                             word_bits).astype(dtype))
  if not parts:
    return jnp.zeros((0,), dtype)
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def unpack_with(fn: CodeFn, words: jax.Array, bits: int,
                num_codes: int) -> jax.Array:
  """Applies ``fn`` to the codes of ``words``, one plane at a time.

  Equal to ``fn(unpack(words, bits, num_codes), offset=0)`` when ``fn`` is
  elementwise; ``fn(codes, offset=start)`` receives each contiguous segment
  of ``uint32`` codes and the index of its first element (e.g. to find
  each code's bucket).

  Args:
    fn: ``fn(codes, offset=int) -> values`` of the segment's length.
    words: 1-D ``uint8`` or ``uint32`` words from :func:`pack` (the word
      dtype is read from the array).
    bits: code width ``b`` used to pack.
    num_codes: number of codes ``n`` to read (static).

  Returns:
    The values of all segments in order, length ``num_codes``.
  """
  bits = _check_bits(bits)
  dtype = _word_dtype(words.dtype)
  word_bits = 8 * dtype.itemsize
  length = packed_length(num_codes, bits, dtype)
  if words.ndim != 1 or words.shape[0] != length:
    raise ValueError(
        f"{num_codes} codes of {bits} bits need {length} words of "
        f"{dtype.name}; got shape {words.shape}")
  group, words_per_group = _layout(bits, word_bits)
  full, rest = _segments(num_codes, group)
  flat = words.astype(jnp.uint32)
  parts = []
  if full:
    planes = [flat[k * full:(k + 1) * full] for k in range(words_per_group)]
    codes = _group_codes(planes, bits, word_bits)
    parts.extend(fn(c, offset=j * full) for j, c in enumerate(codes))
  if rest:
    tail = _tail_codes(flat[full * words_per_group:], bits, word_bits, rest)
    parts.append(fn(tail, offset=group * full))
  if not parts:
    return fn(jnp.zeros((0,), jnp.uint32), offset=0)
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def _identity(codes: jax.Array, offset: int) -> jax.Array:
  del offset
  return codes


def pack(codes: jax.Array, bits: int, *, word_dtype=jnp.uint8) -> jax.Array:
  """Packs unsigned codes of ``bits`` bits densely into words.

  Args:
    codes: unsigned or non-negative integer codes of any shape (flattened in
      C order); only their low ``bits`` bits are kept.
    bits: code width ``b`` in ``[1, 32]``.
    word_dtype: ``uint8`` (default) or ``uint32``.

  Returns:
    1-D array of :func:`packed_length` words (see the module docstring for
    the layout).

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import packing
    >>> words = packing.pack(jnp.array([1, 2, 3, 0, 7]), 3)
    >>> words  # Short: all tail, a plain little-endian bit stream.
    Array([209, 112], dtype=uint8)
    >>> packing.unpack(words, 3, 5)
    Array([1, 2, 3, 0, 7], dtype=uint32)
    >>> words = packing.pack(jnp.arange(512) % 4, 2)  # Four planes of 128.
    >>> words.shape, words[0]  # Codes 0, 128, 256, 384: all 0.
    ((128,), Array(0, dtype=uint8))
  """
  return pack_with(_identity, (jnp.ravel(codes),), bits,
                   word_dtype=word_dtype)


def unpack(words: jax.Array, bits: int, num_codes: int) -> jax.Array:
  """Inverse of :func:`pack`: the first ``num_codes`` codes, as ``uint32``.

  Args:
    words: 1-D ``uint8`` or ``uint32`` words from :func:`pack` (the word
      dtype is read from the array).
    bits: code width ``b`` used to pack.
    num_codes: number of codes ``n`` to read (static).

  Returns:
    ``uint32[num_codes]``.
  """
  return unpack_with(_identity, words, bits, num_codes)


def digits_per_byte(radix: int) -> int:
  """Largest ``k`` with ``radix**k <= 256`` (5 for ternary).

  Example:
    >>> from distoptax.algorithms.compressors import packing
    >>> [packing.digits_per_byte(r) for r in (2, 3, 4, 5, 7, 16, 256)]
    [8, 5, 4, 3, 2, 2, 1]
  """
  if (isinstance(radix, bool) or not isinstance(radix, (int, np.integer))
      or not 2 <= radix <= 256):
    raise ValueError(f"radix must be an integer in [2, 256]; got {radix!r}")
  k = 1
  while int(radix) ** (k + 1) <= 256:
    k += 1
  return k


def radix_packed_length(num_codes: int, radix: int) -> int:
  r"""Bytes that :func:`pack_radix` returns: :math:`\lceil n / k \rceil`."""
  return -(-int(num_codes) // digits_per_byte(radix))


def pack_radix_with(fn: CodeFn, inputs: Sequence[jax.Array],
                    radix: int) -> jax.Array:
  """:func:`pack_radix` of the digits ``fn`` computes, one plane at a time.

  Args:
    fn: ``fn(*segments, offset=int) -> digits`` in ``[0, radix)``, as in
      :func:`pack_with`.
    inputs: 1-D arrays of one length ``n``.
    radix: ``r`` in ``[2, 256]``.

  Returns:
    ``uint8[ceil(n / k)]``.
  """
  k = digits_per_byte(radix)
  n = _check_inputs(inputs)

  def digits(start: int, stop: int) -> jax.Array:
    return fn(*[a[start:stop] for a in inputs],
              offset=start).astype(jnp.uint32)

  full, rest = _segments(n, k)
  parts = []
  if full:
    value = digits(0, full)
    for j in range(1, k):
      value = value + digits(j * full, (j + 1) * full) * jnp.uint32(
          int(radix) ** j)
    parts.append(materialized(value.astype(jnp.uint8)))
  if rest:
    tail = digits(k * full, n)
    grid = jnp.pad(tail, (0, -rest % k)).reshape(-1, k)
    powers = jnp.asarray([int(radix) ** j for j in range(k)], jnp.uint32)
    parts.append(jnp.sum(grid * powers, axis=1,
                         dtype=jnp.uint32).astype(jnp.uint8))
  if not parts:
    return jnp.zeros((0,), jnp.uint8)
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def unpack_radix_with(fn: CodeFn, packed: jax.Array, radix: int,
                      num_codes: int) -> jax.Array:
  """Applies ``fn`` to the digits of ``packed``, one plane at a time.

  Args:
    fn: ``fn(digits, offset=int) -> values``, as in :func:`unpack_with`.
    packed: ``uint8`` bytes from :func:`pack_radix`.
    radix: ``r`` used to pack.
    num_codes: number of digits ``n`` to read (static).

  Returns:
    The values of all segments in order, length ``num_codes``.
  """
  k = digits_per_byte(radix)
  length = radix_packed_length(num_codes, radix)
  if packed.ndim != 1 or packed.shape[0] != length:
    raise ValueError(
        f"{num_codes} digits of radix {radix} need {length} bytes; got "
        f"shape {packed.shape}")
  radix = int(radix)
  full, rest = _segments(num_codes, k)
  value = packed.astype(jnp.uint32)
  # v // r**j for v < 256 as a multiply and a shift: with
  # m_j = ceil(2**16 / r**j), floor(v * m_j / 2**16) is exact (the error
  # v * (m_j - 2**16 / r**j) / 2**16 < 256 / 2**16 stays below 1 / r**j).
  magic = [-(-(1 << 16) // radix ** j) for j in range(k + 1)]

  def digit(v: jax.Array, j: int) -> jax.Array:
    quotient = (v * jnp.uint32(magic[j])) >> jnp.uint32(16)
    higher = (v * jnp.uint32(magic[j + 1])) >> jnp.uint32(16)
    return quotient - higher * jnp.uint32(radix)

  parts = [fn(digit(value[:full], j), offset=j * full)
           for j in range(k)] if full else []
  if rest:
    tail = jnp.stack([digit(value[full:], j) for j in range(k)], axis=1)
    parts.append(fn(tail.reshape(-1)[:rest], offset=k * full))
  if not parts:
    return fn(jnp.zeros((0,), jnp.uint32), offset=0)
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def pack_radix(codes: jax.Array, radix: int) -> jax.Array:
  r"""Packs digits ``0 <= c < radix`` into bytes, ``k`` per byte.

  The layout is planar like :func:`pack`'s: for ``n = q k + t`` digits
  (``q`` a multiple of :data:`ALIGNMENT`), byte ``i < q`` holds
  :math:`\sum_{j<k} c_{jq+i}\, r^j` (one digit from each of ``k``
  contiguous planes), and byte ``q + m`` holds the trailing digits
  :math:`\sum_{j<k} c_{qk+mk+j}\, r^j` (zeros past the end).

  Args:
    codes: integer digits of any shape (flattened in C order), each in
      ``[0, radix)`` (not checked: a larger digit corrupts its byte).
    radix: ``r`` in ``[2, 256]``.

  Returns:
    ``uint8[ceil(n / k)]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import packing
    >>> packed = packing.pack_radix(jnp.array([2, 0, 1, 1, 2, 1]), 3)
    >>> packed
    Array([200,   1], dtype=uint8)
    >>> packing.unpack_radix(packed, 3, 6)
    Array([2, 0, 1, 1, 2, 1], dtype=uint32)
  """
  return pack_radix_with(_identity, (jnp.ravel(codes),), radix)


def unpack_radix(packed: jax.Array, radix: int, num_codes: int) -> jax.Array:
  """Inverse of :func:`pack_radix`: the first ``num_codes`` digits (uint32).

  Args:
    packed: ``uint8`` bytes from :func:`pack_radix`.
    radix: ``r`` used to pack.
    num_codes: number of digits ``n`` to read (static).

  Returns:
    ``uint32[num_codes]``.
  """
  return unpack_radix_with(_identity, packed, radix, num_codes)
