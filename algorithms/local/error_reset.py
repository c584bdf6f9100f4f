r"""Error reset (CSER): the block sparsifier and the reset algebra.

CSER (Xie et al., NeurIPS 2020) keeps **bifurcated local models**: worker
:math:`i` holds :math:`x_i = \hat x + e_i`, a point :math:`\hat x` common
to all workers plus its own residual :math:`e_i`, and periodically
**resets** the residuals by all-reducing a compressed part of them. This
module holds the math with no collective and no mesh; the transformation
over the worker axis is ``distoptax.distributed.cser``.

* :func:`block_sparsifier`: the compressor of the authors' code, a random
  contiguous block of rows of every tensor chosen from a key shared by all
  workers, so that messages can be summed by an all-reduce.
* :func:`reset_residual` / :func:`reset_direct`: one reset in its residual
  form (compress the residual) and in its direct form (compress the model
  and average it, the authors' ``ERSGD2TrainerV2``); they agree for any
  linear compressor with shared randomness (tested).
* :func:`overall_ratio`: the compression ratio of a two-compressor
  schedule.

Conventions and sources: ``third_party_notes/cser.md``.
"""

import math
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.algorithms.compressors import base


def _check_ratio(name: str, ratio: Any) -> float:
  if isinstance(ratio, (bool, np.bool_)) or not isinstance(
      ratio, (int, float, np.integer, np.floating)):
    raise TypeError(f"{name} must be a number >= 1 (a compression ratio); "
                    f"got {ratio!r}")
  if not (math.isfinite(ratio) and ratio >= 1):
    raise ValueError(f"{name} must be a finite compression ratio >= 1; got "
                     f"{ratio}")
  return float(ratio)


def check_ratios(ratio1: Any, ratio2: Any) -> tuple[float, float]:
  """Returns ``(R1, R2)``; raises unless ``R1 >= R2 >= 1``.

  C2 (the reset every ``H`` steps) sends the bigger block, so its ratio
  must not exceed C1's (the cheap compressor of every step).

  Args:
    ratio1: :math:`R_1`, the compression ratio of C1.
    ratio2: :math:`R_2`, the compression ratio of C2.

  Returns:
    The two ratios as floats.

  Raises:
    TypeError: for a ratio that is not a number.
    ValueError: for a ratio below 1 or ``ratio2 > ratio1``.

  Example:
    >>> check_ratios(8, 2)
    (8.0, 2.0)
    >>> check_ratios(2, 8)
    Traceback (most recent call last):
    ...
    ValueError: ratio2=8 exceeds ratio1=2: C2 (every H steps) must send \
at least as much as C1 (every step); swap them
  """
  r1 = _check_ratio("ratio1", ratio1)
  r2 = _check_ratio("ratio2", ratio2)
  if r2 > r1:
    raise ValueError(
        f"ratio2={ratio2} exceeds ratio1={ratio1}: C2 (every H steps) must "
        f"send at least as much as C1 (every step); swap them")
  return r1, r2


