r"""Order statistics over the leading (worker) axis of a stack ``[n, ...]``.

Coordinate-wise robust rules (median, trimmed mean, mean around the median,
Phocas, Bulyan's second stage) need, per coordinate, a few order statistics
of the ``n`` worker values. XLA's generic ``jnp.sort`` on CPU costs tens of
nanoseconds per element, and ``jnp.median`` sorts. For ``n <= 64`` this
module instead unrolls Batcher's odd-even merge sorting network over the
``n`` rows: every comparator is an elementwise ``min``/``max`` pair on whole
rows, so the network is one loop that XLA fuses and vectorises, and no
``[n, d]`` intermediate is written. Comparators that cannot influence the
order statistics a caller asks for are pruned when the network is built
(the median of 32 values needs 282 of the 382 min/max operations; the sum of
the middle values of a trimmed mean, whose order does not matter, needs even
fewer). Above 64 workers (128 when the pruned network is small enough:
the median, the trimmed mean, Bulyan's stage; see
:data:`SELECT_NETWORK_MAX_COMPARATORS`) the helpers fall back to
``jnp.sort(axis=0)`` (a full sort, :func:`sort_over_workers`, above 32),
which at ``n = 128, d = 1e6`` takes about 11 s on 2 CPU cores.

Non-finite inputs: NaN is mapped to ``+inf`` before any ordering (see
:func:`sanitize`), so a NaN sorts last, like the largest possible value;
``+inf`` and ``-inf`` are kept and ordered like any other extreme value. A rule
that discards the ``f`` largest and ``f`` smallest values, or takes a median,
therefore never lets ``f < n / 2`` non-finite rows reach its output.

Arithmetic runs in at least float32 (bfloat16 and float16 stacks are
promoted, and the result is cast back). Comparators are written as
``select(a < b, a, b)``, which x86 lowers to one ``minps``; ``jnp.minimum``
would add NaN-propagation code that is useless after :func:`sanitize`.
"""

import functools
from typing import Sequence

import jax
from jax import lax
import jax.numpy as jnp

NETWORK_MAX_WORKERS = 64
"""Largest worker count for which order statistics (median, trimmed sums,
MeaMed, Phocas) use an unrolled network; above: ``jnp.sort``."""

SELECT_NETWORK_MAX_WORKERS = 128
SELECT_NETWORK_MAX_COMPARATORS = 1250
"""Between :data:`NETWORK_MAX_WORKERS` and ``SELECT_NETWORK_MAX_WORKERS``
rows, a helper still uses its pruned network when that has at most this
many comparators: the median and the trimmed mean at ``n = 128`` (1212 and
1232) compile in about 2 s and, for ``d = 1e6`` on 2 CPU cores, run in
0.14 s and 0.66 s where ``jnp.sort`` takes 11 s; so does Bulyan's stage at
``n = 128`` (MeaMed keeping 4 of 66 values: 565). MeaMed and Phocas with
small ``f`` need both ends and the centre exactly (1373 comparators at
``n = 128, f = 31``; 17-21 s to compile) and sort."""

SORT_NETWORK_MAX_WORKERS = 32
"""Largest worker count for which :func:`sort_over_workers` (all ``n`` ranks)
uses the network. XLA computes each of the ``n`` stacked outputs in its own
branch of one fused loop, so a full sort costs about ``n`` pruned networks:
still 8x faster than ``jnp.sort`` at ``n = 32`` (32 ms against 253 ms for
``d = 1e5``), but compiling takes 5 s there and 35 s at ``n = 64``."""

# What a caller needs from an output wire of a (pruned) sorting network.
_DEAD = 0   # not needed
_SUM = 1    # only the sum over all _SUM wires is needed, not their order
_LIVE = 2   # this exact order statistic is needed
_LOW = 3    # only the multiset of the _LOW wires is needed (a second group)
_HIGH = 4   # only the multiset of the _HIGH wires is needed (a third group)
_GROUPS = (_DEAD, _SUM, _LOW, _HIGH)  # needs whose order does not matter


