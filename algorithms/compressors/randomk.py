r"""Random-k sparsification with indices from a seed shared by all workers.

Every worker keeps the same ``k`` coordinates, a uniformly random
``k``-subset drawn from the step key that ``dist.aggregate`` hands to every
worker (``shared_key=True``). The indices are therefore not sent, and
messages of different workers can be summed before decoding (one
``psum``), the property BytePS adopted when it switched random-k to a
shared seed (bytedance/byteps#299, #395; card A7).

Wire format. ``values`` (one array per leaf, ``k`` entries each, in
ascending index order) plus what the receiver needs to regenerate the
indices: ``seed``, the step key's data words split into 16-bit halves
(``int32[2 W]``, ``W = 2`` words for the default threefry key), and
``senders``, an ``int32`` scalar equal to 1. A ``psum`` adds the halves of
identical seeds and the ones, so the receiver divides by ``senders`` and
recovers the seed exactly (for fewer than 32768 workers). That is 20 bytes
per message on top of ``k * itemsize`` per leaf; a system in which every
receiver already knows the step key would not send them.

Scaling convention. With ``scaled=True`` (default) the decoder multiplies
by ``d / k``, which makes the compressor unbiased,
``E[C(x)] = x`` with :math:`\omega = d/k - 1`; with ``scaled=False`` it
is the plain mask, contractive in expectation with
:math:`\delta = k/d` and biased (use error feedback).
"""

import math

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.algorithms.compressors import base
from distoptax.algorithms.compressors import selection
from distoptax.algorithms.compressors import topk


def _harmonic(n: int) -> float:
  if n < 1000:
    return math.fsum(1.0 / i for i in range(1, n + 1))
  return (math.log(n) + 0.5772156649015329 + 1.0 / (2 * n)
          - 1.0 / (12 * n * n))


