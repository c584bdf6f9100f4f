r"""Pairwise squared distances between workers' updates (distance rules).

Krum, Multi-Krum, Bulyan's selection, minimum-diameter averaging and nearest
neighbour mixing all start from the matrix of squared Euclidean distances
between the ``n`` workers' updates, each update being the whole pytree
flattened to one vector (the squared distance is the sum of the per-leaf
squared distances).

How they are computed
---------------------
One Gram matrix of the rows *centred first*:

.. math::
  y_i = x_i - c, \qquad G = Y Y^\top, \qquad
  d_{ij} = G_{ii} + G_{jj} - 2 G_{ij},

with the product at ``lax.Precision.HIGHEST`` and float32 (or wider)
accumulation. The identity is exact for any centre :math:`c`, but in floating
point its error is about :math:`\epsilon\,(G_{ii} + G_{jj})`: without
centring, on raw weights (a large common offset plus small differences) it
returns nonsense and negative values (the reference card, section d.6).

The centre is one worker's update: the last worker's in the first pass
(its NaN/inf entries replaced by 0). Centring on a row rather than on the
mean costs nothing extra (no mean to compute), is as accurate (differences
of nearby floats are exact), and keeps distances **exact** whenever the
updates lie on a common grid of small integers or binary fractions
(quantized or sign-compressed updates): ties between distances are then
exact ties, broken by the lowest worker index, and permuting the workers
cannot reorder them. Then:

* the diagonal is exactly 0, the matrix is exactly symmetric and clamped at 0;
* a row holding any NaN or infinity (a *non-finite row*) is at distance
  :math:`+\infty` from every other row (its own diagonal stays 0), so it is
  never anyone's nearest neighbour and never selected while finite rows
  remain;
* each row is scaled by a power of two (exactly) before the product and the
  scales are carried separately, so no finite row overflows the Gram matrix
  or underflows next to a huge one; a distance that itself exceeds the
  float32 range is :math:`+\infty`.

If the centre is far from most updates (the centre worker is Byzantine and
sends a huge vector, or is an outlier), the honest distances would drown in
rounding error. So after each pass the centre is checked: if the median
squared distance of the rows to the centre exceeds :math:`2^{12}` times the
median distance of the medoid (the row whose median distance to the others
is smallest, ties to the lowest index), the Gram matrix is recomputed
centred on that medoid, at most twice more. Otherwise (no attack on the
centre worker, raw weights included) one pass suffices.

Cost: one pass over the ``[n, D]`` stack, :math:`O(n^2 D)` multiply-adds. On
CPU the product runs over column blocks that stay in cache (XLA's single
``[n, D] x [D, n]`` product is slow for ``D >> n``), which also centres and
scales each block for free; other backends use one product per leaf.
"""

import math
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import optax

from distoptax.algorithms.aggregators import base

_HIGHEST = lax.Precision.HIGHEST
_LOG2_CENTRE_TOLERANCE = 12.0  # Accept a centre within 2**12 x the spread.
_MAX_PASSES = 3
_EXPONENT_FLOOR = -(2**20)


class DistanceInfo(NamedTuple):
  """Pairwise squared distances and which rows are non-finite.

  Attributes:
    squared_distances: ``[n, n]`` float32 (float64 for float64 inputs),
      symmetric, zero diagonal, ``+inf`` off the diagonal for non-finite rows.
    nonfinite: ``[n]`` bool, True for rows holding a NaN or an infinity.
  """

  squared_distances: jax.Array
  nonfinite: jax.Array


def flatten_workers(stacked_tree: optax.Updates) -> jax.Array:
  """Concatenates each worker's leaves into one row: ``[n, D]``.

  Leaves are flattened in ``jax.tree.leaves`` order and cast to their common
  result dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> flatten_workers({"a": jnp.ones((2, 2)), "b": jnp.zeros((2,))})
    Array([[1., 1., 0.],
           [1., 1., 0.]], dtype=float32)
  """
  n = base.stack_size(stacked_tree)
  leaves = jax.tree.leaves(stacked_tree)
  dtype = jnp.result_type(*leaves)
  return jnp.concatenate(
      [jnp.reshape(leaf, (n, -1)).astype(dtype) for leaf in leaves], axis=1)


def _compute_dtype(leaves):
  dtype = jnp.result_type(*leaves)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32
  return jnp.promote_types(dtype, jnp.float32)


