r"""Threshold sparsification: send the entries with ``|x_i| > tau``.

The number of entries above a fixed threshold varies from step to step,
while the arrays handed to a collective need static shapes. The wire
format is therefore a fixed-capacity list of pairs and a count:

* ``indices: int32[C]``, ascending; the slots past the count hold ``d``
  (out of range, dropped by the decoder);
* ``values: dtype[C]``, zero in the unused slots.

The number of pairs sent, ``min(#{|x_i| > tau}, C)``, is the number of
indices below ``d`` (no separate count travels: the receiver reads it off
the sentinels).

``C`` (the capacity of a leaf of ``d`` entries) is static: ``capacity`` or
``ceil(capacity_fraction * d)``. When more than ``C`` entries pass, the
``C`` of lowest index are sent and the rest are dropped (with error
feedback they stay in the memory). The wire length is the fixed ``C (4 +
itemsize)`` bytes; ``coded_bits`` is the exact length of the
variable-length message the paper-level scheme would send, ``32 + count
(32 + 8 itemsize)`` bits (a 32-bit count, then one 32-bit index and one
value per pair).

The strict inequality and "NaN never passes" follow GRACE's
``ThresholdCompressor`` (``tensor.abs() > threshold``); GRACE sends
variable-length tensors, which hang its all-gather when nothing passes
(sands-lab/grace#16), a case the static capacity avoids.
"""

import numpy as np
import jax.numpy as jnp

from distoptax.algorithms.compressors import base
from distoptax.algorithms.compressors import selection


def threshold(tau: float, *, capacity: int | None = None,
              capacity_fraction: float | None = None) -> base.Compressor:
  r"""Threshold sparsification with a static capacity.

  .. math::
    C(x)_i = x_i \, [\, |x_i| > \tau \,]

  when at most ``C`` entries pass (otherwise the ``C`` passing entries of
  lowest index). Biased and not summable (all-gather path).

  Guarantees: without overflow, :math:`\lVert x - C(x)\rVert_\infty \le
  \tau` and :math:`\lVert x - C(x)\rVert^2 \le \min(d\,\tau^2,
  \lVert x\rVert^2)`.

  Args:
    tau: the threshold, ``tau >= 0``.
    capacity: static number of pairs per leaf, ``min(capacity, d)``.
    capacity_fraction: or ``ceil(capacity_fraction * d)`` pairs per leaf.
      Give at most one of the two; neither means
      ``capacity_fraction=0.1``.

  Returns:
    A :class:`~distoptax.algorithms.compressors.Compressor` (biased, not
    summable) whose ``coded_bits`` is the variable-length size.

  Raises:
    ValueError: for a negative or non-finite ``tau`` or an invalid
      capacity.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms import compressors
    >>> c = compressors.threshold(1.0, capacity=3)
    >>> x = {"w": jnp.array([0.5, -2.0, 1.0, 3.0, 0.0])}
    >>> message = c.encode(jax.random.key(0), x)
    >>> message["w"].arrays["indices"]  # 5 = d marks an unused slot
    Array([1, 3, 5], dtype=int32)
    >>> c.decode(message)["w"]
    Array([ 0., -2.,  0.,  3.,  0.], dtype=float32)
    >>> int(c.coded_bits(message))  # 32 + 2 * (32 + 32)
    160

  References:
    Strom, "Scalable distributed DNN training using commodity GPU cloud
    computing", Interspeech 2015 (threshold with residual); GRACE
    (sands-lab/grace), ``ThresholdCompressor``.
  """
  if not (isinstance(tau, (int, float)) and np.isfinite(tau) and tau >= 0):
    raise ValueError(f"threshold needs a finite tau >= 0; got tau={tau!r}")
  if capacity is None and capacity_fraction is None:
    capacity_fraction = 0.1
  selection.check_budget("threshold", capacity_fraction, capacity,
                         fraction_name="capacity_fraction",
                         k_name="capacity")

  def encode_leaf(key, x):
    del key
    flat = jnp.ravel(x)
    d = flat.shape[0]
    cap = selection.budget(d, capacity_fraction, capacity)
    words = selection.pack_bits(jnp.abs(flat) > tau)
    indices = selection.compact(words, cap, fill=d)
    values = jnp.where(indices < d, flat[jnp.minimum(indices, d - 1)], 0)
    return {"indices": indices, "values": values.astype(flat.dtype)}

  def decode_leaf(arrays, shape, dtype):
    d = int(np.prod(shape))
    dense = selection.scatter(arrays["indices"], arrays["values"], d,
                              unique=False)
    return dense.reshape(shape).astype(dtype)

  def coded_bits_leaf(arrays, shape):
    count = jnp.sum(arrays["indices"] < int(np.prod(shape)), dtype=jnp.int32)
    pair_bits = 32 + 8 * jnp.dtype(arrays["values"].dtype).itemsize
    return 32 + count * pair_bits

  return base.leafwise(encode_leaf, decode_leaf, unbiased=False,
                       summable=False, coded_bits_leaf=coded_bits_leaf,
                       name="threshold")
