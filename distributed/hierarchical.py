r"""BlueConnect: an all-reduce decomposed into tiered reduce-scatters and gathers.

The worker axis is factorised into network tiers (``worker_axis.Tiers``,
outermost first: e.g. ``("hosts", "local")`` of sizes ``(h, g)``). For an
order :math:`t_1, \dots, t_k` of the tiers (:data:`ORDERS`), the all-reduce
of a buffer of :math:`B` bytes per worker runs

1. a reduce-scatter over this worker's group along :math:`t_1`, then along
   :math:`t_2`, ..., :math:`t_k`; stage :math:`j` hands the collective
   :math:`B / (s_{t_1} \cdots s_{t_{j-1}})` bytes and leaves
   :math:`B / (s_{t_1} \cdots s_{t_j})`;
2. an all-gather along :math:`t_k`, then :math:`t_{k-1}`, ..., :math:`t_1`
   (the reverse order), each handing the block the matching reduce-scatter
   left.

After step 1 each worker holds the reduced block whose index is its tier
coordinates read in mixed radix (:math:`t_1` most significant), so step 2
reassembles the whole sum. ``"inner_first"`` (BlueConnect's choice on a
host/network hierarchy) reduce-scatters within hosts first, so that the slow
inter-host tier carries only :math:`B/g`; ``"outer_first"`` does the
reverse and sends :math:`g` times more over the slow links.

Each leaf is flattened and zero-padded to a multiple of the number of
workers; the padding travels and is counted. Under ``simulate`` (or a 1-D
mesh) every stage is computed from the whole worker axis with
``worker_axis.tier_psum`` / ``tier_all_gather``; on a mesh whose axes are the
tiers (``on_mesh`` with e.g. ``jax.make_mesh((2, 4), ("hosts", "local"))``)
a reduce-scatter stage is one ``psum_scatter`` over the tier's mesh axis and
an all-gather stage one ``all_gather``. :func:`hierarchical_all_reduce`
records every stage as a round of a ``CommStats`` (kind and bytes);
:func:`clock_rounds` turns the record into the clock's tiered rounds.

Cost model (host side, per stage a ring collective in the alpha-beta model
of ``distributed.topologies``, each tier with its own link
:math:`(\alpha_t, \beta_t)`):

.. math::

  T = \sum_{j=1}^{k} \Big[2(s_{t_j} - 1)\,\alpha_{t_j}
      + \frac{2(s_{t_j} - 1)}{s_{t_j}}
        \frac{B}{s_{t_1}\cdots s_{t_{j-1}}\,\beta_{t_j}}\Big],

which for two tiers in ``"inner_first"`` order is exactly
``topologies.HierarchicalTopology.all_reduce``. The flat ring all-reduce it
is compared with runs one ring over all :math:`n` workers in index order; each
of its :math:`2(n-1)` steps waits for its slowest edge:

.. math::

  T_\mathrm{ring} = 2(n-1)\max_{e}\Big(\alpha_e + \frac{B}{n\,\beta_e}\Big),

the edges being the intra-host links and, when there are several hosts, the
inter-host links (one per host boundary), each at the per-worker inter-host
bandwidth :math:`\beta_2` of ``HierarchicalTopology`` (a flow cannot borrow
the inter-host share of the other workers of its host; see
``third_party_notes/blueconnect.md``).

References:
  Cho, Finkler, Kung & Hunter, `BlueConnect: decomposing all-reduce for deep
  learning on heterogeneous network hierarchy
  <https://proceedings.mlsys.org/paper_files/paper/2019/hash/0c8abcf158ed12d0dd94480681186fda-Abstract.html>`_,
  MLSys 2019.

  Patarasuk & Yuan, `Bandwidth optimal all-reduce algorithms for clusters of
  workstations <https://doi.org/10.1016/j.jpdc.2008.09.002>`_, JPDC 2009.
"""

import math
import types
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.distributed import clock
from distoptax.distributed import comm_stats
from distoptax.distributed import topologies
from distoptax.distributed import validation
from distoptax.worker_axis import collectives

__all__ = [
    "HierarchicalState",
    "ORDERS",
    "Stage",
    "check_tiers",
    "clock_rounds",
    "flat_ring_seconds",
    "hierarchical_all_reduce",
    "hierarchical_mean",
    "hierarchical_psum",
    "hierarchical_seconds",
    "predicted_reduction",
    "reduce_scatter_order",
    "stage_plan",
    "topology_links",
]

