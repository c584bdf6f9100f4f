r"""SparCML's sparse all-reduce: the sum of sparse messages, never a stack.

Each worker holds a sparse vector of dimension ``d``: ``c`` (index, value)
pairs, indices in ``[0, d)`` (a slot whose index lies outside ``[0, d)`` is
unused and its value ignored, as in the threshold compressor's message).
:func:`sparse_all_reduce` returns the dense sum :math:`\sum_i x_i` on every
worker, without materialising the ``[n, d]`` stack that all-gather-then-
decode builds, with one of the static-sparse algorithms of SparCML
(:data:`ALGORITHMS`):

* ``"split_allgather"`` (SSAR/DSAR_Split_allgather). The index space is cut
  into ``n`` ranges of ``r = ceil(d / n)``. (1) A sparse reduce-scatter:
  every worker sends range ``j``'s pairs (a ``[n, c1]`` buffer of pairs,
  ``c1`` the bucket capacity) to worker ``j`` in one all-to-all, and worker
  ``j`` adds what it receives into its dense block of ``r`` entries. (2) An
  8-byte all-gather of each block's fill ``K_j`` (what an allgatherv
  exchanges first) and of a flag: whether the worker held more than ``c1``
  pairs for some range. (3) The reduced blocks are all-gathered:
  sparse while the fill of the sum :math:`K = \sum_j K_j` stays at most
  :math:`\delta d` and the fullest block fits ``c2``, at the smallest of
  :data:`LADDER_STEPS` static sizes ``c2 * 0.8^j`` that holds it (so the
  bytes follow the measured fill); otherwise dense, ``r`` values per block
  (DSAR's switch). (4) Only when some flag is set: the surplus pairs
  (those past ``c1`` in their bucket) are all-gathered and added.
* ``"recursive_double"`` (SSAR_Recursive_double), ``n`` a power of two:
  :math:`\log_2 n` rounds; in round ``t`` worker ``i`` swaps its partial
  sum with worker ``i XOR 2^t`` and merges. Capacities double each round,
  so nothing can overflow; the round whose partial sum could hold more than
  :math:`\delta d` pairs (its capacity, ``min(2^t c, d)``) and every later
  one exchange dense vectors. The switch is on this static bound of the
  fill, not on the measured fill: pairs of workers cannot agree on a
  data-dependent switch without one more round per stage.

The switch threshold: a sparse vector of ``K`` pairs costs ``K (i + v)``
bytes (``i = 4`` bytes per index, ``v`` per value), a dense one ``d v``, so
pairs stop being smaller at the fill :math:`\delta = v / (i + v)` (``1/2``
for float32), :func:`paper_delta`; ``delta`` may set another value in
``(0, 1]``.

**Capacities and overflow.** Shapes are static for ``jit``: the buckets of
stage 1 hold ``bucket_capacity`` pairs, the sparse blocks of stage 3
``block_capacity``. Nothing is ever truncated: when some worker's pairs for
one range exceed ``bucket_capacity``, every worker learns it from the flags
of round (2) and round (4) sends the surplus, ``c - c1`` slots per worker
(reported in :attr:`SparseSum.leftover`); a block whose fill exceeds
``block_capacity`` sends stage 3 dense. Both decisions come from
collectives, so they are the same on every worker, and they guard the
collectives through ``lax.cond``: on a mesh only the branch taken runs,
and a step without overflow runs three rounds.

**Collectives and bytes.** The stages run over the logical worker axis as
``distoptax.worker_axis`` realises it: under ``simulate`` (``vmap``) the
all-to-all and the pairwise exchange are array operations, under
``on_mesh`` they are one ``all_to_all`` or ``collective_permute`` over the
mesh axis (plus array operations over the workers a device holds). Every
stage is one round of the caller's
:class:`~distoptax.distributed.communication.Rounds`, recorded with the
bytes this worker hands to it: the all-to-all as a ``"reduce_scatter"``
(one port, direct exchange: ``(n-1)α + (n-1)/n · B/β``, the ring
reduce-scatter's price), each pairwise exchange of recursive doubling as a
``"sendrecv"`` (``α + B/β``, as :func:`recursive_double_seconds` prices
it).

**Cost model** (α-β, ``α`` seconds per message, ``β`` bytes per second;
:func:`split_allgather_seconds`, :func:`recursive_double_seconds`,
:func:`all_gather_seconds`, :func:`dense_all_reduce_seconds`), with ``k``
pairs per worker and a reduced fill ``K``:

.. math::

  T_{\text{split}} = 2(n-1)\alpha + \frac{n-1}{n}\frac{k(i+v)}{\beta}
    + \frac{n-1}{n}\frac{\min(K(i+v),\, d v)}{\beta}, \qquad
  T_{\text{rd}} = \sum_{t=0}^{\log_2 n - 1}
    \Big(\alpha + \frac{\min(K_t (i+v),\, d v)}{\beta}\Big),

``K_t`` the fill of a partial sum of ``2^t`` messages; all-gather-then-
decode costs :math:`(n-1)\alpha + (n-1) k (i+v)/\beta` and the dense ring
all-reduce :math:`2(n-1)\alpha + 2\frac{n-1}{n} d v/\beta`.

:math:`T_{\text{split}}` is the paper's two phases; the implementation
adds the 8-byte all-gather of round (2) (an allgatherv's size exchange),
which the clock charges as one more all-gather (``(n-1)α`` on a ring), and
every block of stage 3 travels at the fullest block's rung ``B`` (static
shapes), so the clock's ring all-gather charges ``(n-1) B/β`` where the
model charges ``(n-1)/n · K(i+v)/β`` (``B ≥ K(i+v)/n``). At small messages the
latency terms decide: one all-gather of the messages (``(n-1)α``) beats
three rounds (``3(n-1)α``) unless ``α`` is below the bytes saved per
round trip (see ``experiments/collectives_bench.py``).

References:
  Renggli, Ashkboos, Aghagolzadeh, Alistarh, Hoefler, "SparCML:
  High-Performance Sparse Communication for Machine Learning", SC 2019,
  arXiv:1802.08021. Thakur, Rabenseifner, Gropp, "Optimization of
  Collective Communication Operations in MPICH", IJHPCA 2005.
"""