def _num_draws(d: int, j: int) -> int:
  """Draws that yield ``j`` distinct accepted values w.h.p."""
  expected = d * (_harmonic(d) - _harmonic(d - j))
  needed = expected + 8.0 * math.sqrt(expected) + 16.0
  accept = (2**32 // d) * d / 2**32   # > 1/2 for d <= 2^31
  return max(j, math.ceil(needed / accept + 8.0 * math.sqrt(needed)))


def _first_distinct(bits: jax.Array, d: int, j: int):
  """The first ``j`` distinct accepted draws (ascending), and success.

  A 32-bit word ``u`` is accepted when ``u < floor(2^32 / d) d``, and then
  ``u mod d`` is uniform on ``[0, d)``.
  """
  m = bits.shape[0]
  limit = (2**32 // d) * d
  draws = (bits % np.uint32(d)).astype(jnp.int32)
  if limit < 2**32:
    draws = jnp.where(bits < np.uint32(limit), draws, d)
  position = lax.iota(jnp.int32, m)
  # Stable sort by value: the first of a run of equal draws is the earliest.
  value, position = lax.sort((draws, position), num_keys=1, is_stable=True)
  first = jnp.concatenate([jnp.ones((1,), bool), value[1:] != value[:-1]])
  first = first & (value < d)
  # Distinct values in the order of their first draw; the rest go last.
  _, value = lax.sort((jnp.where(first, position, m), value), num_keys=1)
  return jnp.sort(value[:j]), jnp.sum(first.astype(jnp.int32)) >= j


def random_subsets(key: jax.Array, sizes) -> list[jax.Array]:
  """Independent uniformly random ``k``-subsets of ``[0, d)`` for each pair.

  For each ``(d, k)``, ``j = min(k, d - k)`` distinct values are the first
  ``j`` distinct values of a sequence of uniform draws with replacement (an
  exact uniform ``j``-subset), and the subset is those values, or their
  complement when ``k > d - k``. All sequences come from one call of
  ``jax.random.bits``; in the rare case that some sequence holds fewer than
  ``j`` distinct values, all are drawn again (success depends only on each
  sequence's pattern of repeats, so by symmetry the accepted subsets stay
  uniform and independent). Cost ``O(j log j)`` per pair, plus ``O(d)`` for
  a complement, instead of the ``O(d log d)`` permutation of
  ``jax.random.choice(..., replace=False)``.

  Args:
    key: a PRNG key.
    sizes: static ``(d, k)`` pairs, ``0 <= k <= d < 2^31``.

  Returns:
    One ascending ``int32[k]`` per pair.
  """
  plans = []
  offset = 0
  for d, k in sizes:
    j = min(k, d - k)
    m = _num_draws(d, j) if j else 0
    plans.append((d, k, j, offset, m))
    offset += m
  drawn = [p for p in plans if p[2]]

  def body(state):
    attempt, _, _ = state
    bits = jax.random.bits(jax.random.fold_in(key, attempt), (offset,),
                           jnp.uint32)
    chosen, ok = [], jnp.ones((), bool)
    for d, _, j, start, m in drawn:
      values, success = _first_distinct(bits[start:start + m], d, j)
      chosen.append(values)
      ok = ok & success
    return attempt + 1, chosen, ok

  chosen = []
  if drawn:
    state = (jnp.zeros((), jnp.int32),
             [jnp.zeros((p[2],), jnp.int32) for p in drawn],
             jnp.zeros((), bool))
    _, chosen, _ = lax.while_loop(lambda s: ~s[2], body, state)
  chosen = iter(chosen)
  subsets = []
  for d, k, j, _, _ in plans:
    if j == 0:
      subsets.append(jnp.arange(d, dtype=jnp.int32) if k == d
                     else jnp.zeros((0,), jnp.int32))
    elif j == k:
      subsets.append(next(chosen))
    else:
      keep = jnp.ones((d,), bool).at[next(chosen)].set(False)
      subsets.append(jnp.nonzero(keep, size=k)[0].astype(jnp.int32))
  return subsets


def random_indices(key: jax.Array, d: int, k: int) -> jax.Array:
  """A uniformly random ``k``-subset of ``[0, d)``, ascending ``int32[k]``.

  See :func:`random_subsets`.

  Example:
    >>> import jax
    >>> from distoptax.algorithms.compressors import randomk
    >>> idx = randomk.random_indices(jax.random.key(0), 10, 4)
    >>> idx.shape, bool((idx[1:] > idx[:-1]).all())
    ((4,), True)
  """
  return random_subsets(key, [(d, k)])[0]


def _key_words(key: jax.Array) -> jax.Array:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return jnp.ravel(key).astype(jnp.uint32)


def _index_key(words: jax.Array) -> jax.Array:
  """A threefry key determined by the seed words alone (any key impl)."""
  key = jax.random.wrap_key_data(words[:2], impl="threefry2x32")
  for w in range(2, words.shape[0]):
    key = jax.random.fold_in(key, words[w])
  return key


def random_k(fraction: float | None = None, *, k: int | None = None,
             scaled: bool = True) -> base.Compressor:
  r"""Random-k with a shared seed: summable, indices derived, not sent.

  .. math::
    C(x)_i = \frac{d}{k}\, x_i \, [\, i \in S \,], \qquad
    S \sim \text{uniform } k\text{-subset of } \{1, \dots, d\}

  (without the factor ``d/k`` when ``scaled=False``), independently for
  each leaf. The subsets come from the shared step key (one draw for all
  leaves, :func:`random_subsets`), so all workers keep the same coordinates
  and a new subset every step.

  Guarantees: with ``scaled=True``, :math:`E[C(x)] = x` and
  :math:`E\lVert C(x) - x\rVert^2 = (d/k - 1)\lVert x\rVert^2`; with
  ``scaled=False``, :math:`E\lVert C(x) - x\rVert^2 = (1 - k/d)\lVert
  x\rVert^2` (both exact, from the inclusion probability ``k/d`` of every
  coordinate).

  Args:
    fraction: keep ``ceil(fraction * d)`` entries of each leaf (at least
      one), ``0 < fraction <= 1``.
    k: keep ``min(k, d)`` entries of each leaf. Give exactly one of the two.
    scaled: multiply the kept entries by ``d / k`` (unbiased) or not.

  Returns:
    A :class:`~distoptax.algorithms.compressors.Compressor` with
    ``summable=True``, ``shared_key=True`` and ``unbiased=scaled``.

  Raises:
    ValueError: unless exactly one valid budget is given.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import randomk
    >>> c = randomk.random_k(k=2)
    >>> x = {"w": jnp.arange(1.0, 9.0)}
    >>> message = c.encode(jax.random.key(0), x)
    >>> [a.shape for a in jax.tree.leaves(message)]  # seed, senders, values
    [(4,), (), (2,)]
    >>> y = c.decode(message)["w"]
    >>> int((y != 0).sum()), bool(jnp.all((y == 0) | (y == 4 * x["w"])))
    (2, True)

  References:
    Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory", NeurIPS 2018,
    arXiv:1809.07599 (rand-k). BytePS shared-seed random-k
    (bytedance/byteps#299).
  """
  selection.check_budget("random_k", fraction, k)

  def sizes(shapes):
    ds = [int(np.prod(s)) for s in shapes]
    return ds, [selection.budget(d, fraction, k) for d in ds]

  def indices(words, ds, ks):
    return random_subsets(_index_key(words), list(zip(ds, ks)))

  def encode(key, updates: optax.Updates) -> topk.TreeMessage:
    base.check_floating("random_k", updates)
    leaves, treedef = jax.tree.flatten(updates)
    shapes = tuple(tuple(l.shape) for l in leaves)
    words = _key_words(key)
    values = [jnp.ravel(leaf)[idx] for leaf, idx in zip(
        leaves, indices(words, *sizes(shapes)))]
    halves = jnp.concatenate([words & np.uint32(0xFFFF), words >> 16])
    arrays = {"values": values, "seed": halves.astype(jnp.int32),
              "senders": jnp.ones((), jnp.int32)}
    return topk.TreeMessage(arrays, treedef, shapes,
                            tuple(jnp.dtype(l.dtype) for l in leaves))

  def decode(message: topk.TreeMessage) -> optax.Updates:
    arrays = message.arrays
    halves = (arrays["seed"] // arrays["senders"]).astype(jnp.uint32)
    low, high = jnp.split(halves, 2)
    words = low | (high << 16)
    ds, ks = sizes(message.shapes)
    leaves = []
    for values, idx, shape, dtype, d, kk in zip(
        arrays["values"], indices(words, ds, ks), message.shapes,
        message.dtypes, ds, ks):
      if scaled and kk:
        values = values * jnp.asarray(d / kk, values.dtype)
      dense = selection.scatter(idx, values, d)
      leaves.append(dense.reshape(shape).astype(dtype))
    return jax.tree.unflatten(message.treedef, leaves)

  return base.Compressor(encode, decode, unbiased=scaled, summable=True,
                         shared_key=True)