ORDERS: Mapping[str, Callable[[tuple[str, ...]], tuple[str, ...]]] = (
    types.MappingProxyType({
        "inner_first": lambda names: tuple(reversed(names)),
        "outer_first": tuple,
    }))
"""Order name -> the tiers' reduce-scatter order from their names (outermost
first). The all-gathers run in the reverse order. An explicit permutation of
the tier names is accepted wherever an order is."""

Order = str | Sequence[str]


class Stage(NamedTuple):
  """One stage of the decomposition, as recorded and priced.

  Attributes:
    kind: ``"reduce_scatter"`` or ``"all_gather"``.
    tier: the tier whose groups run it.
    group_size: workers in each group, the tier's size.
    bytes: bytes each worker hands to the collective (padding included).
  """

  kind: str
  tier: str
  group_size: int
  bytes: int


def check_tiers(tiers: Any, num_workers: int | None = None
                ) -> collectives.Tiers:
  """Validates a factorisation of the worker axis.

  Args:
    tiers: a ``worker_axis.Tiers``.
    num_workers: if given, the product of the sizes must equal it.

  Returns:
    ``tiers``.

  Raises:
    TypeError: if ``tiers`` is not a ``Tiers``.
    ValueError: on repeated or non-string names, a size that is not a
      positive int, one size per name missing, or sizes whose product is not
      ``num_workers``.

  Example:
    >>> from distoptax import worker_axis
    >>> check_tiers(worker_axis.Tiers(("hosts", "local"), (3, 4)), 8)
    Traceback (most recent call last):
    ...
    ValueError: tiers Tiers(names=('hosts', 'local'), sizes=(3, 4)) do not factorise num_workers=8: the sizes multiply to 12
  """
  if not isinstance(tiers, collectives.Tiers):
    raise TypeError(f"tiers must be a worker_axis.Tiers; got {tiers!r}")
  names, sizes = tuple(tiers.names), tuple(tiers.sizes)
  if not names or len(names) != len(sizes):
    raise ValueError(f"tiers {tiers} need one size per name (at least one)")
  if len(set(names)) != len(names) or not all(
      isinstance(t, str) for t in names):
    raise ValueError(f"tiers {tiers} need distinct string names")
  for name, size in zip(names, sizes):
    if (isinstance(size, bool) or not isinstance(size, (int, np.integer))
        or size < 1):
      raise ValueError(
          f"tier {name!r} of {tiers} has size {size!r}; sizes are ints >= 1")
  if num_workers is not None and math.prod(sizes) != num_workers:
    raise ValueError(
        f"tiers {tiers} do not factorise num_workers={num_workers}: the "
        f"sizes multiply to {math.prod(sizes)}")
  return tiers


def reduce_scatter_order(tiers: collectives.Tiers,
                         order: Order = "inner_first") -> tuple[str, ...]:
  """The tiers in the order their reduce-scatter stages run.

  Args:
    tiers: the factorisation.
    order: a key of :data:`ORDERS` or a permutation of ``tiers.names``.

  Returns:
    The tier names, first reduce-scatter first.

  Raises:
    ValueError: for an unknown order name or a sequence that is not a
      permutation of the tier names.

  Example:
    >>> from distoptax import worker_axis
    >>> tiers = worker_axis.Tiers(("hosts", "local"), (2, 4))
    >>> reduce_scatter_order(tiers, "inner_first")
    ('local', 'hosts')
  """
  check_tiers(tiers)
  names = tuple(tiers.names)
  if isinstance(order, str):
    if order not in ORDERS:
      raise ValueError(
          f"unknown order {order!r}; known: {sorted(ORDERS)} or a "
          f"permutation of the tier names {names}")
    return ORDERS[order](names)
  chosen = tuple(order)
  if sorted(chosen) != sorted(names):
    raise ValueError(
        f"order {chosen!r} is not a permutation of the tier names {names}")
  return chosen


