r"""Natural compression: unbiased random rounding to a power of two.

Horváth, Ho, Horváth, Sahu, Canini, Richtárik, "Natural Compression for
Distributed Deep Learning", MSML 2022 (PMLR 190), arXiv:1905.10988.

A float32 :math:`t = \pm 2^a (1 + m / 2^{23})` (exponent :math:`a`, 23-bit
mantissa :math:`m`) rounds to :math:`\pm 2^{a+1}` with probability
:math:`m / 2^{23}` and to :math:`\pm 2^a` otherwise: the mantissa is
dropped and the biased exponent field is bumped by one when a uniform
23-bit integer is below :math:`m` (GRACE's bit trick). That probability is
exact, so the rounding is exactly unbiased, with no float arithmetic at all.

Wire format of one leaf (``d`` coordinates), sign and exponent, 9 bits per
coordinate as in the paper, with no clipping of the exponent range:

* ``exponents``: ``uint8[d]``, the rounded biased exponent field (0 encodes
  zero);
* ``signs``: ``uint8[ceil(d / 8)]``, one sign bit per coordinate, packed by
  :func:`~distoptax.algorithms.compressors.packing.pack`.

Edge cases: subnormals (exponent field 0) round between 0 and
:math:`2^{-126}`, again exactly unbiased (the same bit trick); values in
:math:`[2^{127}, 2^{128})` may round up to :math:`2^{128}`, which float32
represents as ``inf``; ``inf`` stays ``inf`` and NaN becomes ``inf`` of its
sign.
"""

from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from distoptax.algorithms.compressors import base
from distoptax.algorithms.compressors import packing
from distoptax.algorithms.compressors import rounding


def natural() -> base.Compressor:
  r"""Natural compression :math:`C_{nat}`, coordinatewise.

  .. math::
    C_{nat}(t) = \mathrm{sgn}(t) \cdot \begin{cases}
      2^{a} & \text{with probability } (2^{a+1} - |t|) / 2^{a} \\
      2^{a+1} & \text{otherwise,} \end{cases}
    \qquad a = \lfloor \log_2 |t| \rfloor

  and :math:`C_{nat}(0) = 0`. Leaves of other float dtypes are cast to
  float32 first (exact for bfloat16 and float16) and the result back.

  Returns:
    An unbiased, non-summable
    :class:`~distoptax.algorithms.compressors.base.Compressor`; 9 bits per
    coordinate.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms import compressors
    >>> c = compressors.natural()
    >>> message = c.encode(jax.random.key(0), jnp.array([0.25, -8.0, 0.0]))
    >>> message.arrays["exponents"], message.arrays["signs"]
    (Array([125, 130,   0], dtype=uint8), Array([2], dtype=uint8))
    >>> c.decode(message)  # Powers of two come back unchanged.
    Array([ 0.25, -8.  ,  0.  ], dtype=float32)

  Guarantees:
    :math:`E[C_{nat}(t)] = t` and
    :math:`E[C_{nat}(t)^2] \le \frac{9}{8} t^2`, so
    :math:`E\lVert C_{nat}(x) - x\rVert^2 \le \frac18 \lVert x\rVert^2`
    (the paper's :math:`\omega = 1/8`); exactly, a coordinate with
    :math:`|t| = 2^a (1 + p)` has variance :math:`4^a p (1 - p)`.

  References:
    Horváth et al., arXiv:1905.10988.
  """

  def encode_leaf(key: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
    flat = jnp.ravel(x).astype(jnp.float32)

    def exponents(v: jax.Array, offset: int) -> jax.Array:
      bits = lax.bitcast_convert_type(v, jnp.uint32)
      exponent = (bits >> jnp.uint32(23)) & jnp.uint32(0xFF)
      mantissa = bits & jnp.uint32(0x7FFFFF)
      uniform = rounding.random_bits(key, v.shape, offset) >> jnp.uint32(9)
      up = (uniform < mantissa).astype(jnp.uint32)
      return jnp.minimum(exponent + up, jnp.uint32(0xFF))

    def negative(v: jax.Array, offset: int) -> jax.Array:
      del offset
      return lax.bitcast_convert_type(v, jnp.uint32) >> jnp.uint32(31)

    return {"exponents": packing.pack_with(exponents, (flat,), 8),
            "signs": packing.pack_with(negative, (flat,), 1)}

  def decode_leaf(arrays: dict[str, jax.Array], shape: tuple[int, ...],
                  dtype: Any) -> jax.Array:
    d = int(np.prod(shape))
    exponents = arrays["exponents"]

    def values(signs: jax.Array, offset: int) -> jax.Array:
      exponent = exponents[offset:offset + signs.shape[0]].astype(jnp.uint32)
      bits = (signs << jnp.uint32(31)) | (exponent << jnp.uint32(23))
      return lax.bitcast_convert_type(bits, jnp.float32)

    flat = packing.unpack_with(values, arrays["signs"], 1, d)
    return flat.reshape(shape).astype(dtype)

  return base.leafwise(encode_leaf, decode_leaf, unbiased=True,
                       summable=False, name="natural")
