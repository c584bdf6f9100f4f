"""Collectives over the logical worker axis, however the runtime realises it.

A per-worker step names one logical axis (default :data:`WORKERS`). The
runtimes realise it either as one named axis (``simulate``: ``vmap`` with
``axis_name``) or as a pair of named axes: the device-mesh axis of
``jax.shard_map`` and, inside each device, a ``vmap`` over the workers that
device holds, named :func:`local_axis_name` of the logical axis (``on_mesh``).
The functions below look up which realisation is bound at trace time and run
the collective over all of it, so a step calls ``psum(x, WORKERS)`` and gets
the sum over every worker under either runtime.

Worker ``i`` of ``n`` sits at device ``i // k``, local slot ``i % k``
(``k = n / num_devices``), so ``all_gather`` returns workers in index order
under both runtimes.

Under ``vmap`` a collective is an array operation, and XLA's CPU lowering of
``lax.psum``'s batching rule (a reduce over the leading axis) is about 30x
slower than the data it reads. So :func:`psum` sums over the axes that are
``vmap`` axes by gathering and multiplying with a vector of ones, and runs a
real all-reduce (``lax.psum``) only over the axes that ``shard_map`` binds
(the manual axes of the current abstract mesh). The result is the same sum;
what a real network would carry is the ``lax.psum`` of one message.

Steps must use these functions rather than ``jax.lax`` collectives on the
worker axis: under ``on_mesh`` a raw ``lax.psum(x, "workers")`` would reduce
over devices only.

**Tiers.** On a mesh of several axes (e.g. ``("hosts", "local")``)
``on_mesh`` binds each as :func:`tier_axis_name` of the logical axis, and
the worker axis spans all of them plus the per-device ``vmap``;
:func:`tier_psum` and :func:`tier_all_gather` address one tier (a
:class:`Tiers` factorisation), and compute the same group sums from the
whole axis under ``simulate`` or a 1-D mesh.

**Masks.** Partial participation, stragglers and dropped messages are masked
contributions to a collective that always runs: every worker calls the same
collective, a non-participant with weight 0 (its value, even NaN, is
replaced by zero before it travels). ``psum``, ``pmean``, ``all_gather`` and
``reduce_scatter`` take the weight; ``pmean`` takes an explicit normaliser
(:data:`NORMALIZERS`). Never put a collective under a per-worker condition:
it deadlocks under ``shard_map`` and runs both branches under ``vmap``.

This module sits at the bottom of distoptax: it imports nothing else from
the package.
"""

import math
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp

WORKERS = "workers"
"""The default name of the worker axis."""

NORMALIZERS = ("workers", "participants", "weights")
"""Values of ``pmean(normalizer=...)``: divide the weighted sum by the number
of workers, by the number of workers with a non-zero weight, or by the sum of
the weights (e.g. example counts)."""


def local_axis_name(axis_name: str) -> str:
  """Name of the within-device worker axis that ``on_mesh`` binds."""
  return f"{axis_name}/local"


def tier_axis_name(axis_name: str, tier: str) -> str:
  """Name of the mesh axis that realises ``tier`` of the worker axis.

  ``on_mesh`` over a mesh of several axes (e.g. ``("hosts", "local")``)
  binds each as ``f"{axis_name}@{tier}"``.
  """
  return f"{axis_name}@{tier}"


class Tiers(NamedTuple):
  """A factorisation of the worker axis into network tiers, outermost first.

  Worker ``i`` sits at the row-major coordinates of ``i`` in ``sizes``: with
  ``Tiers(("hosts", "local"), (2, 4))`` workers 0-3 share host 0. On a mesh
  of the same axes each tier is a mesh axis; under ``simulate`` (or a 1-D
  mesh) a tier collective is computed from the whole worker axis, giving the
  same numbers.

  Attributes:
    names: the tier names, e.g. ``("hosts", "local")``.
    sizes: workers along each tier; their product is the number of workers.
  """

  names: tuple[str, ...]
  sizes: tuple[int, ...]

  def index(self, tier: str) -> int:
    """The position of ``tier``; a ValueError names the known tiers."""
    if tier not in self.names:
      raise ValueError(f"unknown tier {tier!r}; tiers: {self.names}")
    return self.names.index(tier)


