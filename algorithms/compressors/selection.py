r"""Exact top-k selection and stream compaction at memory speed (private).

The sparsifiers need two primitives with static output shapes:

* :func:`compact`: the positions of the set bits of a mask, in ascending
  order, into a buffer of static size (what ``jnp.nonzero(mask, size=...)``
  does, without its full-length ``cumsum``);
* :func:`top_k_indices`: the **exact** set of the ``k`` largest magnitudes,
  ties broken by the lowest index, in ascending index order.

``lax.top_k`` sorts the whole array on CPU (10-15x a copy of the vector at
``d = 2^24, k = d/100``; on GPU it becomes a full sort for ``k > 16``, see
``shared/reference/compressors.md`` §d.2), and ``jnp.nonzero`` costs a
full-length associative scan (about 10x a copy on CPU). Here:

1. **Keys.** ``|x|`` is ranked through the integer key
   ``bitcast(x) & 0x7fff...`` (int32 for float32, and for bfloat16/float16
   widened from int16), which orders magnitudes exactly as the floats do,
   with ``-0.0 == +0.0`` and NaN above ``+inf`` (NaNs are selected first).
2. **Sampled threshold.** A fixed random sample of ``m`` positions
   (``sample_size``, default ``2^16``; a constant of the program, the same on
   every call) estimates a key ``t0`` whose count ``N = #{key >= t0}`` lies
   in ``[k, cap]`` with high probability: ``t0`` is the ``r``-th largest
   sample key (a sort of the sample) with
   ``r = ceil(mu + 4 sqrt(mu) + 2)``, ``mu = m k / d``, and
   ``cap = ceil((d r / m)(1 + 6 / sqrt(r))) + 64`` (``N / d`` is a Beta
   order statistic with relative spread ``1/sqrt(r)``: ``N < k`` is a
   4-sigma event, ``N > cap`` a 6-sigma one).
3. **Bit-packed mask.** One pass over ``x`` packs the mask ``key >= t0``
   into ``uint32`` words (32 positions per word) and counts it with
   ``popcount``; nothing of size ``d`` is written.
4. **Exact fallback** (a ``lax.while_loop`` that runs zero times when the
   estimate is good). The mask is generalised to a *composite* threshold
   ``(t, i)``: ``key > t or (key == t and index <= i)``, a total order in
   which every count from 0 to ``d`` is reachable, so ties cannot make the
   window ``[k, cap]`` unreachable. The loop bisects on ``t`` (at most 32
   passes) and then, when the window falls inside one run of equal keys, on
   ``i`` (at most ``log2(d) + 1`` more), until ``k <= N <= cap``. Under
   ``vmap`` a ``while_loop`` runs until every batch member is done, so a
   good estimate keeps the simulation of many workers fast (a ``lax.cond``
   would run both branches). Each pass recomputes the keys behind an
   ``optimization_barrier``: otherwise XLA hoists them out of the loop and
   writes all ``d`` keys (a copy) even when the loop runs zero times.
5. **Compaction** (:func:`compact`) of the ``N <= cap`` candidates: prefix
   sums of the per-word counts (``d / 32`` entries) locate each output
   slot's word, and a five-step ``popcount`` bisection its bit.
6. **Exact selection among the candidates** (kept in ascending index order):
   the same threshold loop with the window ``[k, k]`` on the ``cap``
   candidate keys finds the composite threshold of the exact top-k, whose
   mask is compacted to exactly ``k`` positions.

The result equals ``argsort(-|x|, stable=True)[:k]`` sorted (the NumPy
reference of the tests), for every input, ties and NaNs included; only the
time depends on the sample. Inputs with ``d <= 4 m`` (or keys wider than
32 bits) use that stable sort directly.

Measured on the 2-core development CPU (jaxlib 0.10.2, ``d = 2^24`` normal
float32, median of interleaved rounds, indices plus the gather of the
values, against ``x * 1.0`` jitted): ``k = d/1000`` 0.3-0.4x a copy,
``k = d/100`` 0.8-1.3x, ``k = d/10`` 2.5-2.9x; ``lax.top_k`` at
``k = d/100`` 10-15x. Inputs that defeat the sample (``d = 2^24`` values
that are all equal, or integers in ``[-50, 50]``) take the fallback:
3.5-4.5x. The machine was shared (load 7 on 2 cores), so the ratios are
indicative; not measured on an accelerator.
"""

