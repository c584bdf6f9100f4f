r"""TernGrad: stochastic ternary gradients with one scale per leaf.

Wen, Xu, Yan, Wu, Wang, Chen, Li, "TernGrad: Ternary Gradients to Reduce
Communication in Distributed Deep Learning", NIPS 2017, arXiv:1705.07878.

Wire format of one leaf (``d`` coordinates):

* ``scale``: float32 ``[1]``, :math:`s = \max_k |g_k|` (of the clipped
  gradient when clipping is on);
* ``ternary``: ``uint8[ceil(d / 5)]``, the digit :math:`1 + \mathrm{sgn}(g_k)
  b_k \in \{0, 1, 2\}` of every coordinate, five to a byte (base
  3\ :sup:`5`, 1.6 bits per coordinate) by
  :func:`~distoptax.algorithms.compressors.packing.pack_radix`.

The scale is per leaf, the paper's "layer-wise ternarizing" (one scale per
layer). Its "scaler sharing" (one scale, the maximum over workers, so that
the ternary integers can be summed) needs a collective inside the encoder
and is not implemented: messages are all-gathered.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distoptax.algorithms.compressors import base
from distoptax.algorithms.compressors import packing
from distoptax.algorithms.compressors import rounding


def terngrad(*, clip_stddevs: float | None = None) -> base.Compressor:
  r"""TernGrad's stochastic ternarization, per leaf.

  .. math::
    s = \max_k |g_k|, \qquad
    \tilde g_k = s\, \mathrm{sgn}(g_k)\, b_k, \qquad
    b_k \sim \mathrm{Bernoulli}(|g_k| / s)

  with :math:`\tilde g = 0` for :math:`g = 0`. With ``clip_stddevs = c``
  the gradient is first clipped elementwise to :math:`[-c\sigma, c\sigma]`,
  :math:`\sigma` the standard deviation of the leaf's entries (the paper's
  gradient clipping, :math:`c = 2.5`, as in GRACE and FedJAX); the result is
  then unbiased for the *clipped* gradient only, and the compressor is
  declared biased.

  Args:
    clip_stddevs: ``c > 0``, or ``None`` (default) for no clipping.

  Returns:
    A non-summable
    :class:`~distoptax.algorithms.compressors.base.Compressor`, unbiased
    without clipping; 1.6 bits per coordinate plus 32 bits per leaf.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms import compressors
    >>> c = compressors.terngrad()
    >>> message = c.encode(jax.random.key(0), jnp.array([0.5, -2.0, 0.0, 2.0]))
    >>> message.arrays["scale"], message.arrays["ternary"].shape
    (Array([2.], dtype=float32), (1,))
    >>> c.decode(message)[1:]  # On the grid {-2, 0, 2}: exact.
    Array([-2.,  0.,  2.], dtype=float32)

  Guarantees:
    Without clipping, :math:`E[\tilde g] = g`,
    :math:`E\lVert \tilde g\rVert^2 = s \lVert g\rVert_1` and
    :math:`E\lVert \tilde g - g\rVert^2 = \sum_k |g_k|(s - |g_k|) \le
    s \lVert g\rVert_1`. The paper proves convergence of SGD with ternary
    gradients under a bound on this second moment; clipping makes the bound
    tighter at the price of a bias.

  References:
    Wen et al., NIPS 2017, arXiv:1705.07878.
  """
  if clip_stddevs is not None:
    if (isinstance(clip_stddevs, bool)
        or not isinstance(clip_stddevs, (int, float, np.number))
        or not clip_stddevs > 0 or not np.isfinite(clip_stddevs)):
      raise ValueError(
          "clip_stddevs must be a finite number > 0 or None; got "
          f"{clip_stddevs!r}")
    clip_stddevs = float(clip_stddevs)

  def encode_leaf(key: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
    flat = jnp.ravel(x).astype(jnp.float32)
    bound = None
    if clip_stddevs is not None:
      bound = clip_stddevs * jnp.std(flat)
      clipped = jnp.clip(flat, -bound, bound)
    else:
      clipped = flat
    scale = jnp.max(jnp.abs(clipped), initial=0.0)
    inverse = jnp.where(scale > 0, 1.0 / jnp.where(scale > 0, scale, 1.0),
                        0.0)

    def digits(v: jax.Array, offset: int) -> jax.Array:
      if bound is not None:
        v = jnp.clip(v, -bound, bound)
      y = jnp.minimum(jnp.abs(v) * inverse, 1.0)
      b = rounding.stochastic_round(key, y, offset)
      return jnp.where(v < 0, jnp.uint32(1) - b, jnp.uint32(1) + b)

    return {"scale": scale[None],
            "ternary": packing.pack_radix_with(digits, (flat,), 3)}

  def decode_leaf(arrays: dict[str, jax.Array], shape: tuple[int, ...],
                  dtype: Any) -> jax.Array:
    d = int(np.prod(shape))
    scale = arrays["scale"][0]

    def values(digits: jax.Array, offset: int) -> jax.Array:
      del offset
      return (digits.astype(jnp.float32) - 1.0) * scale

    flat = packing.unpack_radix_with(values, arrays["ternary"], 3, d)
    return flat.reshape(shape).astype(dtype)

  return base.leafwise(encode_leaf, decode_leaf,
                       unbiased=clip_stddevs is None, summable=False,
                       name="terngrad")
