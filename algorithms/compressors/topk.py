r"""Top-k sparsification, per leaf and over the whole pytree.

Each worker sends the ``k`` coordinates of largest magnitude as
``(int32 index, value)`` pairs, exactly ``k`` of them (static shapes), and
the receiver scatters them into zeros (Alistarh et al. 2018,
arXiv:1809.10505; Stich et al. 2018, arXiv:1809.07599). Per-leaf
(:func:`top_k`, GRACE's layer-wise choice) and whole-model
(:func:`global_top_k`, one budget over the concatenated leaves) give
different results (sands-lab/grace#9); both are offered.

Selection is exact: the kept set is the ``k`` largest ``|x_i|``, ties broken
by the lowest index, NaN above every number (see
:mod:`~distoptax.algorithms.compressors.selection`, which reaches it at a
few times the cost of a copy instead of ``lax.top_k``'s full sort). Indices
travel in ascending order.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.algorithms.compressors import base
from distoptax.algorithms.compressors import selection


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["arrays"], meta_fields=["treedef", "shapes", "dtypes"])
@dataclasses.dataclass(frozen=True)
class TreeMessage:
  """The message of a whole pytree: its arrays and its static layout.

  Attributes:
    arrays: dict of the arrays handed to the collective (their bytes are the
      wire bytes).
    treedef: the updates' tree structure (static, not sent).
    shapes: the leaves' shapes (static).
    dtypes: the leaves' dtypes (static).
  """

  arrays: dict[str, Any]
  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[Any, ...]


def top_k(fraction: float | None = None, *, k: int | None = None
          ) -> base.Compressor:
  r"""Per-leaf top-k: each leaf keeps its ``k`` largest magnitudes.

  .. math::
    C(x)_i = x_i \, [\, i \in T_k(x) \,], \qquad
    T_k(x) = \text{the } k \text{ indices of largest } |x_i|
    \text{ (ties to the lowest index)}

  The message of a leaf of ``d`` entries is ``indices: int32[k]`` (ascending)
  and ``values: dtype[k]``, so ``k (4 + itemsize)`` bytes; decode scatters
  them into zeros. Biased and not summable (indices differ across
  workers): use it with ``error_feedback=True`` and the all-gather path.

  Guarantees: contractive, :math:`\lVert x - C(x)\rVert^2 \le (1 - k/d)
  \lVert x\rVert^2` for every ``x`` (the dropped entries are the
  ``d - k`` smallest, whose mean square is at most the overall mean
  square); with error feedback, SGD converges at the rate of SGD up to
  higher-order terms for strongly convex objectives (Stich et al. 2018;
  stated from the card, not re-derived).

  Args:
    fraction: keep ``ceil(fraction * d)`` entries of each leaf (at least
      one), ``0 < fraction <= 1``.
    k: keep ``min(k, d)`` entries of each leaf. Give exactly one of
      ``fraction`` and ``k``.

  Returns:
    A :class:`~distoptax.algorithms.compressors.Compressor` (biased, not
    summable).

  Raises:
    ValueError: unless exactly one valid budget is given.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import topk
    >>> c = topk.top_k(k=2)
    >>> x = {"w": jnp.array([0.5, -3.0, 1.0, 3.0])}
    >>> message = c.encode(jax.random.key(0), x)
    >>> message["w"].arrays["indices"], message["w"].arrays["values"]
    (Array([1, 3], dtype=int32), Array([-3.,  3.], dtype=float32))
    >>> c.decode(message)["w"]
    Array([ 0., -3.,  0.,  3.], dtype=float32)

  References:
    Alistarh, Hoefler, Johansson, Khirirat, Konstantinov, Renggli, "The
    Convergence of Sparsified Gradient Methods", NeurIPS 2018,
    arXiv:1809.10505. Stich, Cordonnier, Jaggi, "Sparsified SGD with
    Memory", NeurIPS 2018, arXiv:1809.07599.
  """
  selection.check_budget("top_k", fraction, k)

  def encode_leaf(key, x):
    del key
    flat = jnp.ravel(x)
    indices = selection.top_k_indices(
        flat, selection.budget(flat.shape[0], fraction, k))
    return {"indices": indices, "values": flat[indices]}

  def decode_leaf(arrays, shape, dtype):
    d = int(np.prod(shape))
    dense = selection.scatter(arrays["indices"], arrays["values"], d)
    return dense.reshape(shape).astype(dtype)

  return base.leafwise(encode_leaf, decode_leaf, unbiased=False,
                       summable=False, name="top_k")


def global_top_k(fraction: float | None = None, *, k: int | None = None
                 ) -> base.Compressor:
  r"""Whole-model top-k: one budget over all leaves of the pytree.

  The leaves are flattened and concatenated (in ``jax.tree.leaves`` order,
  in their promoted dtype) into one vector of ``D`` entries, and the ``k``
  largest magnitudes of that vector are kept, ties to the lowest position
  in the concatenation. The message is one :class:`TreeMessage` whose
  ``arrays`` are ``indices: int32[k]`` (positions in the concatenation,
  ascending) and ``values[k]``; the tree structure, shapes and dtypes are
  static fields, not sent.

  Guarantees: :math:`\lVert x - C(x)\rVert^2 \le (1 - k/D) \lVert
  x\rVert^2` over the whole tree.

  Args:
    fraction: keep ``ceil(fraction * D)`` entries (at least one).
    k: keep ``min(k, D)`` entries. Give exactly one of the two.

  Returns:
    A :class:`~distoptax.algorithms.compressors.Compressor` (biased, not
    summable).

  Raises:
    ValueError: unless exactly one valid budget is given.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import topk
    >>> c = topk.global_top_k(k=2)
    >>> x = {"a": jnp.array([5.0, 0.1]), "b": jnp.array([[0.2, -4.0]])}
    >>> message = c.encode(jax.random.key(0), x)
    >>> message.arrays["indices"]
    Array([0, 3], dtype=int32)
    >>> c.decode(message)["b"]
    Array([[ 0., -4.]], dtype=float32)

  References:
    Alistarh et al., NeurIPS 2018, arXiv:1809.10505 (whole-model TopK).
  """
  selection.check_budget("global_top_k", fraction, k)

  def encode(key, updates: optax.Updates) -> TreeMessage:
    del key
    base.check_floating("global_top_k", updates)
    leaves, treedef = jax.tree.flatten(updates)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    flat = (jnp.concatenate([jnp.ravel(l).astype(dtype) for l in leaves])
            if leaves else jnp.zeros((0,), dtype))
    indices = selection.top_k_indices(
        flat, selection.budget(flat.shape[0], fraction, k))
    return TreeMessage({"indices": indices, "values": flat[indices]},
                       treedef, tuple(tuple(l.shape) for l in leaves),
                       tuple(jnp.dtype(l.dtype) for l in leaves))

  def decode(message: TreeMessage) -> optax.Updates:
    sizes = [int(np.prod(s)) for s in message.shapes]
    arrays = message.arrays
    dense = selection.scatter(arrays["indices"], arrays["values"], sum(sizes))
    leaves, offset = [], 0
    for size, shape, dtype in zip(sizes, message.shapes, message.dtypes):
      leaves.append(dense[offset:offset + size].reshape(shape).astype(dtype))
      offset += size
    return jax.tree.unflatten(message.treedef, leaves)

  return base.Compressor(encode, decode, unbiased=False, summable=False)