import math

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

WORD_BITS = 32
DEFAULT_SAMPLE_SIZE = 2**16
_INT32_MAX = np.iinfo(np.int32).max


def magnitude_key(x: jax.Array) -> jax.Array:
  """Integer key with the order of ``|x|`` (NaN above ``+inf``).

  Args:
    x: a floating array.

  Returns:
    int32 keys (int64 for float64 input), non-negative, of ``x``'s shape.
  """
  bits = jnp.dtype(x.dtype).itemsize * 8
  if bits == 64:
    return lax.bitcast_convert_type(x, jnp.int64) & np.int64(2**63 - 1)
  if bits == 32:
    return lax.bitcast_convert_type(x, jnp.int32) & np.int32(_INT32_MAX)
  if bits == 16:
    narrow = lax.bitcast_convert_type(x, jnp.int16).astype(jnp.int32)
    return narrow & np.int32(0x7FFF)
  raise TypeError(f"magnitude_key needs a float16/32/64 array; got {x.dtype}")


def pack_bits(mask: jax.Array) -> jax.Array:
  """Packs a 1-D bool mask into uint32 words, position ``32 w + b`` at bit b.

  Args:
    mask: ``bool[n]``.

  Returns:
    ``uint32[ceil(n / 32)]``; bits past ``n`` are zero.
  """
  n = mask.shape[0]
  full = n // WORD_BITS * WORD_BITS
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  parts = []
  if full:
    body = mask[:full].reshape(-1, WORD_BITS).astype(jnp.uint32) << shifts
    parts.append(jnp.sum(body, axis=1, dtype=jnp.uint32))
  if n > full:
    tail = jnp.zeros((WORD_BITS,), bool).at[:n - full].set(mask[full:])
    parts.append(jnp.sum(tail.astype(jnp.uint32) << shifts, dtype=jnp.uint32,
                         keepdims=True))
  if not parts:
    return jnp.zeros((0,), jnp.uint32)
  return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def _select_bit(word: jax.Array, rank: jax.Array) -> jax.Array:
  """Position of the set bit of rank ``rank`` (0-based) in each word."""
  pos = jnp.zeros(word.shape, jnp.uint32)
  rank = rank.astype(jnp.uint32)
  for width in (16, 8, 4, 2, 1):
    low = lax.population_count((word >> pos) & np.uint32((1 << width) - 1))
    right = rank >= low
    pos = pos + jnp.where(right, np.uint32(width), np.uint32(0))
    rank = rank - jnp.where(right, low, np.uint32(0))
  return pos.astype(jnp.int32)


def count_bits(words: jax.Array) -> jax.Array:
  """Number of set bits of all words (int32 scalar)."""
  return jnp.sum(lax.population_count(words).astype(jnp.int32))


def compact(words: jax.Array, size: int, fill: int) -> jax.Array:
  """Ascending positions of the first ``size`` set bits of packed words.

  Each output slot finds its word from the prefix sums of the per-word
  counts: by a binary search when there are fewer slots than words, else by
  scattering each word's index to its first slot and a running maximum
  (``O(words + slots)``, about 4x faster than the search at ``2^21``
  slots); then the set bit of the right rank inside the word.

  Args:
    words: from :func:`pack_bits`.
    size: static number of output slots.
    fill: value of the slots past the number of set bits.

  Returns:
    ``int32[size]``.
  """
  if size == 0:
    return jnp.zeros((0,), jnp.int32)
  num_words = words.shape[0]
  counts = lax.population_count(words).astype(jnp.int32)
  inclusive = jnp.cumsum(counts)
  exclusive = inclusive - counts
  total = inclusive[-1]
  slot = jnp.arange(size, dtype=jnp.int32)
  if size < num_words:
    word = jnp.searchsorted(inclusive, slot, side="right").astype(jnp.int32)
  else:
    # Words with a set bit start at distinct slots; the others go to
    # distinct slots past the end and are dropped.
    index = jnp.arange(num_words, dtype=jnp.int32)
    start = jnp.where(counts > 0, exclusive, size + index)
    word = jnp.zeros((size,), jnp.int32).at[start].set(
        index, mode="drop", unique_indices=True)
    word = lax.cummax(word)
  word = jnp.minimum(word, num_words - 1)
  rank = slot - exclusive[word]
  position = word * WORD_BITS + _select_bit(words[word], rank)
  return jnp.where(slot < total, position, np.int32(fill))