def _is_bound(axis_name: str) -> bool:
  try:
    lax.axis_size(axis_name)
  except NameError:
    return False
  return True


def _tier_axes(axis_name: str) -> tuple[str, ...]:
  """Mesh axes bound as tiers of ``axis_name``, in mesh order."""
  mesh = jax.sharding.get_abstract_mesh()
  manual = set(mesh.manual_axes)
  prefix = tier_axis_name(axis_name, "")
  return tuple(a for a in mesh.axis_names
               if a in manual and a.startswith(prefix))


def worker_axes(axis_name: str = WORKERS) -> tuple[str, ...]:
  """Named axes that realise the logical worker axis, outermost first.

  Raises:
    NameError: if ``axis_name`` is not bound: the step is not running under
      a runtime (``distributed.simulate`` / ``distributed.on_mesh``) or a
      ``jax.vmap(..., axis_name=axis_name)`` / ``jax.shard_map`` with that
      axis name.
  """
  axes = ((axis_name,) if _is_bound(axis_name) else ()) + _tier_axes(
      axis_name)
  if not axes:
    raise NameError(
        f"the worker axis {axis_name!r} is not bound: run this transform "
        f"inside a runtime (distoptax.distributed.simulate or on_mesh) or "
        f"under jax.vmap(..., axis_name={axis_name!r}) (distributed.WORKERS "
        f"is the default name); calling its init or update directly on one "
        f"worker's values has no workers to communicate with")
  local = local_axis_name(axis_name)
  return axes + ((local,) if _is_bound(local) else ())


def num_workers(axis_name: str = WORKERS) -> int:
  """Number of workers on the logical axis (a static Python int)."""
  return math.prod(lax.axis_size(a) for a in worker_axes(axis_name))


def worker_index(axis_name: str = WORKERS) -> jax.Array:
  """This worker's index in ``[0, num_workers)``."""
  return lax.axis_index(worker_axes(axis_name))


def sum_over_workers(x: jax.Array) -> jax.Array:
  """Sum of ``x`` over its leading (worker) axis, computed as a mat-vec.

  XLA on CPU lowers ``x.sum(0)`` over a leading axis to a slow strided loop
  (about 30x a copy of ``x`` at ``x.shape = (8, 1e5)``); a product with a
  vector of ones runs at memory speed. Floating inputs accumulate in at
  least float32 at the highest precision (no TF32 or bf16 passes on
  accelerators); other dtypes fall back to ``jnp.sum``.
  """
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return jnp.sum(x, axis=0, dtype=x.dtype)
  acc = jnp.promote_types(x.dtype, jnp.float32)
  ones = jnp.ones((x.shape[0],), x.dtype)
  out = lax.dot_general(ones, x, (((0,), (0,)), ((), ())),
                        precision=lax.Precision.HIGHEST,
                        preferred_element_type=acc)
  return out.astype(x.dtype)


def _split_axes(axis_name: str) -> tuple[list[str], tuple[str, ...]]:
  """The worker axes realised by ``vmap`` and those ``shard_map`` binds."""
  manual = set(jax.sharding.get_abstract_mesh().manual_axes)
  axes = worker_axes(axis_name)
  return ([a for a in axes if a not in manual],
          tuple(a for a in axes if a in manual))


def _check_weight(weight: Any, name: str) -> jax.Array:
  weight = jnp.asarray(weight)
  if weight.shape != ():
    raise ValueError(
        f"{name}: the weight is one scalar per worker; got shape "
        f"{weight.shape}")
  if not (jnp.issubdtype(weight.dtype, jnp.number)
          or weight.dtype == jnp.bool_):
    raise TypeError(f"{name}: the weight must be numeric or bool; got "
                    f"{weight.dtype}")
  return weight