import functools
import math
import types
from typing import Any, NamedTuple, TYPE_CHECKING

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from distoptax.algorithms.compressors import selection
from distoptax.worker_axis import collectives

if TYPE_CHECKING:
  from distoptax.distributed import communication  # pylint: disable=g-bad-import-order

INDEX_BYTES = 4
"""Bytes of one index on the wire (``int32``)."""

MARGIN = 6.0
"""Default capacities are ``ceil(m + MARGIN * sqrt(m) + 4)`` for a mean load
``m``: ``m = c / n`` pairs per range in a bucket (``c`` the message's slots),
``m = c`` in a reduced block (``n`` workers with ``c / n`` pairs each)."""


LADDER_RATIO = 0.8
"""Stage 3 runs the smallest of ``LADDER_STEPS`` static block sizes
``block_capacity * LADDER_RATIO^j`` that holds the fullest reduced block, so
its bytes follow the measured fill (at most 1.25x the fullest block)."""

LADDER_STEPS = 8


def default_capacity(mean: float) -> int:
  """``ceil(mean + MARGIN * sqrt(mean) + 4)``: a Poisson load's six sigmas.

  Example:
    >>> default_capacity(5.0), default_capacity(312.5)
    (23, 423)
  """
  return math.ceil(mean + MARGIN * math.sqrt(mean) + 4)


class SparseVector(NamedTuple):
  """One worker's sparse vector: ``c`` (index, value) slots.

  Attributes:
    indices: ``int32[c]``; a slot whose index lies outside ``[0, d)`` is
      unused. Indices may repeat (their values add up) and need not be
      sorted.
    values: ``[c]``, floating; the value of an unused slot is ignored.
  """

  indices: jax.Array
  values: jax.Array


