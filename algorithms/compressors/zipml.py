r"""ZipML: stochastic rounding of gradients, models and data, and double sampling.

Zhang, Li, Kara, Alistarh, Liu, Zhang, "ZipML: Training Linear Models with
End-to-End Low Precision, and a Little Bit of Deep Learning", ICML 2017,
arXiv:1611.05402.

Every quantizer here rounds a value stochastically to one of :math:`2^b`
evenly spaced levels spanning :math:`[\min, \max]` of the array it belongs
to (per leaf for gradients and models, per feature for data):

.. math::
  Q(v) = \ell + \Delta\, \mathrm{SR}\big((v - \ell) / \Delta\big), \qquad
  \Delta = (u - \ell) / (2^b - 1)

with :math:`\ell, u` the minimum and maximum and SR the unbiased stochastic
rounding of :mod:`~distoptax.algorithms.compressors.rounding`, so that
:math:`E[Q(v)] = v` and :math:`\mathrm{Var}[Q(v)] = \Delta^2 p (1 - p)`,
:math:`p` the fractional position of :math:`v` between its two levels. The
paper's variance-optimal (non-uniform) levels are not implemented.

*Double sampling.* A least-squares gradient :math:`a (a^\top x - b)` is
quadratic in the sample :math:`a`; with one quantization,
:math:`E[Q(a) Q(a)^\top] = a a^\top + \mathrm{diag}(\mathrm{Var}[Q(a)])`, a
bias of :math:`\mathrm{diag}(\mathrm{Var}[Q(a)])\, x`. Two independent
quantizations give the unbiased :math:`Q_1(a) (Q_2(a)^\top x - b)`
(:func:`double_sampling` and :func:`least_squares_gradient`).
"""

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.algorithms.compressors import base
from distoptax.algorithms.compressors import packing
from distoptax.algorithms.compressors import rounding


def _check_num_bits(num_bits: Any) -> int:
  if (isinstance(num_bits, bool) or not isinstance(num_bits,
                                                    (int, np.integer))
      or not 1 <= num_bits <= 16):
    raise ValueError(
        f"num_bits must be an integer in [1, 16]; got {num_bits!r}")
  return int(num_bits)


def _grid(low: jax.Array, high: jax.Array,
          levels: int) -> tuple[jax.Array, jax.Array]:
  """Level spacing and its safe inverse (0 when the range is empty)."""
  step = (high - low) / levels
  return step, jnp.where(step > 0, 1.0 / jnp.where(step > 0, step, 1.0), 0.0)


