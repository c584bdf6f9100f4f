r"""One-bit compressors: signs, and signs scaled by the mean magnitude.

Wire format of one leaf (``d`` coordinates): ``signs``, ``uint8[ceil(d /
8)]``, bit 1 for a negative coordinate, packed by
:func:`~distoptax.algorithms.compressors.packing.pack`; the scaled sign adds
``scale``, float32 ``[1]``. A zero (or NaN) coordinate sends +1, as in
GRACE and DeepSpeed: one bit cannot say 0.

Both are biased. :func:`sign` goes with the majority vote
(``distoptax.algorithms.aggregators.majority_vote``, signSGD);
:func:`scaled_sign` goes with error feedback (``dist.aggregate(...,
error_feedback=True)``, EF-signSGD).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distoptax.algorithms.compressors import base
from distoptax.algorithms.compressors import packing


def _negative(v: jax.Array, offset: int) -> jax.Array:
  del offset
  return (v < 0).astype(jnp.uint32)


def _unit(bits: jax.Array, offset: int) -> jax.Array:
  del offset
  return 1.0 - 2.0 * bits.astype(jnp.float32)


def _signs(x: jax.Array) -> jax.Array:
  return packing.pack_with(_negative, (jnp.ravel(x),), 1)


def sign() -> base.Compressor:
  r"""Sends the sign of every coordinate in one bit; decodes to :math:`\pm 1`.

  .. math::
    C(x)_i = \begin{cases} -1 & x_i < 0 \\ +1 & \text{otherwise} \end{cases}

  Returns:
    A biased, non-summable
    :class:`~distoptax.algorithms.compressors.base.Compressor`; 1 bit per
    coordinate.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms import compressors
    >>> c = compressors.sign()
    >>> message = c.encode(jax.random.key(0), jnp.array([0.3, -2.0, 0.0]))
    >>> message.arrays["signs"]
    Array([2], dtype=uint8)
    >>> c.decode(message)
    Array([ 1., -1.,  1.], dtype=float32)

  Guarantees:
    None on its own (the magnitude is lost). With the majority vote,
    signSGD converges for smooth non-convex objectives at the rate of SGD
    under unimodal symmetric gradient noise (Bernstein et al. 2018; its
    ICLR 2019 sequel, arXiv:1810.05291, adds tolerance to a minority of
    adversarial workers).

  References:
    Bernstein, Wang, Azizzadenesheli, Anandkumar, "signSGD: Compressed
    Optimisation for Non-Convex Problems", ICML 2018, arXiv:1802.04434.
  """

  def encode_leaf(key: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
    del key
    return {"signs": _signs(x)}

  def decode_leaf(arrays: dict[str, jax.Array], shape: tuple[int, ...],
                  dtype: Any) -> jax.Array:
    d = int(np.prod(shape))
    flat = packing.unpack_with(_unit, arrays["signs"], 1, d)
    return flat.reshape(shape).astype(dtype)

  return base.leafwise(encode_leaf, decode_leaf, unbiased=False,
                       summable=False, name="sign")


def scaled_sign() -> base.Compressor:
  r"""The sign scaled by the mean magnitude: EF-signSGD's compressor.

  .. math::
    C(x) = \frac{\lVert x\rVert_1}{d}\, \mathrm{sign}(x)

  per leaf of ``d`` coordinates (zeros send :math:`+\lVert x\rVert_1/d`).

  Returns:
    A biased, non-summable
    :class:`~distoptax.algorithms.compressors.base.Compressor`; 1 bit per
    coordinate plus 32 bits per leaf. Use it with
    ``dist.aggregate(rule, compressor=scaled_sign(), error_feedback=True)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms import compressors
    >>> c = compressors.scaled_sign()
    >>> c.decode(c.encode(jax.random.key(0), jnp.array([1.0, -2.0, 3.0])))
    Array([ 2., -2.,  2.], dtype=float32)

  Guarantees:
    Contractive: :math:`\lVert C(x) - x\rVert^2 = (1 - \delta(x))
    \lVert x\rVert^2` with :math:`\delta(x) = \lVert x\rVert_1^2 /
    (d \lVert x\rVert_2^2) \in [1/d, 1]`, deterministically. With error
    feedback (EF-signSGD), SGD then converges for smooth non-convex
    objectives at the rate of uncompressed SGD up to higher-order terms in
    :math:`1/\delta` (Karimireddy et al. 2019), where plain signSGD can
    fail to converge.

  References:
    Karimireddy, Rebjock, Stich, Jaggi, "Error Feedback Fixes SignSGD and
    other Gradient Compression Schemes", ICML 2019, arXiv:1901.09847.
  """

  def encode_leaf(key: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
    del key
    flat = jnp.ravel(x).astype(jnp.float32)
    scale = jnp.mean(jnp.abs(flat)) if flat.size else jnp.zeros(())
    return {"scale": scale[None], "signs": _signs(flat)}

  def decode_leaf(arrays: dict[str, jax.Array], shape: tuple[int, ...],
                  dtype: Any) -> jax.Array:
    d = int(np.prod(shape))
    flat = packing.unpack_with(_unit, arrays["signs"], 1, d)
    return (flat * arrays["scale"][0]).reshape(shape).astype(dtype)

  return base.leafwise(encode_leaf, decode_leaf, unbiased=False,
                       summable=False, name="scaled_sign")