class SparseSum(NamedTuple):
  """What :func:`sparse_all_reduce` returns, the same on every worker.

  Attributes:
    total: ``values.dtype[d]``, the sum of all workers' vectors.
    fill: ``int32``, the number of non-zero entries of ``total``.
    dense: ``bool``, whether the blocks (or the partial sums) travelled
      dense: the fill passed ``delta`` or a block overflowed its capacity.
    leftover: ``bool``, whether a bucket overflowed and its surplus pairs
      travelled in the leftover round.
  """

  total: jax.Array
  fill: jax.Array
  dense: jax.Array
  leftover: jax.Array


def paper_delta(value_dtype: Any = jnp.float32) -> float:
  r"""SparCML's switch fill :math:`\delta = v / (i + v)`, 4-byte indices.

  Args:
    value_dtype: the values' dtype (``v`` bytes each).

  Returns:
    The fill fraction at which ``K`` pairs take as many bytes as the dense
    vector: ``0.5`` for float32, ``1/3`` for bfloat16.

  Example:
    >>> paper_delta(), round(paper_delta("bfloat16"), 4)
    (0.5, 0.3333)
  """
  v = jnp.dtype(value_dtype).itemsize
  return v / (INDEX_BYTES + v)


def _check_delta(delta: Any, dtype: Any) -> float:
  if delta is None:
    return paper_delta(dtype)
  if isinstance(delta, bool) or not isinstance(delta, (int, float)):
    raise TypeError(f"delta must be a number in (0, 1]; got {delta!r}")
  if not 0 < delta <= 1:
    raise ValueError(f"delta must lie in (0, 1]; got {delta!r}")
  return float(delta)


def _check_capacity(name: str, value: Any) -> int | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an int >= 1; got {value!r}")
  if value < 1:
    raise ValueError(f"{name} must be >= 1; got {value!r}")
  return int(value)


def _check_message(message: SparseVector, dim: Any) -> int:
  if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
    raise TypeError(f"dim must be an int >= 1; got {dim!r}")
  if dim < 1 or dim >= 2**31 - 1:
    raise ValueError(f"dim must lie in [1, 2**31 - 1); got {dim}")
  indices, values = jnp.asarray(message[0]), jnp.asarray(message[1])
  if indices.ndim != 1 or values.ndim != 1 or indices.shape != values.shape:
    raise ValueError(
        f"a sparse vector's indices and values must be 1-D of one length; "
        f"got shapes {indices.shape} and {values.shape}")
  if indices.dtype != jnp.int32:
    raise TypeError(f"indices must be int32; got {indices.dtype}")
  if not jnp.issubdtype(values.dtype, jnp.floating):
    raise TypeError(f"values must be floating; got {values.dtype}")
  if indices.shape[0] < 1:
    raise ValueError("a sparse vector needs at least one slot")
  return int(dim)


# --------------------------------------------------------------------------
# Collectives the worker axis does not provide: all-to-all, pairwise swap.
# --------------------------------------------------------------------------


def _axis_sizes(axis_name: str) -> tuple[tuple[str, ...], tuple[int, ...],
                                          frozenset]:
  axes = collectives.worker_axes(axis_name)
  manual = frozenset(jax.sharding.get_abstract_mesh().manual_axes)
  return axes, tuple(lax.axis_size(a) for a in axes), manual