def stochastic_rounding(num_bits: int) -> base.Compressor:
  r"""Unbiased stochastic rounding to ``num_bits``-bit codes per leaf.

  .. math::
    Q(v)_i = \ell + \Delta\, \mathrm{SR}\big((v_i - \ell) / \Delta\big),
    \qquad \ell = \min_i v_i,\ \Delta = (\max_i v_i - \ell) / (2^b - 1)

  Wire format of one leaf (``d`` coordinates): ``low`` and ``step``,
  float32 ``[1]`` each, and ``codes``, the level indices in ``b`` bits
  packed into ``uint8[ceil(d b / 8)]``.

  Args:
    num_bits: ``b``, an integer in ``[1, 16]``.

  Returns:
    An unbiased, non-summable
    :class:`~distoptax.algorithms.compressors.base.Compressor`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import zipml
    >>> c = zipml.stochastic_rounding(2)  # Levels -1, 0, 1, 2.
    >>> message = c.encode(jax.random.key(0), jnp.array([-1.0, 0.0, 2.0, 1.0]))
    >>> message.arrays["low"], message.arrays["step"], message.arrays["codes"]
    (Array([-1.], dtype=float32), Array([1.], dtype=float32), Array([180], dtype=uint8))
    >>> c.decode(message)
    Array([-1.,  0.,  2.,  1.], dtype=float32)

  Guarantees:
    :math:`E[Q(v)] = v` and
    :math:`E\lVert Q(v) - v\rVert^2 = \Delta^2 \sum_i p_i (1 - p_i) \le
    d \Delta^2 / 4`.

  References:
    Zhang et al., ICML 2017, arXiv:1611.05402.
  """
  b = _check_num_bits(num_bits)
  levels = 2**b - 1

  def encode_leaf(key: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
    flat = jnp.ravel(x).astype(jnp.float32)
    low = jnp.min(flat, initial=jnp.inf)
    high = jnp.max(flat, initial=-jnp.inf)
    low = jnp.where(jnp.isfinite(low), low, 0.0)
    high = jnp.where(jnp.isfinite(high), high, 0.0)
    step, inverse = _grid(low, high, levels)

    def codes(v: jax.Array, offset: int) -> jax.Array:
      y = jnp.clip((v - low) * inverse, 0.0, float(levels))
      return rounding.stochastic_round(key, y, offset)

    return {"low": low[None], "step": step[None],
            "codes": packing.pack_with(codes, (flat,), b)}

  def decode_leaf(arrays: dict[str, jax.Array], shape: tuple[int, ...],
                  dtype: Any) -> jax.Array:
    d = int(np.prod(shape))
    low, step = arrays["low"][0], arrays["step"][0]

    def values(codes: jax.Array, offset: int) -> jax.Array:
      del offset
      return low + codes.astype(jnp.float32) * step

    flat = packing.unpack_with(values, arrays["codes"], b, d)
    return flat.reshape(shape).astype(dtype)

  return base.leafwise(encode_leaf, decode_leaf, unbiased=True,
                       summable=False, name="zipml")


def quantize_model(key: chex.PRNGKey, params: optax.Params,
                   num_bits: int) -> optax.Params:
  r"""Stochastically rounds every leaf of a model to ``num_bits`` bits.

  The model side of ZipML's end-to-end low precision: each leaf is rounded
  to its own :math:`2^b` levels over :math:`[\min, \max]` of the leaf, as
  by :func:`stochastic_rounding` (leaf ``i`` uses ``fold_in(key, i)``), and
  returned dequantized, with the structure, shapes and dtypes of
  ``params``.

  Args:
    key: a PRNG key.
    params: a pytree of float arrays.
    num_bits: ``b``, an integer in ``[1, 16]``.

  Returns:
    The quantized parameters; :math:`E[\cdot] =` ``params``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import zipml
    >>> q = zipml.quantize_model(jax.random.key(0),
    ...                          {"w": jnp.array([0.0, 0.4, 3.0])}, 2)
    >>> q["w"][0], q["w"][2], bool(q["w"][1] == 0.0) or bool(q["w"][1] == 1.0)
    (Array(0., dtype=float32), Array(3., dtype=float32), True)
  """
  c = stochastic_rounding(num_bits)
  return c.decode(c.encode(key, params))


def quantize_features(key: chex.PRNGKey, features: jax.Array,
                      num_bits: int) -> jax.Array:
  r"""One stochastic rounding of a data matrix on a per-feature grid.

  Feature ``j`` (column) is rounded to :math:`2^b` levels over
  :math:`[\min_n a_{nj}, \max_n a_{nj}]`, the grid fixed by the data (not
  by the draw).

  Args:
    key: a PRNG key.
    features: float ``[N, D]``.
    num_bits: ``b``, an integer in ``[1, 16]``.

  Returns:
    float32 ``[N, D]``, unbiased for ``features``.
  """
  b = _check_num_bits(num_bits)
  features = jnp.asarray(features, jnp.float32)
  if features.ndim != 2:
    raise ValueError(
        f"features must be [N, D]; got shape {features.shape}")
  low = jnp.min(features, axis=0)
  high = jnp.max(features, axis=0)
  step, inverse = _grid(low, high, 2**b - 1)
  y = jnp.clip((features - low) * inverse, 0.0, float(2**b - 1))
  return low + rounding.stochastic_round(key, y).astype(jnp.float32) * step


def double_sampling(key: chex.PRNGKey, features: jax.Array,
                    num_bits: int) -> tuple[jax.Array, jax.Array]:
  r"""Two independent quantizations of every sample, on one grid.

  ZipML's double sampling: :math:`Q_1(a)` and :math:`Q_2(a)` are drawn with
  independent keys on the same per-feature grid
  (:func:`quantize_features`), so that
  :math:`E[Q_1(a) Q_2(a)^\top] = a a^\top` and the least-squares gradient
  :math:`Q_1(a)(Q_2(a)^\top x - b)` is unbiased.

  Args:
    key: a PRNG key.
    features: float ``[N, D]``, e.g. ``datasets.least_squares().x_train``.
    num_bits: ``b``, an integer in ``[1, 16]``.

  Returns:
    ``(q1, q2)``, two float32 ``[N, D]`` quantizations.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import zipml
    >>> a = jnp.array([[0.0, 1.0], [0.3, 2.0], [1.0, 3.0]])
    >>> q1, q2 = zipml.double_sampling(jax.random.key(0), a, 1)
    >>> bool(jnp.all((q1 == 0.0) | (q1 == 1.0) | (q1 == 3.0)))
    True
    >>> w, b = jnp.ones(2), jnp.zeros(3)
    >>> zipml.least_squares_gradient(w, q1, q2, b).shape
    (2,)

  References:
    Zhang et al., ICML 2017, arXiv:1611.05402 (Section 3, double sampling).
  """
  first, second = jax.random.split(key)
  return (quantize_features(first, features, num_bits),
          quantize_features(second, features, num_bits))


def least_squares_gradient(weights: jax.Array, first: jax.Array,
                           second: jax.Array,
                           targets: jax.Array) -> jax.Array:
  r"""Gradient estimate of :math:`\frac{1}{2N} \sum_n (a_n^\top x - b_n)^2`.

  .. math::
    \hat g = \frac1N \sum_n q^{(1)}_n \big((q^{(2)}_n)^\top x - b_n\big)

  With ``first = second = features`` it is the exact gradient; with the two
  outputs of :func:`double_sampling` it is unbiased; with one quantization
  passed twice (``first is second``) it is the naive, biased estimate.

  Args:
    weights: ``x``, float ``[D]``.
    first: ``[N, D]``, the copy of the samples that multiplies the residual.
    second: ``[N, D]``, the copy inside the residual.
    targets: ``b``, float ``[N]``.

  Returns:
    float ``[D]``.
  """
  residual = second @ weights - targets
  return first.T @ residual / first.shape[0]