def _midpoint(lo: jax.Array, hi: jax.Array) -> jax.Array:
  """``floor((lo + hi) / 2)`` for int32 without overflow."""
  return (lo >> 1) + (hi >> 1) + (lo & hi & 1)


def _composite_mask(key: jax.Array, t: jax.Array, i: jax.Array) -> jax.Array:
  index = lax.iota(jnp.int32, key.shape[0])
  return (key > t) | ((key == t) & (index <= i))


def find_threshold(values: jax.Array, key_of, k: int, cap: int,
                   t0: jax.Array):
  """A composite threshold whose mask counts between ``k`` and ``cap``.

  Starts from the mask ``key >= t0`` (packed in the same pass that counts
  it); while its count ``N`` is outside ``[k, cap]``, bisects: first on the
  key ``t`` of the masks ``key >= t``, then, when ``#{key > v} < k`` and
  ``#{key >= v} > cap`` for one key value ``v``, on the index ``i`` of the
  masks ``key > v or (key == v and index <= i)``. Each step is one pass.

  Args:
    values: 1-D array of ``n`` entries.
    key_of: ``key_of(values) -> int32[n]`` non-negative keys; recomputed in
      each pass (behind an optimisation barrier, so that XLA does not hoist
      it out of the loop and materialise the keys of a large input).
    k: lower end of the window, ``1 <= k``.
    cap: upper end, ``k <= cap``; requires ``k <= n``.
    t0: int32 scalar, the first key threshold to try.

  Returns:
    ``(words, count)``: the packed mask (:func:`pack_bits`) and its count.
  """
  last = np.int32(values.shape[0] - 1)

  def evaluate(t, i):
    # The barrier ties the input to the loop-variant threshold.
    current, t, i = lax.optimization_barrier((values, t, i))
    words = pack_bits(_composite_mask(key_of(current), t, i))
    return words, count_bits(words)

  def outside(state):
    count = state[-1]
    return (count < k) | (count > cap)

  def body(state):
    by_index, s_lo, s_hi, i_lo, i_hi, t, i, _, count = state
    too_many = count > cap
    # Stage A: the masks key > s; invariant #{key > s_lo} > cap (or s_lo is
    # the start, -1) and #{key > s_hi} < k.
    s_cur = t - 1
    s_lo = jnp.where(by_index | ~too_many, s_lo, s_cur)
    s_hi = jnp.where(by_index | too_many, s_hi, s_cur)
    enter = ~by_index & (s_hi <= s_lo + 1)
    # Stage B: the masks key > v or (key == v and index <= i), v = t.
    i_lo = jnp.where(by_index & ~too_many, i, i_lo)
    i_hi = jnp.where(by_index & too_many, i, i_hi)
    i_lo = jnp.where(enter, np.int32(-1), i_lo)
    i_hi = jnp.where(enter, last, i_hi)
    by_index = by_index | enter
    t = jnp.where(by_index, jnp.where(enter, s_hi, t),
                  _midpoint(s_lo, s_hi) + 1)
    # The first i_hi (n - 1) is never evaluated and may lie in the window:
    # once the bracket is adjacent, try it.
    mid = _midpoint(i_lo, i_hi)
    i = jnp.where(by_index, jnp.where(mid == i_lo, i_hi, mid), last)
    words, count = evaluate(t, i)
    return by_index, s_lo, s_hi, i_lo, i_hi, t, i, words, count

  t0 = jnp.asarray(t0, jnp.int32)
  words, count = evaluate(t0, last)
  state = (jnp.zeros((), bool), np.int32(-1), np.int32(_INT32_MAX),
           np.int32(-1), last, t0, last, words, count)
  state = lax.while_loop(outside, body, state)
  return state[-2], state[-1]


def sample_positions(d: int, m: int) -> np.ndarray:
  """The fixed sorted sample of ``m`` distinct positions in ``[0, d)``."""
  rng = np.random.Generator(np.random.PCG64(0x70B4))
  return np.sort(rng.choice(d, size=m, replace=False)).astype(np.int32)