def _chunk_size(n: int) -> int:
  """Columns per block on CPU: about 2 MiB of float32 per block."""
  size = 2**19 // max(n, 1)
  return int(min(2**16, max(2**11, 2**int(math.log2(max(size, 1))))))


def _int_type(dtype):
  return {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(dtype).itemsize]


def _pow2(exponent: jax.Array, dtype) -> jax.Array:
  """Exactly ``2**exponent`` for exponents in the normal range (clipped).

  Built from the exponent bits (cheaper to compile than ``jnp.ldexp``).
  """
  info = jnp.finfo(dtype)
  itype = _int_type(dtype)
  bias = info.maxexp - 1
  e = jnp.clip(exponent, info.minexp, bias).astype(itype)
  bits = lax.shift_left(e + itype(bias), itype(info.nmant))
  return lax.bitcast_convert_type(bits, dtype)


def _mul_pow2(x: jax.Array, exponent: jax.Array) -> jax.Array:
  """``x * 2**exponent`` in three exact steps (exponents up to ~+-370).

  The factors share the sign of ``exponent``, so the partial products lie
  between ``x`` and the result: exact whenever the result is a normal
  number, flushed to 0 or overflowing to inf otherwise.
  """
  e1 = exponent // 3
  e2 = (exponent - e1) // 2
  e3 = exponent - e1 - e2
  return x * _pow2(e1, x.dtype) * _pow2(e2, x.dtype) * _pow2(e3, x.dtype)


def _exponent(x: jax.Array) -> jax.Array:
  """``frexp``'s exponent ``k`` (``x = m 2**k``, ``0.5 <= m < 1``) for
  finite ``x >= 0``; 0 for 0 and subnormals. As int32."""
  info = jnp.finfo(x.dtype)
  itype = _int_type(x.dtype)
  bits = lax.bitcast_convert_type(x, itype)
  biased = lax.shift_right_logical(bits, itype(info.nmant)) & itype(
      2 * info.maxexp - 1)
  k = biased.astype(jnp.int32) - (info.maxexp - 1) + 1
  return jnp.where(biased == 0, 0, k)


def _accumulate(acc, block: jax.Array, centre: jax.Array):
  """Adds the Gram matrix of ``block - centre`` to the scaled accumulator.

  ``acc = (m, r)`` represents ``G[i, j] = m[i, j] * 2**(r[i] + r[j])``.
  Each row of the block is scaled by ``2**-k[i]`` (exactly, two normal
  factors so that nothing is flushed) with ``k`` the exponent of its
  largest finite magnitude, so the scaled entries are at most 1.
  """
  m, r = acc
  y = block - centre
  magnitude = jnp.max(jnp.where(jnp.isfinite(y), jnp.abs(y), 0), axis=1,
                      initial=0)
  k = _exponent(magnitude)
  half = k // 2
  y = y * _pow2(-half, y.dtype)[:, None] * _pow2(half - k, y.dtype)[:, None]
  g = lax.dot_general(y, y, (((1,), (1,)), ((), ())), precision=_HIGHEST)
  r_new = jnp.maximum(r, k)
  old = r - r_new
  new = k - r_new
  m = (_mul_pow2(m, old[:, None] + old[None, :])
       + _mul_pow2(g, new[:, None] + new[None, :]))
  return m, r_new


def _leaf_gram(acc, leaf: jax.Array, centre_fn, chunked: bool):
  """Accumulates one ``[n, D]`` leaf, block by block when ``chunked``."""
  n, dim = leaf.shape
  chunk = _chunk_size(n)
  if not chunked or dim <= 2 * chunk:
    return _accumulate(acc, leaf, centre_fn(leaf, 0))
  num_full = dim // chunk

  def body(i, acc):
    start = i * chunk
    block = lax.dynamic_slice_in_dim(leaf, start, chunk, axis=1)
    return _accumulate(acc, block, centre_fn(block, start))

  acc = lax.fori_loop(0, num_full, body, acc)
  if num_full * chunk < dim:
    tail = leaf[:, num_full * chunk:]
    acc = _accumulate(acc, tail, centre_fn(tail, num_full * chunk))
  return acc


