r"""Unbiased stochastic rounding with 32 random bits per element.

Stochastic rounding of :math:`y \ge 0` to the integers returns
:math:`\lfloor y \rfloor + 1` with probability :math:`f = y - \lfloor y
\rfloor` and :math:`\lfloor y \rfloor` otherwise, so that its mean is
:math:`y`. QSGD, TernGrad and ZipML all reduce to it after scaling.

Randomness is the cost. On a CPU, JAX lowers its Threefry-2x32 hash to a
rolled loop that makes five passes over memory, so ``jax.random.bits`` (and
``jax.random.uniform``) of 16M elements takes about 7x a copy of them.
:func:`random_bits` computes the very same words (it equals
``jax.random.bits(key, shape, jnp.uint32)`` for a Threefry key, bit for
bit) with the twenty rounds unrolled, so that XLA fuses the hash into the
elementwise code that consumes it: about 1.6x a copy alone, and stochastic
rounding to uint8 codes about 1x. The comparison is done in integers: round
up iff ``u < ceil(f * 2**32)`` for the uniform ``uint32`` ``u``. The
round-up probability is then ``ceil(f * 2**32) / 2**32``:

* exactly :math:`f` whenever :math:`f \cdot 2^{32}` is an integer, which
  holds for every float32 :math:`f \ge 2^{-9}` (its ulp is
  :math:`\ge 2^{-32}`);
* otherwise (only :math:`0 < f < 2^{-9}`) larger than :math:`f` by less
  than :math:`2^{-32}`: a bias below :math:`2^{-32}` of one grid step.

Float32 arithmetic in computing :math:`y` itself (a scale and a product)
rounds by far more than that; this is the only sense in which the codecs
built on it are not exactly unbiased.
"""

import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

_TWO_POW_32 = 4294967296.0


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(v: jax.Array, r: int) -> jax.Array:
  return (v << jnp.uint32(r)) | (v >> jnp.uint32(32 - r))


def threefry2x32(key1: jax.Array, key2: jax.Array, x0: jax.Array,
                 x1: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The Threefry-2x32 block function (20 rounds), unrolled.

  The same function as JAX's ``threefry2x32`` primitive (Salmon et al.,
  SC 2011), written with plain ``jnp`` operations so that XLA fuses it into
  its consumers instead of running JAX's rolled CPU loop.

  Args:
    key1: uint32 scalar, first key word.
    key2: uint32 scalar, second key word.
    x0: uint32 array, first counter word.
    x1: uint32 array, second counter word (same shape).

  Returns:
    The two uint32 output words.
  """
  ks = (key1, key2, key1 ^ key2 ^ jnp.uint32(0x1BD11BDA))
  x0 = x0 + ks[0]
  x1 = x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = x0 ^ _rotate_left(x1, r)
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x0, x1


def random_bits(key: chex.PRNGKey, shape: tuple[int, ...],
                offset: int = 0) -> jax.Array:
  """Uniform ``uint32`` words: ``jax.random.bits``, fused.

  For a Threefry key (JAX's default) the words are those of
  ``jax.random.bits(key, shape, jnp.uint32)`` under JAX's default
  ``jax_threefry_partitionable`` layout: element ``i`` of the flattened
  array is ``a ^ b`` with ``(a, b)`` the Threefry-2x32 hash of the counter
  pair ``(0, i)`` under the key. With ``offset``, the counters start at
  ``offset``: the words are elements ``offset, offset + 1, ...`` of a
  longer draw, so that a caller can draw a long array segment by segment.
  Other key implementations fall back to ``jax.random.bits`` (of
  ``fold_in(key, offset)`` for a non-zero offset: segments are then
  independent draws rather than one draw).

  Args:
    key: a PRNG key (typed, or raw ``uint32[2]`` Threefry key data).
    shape: the static output shape.
    offset: static index of the first element (``offset + size <= 2**32``).

  Returns:
    ``uint32`` array of ``shape``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import rounding
    >>> key = jax.random.key(0)
    >>> bits = rounding.random_bits(key, (2, 3))
    >>> bool(jnp.all(bits == jax.random.bits(key, (2, 3), jnp.uint32)))
    True
  """
  size = int(np.prod(shape, dtype=np.int64))
  if not 0 <= offset <= 2**32 - size:
    raise ValueError(
        f"random_bits counts positions below 2**32; got offset={offset} "
        f"and {size} elements")
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if str(jax.random.key_impl(key)) != "threefry2x32":
    if offset:
      key = jax.random.fold_in(key, offset)
    return jax.random.bits(key, shape, jnp.uint32)
  k1, k2 = jax.random.key_data(key)
  counts = lax.iota(jnp.uint32, size)
  if offset:
    counts = counts + jnp.uint32(offset)
  a, b = threefry2x32(k1, k2, jnp.zeros((size,), jnp.uint32), counts)
  return (a ^ b).reshape(shape)


def round_up(bits: jax.Array, fraction: jax.Array) -> jax.Array:
  """True with probability ``fraction`` (up to ``2**-32``), given uniform bits.

  Args:
    bits: uniform ``uint32`` words (e.g. :func:`random_bits`).
    fraction: float32 in ``[0, 1)``, broadcastable against ``bits``.

  Returns:
    bool array: ``bits < ceil(fraction * 2**32)``.
  """
  threshold = jnp.ceil(fraction.astype(jnp.float32) * _TWO_POW_32)
  return bits < threshold.astype(jnp.uint32)


def stochastic_round(key: chex.PRNGKey, y: jax.Array,
                     offset: int = 0) -> jax.Array:
  r"""Rounds ``y >= 0`` to a neighbouring integer, up with probability frac(y).

  .. math::
    \mathrm{SR}(y) = \lfloor y \rfloor + \mathbb{1}[u < \lceil f\,2^{32}
    \rceil], \qquad f = y - \lfloor y \rfloor,\ u \sim U\{0, \dots,
    2^{32} - 1\}

  Args:
    key: a PRNG key.
    y: float32, ``0 <= y < 2**24`` (so that ``floor(y)`` and ``f`` are
      exact).
    offset: position of ``y``'s first element in a longer array rounded
      segment by segment (see :func:`random_bits`).

  Returns:
    ``uint32`` array of ``y``'s shape with :math:`E[\mathrm{SR}(y)] = y`
    (see the module docstring for the bias below ``2**-32``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import rounding
    >>> rounding.stochastic_round(jax.random.key(0), jnp.array([0.0, 2.0, 3.0]))
    Array([0, 2, 3], dtype=uint32)
  """
  y = y.astype(jnp.float32)
  floor = jnp.floor(y)
  up = round_up(random_bits(key, y.shape, offset), y - floor)
  return floor.astype(jnp.uint32) + up.astype(jnp.uint32)