def all_to_all(x: jax.Array,
               axis_name: str = collectives.WORKERS) -> jax.Array:
  """Row ``j`` of ``x [n, ...]`` goes to worker ``j``; returns what came.

  Row ``s`` of the result is the row this worker's index selected in
  worker ``s``'s ``x``. Over a ``shard_map`` mesh axis it is one
  ``lax.all_to_all``; over a ``vmap`` axis (``simulate``, and the workers
  one device holds) an array operation.

  Args:
    x: ``[num_workers, ...]``, one row per destination.
    axis_name: the logical worker axis.

  Returns:
    ``[num_workers, ...]``, one row per source, in worker order.

  Raises:
    ValueError: if ``x``'s leading axis is not the number of workers.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.arange(9).reshape(3, 3)  # Worker i sends 3 i + j to j.
    >>> jax.vmap(all_to_all, axis_name="workers")(x)
    Array([[0, 3, 6],
           [1, 4, 7],
           [2, 5, 8]], dtype=int32)
  """
  axes, sizes, manual = _axis_sizes(axis_name)
  n = math.prod(sizes)
  if x.ndim < 1 or x.shape[0] != n:
    raise ValueError(f"all_to_all needs one row per worker ({n}); got shape "
                     f"{x.shape}")
  rest = x.shape[1:]
  out = x.reshape(sizes + rest)
  for t, axis in enumerate(axes):
    if axis in manual:
      out = lax.all_to_all(out, axis, t, t)
    else:
      gathered = lax.all_gather(out, axis)   # [source, *dest dims, ...]
      mine = jnp.take(gathered, lax.axis_index(axis), axis=t + 1)
      out = jnp.moveaxis(mine, 0, t)
  return out.reshape((n,) + rest)


def swap(x: Any, distance: int,
         axis_name: str = collectives.WORKERS) -> Any:
  """Worker ``i`` receives the ``x`` of worker ``i XOR distance``.

  One ``collective_permute`` over the mesh axis that holds the bit (or an
  array operation over a ``vmap`` axis). Works on pytrees.

  Args:
    x: this worker's pytree.
    distance: a power of two below the number of workers, whose axes
      must all have power-of-two sizes.
    axis_name: the logical worker axis.

  Returns:
    The partner's pytree.

  Raises:
    ValueError: if ``distance`` is not a power of two below the number of
      workers, or it falls inside an axis whose size is not a power of two.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> jax.vmap(lambda v: swap(v, 2), axis_name="workers")(jnp.arange(4))
    Array([2, 3, 0, 1], dtype=int32)
  """
  axes, sizes, _ = _axis_sizes(axis_name)
  n = math.prod(sizes)
  if distance < 1 or distance >= n or distance & (distance - 1):
    raise ValueError(f"swap distance must be a power of two below the "
                     f"number of workers ({n}); got {distance}")
  inner = 1
  for axis, size in reversed(tuple(zip(axes, sizes))):
    if distance < inner * size:
      if size & (size - 1):
        raise ValueError(f"swap over axis {axis!r} of size {size} needs a "
                         f"power-of-two size")
      bit = distance // inner
      perm = [(c, c ^ bit) for c in range(size)]
      return jax.tree.map(lambda leaf: lax.ppermute(leaf, axis, perm), x)
    inner *= size
  raise AssertionError("unreachable: distance < number of workers")


# --------------------------------------------------------------------------
# Split all-gather (SSAR / DSAR).
# --------------------------------------------------------------------------


def _clean(message: SparseVector, d: int) -> tuple[jax.Array, jax.Array]:
  """Sorted indices (unused slots as ``d``, last) and their values."""
  idx, val = jnp.asarray(message[0]), jnp.asarray(message[1])
  valid = (idx >= 0) & (idx < d)
  idx = jnp.where(valid, idx, d)
  val = jnp.where(valid, val, jnp.zeros_like(val))
  return lax.sort((idx, val), num_keys=1)


def _decode(idx: jax.Array, val: jax.Array, d: int) -> jax.Array:
  return jnp.zeros((d,), val.dtype).at[idx].add(val, mode="drop")


def _group_by_owner(owner: jax.Array, n: int) -> tuple[jax.Array,
                                                      jax.Array]:
  """A permutation that groups the slots by owner, and the owners in it.

  One single-operand sort of ``owner * c + position`` (several times
  faster on CPU than sorting the (index, value) pairs), or a two-operand
  sort when that key does not fit in int32.
  """
  c = owner.shape[0]
  position = jnp.arange(c, dtype=jnp.int32)
  if (n + 1) * c < 2**31:
    key = lax.sort(owner * c + position)
    return key % c, key // c
  sorted_owner, perm = lax.sort((owner, position), num_keys=1)
  return perm, sorted_owner


