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
"""

import math

import jax
from jax import lax
import jax.numpy as jnp

from distoptax.algorithms import aggregators

WORKERS = "workers"
"""The default name of the worker axis."""


def local_axis_name(axis_name: str) -> str:
  """Name of the within-device worker axis that ``on_mesh`` binds."""
  return f"{axis_name}/local"


def worker_axes(axis_name: str = WORKERS) -> tuple[str, ...]:
  """Named axes that realise the logical worker axis, outermost first.

  Raises:
    NameError: if ``axis_name`` is not bound (the step is not running under
      a runtime or ``vmap``/``shard_map`` with that axis name).
  """
  local = local_axis_name(axis_name)
  try:
    lax.axis_size(local)
  except NameError:
    lax.axis_size(axis_name)
    return (axis_name,)
  return (axis_name, local)


def num_workers(axis_name: str = WORKERS) -> int:
  """Number of workers on the logical axis (a static Python int)."""
  return math.prod(lax.axis_size(a) for a in worker_axes(axis_name))


def worker_index(axis_name: str = WORKERS) -> jax.Array:
  """This worker's index in ``[0, num_workers)``."""
  return lax.axis_index(worker_axes(axis_name))


def psum(x, axis_name: str = WORKERS):
  """Sum of ``x`` over all workers (an all-reduce); works on pytrees."""
  manual = set(jax.sharding.get_abstract_mesh().manual_axes)
  axes = worker_axes(axis_name)
  mapped = [a for a in axes if a not in manual]
  meshed = tuple(a for a in axes if a in manual)

  def sum_leaf(leaf):
    for axis in mapped:
      leaf = aggregators.sum_over_workers(lax.all_gather(leaf, axis))
    return lax.psum(leaf, meshed) if meshed else leaf

  return jax.tree.map(sum_leaf, x)


def pmean(x, axis_name: str = WORKERS):
  """Mean of ``x`` over all workers; works on pytrees."""
  n = num_workers(axis_name)
  return jax.tree.map(lambda s: s / n, psum(x, axis_name))


def all_gather(x, axis_name: str = WORKERS):
  """Stacks ``x`` from every worker along a new leading axis, in index order.

  Works on pytrees; each leaf of the result has shape ``[num_workers,
  *leaf.shape]`` and is identical on every worker.
  """
  axes = worker_axes(axis_name)

  def gather_leaf(leaf):
    out = leaf
    for axis in reversed(axes):
      out = lax.all_gather(out, axis)
    return jnp.reshape(out, (-1,) + leaf.shape)

  return jax.tree.map(gather_leaf, x)