def _padded_bytes(leaf: Any, num_workers: int) -> int:
  size = int(np.prod(np.shape(leaf)))
  padded = -(-size // num_workers) * num_workers
  return padded * jnp.dtype(leaf.dtype).itemsize


def stage_plan(tree: Any, tiers: collectives.Tiers,
               order: Order = "inner_first") -> tuple[Stage, ...]:
  """The stages of the decomposition and their bytes, from shapes alone.

  Args:
    tree: this worker's pytree, arrays or ``jax.ShapeDtypeStruct`` leaves.
    tiers: the factorisation.
    order: see :func:`reduce_scatter_order`.

  Returns:
    ``2k`` :class:`Stage` records: the reduce-scatters in order, then the
    all-gathers in the reverse order. Bytes are summed over leaves, each
    padded to a multiple of the number of workers.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import worker_axis
    >>> tiers = worker_axis.Tiers(("hosts", "local"), (2, 4))
    >>> for s in stage_plan(jax.ShapeDtypeStruct((64,), jnp.float32), tiers):
    ...   print(s.kind, s.tier, s.bytes)
    reduce_scatter local 256
    reduce_scatter hosts 64
    all_gather hosts 32
    all_gather local 64
  """
  rs = reduce_scatter_order(tiers, order)
  n = math.prod(tiers.sizes)
  total = sum(_padded_bytes(leaf, n) for leaf in jax.tree.leaves(tree))
  size = dict(zip(tiers.names, tiers.sizes))
  stages, held = [], total
  for tier in rs:
    stages.append(Stage("reduce_scatter", tier, size[tier], held))
    held //= size[tier]
  # All-gathers in reverse: the one over the last tier hands the final block.
  gathers, block = [], total // n
  for tier in reversed(rs):
    gathers.append(Stage("all_gather", tier, size[tier], block))
    block *= size[tier]
  return tuple(stages + gathers)


def _mesh_tiers(tiers: collectives.Tiers, axis_name: str
                ) -> tuple[tuple[str, ...], bool]:
  """The mesh axes realising ``tiers`` (empty when there are none).

  Returns the tier axes bound by ``on_mesh`` (outermost first) and whether a
  per-device ``vmap`` axis holds workers of the last tier.

  Raises:
    ValueError: if the mesh's tier axes disagree with ``tiers``.
  """
  axes = collectives.worker_axes(axis_name)
  prefix = collectives.tier_axis_name(axis_name, "")
  mesh = tuple(a for a in axes if a.startswith(prefix))
  local = collectives.local_axis_name(axis_name) in axes
  if not mesh:
    return (), local
  expected = tuple(collectives.tier_axis_name(axis_name, t)
                   for t in tiers.names)
  sizes = [lax.axis_size(a) for a in mesh]
  if local:
    sizes[-1] *= lax.axis_size(collectives.local_axis_name(axis_name))
  if mesh != expected or tuple(sizes) != tuple(tiers.sizes):
    raise ValueError(
        f"tiers {tiers} do not match the mesh: tier axes {mesh} of sizes "
        f"{tuple(sizes)} (workers per device counted in the last)")
  return mesh, local


def _reduce_scatter_stage(block: jax.Array, tiers: collectives.Tiers,
                          tier: str, axis_name: str) -> jax.Array:
  """This worker's piece of its tier group's sum of ``block`` (1-D)."""
  j = tiers.index(tier)
  size = tiers.sizes[j]
  mesh, local = _mesh_tiers(tiers, axis_name)
  if not mesh:
    total = collectives.tier_psum(block, tiers, tier, axis_name)
    coords = jnp.unravel_index(collectives.worker_index(axis_name),
                               tuple(tiers.sizes))
    piece = block.shape[0] // size
    return lax.dynamic_slice_in_dim(total, coords[j] * piece, piece)
  inner = j == len(mesh) - 1 and local
  if inner:
    local_axis = collectives.local_axis_name(axis_name)
    block = collectives.sum_over_workers(lax.all_gather(block, local_axis))
  out = lax.psum_scatter(block, mesh[j], scatter_dimension=0, tiled=True)
  if not inner:
    return out
  piece = out.shape[0] // lax.axis_size(local_axis)
  return lax.dynamic_slice_in_dim(out, lax.axis_index(local_axis) * piece,
                                  piece)


def _all_gather_stage(block: jax.Array, tiers: collectives.Tiers, tier: str,
                      axis_name: str) -> jax.Array:
  """The blocks of this worker's tier group, concatenated in index order."""
  _mesh_tiers(tiers, axis_name)
  rows = collectives.tier_all_gather(block, tiers, tier, axis_name)
  return jnp.reshape(rows, (-1,))


def _run_stages(x: Any, tiers: collectives.Tiers, rs: tuple[str, ...],
                axis_name: str,
                record: Callable[[str, Any], None]) -> Any:
  n = math.prod(tiers.sizes)
  leaves, treedef = jax.tree.flatten(x)
  leaves = [jnp.asarray(leaf) for leaf in leaves]
  blocks = [jnp.pad(jnp.reshape(leaf, (-1,)), (0, (-leaf.size) % n))
            for leaf in leaves]
  for tier in rs:
    record("reduce_scatter", blocks)
    blocks = [_reduce_scatter_stage(b, tiers, tier, axis_name)
              for b in blocks]
  for tier in reversed(rs):
    record("all_gather", blocks)
    blocks = [_all_gather_stage(b, tiers, tier, axis_name) for b in blocks]
  out = [jnp.reshape(b[:leaf.size], leaf.shape)
         for b, leaf in zip(blocks, leaves)]
  return jax.tree.unflatten(treedef, out)


def hierarchical_all_reduce(
    x: Any,
    tiers: collectives.Tiers,
    stats: comm_stats.CommStats,
    *,
    order: Order = "inner_first",
    axis_name: str = collectives.WORKERS,
) -> tuple[Any, comm_stats.CommStats]:
  r"""Sum over all workers by tiered reduce-scatters and all-gathers.

  .. math:: \sum_i x_i

  computed as the :func:`stage_plan` of ``tiers`` in ``order`` (see the
  module docstring); every stage is recorded in ``stats`` as one round.

  Args:
    x: this worker's pytree.
    tiers: the factorisation of the worker axis; the product of its sizes
      must be the number of workers, and on a mesh of tier axes it must
      match the mesh.
    stats: the previous ``CommStats``, from
      ``comm_stats.init_comm_stats(capacity)`` with ``capacity >= 2k``.
    order: a key of :data:`ORDERS` or a permutation of ``tiers.names``.
    axis_name: the logical worker axis.

  Returns:
    ``(total, stats)``: the sum (same structure, shapes and dtypes as ``x``,
    the same on every worker) and the stats with this call's ``2k`` rounds.

  Raises:
    ValueError: for tiers that do not factorise the worker axis or disagree
      with the mesh, an unknown order, or a record with too few slots.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import worker_axis
    >>> from distoptax.distributed import comm_stats, hierarchical
    >>> tiers = worker_axis.Tiers(("hosts", "local"), (2, 2))
    >>> def f(x):
    ...   return hierarchical.hierarchical_all_reduce(
    ...       x, tiers, comm_stats.init_comm_stats(4))
    >>> total, stats = jax.vmap(f, axis_name="workers")(
    ...     jnp.arange(8.0).reshape(4, 2))
    >>> total[0], stats.rounds.bytes[0]  # 2 floats padded to 4 (workers)
    (Array([12., 16.], dtype=float32), Array([16,  8,  4,  8], dtype=int32))
  """
  if not isinstance(stats, comm_stats.CommStats):
    raise TypeError(f"stats must be the transform's CommStats; got "
                    f"{type(stats).__name__}")
  check_tiers(tiers, collectives.num_workers(axis_name))
  rs = reduce_scatter_order(tiers, order)
  tally = comm_stats.start_tally(stats)
  slot = 0

  def record(kind, blocks):
    nonlocal tally, slot
    count, ok = comm_stats.check_byte_count(
        f"{kind} wire_bytes", comm_stats.tree_bytes(blocks))
    tally = comm_stats.tally_round(tally, slot, kind, count, ok, count, ok,
                                   True)
    slot += 1

  total = _run_stages(x, tiers, rs, axis_name, record)
  return total, comm_stats.finish_tally(tally)


def hierarchical_psum(x: Any, tiers: collectives.Tiers, *,
                      order: Order = "inner_first",
                      axis_name: str = collectives.WORKERS) -> Any:
  """Sum over all workers by tiered stages, without recording them.

  Args:
    x: this worker's pytree.
    tiers: the factorisation of the worker axis.
    order: a key of :data:`ORDERS` or a permutation of ``tiers.names``.
    axis_name: the logical worker axis.

  Returns:
    The sum, as ``worker_axis.psum`` gives it.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import worker_axis
    >>> tiers = worker_axis.Tiers(("hosts", "local"), (2, 2))
    >>> f = lambda x: hierarchical_psum(x, tiers, order="outer_first")
    >>> jax.vmap(f, axis_name="workers")(jnp.array([1, 2, 3, 4]))
    Array([10, 10, 10, 10], dtype=int32)
  """
  check_tiers(tiers, collectives.num_workers(axis_name))
  rs = reduce_scatter_order(tiers, order)
  return _run_stages(x, tiers, rs, axis_name, lambda kind, blocks: None)


class HierarchicalState(NamedTuple):
  """State of :func:`hierarchical_mean`.

  Attributes:
    comm: the bytes of each stage this worker handed to a collective.
  """

  comm: comm_stats.CommStats


def hierarchical_mean(
    tiers: collectives.Tiers,
    *,
    order: Order = "inner_first",
    axis_name: str = collectives.WORKERS,
) -> optax.GradientTransformationExtraArgs:
  r"""Averages updates over workers with a BlueConnect all-reduce.

  .. math:: u \leftarrow \frac{1}{n} \sum_i u_i

  Args:
    tiers: the factorisation of the worker axis (checked at the first
      update against the number of workers and the mesh).
    order: a key of :data:`ORDERS` or a permutation of ``tiers.names``.
    axis_name: the logical worker axis.

  Returns:
    An optax transformation; its state is a :class:`HierarchicalState`
    recording the ``2k`` stages of every update.

  Raises:
    ValueError: for an unknown order (at construction).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from distoptax import distributed as dist, worker_axis
    >>> tiers = worker_axis.Tiers(("hosts", "local"), (2, 2))
    >>> tx = optax.chain(hierarchical_mean(tiers), optax.sgd(1.0))
    >>> loss_fn = lambda w, b: jnp.sum(w * b)
    >>> run = dist.simulate(dist.data_parallel(loss_fn, tx), num_workers=4)
    >>> state, _ = run.step(run.init(jnp.zeros(2)),
    ...                     jnp.arange(8.0).reshape(4, 2))
    >>> state.params[0]
    Array([-3., -4.], dtype=float32)
  """
  rs = reduce_scatter_order(tiers, order)
  capacity = 2 * len(rs)

  def init(params):
    del params
    return HierarchicalState(comm_stats.init_comm_stats(capacity))

  def update(updates, state, params=None, **extra_args):
    del params, extra_args
    total, comm = hierarchical_all_reduce(updates, tiers, state.comm,
                                          order=rs, axis_name=axis_name)
    n = math.prod(tiers.sizes)
    mean = jax.tree.map(lambda s: (s / n).astype(s.dtype), total)
    return mean, HierarchicalState(comm)

  return optax.GradientTransformationExtraArgs(init, update)


# --------------------------------------------------------------------------
# Host side: the clock's rounds and the cost model.
# --------------------------------------------------------------------------

Link = Mapping[str, float]
"""``{"bandwidth": β, "latency": α}`` of one tier's links."""


def clock_rounds(stats: Any, tiers: collectives.Tiers,
                 order: Order = "inner_first") -> list[clock.Round]:
  """The clock's rounds of the last decomposition, each on its tier.

  A ``CommStats`` record keeps each round's kind and bytes; the tier of
  each stage is static (the order), so it is added here. The outer tier of
  a two-tier factorisation is a ``HierarchicalTopology``'s ``"hosts"`` and
  the inner one its ``"local"``.

  Args:
    stats: the :class:`HierarchicalState` or ``CommStats`` of the call (one
      worker's or a runtime's per-worker state).
    tiers: the two-tier factorisation it ran with.
    order: the order it ran with.

  Returns:
    ``clock.Round`` records with ``tier`` set, in the order they ran.

  Raises:
    ValueError: for tiers that are not two, or a record whose kinds or
      bytes are not those of a decomposition in this order.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import worker_axis
    >>> from distoptax.distributed import comm_stats
    >>> tiers = worker_axis.Tiers(("hosts", "local"), (2, 2))
    >>> _, stats = jax.vmap(lambda x: hierarchical_all_reduce(
    ...     x, tiers, comm_stats.init_comm_stats(4)), axis_name="workers")(
    ...         jnp.ones((4, 8)))
    >>> [(r.kind, r.bytes, r.tier) for r in clock_rounds(stats, tiers)][:2]
    [('reduce_scatter', 32, 'local'), ('reduce_scatter', 16, 'hosts')]
  """
  check_tiers(tiers)
  if len(tiers.names) != 2:
    raise ValueError(
        f"the clock's hierarchical topology has two tiers (hosts, local); "
        f"got tiers {tiers}")
  topo_tier = dict(zip(tiers.names, ("hosts", "local")))
  rs = reduce_scatter_order(tiers, order)
  recorded = comm_stats.clock_rounds(stats)
  expected = ([("reduce_scatter", t) for t in rs]
              + [("all_gather", t) for t in reversed(rs)])
  kinds = [r.kind for r in recorded]
  if kinds != [k for k, _ in expected]:
    raise ValueError(
        f"the record's rounds {kinds} are not those of a decomposition over "
        f"{tiers} in the order {rs}")
  rounds = [r._replace(tier=topo_tier[t])
            for r, (_, t) in zip(recorded, expected)]
  if rounds:
    total = rounds[0].bytes
    plan = stage_plan(jax.ShapeDtypeStruct((total,), jnp.uint8), tiers, rs)
    if [r.bytes for r in rounds] != [s.bytes for s in plan]:
      raise ValueError(
          f"the record's bytes {[r.bytes for r in rounds]} are not those of "
          f"a decomposition of {total} bytes over {tiers} in the order {rs}: "
          f"{[s.bytes for s in plan]}")
  return rounds


def topology_links(topology: topologies.HierarchicalTopology
                   ) -> tuple[collectives.Tiers, dict[str, Link]]:
  """The tiers ``("hosts", "local")`` of a topology and each tier's link.

  Example:
    >>> from distoptax.distributed import topologies
    >>> topo = topologies.HierarchicalTopology(
    ...     8, workers_per_host=4, local_bandwidth=1e10, local_latency=0.0,
    ...     host_bandwidth=1e9, host_latency=1e-5)
    >>> tiers, links = topology_links(topo)
    >>> tiers.sizes, links["hosts"]
    ((2, 4), {'bandwidth': 1000000000.0, 'latency': 1e-05})
  """
  if not isinstance(topology, topologies.HierarchicalTopology):
    raise TypeError(f"topology must be a HierarchicalTopology; got "
                    f"{topology!r}")
  tiers = collectives.Tiers(("hosts", "local"),
                            (topology.num_hosts, topology.workers_per_host))
  return tiers, {
      "hosts": {"bandwidth": float(topology.host_bandwidth),
                "latency": float(topology.host_latency)},
      "local": {"bandwidth": float(topology.local_bandwidth),
                "latency": float(topology.local_latency)},
  }


def _check_links(tiers: collectives.Tiers, links: Mapping[str, Link]
                 ) -> dict[str, dict[str, float]]:
  check_tiers(tiers)
  if not isinstance(links, Mapping) or set(links) != set(tiers.names):
    raise ValueError(
        f"links must map every tier {tuple(tiers.names)} to its link; got "
        f"{links!r}")
  out = {}
  for tier in tiers.names:
    link = links[tier]
    if not isinstance(link, Mapping) or set(link) != {"bandwidth",
                                                      "latency"}:
      raise ValueError(f"the link of tier {tier!r} must be "
                       f"{{'bandwidth': ..., 'latency': ...}}; got {link!r}")
    out[tier] = {
        "bandwidth": validation.check_real(f"tier {tier!r} bandwidth",
                                           link["bandwidth"], strict=True),
        "latency": validation.check_real(f"tier {tier!r} latency",
                                         link["latency"]),
    }
  return out


def hierarchical_seconds(num_bytes: float, tiers: collectives.Tiers,
                         links: Mapping[str, Link],
                         order: Order = "inner_first") -> float:
  r"""Seconds of the decomposed all-reduce: one ring collective per stage.

  .. math::

    T = \sum_j \mathrm{RS}_{t_j}\Big(\frac{B}{s_{t_1}\cdots s_{t_{j-1}}}
        \Big) + \mathrm{AG}_{t_j}\Big(\frac{B}{s_{t_1}\cdots s_{t_j}}\Big)

  with the ring reduce-scatter and all-gather of ``distributed.topologies``
  on tier :math:`t_j`'s link; the groups of a tier run in parallel.

  Args:
    num_bytes: ``B >= 0``, bytes per worker (a multiple of the number of
      workers for the stages to be exact).
    tiers: the factorisation.
    links: tier name -> ``{"bandwidth": β > 0, "latency": α >= 0}``.
    order: a key of :data:`ORDERS` or a permutation of ``tiers.names``.

  Returns:
    Seconds until every worker holds the sum.

  Raises:
    ValueError: on negative bytes, a missing tier, a non-positive bandwidth
      or a negative latency, or an unknown order.

  Example:
    >>> from distoptax import worker_axis
    >>> tiers = worker_axis.Tiers(("hosts", "local"), (2, 4))
    >>> links = {"hosts": {"bandwidth": 1e9, "latency": 0.0},
    ...          "local": {"bandwidth": 1e10, "latency": 0.0}}
    >>> round(hierarchical_seconds(4e6, tiers, links), 9)
    0.0016
  """
  b = validation.check_real("num_bytes", num_bytes)
  links = _check_links(tiers, links)
  rs = reduce_scatter_order(tiers, order)
  size = dict(zip(tiers.names, tiers.sizes))
  seconds, held = 0.0, b
  for tier in rs:
    seconds += topologies.ring_reduce_scatter_seconds(held, size[tier],
                                                      **links[tier])
    held /= size[tier]
    seconds += topologies.ring_all_gather_seconds(held, size[tier],
                                                  **links[tier])
  return seconds


def flat_ring_seconds(num_bytes: float, tiers: collectives.Tiers,
                      links: Mapping[str, Link]) -> float:
  r"""Seconds of one flat ring all-reduce over all workers in index order.

  .. math::

    T = 2(n - 1) \max_{t : s_t > 1} \Big(\alpha_t + \frac{B}{n\,\beta_t}
        \Big)

  Every ring step moves ``B / n`` bytes over every edge at once and waits
  for the slowest; the ring has an edge on tier ``t``'s links wherever it
  crosses a boundary of ``t`` (any tier of size above 1).

  Args:
    num_bytes: ``B >= 0``, bytes per worker.
    tiers: the factorisation (where the ring's edges lie).
    links: tier name -> ``{"bandwidth": β > 0, "latency": α >= 0}``.

  Returns:
    Seconds; 0 for one worker.

  Raises:
    ValueError: as :func:`hierarchical_seconds`.

  Example:
    >>> from distoptax import worker_axis
    >>> tiers = worker_axis.Tiers(("hosts", "local"), (2, 4))
    >>> links = {"hosts": {"bandwidth": 1e9, "latency": 0.0},
    ...          "local": {"bandwidth": 1e10, "latency": 0.0}}
    >>> round(flat_ring_seconds(4e6, tiers, links), 9)  # 14 · 5e5 / 1e9
    0.007
  """
  b = validation.check_real("num_bytes", num_bytes)
  links = _check_links(tiers, links)
  n = math.prod(tiers.sizes)
  steps = [links[t]["latency"] + b / (n * links[t]["bandwidth"])
           for t, s in zip(tiers.names, tiers.sizes) if s > 1]
  return 2 * (n - 1) * max(steps, default=0.0)


def predicted_reduction(num_bytes: float, tiers: collectives.Tiers,
                        links: Mapping[str, Link],
                        order: Order = "inner_first") -> float:
  r"""The model's reduction of communication time against the flat ring.

  .. math:: 1 - T_\mathrm{hier} / T_\mathrm{ring}

  Args:
    num_bytes: ``B > 0``, bytes per worker.
    tiers: the factorisation.
    links: tier name -> link (see :func:`hierarchical_seconds`).
    order: the decomposition's order.

  Returns:
    The fraction of the flat ring's time saved (negative: slower).

  Raises:
    ValueError: as :func:`hierarchical_seconds`, or for one worker (no ring
      to compare with).

  Example:
    >>> from distoptax import worker_axis
    >>> tiers = worker_axis.Tiers(("hosts", "local"), (24, 8))
    >>> links = {"hosts": {"bandwidth": 1e9, "latency": 0.0},
    ...          "local": {"bandwidth": 1e15, "latency": 0.0}}
    >>> round(predicted_reduction(192e6, tiers, links), 4)  # 1 - 23/191
    0.8796
  """
  flat = flat_ring_seconds(num_bytes, tiers, links)
  if flat == 0:
    raise ValueError(
        f"the flat ring over {tiers} with num_bytes={num_bytes!r} takes no "
        f"time; there is nothing to reduce")
  return 1.0 - hierarchical_seconds(num_bytes, tiers, links, order) / flat