def _scaled_gram(leaves, centre_row, chunked=None):
  """Scaled Gram matrix of the rows centred on row ``centre_row``.

  The centre row's non-finite entries are replaced by 0.
  ``chunked``: column blocks (True), one product per leaf (False), or by
  platform (None: blocks on CPU only).
  """
  n = leaves[0].shape[0]
  dtype = leaves[0].dtype

  def centre_fn(block, start):
    del start
    c = lax.dynamic_index_in_dim(block, centre_row, axis=0, keepdims=False)
    return jnp.where(jnp.isfinite(c), c, 0)

  def run(chunked):
    acc = (jnp.zeros((n, n), dtype),
           jnp.full((n,), _EXPONENT_FLOOR, jnp.int32))
    for leaf in leaves:
      acc = _leaf_gram(acc, leaf, centre_fn, chunked)
    m, r = acc
    upper = jnp.triu(jnp.ones((n, n), bool))
    return jnp.where(upper, m, m.T), r

  if chunked is not None:
    return run(chunked)
  return lax.platform_dependent(
      cpu=lambda: run(True), default=lambda: run(False))


def _distance_parts(m, r):
  """Squared distances as ``mantissa * 2**exponent`` (no overflow)."""
  diag = jnp.diagonal(m)
  nonfinite = ~jnp.isfinite(diag)
  e_ii = 2 * r
  e = jnp.maximum(e_ii[:, None], e_ii[None, :])
  a = _mul_pow2(diag[:, None], e_ii[:, None] - e)
  b = _mul_pow2(diag[None, :], e_ii[None, :] - e)
  c = _mul_pow2(m, r[:, None] + r[None, :] - e)
  mant = jnp.maximum((a + b) - 2 * c, 0)
  n = m.shape[0]
  eye = jnp.eye(n, dtype=bool)
  bad = (nonfinite[:, None] | nonfinite[None, :]) & ~eye
  mant = jnp.where(eye, 0, jnp.where(bad, jnp.inf, mant))
  return mant, e, nonfinite


def _lower_median(x: jax.Array, axis: int) -> jax.Array:
  k = (x.shape[axis] - 1) // 2
  return jnp.take(jnp.sort(x, axis=axis), k, axis=axis)