def _weighted(x, weight: jax.Array):
  """``weight * x`` per leaf, exactly zero where ``weight == 0``."""

  def leaf_fn(leaf):
    leaf = jnp.asarray(leaf)
    if weight.dtype != jnp.bool_:
      leaf = leaf * weight.astype(leaf.dtype)
    return jnp.where(weight != 0, leaf, jnp.zeros_like(leaf))

  return jax.tree.map(leaf_fn, x)


def psum(x, axis_name: str = WORKERS, *, weight: Any = None):
  r"""Sum over all workers (an all-reduce); works on pytrees.

  .. math:: \sum_i w_i x_i

  Args:
    x: this worker's pytree.
    axis_name: the logical worker axis.
    weight: this worker's scalar weight :math:`w_i` (0/1 participation,
      a bool, or e.g. its example count); ``None`` means 1. A worker with
      weight 0 contributes exactly zero, whatever its ``x`` holds.

  Returns:
    The (weighted) sum, the same on every worker.
  """
  if weight is not None:
    x = _weighted(x, _check_weight(weight, "psum"))
  mapped, meshed = _split_axes(axis_name)

  def sum_leaf(leaf):
    for axis in mapped:
      leaf = sum_over_workers(lax.all_gather(leaf, axis))
    return lax.psum(leaf, meshed) if meshed else leaf

  return jax.tree.map(sum_leaf, x)


def pmean(x, axis_name: str = WORKERS, *, weight: Any = None,
          normalizer: str = "weights"):
  r"""Mean over workers; works on pytrees.

  .. math:: \frac{\sum_i w_i x_i}{Z}, \qquad
    Z \in \{n,\; |\{i : w_i \ne 0\}|,\; \textstyle\sum_i w_i\}

  Args:
    x: this worker's pytree.
    axis_name: the logical worker axis.
    weight: this worker's scalar weight (see :func:`psum`); ``None`` gives
      the plain mean over all workers.
    normalizer: with a weight, what :math:`Z` is: ``"workers"`` (all
      :math:`n`), ``"participants"`` (workers with non-zero weight) or
      ``"weights"`` (the sum of the weights).

  Returns:
    The mean, the same on every worker. When :math:`Z = 0` (nobody
    participated) the result is zero: the round contributes nothing.

  Raises:
    ValueError: for an unknown ``normalizer``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import worker_axis
    >>> f = lambda x, w: worker_axis.pmean(x, weight=w,
    ...                                    normalizer="participants")
    >>> jax.vmap(f, axis_name="workers")(jnp.array([1.0, 5.0, jnp.nan]),
    ...                                  jnp.array([1, 1, 0]))
    Array([3., 3., 3.], dtype=float32)
  """
  if normalizer not in NORMALIZERS:
    raise ValueError(
        f"pmean: normalizer must be one of {NORMALIZERS}; got {normalizer!r}")
  n = num_workers(axis_name)
  if weight is None:
    return jax.tree.map(lambda s: s / n, psum(x, axis_name))
  weight = _check_weight(weight, "pmean")
  total = psum(x, axis_name, weight=weight)
  if normalizer == "workers":
    return jax.tree.map(lambda s: s / n, total)
  if normalizer == "participants":
    z = psum((weight != 0).astype(jnp.float32), axis_name)
  else:
    z = psum(weight.astype(jnp.float32), axis_name)

  def divide(s):
    zs = z.astype(jnp.promote_types(s.dtype, jnp.float32))
    safe = jnp.where(zs != 0, zs, 1)
    return jnp.where(zs != 0, s / safe, jnp.zeros_like(s)).astype(s.dtype)

  return jax.tree.map(divide, total)