def block_rows(rows: int, ratio: float) -> tuple[int, int]:
  """Rows per block and number of blocks of a tensor of ``rows`` rows.

  As in the authors' code: ``k = max(1, round(rows / ratio))`` rows (Python
  rounding, half to even) and ``ceil(rows / k)`` aligned blocks, the last
  one shorter when ``k`` does not divide ``rows``.

  Example:
    >>> block_rows(784, 64), block_rows(10, 64)
    ((12, 66), (1, 10))
  """
  k = max(1, round(rows / ratio))
  return k, -(-rows // k)


def _as_rows(shape: tuple[int, ...]) -> tuple[int, int]:
  rows = shape[0] if shape else 1
  size = int(np.prod(shape)) if shape else 1
  return rows, size // rows if rows else 0


def block_sparsifier(ratio: float) -> base.Compressor:
  r"""A random block of rows of every tensor, from a shared key.

  .. math::
    C(x)_{r,:} = x_{r,:}\,[\,r \in B\,], \qquad
    B = \{bk, \dots, \min(bk + k, \mathrm{rows}) - 1\}, \quad
    b \sim \mathcal U\{0, \dots, \lceil \mathrm{rows}/k \rceil - 1\}

  with :math:`k` = ``block_rows(rows, ratio)[0]``, independently for each
  tensor (the key is folded with the leaf index), along the first axis
  (a scalar is one row). The key is the step key, the same on every worker
  (``shared_key=True``), so every worker keeps the same rows and messages
  add up under an all-reduce (``summable=True``). No scaling: it is the
  projection onto the block, biased, contractive with :math:`\delta
  \approx 1/R`, and linear, so that CSER's residual and direct forms
  agree.

  Wire format per tensor: ``values`` (``k`` rows, in the tensor's dtype;
  the last, shorter block is zero-padded to ``k`` rows so that the shape
  is static), ``start`` (``int32``, the first row) and ``senders``
  (``int32``, 1): an all-reduce sums the starts of identical blocks and the
  ones, so the receiver divides. That is 8 bytes per tensor on top of the
  values; the authors' code sends the values alone (every worker draws the
  block from the same seeded generator).

  Args:
    ratio: :math:`R \ge 1`; ``1`` keeps every row (the identity).

  Returns:
    A :class:`~distoptax.algorithms.compressors.Compressor`, summable,
    biased, with ``shared_key=True``.

  Raises:
    TypeError: for a ratio that is not a number.
    ValueError: for a ratio below 1.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> c = block_sparsifier(4)
    >>> x = {"w": jnp.arange(16.0).reshape(8, 2)}
    >>> m = c.encode(jax.random.key(0), x)
    >>> m["w"].arrays["values"].shape
    (2, 2)
    >>> y = c.decode(m)["w"]
    >>> int((y.sum(1) != 0).sum()), bool(jnp.all((y == 0) | (y == x["w"])))
    (2, True)

  References:
    Xie, Zheng, Koyejo, Gupta, Li, Lin, "CSER: Communication-efficient SGD
    with Error Reset", NeurIPS 2020, arXiv:2007.13221 (globally randomized
    block sparsifier; xcgoner/NeurIPS2020_CSER, ``ersgd2_trainer_v*.py``).

  Guarantees:
    ``decode(encode(x))`` equals ``x`` on the chosen rows and zero
    elsewhere; with ``ratio=1`` it is ``x``. The sum of the messages of
    ``n`` workers decodes to the sum of their decoded messages (tested).
  """
  ratio = _check_ratio("ratio", ratio)

  def encode_leaf(key, x):
    rows, cols = _as_rows(tuple(x.shape))
    k, num_blocks = block_rows(rows, ratio)
    flat = jnp.pad(x.reshape(rows, cols), ((0, num_blocks * k - rows),
                                           (0, 0)))
    start = jax.random.randint(key, (), 0, num_blocks, jnp.int32) * k
    values = lax.dynamic_slice(flat, (start, jnp.zeros((), jnp.int32)),
                               (k, cols))
    return {"values": values, "start": start,
            "senders": jnp.ones((), jnp.int32)}

  def decode_leaf(arrays, shape, dtype):
    rows, cols = _as_rows(shape)
    k, num_blocks = block_rows(rows, ratio)
    start = arrays["start"] // arrays["senders"]
    dense = lax.dynamic_update_slice(
        jnp.zeros((num_blocks * k, cols), arrays["values"].dtype),
        arrays["values"], (start, jnp.zeros((), jnp.int32)))
    return dense[:rows].reshape(shape).astype(dtype)

  return base.leafwise(encode_leaf, decode_leaf, unbiased=ratio == 1,
                       summable=True, shared_key=True,
                       name="block_sparsifier")


def reset_residual(params: optax.Params, error: optax.Updates,
                   own: optax.Updates, mean: optax.Updates
                   ) -> tuple[optax.Updates, optax.Updates]:
  r"""One error reset in the residual form: the update and the new residual.

  .. math::
    s_i = C(e_i), \quad x_i \leftarrow x_i - s_i + \tfrac1n \textstyle
    \sum_j s_j, \quad e_i \leftarrow e_i - s_i

  Args:
    params: :math:`x_i` (only its dtypes are read).
    error: :math:`e_i`.
    own: :math:`s_i`, this worker's decoded message.
    mean: :math:`\frac1n \sum_j s_j`.

  Returns:
    ``(update, new_error)``: ``x_i + update`` is the reset model.

  Example:
    >>> import jax.numpy as jnp
    >>> u, e = reset_residual(jnp.zeros(2), jnp.array([1.0, 2.0]),
    ...                       jnp.array([1.0, 0.0]), jnp.array([3.0, 0.0]))
    >>> u, e
    (Array([2., 0.], dtype=float32), Array([0., 2.], dtype=float32))
  """
  update = jax.tree.map(lambda p, s, m: (m - s).astype(p.dtype), params,
                        own, mean)
  new_error = jax.tree.map(lambda e, s: e - s.astype(e.dtype), error, own)
  return update, new_error


def reset_direct(params: optax.Params, own: optax.Updates,
                 mean: optax.Updates) -> optax.Updates:
  r"""One error reset in the direct form: the update of the model.

  .. math::
    x_i \leftarrow x_i - C(x_i) + \tfrac1n \textstyle\sum_j C(x_j)

  For the block sparsifier: the chosen block of the model is replaced by
  its average over workers, the rest is kept (``ERSGD2TrainerV2``). For a
  linear compressor with shared randomness, :math:`C(x_i) = C(\hat x) +
  C(e_i)` makes it the residual form's model update exactly.

  Args:
    params: :math:`x_i` (only its dtypes are read).
    own: :math:`C(x_i)`, this worker's decoded message.
    mean: :math:`\frac1n \sum_j C(x_j)`.

  Returns:
    The update: ``x_i + update`` is the reset model.
  """
  return jax.tree.map(lambda p, s, m: (m - s).astype(p.dtype), params, own,
                      mean)


def overall_ratio(ratio1: float | None, ratio2: float | None, period: int,
                  *, replace: bool) -> float:
  r"""The compression ratio of C1 every step and C2 every ``period`` steps.

  .. math::
    R = \Big(\frac{1}{R_1} + \frac{1}{H R_2}\Big)^{-1}
    \quad\text{or, if C2 replaces C1 on its step,}\quad
    R = \Big(\frac{H - 1}{H R_1} + \frac{1}{H R_2}\Big)^{-1}

  (the paper's formula, and the authors' ``ERSGD2`` schedule); a ``None``
  ratio is a compressor that sends nothing. Message headers are ignored.

  Example:
    >>> overall_ratio(64, 16, 4, replace=True)  # The check's schedule.
    36.57142857142857
    >>> overall_ratio(128, 8, 8, replace=False)
    42.666666666666664
  """
  f1 = 0.0 if ratio1 is None else 1.0 / ratio1
  f2 = 0.0 if ratio2 is None else 1.0 / ratio2
  per_step = ((period - 1) * f1 + f2) / period if replace else (
      f1 + f2 / period)
  return math.inf if per_step == 0 else 1.0 / per_step