def sanitize(x: jax.Array) -> jax.Array:
  """Maps NaN to ``+inf``, so that NaN orders as the largest value.

  ``+inf`` and ``-inf`` are kept: they are ordered, and trimmed, like any
  other extreme value. Integer arrays are returned unchanged.

  Args:
    x: any array.

  Returns:
    ``x`` with every NaN replaced by ``+inf``.
  """
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return x
  return jnp.where(jnp.isnan(x), jnp.asarray(jnp.inf, x.dtype), x)


@functools.lru_cache(maxsize=None)
def _batcher_comparators(n: int) -> tuple[tuple[int, int], ...]:
  """Batcher's odd-even merge sort on ``n`` wires as (low, high) pairs.

  The network for the next power of two is built and every comparator that
  touches a padding wire (index ``>= n``) is dropped: padding wires hold
  ``+inf``, which such a comparator would leave in place.
  """
  size = 1
  while size < n:
    size *= 2
  pairs = []
  p = 1
  while p < size:
    k = p
    while k >= 1:
      for j in range(k % p, size - k, 2 * k):
        for i in range(min(k, size - j - k)):
          a, b = i + j, i + j + k
          if a // (2 * p) == b // (2 * p) and b < n:
            pairs.append((a, b))
      k //= 2
    p *= 2
  return tuple(pairs)


@functools.lru_cache(maxsize=None)
def _pruned_network(
    need: tuple[int, ...]) -> tuple[tuple[int, int, bool, bool], ...]:
  """The comparators of the sorting network that ``need`` depends on.

  Walks the network backwards. A comparator is dropped when neither output
  is needed, or when both outputs only feed the same multiset (``_SUM``,
  ``_LOW`` or ``_HIGH``: swapping two of its members does not change it). A
  kept comparator makes both of its inputs needed exactly.

  Returns:
    ``(low_wire, high_wire, want_min, want_max)`` in network order.
  """
  need = list(need)
  kept = []
  for a, b in reversed(_batcher_comparators(len(need))):
    if need[a] == need[b] and need[a] in _GROUPS:
      continue
    kept.append((a, b, need[a] != _DEAD, need[b] != _DEAD))
    need[a] = need[b] = _LIVE
  return tuple(reversed(kept))


def _work_dtype(dtype) -> jnp.dtype:
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.promote_types(dtype, jnp.float32)
  return jnp.dtype(dtype)


def _network_limit(need: Sequence[int]) -> int:
  """Most rows for which ``need`` is served by the network, not a sort.

  Up to :data:`NETWORK_MAX_WORKERS` always; up to
  :data:`SELECT_NETWORK_MAX_WORKERS` when the pruned network has at most
  :data:`SELECT_NETWORK_MAX_COMPARATORS` comparators.
  """
  n = len(need)
  if (n <= SELECT_NETWORK_MAX_WORKERS
      and len(_pruned_network(tuple(need))) <= SELECT_NETWORK_MAX_COMPARATORS):
    return SELECT_NETWORK_MAX_WORKERS
  return NETWORK_MAX_WORKERS


def _take_rows(x: jax.Array, rows: jax.Array | None) -> jax.Array:
  """``x[rows]`` (a gather, materialised), or ``x`` when ``rows`` is None."""
  return x if rows is None else jnp.take(x, rows, axis=0)


def _row(x: jax.Array, rows: jax.Array | None, i: int) -> jax.Array:
  """Row ``i`` of ``x[rows]``, read in place (no gathered copy)."""
  if rows is None:
    return x[i]
  return lax.dynamic_index_in_dim(x, rows[i], axis=0, keepdims=False)