def sample_plan(d: int, k: int, m: int) -> tuple[int, int]:
  """Sample rank ``r`` of the first threshold and candidate capacity."""
  mu = m * k / d
  r = min(m, max(1, math.ceil(mu + 4.0 * math.sqrt(mu) + 2.0)))
  expected = d * r / m
  cap = min(d, math.ceil(expected * (1.0 + 6.0 / math.sqrt(r))) + 64)
  return r, max(cap, k)


def _sample_threshold(sample: jax.Array, r: int) -> jax.Array:
  """Key of the ``r``-th largest magnitude of ``sample``."""
  # A sort of the (2^16) sample keys: XLA's CPU top-k is a full sort for
  # integers, and measured slower than this sort for floats too.
  key = magnitude_key(sample)
  return jnp.sort(key)[key.shape[0] - r]


def _sorted_top_k(key: jax.Array, k: int) -> jax.Array:
  order = jnp.argsort(-key, stable=True)[:k]
  return jnp.sort(order).astype(jnp.int32)


def top_k_indices(x: jax.Array, k: int, *,
                  sample_size: int = DEFAULT_SAMPLE_SIZE) -> jax.Array:
  """Ascending indices of the exact top-k of ``|x|``, ties to lowest index.

  Args:
    x: 1-D floating array of length ``d``.
    k: static, ``0 <= k <= d``.
    sample_size: size of the threshold sample; inputs with
      ``d <= 4 * sample_size`` are sorted instead.

  Returns:
    ``int32[k]``, strictly increasing.
  """
  d = x.shape[0]
  if not 0 <= k <= d:
    raise ValueError(f"top-k needs 0 <= k <= d; got k={k}, d={d}")
  if k == d:
    return jnp.arange(d, dtype=jnp.int32)
  if k == 0:
    return jnp.zeros((0,), jnp.int32)
  if d <= 4 * sample_size or jnp.dtype(x.dtype).itemsize > 4:
    return _sorted_top_k(magnitude_key(x), k)
  m = sample_size
  r, cap = sample_plan(d, k, m)
  t0 = _sample_threshold(x[sample_positions(d, m)], r)
  words, _ = find_threshold(x, magnitude_key, k, cap, t0)
  candidates = compact(words, cap, fill=d)
  valid = candidates < d
  safe = jnp.where(valid, candidates, 0)
  candidate_key = jnp.where(valid, magnitude_key(x[safe]), -1)
  exact, _ = find_threshold(candidate_key, lambda key: key, k, k, t0)
  chosen = compact(exact, k, fill=0)
  return candidates[chosen]


def check_budget(name: str, fraction: float | None, k: int | None, *,
                 fraction_name: str = "fraction", k_name: str = "k") -> None:
  """Raises ``ValueError`` unless exactly one valid budget is given."""
  if (fraction is None) == (k is None):
    raise ValueError(f"{name} needs exactly one of {fraction_name} and "
                     f"{k_name}; got {fraction_name}={fraction!r}, "
                     f"{k_name}={k!r}")
  if k is not None and (isinstance(k, bool) or not isinstance(k, int)
                        or k < 1):
    raise ValueError(f"{name} needs an integer {k_name} >= 1; got "
                     f"{k_name}={k!r}")
  if fraction is not None and (isinstance(fraction, bool) or not (
      isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0)):
    raise ValueError(f"{name} needs {fraction_name} in (0, 1]; got "
                     f"{fraction_name}={fraction!r}")


def budget(d: int, fraction: float | None, k: int | None) -> int:
  """Entries kept out of ``d``: ``min(k, d)`` or ``ceil(fraction d)`` in
  ``[1, d]`` (``0`` when ``d == 0``)."""
  if d == 0:
    return 0
  if k is not None:
    return min(k, d)
  # Rounded first so that e.g. 0.01 * 300 = 3.0000000000000004 gives 3.
  return min(d, max(1, math.ceil(round(fraction * d, 6))))


def scatter(indices: jax.Array, values: jax.Array, d: int, *,
            unique: bool = True) -> jax.Array:
  """Dense ``values.dtype[d]``: zeros with ``values`` at ascending
  ``indices``; indices ``>= d`` are dropped (padding slots)."""
  return jnp.zeros((d,), values.dtype).at[indices].set(
      values, indices_are_sorted=True, unique_indices=unique, mode="drop")