def _split_allgather(rounds, message, d, delta, bucket_capacity,
                     block_capacity):
  axis_name = rounds.axis_name
  n = collectives.num_workers(axis_name)
  idx, val = jnp.asarray(message[0]), jnp.asarray(message[1])
  c = idx.shape[0]
  r = -(-d // n)
  c1 = min(c, bucket_capacity or default_capacity(c / n))
  c2 = min(r, block_capacity or default_capacity(c))
  valid = (idx >= 0) & (idx < d)
  owner = jnp.where(valid, idx // r, n)            # n: an unused slot.
  perm, owner = _group_by_owner(owner, n)
  idx, val = idx[perm], jnp.where(valid[perm], val[perm], 0)
  counts = jnp.zeros((n + 1,), jnp.int32).at[owner].add(1)
  starts = jnp.cumsum(counts) - counts
  rank = jnp.arange(c, dtype=jnp.int32) - starts[owner]
  over = jnp.any(counts[:n] > c1)

  # (1) Sparse reduce-scatter: one all-to-all of [n, c1] buffers.
  local = jnp.full((n, c1), r, jnp.int32).at[owner, rank].set(
      idx - owner * r, mode="drop")
  values = jnp.zeros((n, c1), val.dtype).at[owner, rank].set(
      val, mode="drop")
  got_idx, got_val = rounds.run_round(
      "reduce_scatter",
      lambda b: (all_to_all(b[0], axis_name), all_to_all(b[1], axis_name)),
      (local, values))
  block = jnp.zeros((r,), val.dtype).at[got_idx.ravel()].add(
      got_val.ravel(), mode="drop")
  nonzero = block != 0

  # (2) The blocks' fills and the overflow flags, one all-gather.
  counts2 = rounds.all_gather(jnp.stack(
      [jnp.sum(nonzero, dtype=jnp.int32), over.astype(jnp.int32)]))
  fill, most = jnp.sum(counts2[:, 0]), jnp.max(counts2[:, 0])
  leftover = jnp.any(counts2[:, 1] != 0)
  me = collectives.worker_index(axis_name)

  # (3) The reduced blocks: the smallest rung of the ladder that holds the
  # fullest block, sparse, or dense.
  positions = selection.compact(selection.pack_bits(nonzero), c2, fill=r)

  def sparse_blocks(size):
    def gather(block, positions):
      pos = positions[:size]
      used = pos < r
      vals = jnp.where(used, block[jnp.minimum(pos, r - 1)], 0)
      gidx = jnp.where(used, pos + me * r, d)
      rows_idx, rows_val = rounds.all_gather((gidx, vals))
      return jnp.zeros((d,), val.dtype).at[rows_idx.ravel()].set(
          rows_val.ravel(), mode="drop")
    return gather

  def dense_blocks(block, positions):
    del positions
    return rounds.all_gather(block).reshape(-1)[:d]

  ladder = _ladder(c2)
  under = fill <= delta * d
  send = dense_blocks
  for size in reversed(ladder):
    send = functools.partial(
        rounds.cond, under & (most <= size), sparse_blocks(size), send)
  total = send(block, positions)
  dense = ~(under & (most <= ladder[-1]))
  if c1 == c:                     # No bucket can overflow.
    return total, fill, dense, jnp.asarray(False)

  # (4) Only if a bucket overflowed: its surplus pairs, all-gathered.
  def add_leftovers(total, idx, val, rank, owner):
    surplus = (rank >= c1) & (owner < n)
    slot = jnp.where(surplus, jnp.cumsum(surplus, dtype=jnp.int32) - 1,
                     c - c1)
    send_idx = jnp.full((c - c1,), d, jnp.int32).at[slot].set(
        idx, mode="drop")
    send_val = jnp.zeros((c - c1,), val.dtype).at[slot].set(
        val, mode="drop")
    rows_idx, rows_val = rounds.all_gather((send_idx, send_val))
    total = total.at[rows_idx.ravel()].add(rows_val.ravel(), mode="drop")
    return total, jnp.sum(total != 0, dtype=jnp.int32)

  def keep(total, idx, val, rank, owner):
    del idx, val, rank, owner
    return total, fill

  total, fill = rounds.cond(leftover, add_leftovers, keep, total, idx, val,
                            rank, owner)
  return total, fill, dense, leftover


def _ladder(capacity: int) -> list[int]:
  """Block sizes tried in stage 3, ascending: ``capacity * 0.8^j``."""
  sizes = []
  size = float(capacity)
  while len(sizes) < LADDER_STEPS and size >= 1:
    sizes.append(math.ceil(size))
    size *= LADDER_RATIO
  return sorted(set(sizes))


# --------------------------------------------------------------------------
# Recursive doubling (SSAR).
# --------------------------------------------------------------------------


def _merge(idx: jax.Array, val: jax.Array, other_idx: jax.Array,
           other_val: jax.Array, d: int) -> tuple[jax.Array, jax.Array]:
  """The sum of two sorted sparse vectors, ``len(idx) + len(other)`` slots.

  Equal indices fold into one slot (the first of the run); the freed slots
  and the unused ones move to the end with index ``d``.
  """
  both_idx, both_val = lax.sort(
      (jnp.concatenate([idx, other_idx]), jnp.concatenate([val, other_val])),
      num_keys=1)
  first = jnp.concatenate([jnp.ones((1,), bool),
                           both_idx[1:] != both_idx[:-1]])
  segment = jnp.cumsum(first.astype(jnp.int32)) - 1
  size = both_idx.shape[0]
  sums = jnp.zeros((size,), both_val.dtype).at[segment].add(both_val)
  heads = jnp.full((size,), d, jnp.int32).at[segment].set(both_idx)
  return heads, jnp.where(heads < d, sums, jnp.zeros_like(sums))


def _recursive_double(rounds, message, d, delta):
  axis_name = rounds.axis_name
  n = collectives.num_workers(axis_name)
  if n & (n - 1):
    raise ValueError(f"recursive_double needs a power-of-two number of "
                     f"workers; got {n}")
  idx, val = _clean(message, d)
  bound = idx.shape[0]
  dense = None
  distance = 1
  while distance < n:
    if dense is None and min(bound, d) > delta * d:
      dense = _decode(idx, val, d)
    if dense is None:
      other_idx, other_val = rounds.run_round(
          "sendrecv", lambda x, s=distance: swap(x, s, axis_name),
          (idx, val))
      idx, val = _merge(idx, val, other_idx, other_val, d)
      bound *= 2
    else:
      dense = dense + rounds.run_round(
          "sendrecv", lambda x, s=distance: swap(x, s, axis_name), dense)
    distance *= 2
  switched = dense is not None
  total = dense if switched else _decode(idx, val, d)
  return (total, jnp.sum(total != 0, dtype=jnp.int32), jnp.asarray(switched),
          jnp.asarray(False))


def _recursive_double_entry(rounds, message, d, delta, bucket_capacity,
                            block_capacity):
  del bucket_capacity, block_capacity   # Capacities double: no overflow.
  return _recursive_double(rounds, message, d, delta)


_IMPLEMENTATIONS = types.MappingProxyType({
    "split_allgather": _split_allgather,
    "recursive_double": _recursive_double_entry,
})

ALGORITHMS = types.MappingProxyType({
    "split_allgather": "SSAR/DSAR_Split_allgather",
    "recursive_double": "SSAR_Recursive_double",
})
"""The algorithms :func:`sparse_all_reduce` runs, with the paper's names."""


def sparse_all_reduce(
    rounds: "communication.Rounds",
    message: SparseVector,
    dim: int,
    *,
    algorithm: str = "split_allgather",
    delta: float | None = None,
    bucket_capacity: int | None = None,
    block_capacity: int | None = None,
) -> SparseSum:
  r"""The sum of every worker's sparse vector, by a SparCML all-reduce.

  .. math:: s = \sum_{i=1}^{n} x_i \in \mathbb{R}^d, \qquad
    x_i = \sum_{j} v_{ij} e_{\iota_{ij}}

  computed without the ``[n, d]`` stack of decoded messages; the fill
  :math:`K = |\{l : s_l \ne 0\}|` decides, against :math:`\delta d`,
  whether the last stage runs sparse or dense (see the module docstring).

  Guarantees: the result is the exact sum of the decoded messages (the
  same additions, possibly in another order: bit-exact for integer-valued
  data, otherwise up to floating-point reassociation); no pair is ever
  dropped (a bucket's surplus travels in a leftover round, an overflowing
  block sends the blocks dense); every worker gets the same sum; all
  rounds are recorded in ``rounds``, with the bytes handed to each. Needs
  a ``Rounds`` capacity of 4 (split all-gather: 3 rounds, a 4th when a
  bucket overflows) or :math:`\log_2 n` (recursive doubling).

  Args:
    rounds: the update's :class:`~distoptax.distributed.communication.Rounds`
      (over its worker axis).
    message: this worker's :class:`SparseVector` (or an ``(indices,
      values)`` pair, e.g. a top-k or threshold leaf message's arrays).
    dim: ``d``, the dense dimension.
    algorithm: one of :data:`ALGORITHMS`.
    delta: the switch fill in ``(0, 1]``; ``None``: :func:`paper_delta` of
      the values' dtype.
    bucket_capacity: split all-gather: pairs per range in stage 1;
      default :func:`default_capacity` of ``c / n``, at most ``c``.
    block_capacity: split all-gather: pairs per reduced block in stage 3;
      default :func:`default_capacity` of ``c``, at most ``r``.

  Returns:
    A :class:`SparseSum`.

  Raises:
    ValueError: for an unknown algorithm, ``delta`` outside ``(0, 1]``, a
      capacity below 1, indices and values of different shapes, a bad
      ``dim``, or recursive doubling over a number of workers that is not
      a power of two.
    TypeError: for non-int32 indices, non-floating values, or a capacity
      or ``delta`` of the wrong type.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.distributed import comm_stats, communication
    >>> def step(idx, val):
    ...   rounds = communication.Rounds(comm_stats.init_comm_stats(4))
    ...   out = sparse_all_reduce(rounds, SparseVector(idx, val), 16,
    ...                           bucket_capacity=2)
    ...   return out.total, out.dense, rounds.finish()
    >>> idx = jnp.array([[0, 5], [5, 16], [1, 2], [7, 16]], jnp.int32)
    >>> val = jnp.array([[1.0, 2.0], [3.0, 9.0], [4.0, 5.0], [6.0, 0.0]])
    >>> total, dense, stats = jax.vmap(step, axis_name="workers")(idx, val)
    >>> total[0, :8], dense[0]  # Index 16 = d: an unused slot.
    (Array([1., 4., 5., 0., 0., 5., 0., 6.], dtype=float32), Array(False, dtype=bool))
    >>> [(r.kind, r.bytes) for r in comm_stats.clock_rounds(stats)]
    [('reduce_scatter', 64), ('all_gather', 8), ('all_gather', 24)]
  """
  if algorithm not in ALGORITHMS:
    raise ValueError(f"unknown algorithm {algorithm!r}; known: "
                     f"{sorted(ALGORITHMS)}")
  d = _check_message(message, dim)
  values = jnp.asarray(message[1])
  delta = _check_delta(delta, values.dtype)
  bucket_capacity = _check_capacity("bucket_capacity", bucket_capacity)
  block_capacity = _check_capacity("block_capacity", block_capacity)
  return SparseSum(*_IMPLEMENTATIONS[algorithm](
      rounds, message, d, delta, bucket_capacity, block_capacity))


# --------------------------------------------------------------------------
# The paper's alpha-beta costs (host side).
# --------------------------------------------------------------------------


def expected_fill(k: float, dim: int, num_messages: int) -> float:
  r"""Expected non-zeros of a sum of messages with independent supports.

  .. math:: K = d\,\big(1 - (1 - k/d)^{m}\big)

  for ``m`` messages of ``k`` uniformly placed pairs each (``k`` for one
  message, ``m k`` while they rarely collide, ``d`` at most).

  Example:
    >>> round(expected_fill(10, 1000, 1), 6), round(expected_fill(10, 1000, 2), 1)
    (10.0, 19.9)
  """
  return dim * (1.0 - (1.0 - min(k, dim) / dim) ** num_messages)


def _pair_bytes(value_bytes: int) -> int:
  return INDEX_BYTES + value_bytes


def all_gather_seconds(k: float, num_workers: int, *, bandwidth: float,
                       latency: float, value_bytes: int = 4) -> float:
  r"""All-gather-then-decode: :math:`(n-1)\alpha + (n-1) k (i+v)/\beta`."""
  n = num_workers
  return (n - 1) * latency + (n - 1) * k * _pair_bytes(value_bytes) / bandwidth


def dense_all_reduce_seconds(dim: int, num_workers: int, *, bandwidth: float,
                             latency: float, value_bytes: int = 4) -> float:
  r"""Ring all-reduce: :math:`2(n-1)\alpha + 2\frac{n-1}{n} d v/\beta`."""
  n = num_workers
  return 2 * (n - 1) * (latency + dim * value_bytes / n / bandwidth)


def split_allgather_seconds(k: float, dim: int, num_workers: int, *,
                            bandwidth: float, latency: float,
                            value_bytes: int = 4, fill: float | None = None,
                            delta: float | None = None) -> float:
  r"""SSAR/DSAR_Split_allgather in the α-β model.

  .. math:: 2(n-1)\alpha + \frac{n-1}{n}\frac{k(i+v)}{\beta}
    + \frac{n-1}{n}\frac{B_2}{\beta}, \quad
    B_2 = \begin{cases} K (i+v) & K \le \delta d \\ d v & \text{else}
    \end{cases}

  Args:
    k: pairs per worker.
    dim: ``d``.
    num_workers: ``n``.
    bandwidth: ``β``, bytes per second.
    latency: ``α``, seconds per message.
    value_bytes: ``v``.
    fill: ``K``; default :func:`expected_fill` of ``n`` messages.
    delta: the switch fill; default ``v / (i + v)``.

  Returns:
    Seconds.

  Example:
    >>> round(split_allgather_seconds(100, 10**4, 4, bandwidth=1e9,
    ...                               latency=0.0) * 1e9)
    2964
  """
  n = num_workers
  fill = expected_fill(k, dim, n) if fill is None else fill
  delta = value_bytes / _pair_bytes(value_bytes) if delta is None else delta
  pair = _pair_bytes(value_bytes)
  second = fill * pair if fill <= delta * dim else dim * value_bytes
  return 2 * (n - 1) * latency + (n - 1) / n * (k * pair + second) / bandwidth


def recursive_double_seconds(k: float, dim: int, num_workers: int, *,
                             bandwidth: float, latency: float,
                             value_bytes: int = 4,
                             delta: float | None = None) -> float:
  r"""SSAR_Recursive_double in the α-β model, independent supports.

  .. math:: \sum_{t=0}^{\log_2 n - 1}\Big(\alpha
    + \frac{B_t}{\beta}\Big), \quad
    B_t = \begin{cases} K_t (i+v) & K_t \le \delta d \\ d v & \text{else}
    \end{cases}, \quad K_t = \text{expected\_fill}(k, d, 2^t)

  (the paper's dynamic switch on the expected fill; the implementation
  switches on the static bound ``2^t k``).

  Example:
    >>> round(recursive_double_seconds(100, 10**4, 4, bandwidth=1e9,
    ...                                latency=0.0) * 1e9)
    2392
  """
  n = num_workers
  delta = value_bytes / _pair_bytes(value_bytes) if delta is None else delta
  total, m = 0.0, 1
  while m < n:
    fill = expected_fill(k, dim, m)
    sent = (fill * _pair_bytes(value_bytes) if fill <= delta * dim
            else dim * value_bytes)
    total += latency + sent / bandwidth
    m *= 2
  return total