def _sorted_wires(
    x: jax.Array, need: Sequence[int],
    max_network: int = NETWORK_MAX_WORKERS,
    rows: jax.Array | None = None) -> list[jax.Array | None]:
  """Rows ``j`` of ``sort(sanitize(x[rows]), axis=0)`` for the wires used.

  Args:
    x: stack ``[N, ...]``; rows are promoted to the working dtype.
    need: one of ``_DEAD``/``_SUM``/``_LIVE`` per output rank. ``_SUM`` wires
      come back holding the right multiset of values in some order.
    max_network: above this many rows, ``jnp.sort``.
    rows: optional int ``[n]`` indices of the rows of ``x`` to order (all
      ``N`` rows when None). The network reads them in place.

  Returns:
    A list of ``n`` arrays of shape ``x.shape[1:]`` (``None`` where dead).
  """
  n = x.shape[0] if rows is None else rows.shape[0]
  dtype = _work_dtype(x.dtype)
  if n > max_network:
    s = jnp.sort(sanitize(_take_rows(x, rows).astype(dtype)), axis=0)
    return [s[j] if need[j] != _DEAD else None for j in range(n)]
  # Sanitize and convert row by row: an op on the whole stack would be
  # materialised as an [n, ...] copy instead of fused into the network (and
  # so would a gather of the selected rows: 8x the network's time for
  # Bulyan's 18 of 32 rows at d = 1e6).
  wires = [sanitize(_row(x, rows, i).astype(dtype)) for i in range(n)]
  for a, b, want_min, want_max in _pruned_network(tuple(need)):
    lo, hi = wires[a], wires[b]
    less = lax.lt(lo, hi)
    wires[a] = lax.select(less, lo, hi) if want_min else None
    wires[b] = lax.select(less, hi, lo) if want_max else None
  return [w if need[j] != _DEAD else None for j, w in enumerate(wires)]


def _sum(rows: Sequence[jax.Array]) -> jax.Array:
  """Pairwise (tree) sum of equally shaped arrays, in a fixed order."""
  rows = list(rows)
  while len(rows) > 1:
    rows = [rows[i] + rows[i + 1] if i + 1 < len(rows) else rows[i]
            for i in range(0, len(rows), 2)]
  return rows[0]


def _check_stack(x: jax.Array, name: str) -> int:
  if x.ndim == 0 or x.shape[0] == 0:
    raise ValueError(f"{name} needs a stack with a leading worker axis of "
                     f"size n >= 1; got shape {x.shape}")
  return x.shape[0]


def sort_over_workers(x: jax.Array) -> jax.Array:
  """Sorts ``x`` ascending along its leading (worker) axis.

  NaN is mapped to ``+inf`` first (:func:`sanitize`). For finite inputs the
  result equals ``np.sort(x, axis=0)``. Uses the sorting network up to
  :data:`SORT_NETWORK_MAX_WORKERS` workers, ``jnp.sort`` above. Rules that
  need only some ranks should not sort: the other helpers prune the network
  to the ranks they use.

  Args:
    x: stack ``[n, ...]``.

  Returns:
    An array of the shape and dtype of ``x``, sorted along axis 0.

  Example:
    >>> import jax.numpy as jnp
    >>> sort_over_workers(jnp.array([[3.0, jnp.nan], [1.0, 2.0], [2.0, 0.0]]))
    Array([[ 1.,  0.],
           [ 2.,  2.],
           [ 3., inf]], dtype=float32)
  """
  n = _check_stack(x, "sort_over_workers")
  wires = _sorted_wires(x, (_LIVE,) * n, SORT_NETWORK_MAX_WORKERS)
  return jnp.stack(wires).astype(x.dtype)