def all_gather(x, axis_name: str = WORKERS, *, mask: Any = None):
  """Stacks ``x`` from every worker along a new leading axis, in index order.

  Works on pytrees; each leaf of the result has shape ``[num_workers,
  *leaf.shape]`` and is identical on every worker.

  Args:
    x: this worker's pytree.
    axis_name: the logical worker axis.
    mask: this worker's participation (bool or 0/1 scalar); the row of a
      worker whose mask is false is all zeros. Gather the mask itself
      (``all_gather(mask)``) to know which rows are present.

  Returns:
    The stacked pytree.
  """
  if mask is not None:
    mask = _check_weight(mask, "all_gather") != 0
    x = _weighted(x, mask)
  axes = worker_axes(axis_name)

  def gather_leaf(leaf):
    out = leaf
    for axis in reversed(axes):
      out = lax.all_gather(out, axis)
    return jnp.reshape(out, (-1,) + jnp.shape(leaf))

  return jax.tree.map(gather_leaf, x)


def reduce_scatter(x, axis_name: str = WORKERS, *, weight: Any = None):
  r"""Sum over workers, of which each worker keeps its own block.

  Worker :math:`i` of :math:`n` receives rows
  :math:`[i\,b, (i+1)\,b)` of :math:`\sum_j w_j x_j` along each leaf's
  leading axis, :math:`b = \mathrm{rows} / n`: what a parameter server that
  owns one block of the model receives. On a mesh it is one
  ``psum_scatter`` over the devices (after summing the workers a device
  holds), so each device receives only its workers' blocks.

  Args:
    x: this worker's pytree; every leaf's leading axis must be a multiple of
      the number of workers.
    axis_name: the logical worker axis.
    weight: this worker's scalar weight (see :func:`psum`).

  Returns:
    This worker's block of the sum, leaves of shape ``[b, *rest]``.

  Raises:
    ValueError: if a leaf is a scalar or its leading axis is not a multiple
      of the number of workers.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import worker_axis
    >>> x = jnp.arange(8.0).reshape(2, 4)   # two workers, four rows each
    >>> jax.vmap(worker_axis.reduce_scatter, axis_name="workers")(x)
    Array([[ 4.,  6.],
           [ 8., 10.]], dtype=float32)
  """
  n = num_workers(axis_name)
  for leaf in jax.tree.leaves(x):
    shape = jnp.shape(leaf)
    if not shape or shape[0] % n:
      raise ValueError(
          f"reduce_scatter: each leaf's leading axis must be a multiple of "
          f"the number of workers ({n}); got shape {shape}")
  if weight is not None:
    x = _weighted(x, _check_weight(weight, "reduce_scatter"))
  mapped, meshed = _split_axes(axis_name)

  def scatter_leaf(leaf):
    for axis in mapped:
      leaf = sum_over_workers(lax.all_gather(leaf, axis))
    if meshed:
      leaf = lax.psum_scatter(leaf, meshed, scatter_dimension=0, tiled=True)
    if not mapped:
      return leaf
    per_device = math.prod(lax.axis_size(a) for a in mapped)
    block = leaf.shape[0] // per_device
    start = lax.axis_index(tuple(mapped)) * block
    return lax.dynamic_slice_in_dim(leaf, start, block, axis=0)

  return jax.tree.map(scatter_leaf, x)


def _check_tiers(tiers: Tiers, axis_name: str) -> tuple[str, ...]:
  """Validates ``tiers`` against the bound axes; returns the mesh tiers."""
  n = num_workers(axis_name)
  if len(tiers.names) != len(tiers.sizes) or math.prod(tiers.sizes) != n:
    raise ValueError(
        f"tiers {tiers} must give one size per name with product "
        f"num_workers={n}")
  mesh_tiers = _tier_axes(axis_name)
  if not mesh_tiers:
    return ()
  expected = tuple(tier_axis_name(axis_name, t) for t in tiers.names)
  sizes = [lax.axis_size(a) for a in mesh_tiers]
  local = local_axis_name(axis_name)
  if _is_bound(local):
    sizes[-1] *= lax.axis_size(local)
  if mesh_tiers != expected or tuple(sizes) != tuple(tiers.sizes):
    raise ValueError(
        f"tiers {tiers} do not match the mesh: tier axes {mesh_tiers} of "
        f"sizes {tuple(sizes)} (workers per device counted in the last)")
  return mesh_tiers


