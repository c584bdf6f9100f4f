"""Half-precision casts: the honest baseline for every other compressor.

A cast halves the bytes of a float32 update and, unlike every quantizer
here, can be summed on the wire, so ``aggregate`` runs it as one all-reduce.
A bf16 all-reduce is the baseline a compressor has to beat (Agarwal et al.,
MLSys 2022; arXiv:2407.01378), not fp32.
"""

from typing import Any

import jax
import jax.numpy as jnp

from distoptax.algorithms.compressors import base


def _cast(wire_dtype: Any) -> base.Compressor:

  def encode_leaf(key: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
    del key
    return {"x": x.astype(wire_dtype)}

  def decode_leaf(arrays: dict[str, jax.Array], shape: tuple[int, ...],
                  dtype: Any) -> jax.Array:
    return arrays["x"].reshape(shape).astype(dtype)

  return base.leafwise(encode_leaf, decode_leaf, unbiased=False,
                       summable=True, name=jnp.dtype(wire_dtype).name)


def float16() -> base.Compressor:
  r"""Sends every leaf as IEEE float16 (round to nearest even).

  .. math::
    C(x) = \mathrm{fp16}(x)

  Deterministic rounding: biased (the error of each coordinate is a fixed
  function of it, relative size at most :math:`2^{-11}`), magnitudes above
  65504 become ``inf`` and below about ``6e-8`` become 0. Summable: the
  messages are added as float16 by the all-reduce, so a sum over many
  workers can overflow where each message does not (PyTorch divides by the
  world size before an fp16 all-reduce for this reason).

  Returns:
    A :class:`~distoptax.algorithms.compressors.base.Compressor`; 2 bytes
    per coordinate.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import casts
    >>> c = casts.float16()
    >>> message = c.encode(jax.random.key(0), jnp.array([0.5, 0.1, 7e4]))
    >>> message.arrays["x"].dtype
    dtype('float16')
    >>> c.decode(message)
    Array([0.5       , 0.09997559,        inf], dtype=float32)
  """
  return _cast(jnp.float16)


def bfloat16() -> base.Compressor:
  r"""Sends every leaf as bfloat16 (round to nearest even).

  .. math::
    C(x) = \mathrm{bf16}(x)

  bfloat16 keeps float32's exponent range with an 8-bit significand:
  relative error at most :math:`2^{-9}`, deterministic and therefore
  biased, no overflow below float32's. Summable (messages are added in
  bfloat16 by the all-reduce).

  Returns:
    A :class:`~distoptax.algorithms.compressors.base.Compressor`; 2 bytes
    per coordinate.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import casts
    >>> c = casts.bfloat16()
    >>> c.decode(c.encode(jax.random.key(0), jnp.array([0.5, 0.1, 7e4])))
    Array([5.00000000e-01, 1.00097656e-01, 7.01440000e+04], dtype=float32)
  """
  return _cast(jnp.bfloat16)