def _median_need(n: int) -> tuple[int, ...]:
  need = [_DEAD] * n
  if n % 2:
    need[n // 2] = _LIVE
  else:
    need[n // 2 - 1] = need[n // 2] = _SUM
  return tuple(need)


def _median_from_wires(wires: Sequence[jax.Array | None], n: int) -> jax.Array:
  if n % 2:
    return wires[n // 2]
  # Halve before adding: no overflow for huge finite values, and the same
  # rounding as (a + b) / 2 otherwise (halving is exact).
  return wires[n // 2 - 1] * 0.5 + wires[n // 2] * 0.5


def median_over_workers(x: jax.Array) -> jax.Array:
  """Coordinate-wise median over the leading (worker) axis.

  For even ``n`` the result is the midpoint of the two middle values, as in
  ``numpy.median``, ``jnp.median``, ByzFL and epfml (``torch.median`` and
  Garfield return the lower one). NaN counts as ``+inf`` (:func:`sanitize`).

  Args:
    x: stack ``[n, ...]``.

  Returns:
    An array of shape ``x.shape[1:]`` and the dtype of ``x``.

  Example:
    >>> import jax.numpy as jnp
    >>> median_over_workers(jnp.array([[1.0, 5.0], [4.0, jnp.nan],
    ...                                [2.0, 7.0], [9.0, 6.0]]))
    Array([3. , 6.5], dtype=float32)
  """
  n = _check_stack(x, "median_over_workers")
  need = _median_need(n)
  wires = _sorted_wires(x, need, _network_limit(need))
  return _median_from_wires(wires, n).astype(x.dtype)


def _check_trim(n: int, trim: int, name: str) -> None:
  if not 0 <= trim or not n > 2 * trim:
    raise ValueError(f"{name} needs n > 2f (f = values trimmed per side); "
                     f"got n={n}, f={trim}")


def trimmed_mean_over_workers(x: jax.Array, trim: int) -> jax.Array:
  r"""Coordinate-wise mean after removing the ``trim`` largest and smallest.

  .. math::
    \mathrm{TrMean}_f(x)_k = \frac{1}{n - 2f} \sum_{j=f+1}^{n-f} x_{(j),k}

  where :math:`x_{(1),k} \le \dots \le x_{(n),k}` are the sorted values
  of coordinate ``k``. NaN counts as ``+inf`` (:func:`sanitize`). With
  ``trim = 0`` this is the mean (summed row by row, not by a mat-vec).

  Args:
    x: stack ``[n, ...]``.
    trim: values removed from each end, ``0 <= trim`` and ``n > 2 trim``.

  Returns:
    An array of shape ``x.shape[1:]`` and the dtype of ``x``.

  Raises:
    ValueError: if ``n <= 2 trim``; the message names n and f.

  Example:
    >>> import jax.numpy as jnp
    >>> trimmed_mean_over_workers(
    ...     jnp.array([[1.0], [-jnp.inf], [3.0], [100.0], [2.0]]), 1)
    Array([2.], dtype=float32)
  """
  n = _check_stack(x, "trimmed_mean_over_workers")
  _check_trim(n, trim, "trimmed_mean_over_workers")
  need = (_DEAD,) * trim + (_SUM,) * (n - 2 * trim) + (_DEAD,) * trim
  wires = _sorted_wires(x, need, _network_limit(need))
  total = _sum(wires[trim:n - trim])
  return (total / (n - 2 * trim)).astype(x.dtype)


def _check_keep(n: int, keep: int, name: str) -> None:
  if not 1 <= keep <= n:
    raise ValueError(f"{name} needs 1 <= n - f <= n (f = values dropped); "
                     f"got n={n}, f={n - keep}")


def _window_starts(n: int, keep: int, center: str) -> tuple[int, int]:
  """First and last rank at which a run of the ``keep`` closest can start.

  The ``keep`` values closest to the centre are ``keep`` consecutive ranks
  (see :func:`_mean_of_closest_from_wires`), starting at some rank in
  ``[0, n - keep]``. A run achieving the ``keep``-th smallest distance can
  always be chosen to contain a rank of smallest distance; for the median
  that rank is one of the middle ranks, which narrows the starts to
  ``[j_lo - keep + 1, j_hi]`` (Bulyan's stage keeps 4 of 18 values at
  ``n = 32``: 5 starts instead of 15). The trimmed mean (Phocas) can lie
  anywhere between the trimmed ranks: every start.
  """
  drop = n - keep
  if center != "median":
    return 0, drop
  j_lo, j_hi = (n - 1) // 2, n // 2
  return max(0, j_lo - keep + 1), min(drop, j_hi)


def _closest_need(n: int, keep: int, center: str) -> tuple[int, ...]:
  """Needs of the ranks: run ends exact, the rest as multisets.

  Ranks below the first start only enter as a multiset (``_LOW``; they can
  be within the radius only by a tie), and so do ranks above the last end
  (``_HIGH``) and the ranks in every run (``_SUM``).
  """
  a_lo, a_hi = _window_starts(n, keep, center)
  need = [_SUM] * n
  for j in range(a_lo):
    need[j] = _LOW
  for j in range(a_hi + keep, n):
    need[j] = _HIGH
  for a in range(a_lo, a_hi + 1):
    need[a] = need[a + keep - 1] = _LIVE
  if center == "median":
    for j, v in enumerate(_median_need(n)):
      if v != _DEAD:
        need[j] = _LIVE
  return tuple(need)


def _mean_of_closest_from_wires(
    wires: Sequence[jax.Array], center: jax.Array, keep: int,
    inner_sum: jax.Array | None, starts: tuple[int, int],
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean of the ``keep`` values closest to ``center``, from sorted wires.

  ``starts = (a_lo, a_hi)`` (:func:`_window_starts`): the candidate runs
  are ranks ``[a, a + keep)`` for ``a_lo <= a <= a_hi``. The ranks in every
  run, ``[a_hi, a_lo + keep)``, are always kept and enter through
  ``inner_sum`` (their sum, ``None`` when there are none). The other ranks
  are tested: those in ``[a_lo, a_hi + keep)`` in sorted order, those
  below ``a_lo`` and above ``a_hi + keep - 1`` as multisets (their wires
  hold the right values in some order, see :func:`_closest_need`).

  Returns:
    ``(mean, radius, ambiguous)``. ``radius`` is the ``keep``-th smallest
    distance to ``center``. ``ambiguous`` marks coordinates where the values
    at exactly that distance lie on both sides of the centre and only some
    of them are kept: which ones are kept then depends on worker indices,
    and ``mean`` is not the answer there.
  """
  n = len(wires)
  a_lo, a_hi = starts
  inner = range(a_hi, a_lo + keep)
  tested = [j for j in range(a_lo, a_hi + keep) if j not in inner]
  below = list(range(a_lo))
  above = list(range(a_hi + keep, n))
  distances = {}

  def distance(j):
    if j not in distances:
      distances[j] = jnp.abs(wires[j] - center)
    return distances[j]

  # The values within any distance of the centre form a run of consecutive
  # ranks (|v - c| is monotone on each side of c, rounding included), so the
  # keep-th smallest distance is the width of the narrowest run of `keep`.
  radius = None
  for a in range(a_lo, a_hi + 1):
    width = jnp.maximum(distance(a), distance(a + keep - 1))
    radius = width if radius is None else jnp.minimum(radius, width)
  # Sum and count every value within the radius.
  zero = jnp.zeros_like(center)
  total = zero if inner_sum is None else inner_sum
  # An int32 count adds the comparison mask directly (one op per value).
  count = jnp.full(center.shape, len(inner), jnp.int32)
  inside = {}
  for j in tested + below + above:
    inside[j] = distance(j) <= radius
    total = total + jnp.where(inside[j], wires[j], zero)
    count = count + inside[j].astype(jnp.int32)
  # The lowest and highest value within the radius; values exactly at the
  # radius (the only ones that may have to be dropped) sit at these two ends.
  # Some rank in [a_lo, a_hi] is within the radius, so the scans in rank
  # order end on a value within it; the multisets can only lower (raise) it.
  low = wires[a_hi]
  for a in reversed(range(a_lo, a_hi)):
    low = jnp.where(inside[a], wires[a], low)
  for j in below:
    low = jnp.where(inside[j], jnp.minimum(low, wires[j]), low)
  high = wires[a_lo + keep - 1]
  for b in range(a_lo + keep, a_hi + keep):
    high = jnp.where(inside[b], wires[b], high)
  for j in above:
    high = jnp.where(inside[j], jnp.maximum(high, wires[j]), high)
  low_tied = jnp.abs(low - center) == radius
  high_tied = jnp.abs(high - center) == radius
  surplus = (count - keep).astype(center.dtype)
  # The surplus is dropped from the tied end. If both ends are tied with
  # different values, worker indices decide which are kept: ambiguous.
  tie_value = jnp.where(high_tied, high, low)
  ambiguous = (surplus > 0) & low_tied & high_tied & (low != high)
  mean = (total - jnp.where(surplus > 0, surplus * tie_value, zero)) / keep
  return mean, radius, ambiguous


def _mean_of_closest_from_rows(
    x: jax.Array, center: jax.Array, radius: jax.Array, keep: int
) -> jax.Array:
  """Mean of the ``keep`` values closest to ``center``, lowest index first.

  The exact rule, row by row in worker order: every value closer than
  ``radius`` is kept, and values at exactly ``radius`` are kept in worker
  order until ``keep`` values are kept.
  """
  rows = [sanitize(x[i].astype(center.dtype)) for i in range(x.shape[0])]
  distances = [jnp.abs(row - center) for row in rows]
  zero = jnp.zeros_like(center)
  closer = _sum([jnp.where(d < radius, 1.0, 0.0) for d in distances])
  budget = keep - closer
  total = zero
  for row, d in zip(rows, distances):
    tied = d == radius
    take = (d < radius) | (tied & (budget > 0))
    total = total + jnp.where(take, row, zero)
    budget = budget - jnp.where(tied, 1.0, 0.0)
  return total / keep


def _center_and_wires(x: jax.Array, keep: int, center: str,
                      rows: jax.Array | None = None):
  n = x.shape[0] if rows is None else rows.shape[0]
  drop = n - keep
  starts = _window_starts(n, keep, center)
  need = _closest_need(n, keep, center)
  wires = _sorted_wires(x, need, _network_limit(need), rows=rows)
  inner = wires[starts[1]:starts[0] + keep]
  inner_sum = _sum(inner) if inner else None
  if center == "median":
    c = _median_from_wires(wires, n)
  else:  # trimmed mean with `drop` trimmed per side, as in Phocas.
    c = inner_sum / (n - 2 * drop)
  return wires, inner_sum, c, starts


_PATCH_BLOCK = 256
_PATCH_MAX_BLOCKS = 16


def _exact_mean_around(x: jax.Array, keep: int, center: str) -> jax.Array:
  """The exact rule on a stack ``[n, m]``, ties resolved row by row."""
  wires, inner_sum, c, starts = _center_and_wires(x, keep, center)
  _, radius, _ = _mean_of_closest_from_wires(wires, c, keep, inner_sum,
                                             starts)
  return _mean_of_closest_from_rows(x, c, radius, keep)


def _patch_nan(fast: jax.Array, x: jax.Array, keep: int, center: str,
               rows: jax.Array | None = None) -> jax.Array:
  """Recomputes the NaN entries of ``fast`` (shape [m]) exactly from ``x``.

  Two-sided ties at the cut-off distance are rare but not negligible on
  float32 data (about one coordinate in a million on Gaussian data). The
  blocks of coordinates that contain them are gathered and recomputed;
  when there are too many such blocks, every coordinate is. ``x`` is
  ``[N, m]``; the rule runs on its rows ``rows`` (all when None).
  """
  m = fast.shape[0]

  def everything(fast):
    exact = _exact_mean_around(_take_rows(x, rows), keep, center)
    return jnp.where(jnp.isnan(fast), exact, fast)

  num_blocks = -(-m // _PATCH_BLOCK)
  if num_blocks <= _PATCH_MAX_BLOCKS:
    return everything(fast)
  padded = jnp.pad(fast, (0, num_blocks * _PATCH_BLOCK - m))
  bad = jnp.isnan(jnp.sum(padded.reshape(num_blocks, _PATCH_BLOCK), axis=1))

  def some_blocks(fast):
    _, blocks = lax.top_k(bad.astype(jnp.float32), _PATCH_MAX_BLOCKS)
    cols = (blocks[:, None] * _PATCH_BLOCK
            + jnp.arange(_PATCH_BLOCK)[None, :]).reshape(-1)
    cols = jnp.minimum(cols, m - 1)  # the last block may run past the end
    old = fast[cols]
    sub = (x[:, cols] if rows is None
           else x[rows[:, None], cols[None, :]])
    new = jnp.where(jnp.isnan(old), _exact_mean_around(sub, keep, center),
                    old)
    return fast.at[cols].set(new)

  return lax.cond(jnp.sum(bad) <= _PATCH_MAX_BLOCKS, some_blocks, everything,
                  fast)


def _mean_around(x: jax.Array, keep: int, center: str,
                 rows: jax.Array | None = None) -> jax.Array:
  """Mean of the ``keep`` values closest to a centre, per coordinate.

  Over the rows ``rows`` of ``x`` (all when None). The stack itself, not a
  gathered or sliced copy, is what the rare patch branch closes over: a
  ``lax.cond`` operand is materialised even when its branch is not taken.
  """
  wires, inner_sum, c, starts = _center_and_wires(x, keep, center, rows)
  mean, _, ambiguous = _mean_of_closest_from_wires(wires, c, keep, inner_sum,
                                                   starts)
  # One output keeps the whole computation in one fused loop; coordinates
  # that need the worker order are marked NaN (a sanitized stack gives NaN
  # nowhere else short of more than n/2 infinite values) and patched.
  fast = jnp.where(ambiguous, jnp.nan, mean).reshape(-1)
  flat = x.reshape(x.shape[0], -1)
  # (A sum is NaN iff some term is, or +inf meets -inf: a cheap `any`.)
  out = lax.cond(jnp.isnan(jnp.sum(fast)),
                 lambda fast: _patch_nan(fast, flat, keep, center, rows),
                 lambda fast: fast, fast)
  return out.reshape(x.shape[1:]).astype(x.dtype)


def mean_around_median_over_workers(x: jax.Array, drop: int, *,
                                    rows: jax.Array | None = None
                                    ) -> jax.Array:
  r"""Per coordinate, the mean of the ``n - drop`` values nearest the median.

  .. math::
    \mathrm{MeaMed}_f(x)_k = \frac{1}{n - f} \sum_{i \in S_k} x_{i,k},
    \qquad S_k = \text{the } n - f \text{ indices } i \text{ with the
    smallest } |x_{i,k} - \mathrm{med}_k|

  with :math:`\mathrm{med}_k` the coordinate-wise median (midpoint of the
  two middle values for even ``n``). Values at equal distance are taken by
  the lowest worker index (a stable sort by distance): this only changes
  the result when values on both sides of the median tie at the cut-off
  distance. NaN counts as ``+inf`` (:func:`sanitize`). Bulyan's second stage
  is this helper applied to the selected vectors with ``drop = 2f``
  (``rows=`` the selected workers, so that they are read in place rather
  than gathered into a copy).

  Args:
    x: stack ``[N, ...]``.
    drop: number of values left out per coordinate, ``0 <= drop < n``.
    rows: optional int ``[n]`` indices of the rows of ``x`` to aggregate, as
      if ``x[rows]`` were passed (ties then go to the lowest position in
      ``rows``); ``None`` uses all ``n = N`` rows.

  Returns:
    An array of shape ``x.shape[1:]`` and the dtype of ``x``.

  Raises:
    ValueError: unless ``0 <= drop < n``; the message names n and f.

  Example:
    >>> import jax.numpy as jnp
    >>> mean_around_median_over_workers(
    ...     jnp.array([[1.0], [4.0], [7.0]]), 1)  # 1 and 7 tie: worker 0 wins
    Array([2.5], dtype=float32)
  """
  n = _check_stack(x, "mean_around_median_over_workers")
  if rows is not None:
    if rows.ndim != 1 or rows.shape[0] == 0:
      raise ValueError("mean_around_median_over_workers needs rows of shape "
                       f"[n] with n >= 1; got shape {rows.shape}")
    n = rows.shape[0]
  _check_keep(n, n - drop, "mean_around_median_over_workers")
  return _mean_around(x, n - drop, "median", rows)


def phocas_over_workers(x: jax.Array, trim: int) -> jax.Array:
  r"""Phocas per coordinate: the mean of the values nearest the trimmed mean.

  .. math::
    \mathrm{Phocas}_f(x)_k = \frac{1}{n - f} \sum_{i \in S_k} x_{i,k},
    \qquad S_k = \text{the } n - f \text{ indices } i \text{ with the
    smallest } |x_{i,k} - \mathrm{TrMean}_f(x)_k|

  (:func:`trimmed_mean_over_workers` with the same ``f``). Ties at the
  cut-off distance are taken by the lowest worker index; NaN counts as
  ``+inf``.

  Args:
    x: stack ``[n, ...]``.
    trim: values trimmed per side for the centre and left out of the mean,
      ``0 <= trim`` and ``n > 2 trim``.

  Returns:
    An array of shape ``x.shape[1:]`` and the dtype of ``x``.

  Raises:
    ValueError: if ``n <= 2 trim``; the message names n and f.

  Example:
    >>> import jax.numpy as jnp
    >>> phocas_over_workers(jnp.array([[0.0], [10.0], [10.0], [10.5]]), 1)
    Array([10.166667], dtype=float32)
  """
  n = _check_stack(x, "phocas_over_workers")
  _check_trim(n, trim, "phocas_over_workers")
  return _mean_around(x, n - trim, "trimmed_mean")


def sort_present(x: jax.Array, present: jax.Array) -> tuple[jax.Array,
                                                             jax.Array]:
  """Sorts each coordinate over the rows present, absent rows last.

  Args:
    x: stack ``[n, ...]``.
    present: bool ``[n]``, the rows to sort; the others may hold anything.

  Returns:
    ``(sorted, m)``: ``sorted[:m]`` holds the present values of every
    coordinate in increasing order (NaN as ``+inf``, :func:`sanitize`), in
    the work dtype (float32 or wider); ``m`` is the traced int32 count of
    rows present.
  """
  _check_stack(x, "sort_present")
  work = sanitize(x.astype(_work_dtype(x.dtype)))
  absent = jnp.broadcast_to(
      (~present).reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
  _, ordered = lax.sort((absent.astype(jnp.int32), work), dimension=0,
                        num_keys=2)
  return ordered, jnp.sum(present, dtype=jnp.int32)


def masked_median_over_workers(x: jax.Array, present: jax.Array) -> jax.Array:
  """:func:`median_over_workers` of the rows where ``present`` is True.

  For an even count ``m`` of rows present, the midpoint of the two middle
  values. Needs ``m >= 1``; NaN counts as ``+inf``.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0], [jnp.nan], [4.0], [2.0]])
    >>> masked_median_over_workers(x, jnp.array([True, False, True, True]))
    Array([2.], dtype=float32)
  """
  ordered, m = sort_present(x, present)
  lo = lax.dynamic_index_in_dim(ordered, (m - 1) // 2, keepdims=False)
  hi = lax.dynamic_index_in_dim(ordered, m // 2, keepdims=False)
  return jnp.where(m % 2 == 1, lo, lo * 0.5 + hi * 0.5).astype(x.dtype)


def masked_trimmed_mean_over_workers(x: jax.Array, present: jax.Array,
                                     trim: int) -> jax.Array:
  r""":func:`trimmed_mean_over_workers` of the rows present.

  .. math::
    \frac{1}{m - 2f} \sum_{j=f+1}^{m-f} x_{(j),k}

  over the ``m`` rows present (``m > 2f`` needed; NaN as ``+inf``).

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0], [50.0], [2.0], [3.0], [-9.0]])
    >>> masked_trimmed_mean_over_workers(
    ...     x, jnp.array([True, False, True, True, True]), 1)
    Array([1.5], dtype=float32)
  """
  ordered, m = sort_present(x, present)
  rank = lax.broadcasted_iota(jnp.int32, ordered.shape, 0)
  keep = (rank >= trim) & (rank < m - trim)
  total = jnp.sum(jnp.where(keep, ordered, 0), axis=0)
  return (total / (m - 2 * trim).astype(total.dtype)).astype(x.dtype)


def masked_mean_over_workers(x: jax.Array, present: jax.Array) -> jax.Array:
  """Mean of the rows present (absent rows never touch it, even NaN ones).

  Example:
    >>> import jax.numpy as jnp
    >>> masked_mean_over_workers(jnp.array([[1.0], [jnp.nan], [3.0]]),
    ...                          jnp.array([True, False, True]))
    Array([2.], dtype=float32)
  """
  work = x.astype(_work_dtype(x.dtype))
  rows = present.reshape((-1,) + (1,) * (x.ndim - 1))
  total = jnp.sum(jnp.where(rows, work, 0), axis=0)
  m = jnp.sum(present, dtype=jnp.int32)
  return (total / m.astype(total.dtype)).astype(x.dtype)