def _own_group(stacked: jax.Array, tiers: Tiers, j: int,
               axis_name: str) -> jax.Array:
  """Rows of ``stacked [n, ...]`` in this worker's group along tier ``j``.

  Returns ``[sizes[j], ...]``: the workers that share every tier coordinate
  but the ``j``-th with this worker, in index order.
  """
  grid = jnp.reshape(stacked, tuple(tiers.sizes) + stacked.shape[1:])
  grid = jnp.moveaxis(grid, j, 0)
  coords = jnp.unravel_index(worker_index(axis_name), tuple(tiers.sizes))
  others = tuple(c for i, c in enumerate(coords) if i != j)
  return grid[(slice(None),) + others]


def tier_psum(x, tiers: Tiers, tier: str, axis_name: str = WORKERS, *,
              weight: Any = None):
  """Sum over the workers of this worker's group along one tier.

  The group of worker ``i`` along tier ``t`` is the workers whose
  coordinates (see :class:`Tiers`) differ from ``i``'s in ``t`` alone: with
  ``Tiers(("hosts", "local"), (2, 4))``, ``tier="local"`` sums within a host
  and ``tier="hosts"`` across hosts, one sum per local position. On a mesh
  of those axes it is one ``psum`` over the tier's mesh axis (plus the
  workers a device holds, for the last tier).

  Args:
    x: this worker's pytree.
    tiers: the factorisation of the worker axis.
    tier: one of ``tiers.names``.
    axis_name: the logical worker axis.
    weight: this worker's scalar weight (see :func:`psum`).

  Returns:
    The group's (weighted) sum, the same on every worker of the group.

  Raises:
    ValueError: for an unknown tier, sizes whose product is not the number
      of workers, or tiers that disagree with the mesh.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import worker_axis
    >>> tiers = worker_axis.Tiers(("hosts", "local"), (2, 2))
    >>> f = lambda x: worker_axis.tier_psum(x, tiers, "local")
    >>> jax.vmap(f, axis_name="workers")(jnp.array([1.0, 2.0, 10.0, 20.0]))
    Array([ 3.,  3., 30., 30.], dtype=float32)
  """
  j = tiers.index(tier)
  mesh_tiers = _check_tiers(tiers, axis_name)
  if weight is not None:
    x = _weighted(x, _check_weight(weight, "tier_psum"))
  local = local_axis_name(axis_name)

  def sum_leaf(leaf):
    if not mesh_tiers:
      return sum_over_workers(
          _own_group(all_gather(leaf, axis_name), tiers, j, axis_name))
    if j == len(mesh_tiers) - 1 and _is_bound(local):
      leaf = sum_over_workers(lax.all_gather(leaf, local))
    return lax.psum(leaf, mesh_tiers[j])

  return jax.tree.map(sum_leaf, x)


def tier_all_gather(x, tiers: Tiers, tier: str, axis_name: str = WORKERS):
  """Stacks ``x`` over this worker's group along one tier, in index order.

  Args:
    x: this worker's pytree.
    tiers: the factorisation of the worker axis (see :func:`tier_psum`).
    tier: one of ``tiers.names``.
    axis_name: the logical worker axis.

  Returns:
    Leaves of shape ``[tiers.sizes[j], *leaf.shape]`` for the tier's
    position ``j``.

  Raises:
    ValueError: as :func:`tier_psum`.
  """
  j = tiers.index(tier)
  mesh_tiers = _check_tiers(tiers, axis_name)
  local = local_axis_name(axis_name)

  def gather_leaf(leaf):
    if not mesh_tiers:
      return _own_group(all_gather(leaf, axis_name), tiers, j, axis_name)
    out = leaf
    if j == len(mesh_tiers) - 1 and _is_bound(local):
      out = lax.all_gather(out, local)
    out = lax.all_gather(out, mesh_tiers[j])
    return jnp.reshape(out, (-1,) + jnp.shape(leaf))

  return jax.tree.map(gather_leaf, x)