def _centre_check(m, r):
  """Returns (centre is good enough, medoid index) from one pass."""
  mant, e, nonfinite = _distance_parts(m, r)
  n = m.shape[0]
  eye = jnp.eye(n, dtype=bool)
  log_d = jnp.where(eye, jnp.inf, jnp.log2(mant) + e)
  if n > 1:
    others = jnp.sort(log_d, axis=1)[:, :n - 1]
    score = jnp.take(others, (n - 2) // 2, axis=1)
  else:
    score = jnp.zeros((1,), log_d.dtype)
  score = jnp.where(nonfinite, jnp.inf, score)
  medoid = jnp.argmin(score)
  log_norms = jnp.where(nonfinite, jnp.inf,
                        jnp.log2(jnp.maximum(jnp.diagonal(m), 0)) + 2 * r)
  spread = _lower_median(log_norms, 0)
  good = (spread <= score[medoid] + _LOG2_CENTRE_TOLERANCE) | jnp.all(
      nonfinite) | (spread == -jnp.inf)
  return good, medoid.astype(jnp.int32)


def distance_info(stacked_tree: optax.Updates) -> DistanceInfo:
  """Pairwise squared distances of the workers' flattened updates.

  See the module docstring for the numerics (centring, non-finite rows,
  re-centring on the medoid).

  Args:
    stacked_tree: pytree whose leaves have a leading worker axis ``[n, ...]``.

  Returns:
    A :class:`DistanceInfo`.
  """
  n = base.stack_size(stacked_tree)
  leaves = jax.tree.leaves(stacked_tree)
  dtype = _compute_dtype(leaves)
  leaves = [jnp.reshape(leaf, (n, -1)).astype(dtype) for leaf in leaves]

  # Pass 0 centres on the last worker; each further pass (at most
  # _MAX_PASSES in all) on the medoid of the previous one. One loop body,
  # so the Gram code is compiled once.
  def cond(carry):
    passes, good, *_ = carry
    return (passes == 0) | ((~good) & (passes < _MAX_PASSES))

  def body(carry):
    passes, _, centre, _, _ = carry
    m, r = _scaled_gram(leaves, centre)
    good, medoid = _centre_check(m, r)
    return passes + 1, good, medoid, m, r

  init = (jnp.int32(0), jnp.bool_(False), jnp.int32(n - 1),
          jnp.zeros((n, n), dtype), jnp.zeros((n,), jnp.int32))
  _, _, _, m, r = lax.while_loop(cond, body, init)
  mant, e, nonfinite = _distance_parts(m, r)
  return DistanceInfo(_mul_pow2(mant, e), nonfinite)


def pairwise_squared_distances(stacked_tree: optax.Updates) -> jax.Array:
  r"""``[n, n]`` squared Euclidean distances between workers' updates.

  .. math::
    D_{ij} = \sum_{\text{leaves}} \lVert x_i - x_j \rVert^2

  computed from one Gram matrix of the centred rows (module docstring):
  exact zero diagonal, symmetric, never negative, ``+inf`` between a row
  holding NaN/inf and any other row.

  Example:
    >>> import jax.numpy as jnp
    >>> x = {"w": jnp.array([[1e4, 0.0], [1e4 + 3.0, 4.0], [1e4, 1.0]])}
    >>> pairwise_squared_distances(x)
    Array([[ 0., 25.,  1.],
           [25.,  0., 18.],
           [ 1., 18.,  0.]], dtype=float32)
  """
  return distance_info(stacked_tree).squared_distances


def take_row(stacked_tree: optax.Updates, index: jax.Array) -> optax.Updates:
  """Worker ``index``'s update, bit for bit (a gather, not a product)."""
  return jax.tree.map(
      lambda leaf: lax.dynamic_index_in_dim(leaf, index, axis=0,
                                            keepdims=False), stacked_tree)


def nonfinite_rows(stacked_tree: optax.Updates) -> jax.Array:
  """``[n]`` bool: True for the workers whose update holds NaN or inf."""
  n = base.stack_size(stacked_tree)
  bad = jnp.zeros((n,), bool)
  for leaf in jax.tree.leaves(stacked_tree):
    bad = bad | ~jnp.all(jnp.isfinite(jnp.reshape(leaf, (n, -1))), axis=1)
  return bad


def combine_rows(weights: jax.Array, stacked_tree: optax.Updates,
                 nonfinite: jax.Array | None = None) -> optax.Updates:
  r"""Weighted sums of the workers' rows: ``out[k] = sum_i w[k, i] x_i``.

  Rows with weight 0 never touch the result, even when they hold NaN or
  infinities (a plain product would give ``0 * nan = nan``); an output row
  that gives a nonzero weight to a non-finite row is NaN. The products run
  at ``Precision.HIGHEST`` with float32 (or wider) accumulation.

  Args:
    weights: ``[k, n]`` (or ``[n]`` for a single output).
    stacked_tree: pytree with leaves ``[n, ...]``.
    nonfinite: ``[n]`` bool, rows holding NaN or infinities (every such row
      must be flagged). ``None``: the plain product is computed first and,
      only when its result is not finite, the rows are checked and the
      product redone.

  Returns:
    Pytree with leaves ``[k, ...]`` (or ``[...]`` for ``[n]`` weights), in
    each leaf's dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0, 2.0], [jnp.nan, 0.0], [3.0, 4.0]])
    >>> combine_rows(jnp.array([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]]), x)
    Array([[ 2.,  3.],
           [nan, nan]], dtype=float32)
  """
  single = weights.ndim == 1
  w = weights[None] if single else weights

  def leaf_fn(leaf, bad):
    n = leaf.shape[0]
    flat = jnp.reshape(leaf, (n, -1))
    acc = jnp.promote_types(flat.dtype, jnp.float32)
    if bad is not None:
      flat = jnp.where(bad[:, None], jnp.zeros((), flat.dtype), flat)
    out = lax.dot_general(w.astype(acc), flat, (((1,), (0,)), ((), ())),
                          precision=_HIGHEST, preferred_element_type=acc)
    if bad is not None:
      poisoned = jnp.any((w != 0) & bad[None, :], axis=1)
      out = jnp.where(poisoned[:, None], jnp.nan, out)
    out = jnp.reshape(out.astype(leaf.dtype), (w.shape[0],) + leaf.shape[1:])
    return out[0] if single else out

  def sanitized(tree, bad):
    return jax.tree.map(lambda leaf: leaf_fn(leaf, bad), tree)

  def plain(tree, bad):
    del bad
    return jax.tree.map(lambda leaf: leaf_fn(leaf, None), tree)

  if nonfinite is not None:
    return lax.cond(jnp.any(nonfinite), sanitized, plain, stacked_tree,
                    nonfinite)
  out = plain(stacked_tree, None)
  all_finite = jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(out)]))
  return lax.cond(
      all_finite, lambda tree, out: out,
      lambda tree, out: sanitized(tree, nonfinite_rows(tree)),
      stacked_tree, out)
