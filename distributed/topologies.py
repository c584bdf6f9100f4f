r"""Network topologies as objects that price collectives over participants.

Host side, pure numpy. A topology prices one collective of ``B`` bytes per
worker over a set of ``k`` participating workers (a boolean mask over the
``n`` workers; ``None`` means all), in the alpha-beta (Hockney) model: a
message of ``m`` bytes between two nodes takes ``α + m / β`` seconds, and each
node has one full-duplex link (it sends one message and receives one at a
time). Conventions:

  * ``bandwidth`` ``β`` is bytes per second per link, ``latency`` ``α`` is
    seconds per message.
  * ``B`` is per worker: the bytes one worker hands to the collective.
    ``all_reduce``: every participant holds ``B`` and ends with the reduced
    ``B``. ``all_gather``: every participant contributes ``B`` and ends with
    ``k·B``. ``reduce_scatter``: every participant holds ``B`` and ends with
    its ``B / k`` block of the reduction. ``broadcast``: one participant (the
    lowest-indexed) holds ``B`` and every participant ends with it.
    ``sendrecv``: a pairwise exchange, every participant sends its ``B`` to
    one partner and receives the partner's ``B``, all pairs at once (one
    step of recursive doubling).
  * Reduction arithmetic is free (no ``γ`` term).
  * On the peer-to-peer topologies (ring, tree, hierarchical) a collective
    over one participant is the identity and costs nothing. A parameter
    server is a separate node, so one participant still pushes to and pulls
    from it.
  * Zero bytes still pay the latency terms: a round that runs is a round.

Ring (Patarasuk & Yuan; Thakur et al.):

  * ``all_reduce``: ``2(k-1)α + 2(k-1)/k · B/β``;
  * ``all_gather``: ``(k-1)α + (k-1) · B/β``;
  * ``reduce_scatter``: ``(k-1)α + (k-1)/k · B/β``;
  * ``broadcast``: ``2(k-1)α + 2(k-1)/k · B/β``;
  * ``sendrecv``: ``α + B/β`` (one message each way over full-duplex
    links; the partner is taken to be one link away, as in the α-β
    analysis of recursive doubling by Thakur et al.).

Binomial tree (Thakur et al.), with ``L = ⌈log2 k⌉``:

  * ``all_reduce``: reduce, then broadcast: ``2L(α + B/β)``;
  * ``all_gather``: gather, then broadcast of ``k·B``:
    ``Lα + (k-1)B/β + L(α + kB/β)``;
  * ``reduce_scatter``: reduce, then scatter:
    ``L(α + B/β) + Lα + (k-1)/k · B/β``;
  * ``broadcast``: ``L(α + B/β)``;
  * ``sendrecv``: ``α + B/β``.

The ring broadcast is a ring scatter followed by a ring all-gather (the
long-message broadcast of van de Geijn, as in Thakur et al., with the scatter
along the ring). The binomial-tree gather and scatter costs are exact for any
``k``: the root's link is the bottleneck.

Parameter server (``s`` servers, sharded evenly, distinct from the workers;
see :func:`parameter_server_seconds`), with ``load = max(k, s) / s``:
``all_reduce`` pushes ``B`` and pulls ``B``, ``all_gather`` pushes ``B`` and
pulls ``k·B``, ``reduce_scatter`` pushes ``B`` and pulls ``B / k``, each
costing ``2α + load · (push + pull) / β``; ``broadcast`` is one push of ``B``
by the root and ``k`` pulls: ``2α + B/β + load · B/β``. ``sendrecv`` goes
worker to worker, not through the servers (the workers' own links):
``α + B/β``.

Two-tier hierarchical (BlueConnect, Cho et al.): ``n = h · g`` workers on
``h`` hosts of ``g`` workers each (worker ``w`` on host ``w // g``, local rank
``w % g``), intra-host links ``(α₁, β₁)`` and inter-host links ``(α₂, β₂)``;
``β₂`` is the inter-host bandwidth available to each worker, so the ``g``
inter-host rings of one host run in parallel. An all-reduce over all workers
is an intra-host ring reduce-scatter, ``g`` parallel inter-host ring
all-reduces of ``B / g`` bytes, and an intra-host ring all-gather:

.. math::

  T = 2(g-1)\alpha_1 + \frac{2(g-1)}{g}\frac{B}{\beta_1}
      + 2(h-1)\alpha_2 + \frac{2(h-1)}{h}\frac{B}{g\,\beta_2}.

``reduce_scatter`` is the first two phases with a reduce-scatter between
hosts; ``all_gather`` goes between hosts first (each worker exchanges its
``B`` with its peers of the same local rank: ``(h-1)α₂ + (h-1)B/β₂``) and
then within hosts (``(g-1)α₁ + (g-1)hB/β₁``); ``broadcast`` is a ring
broadcast between hosts then within hosts. ``sendrecv`` costs one message
over the slowest link a pair can use: ``α₁ + B/β₁`` when all participants
share a host, ``α₂ + B/β₂`` with one participant per host, otherwise the
larger of the two (the record does not say which partner each worker has,
so the price is the worst pair's). When hosts have unequal numbers of
participants, each phase costs what it costs on its busiest host: the
intra-host phases use the largest per-host count ``g_max``, the inter-host
phases run over the ``h'`` hosts that have participants and carry the shard
``B / g_min`` of the host with the fewest. A round restricted to one tier
(``tier="local"``: within each host, hosts in parallel; ``tier="hosts"``:
between hosts, one ring per local rank in parallel) is a flat ring
collective in each group, and each group synchronises on its own (see
:meth:`Topology.groups`).

References:
  Patarasuk & Yuan, `Bandwidth optimal all-reduce algorithms for clusters of
  workstations <https://doi.org/10.1016/j.jpdc.2008.09.002>`_, JPDC 2009.

  Thakur, Rabenseifner & Gropp, `Optimization of collective communication
  operations in MPICH <https://doi.org/10.1177/1094342005051521>`_, IJHPCA
  2005.

  Li et al., `Scaling distributed machine learning with the parameter server
  <https://www.usenix.org/conference/osdi14/technical-sessions/presentation/li_mu>`_,
  OSDI 2014.

  Cho, Finkler, Kung & Hunter, `BlueConnect: decomposing all-reduce for deep
  learning on heterogeneous network hierarchy
  <https://proceedings.mlsys.org/paper_files/paper/2019/hash/0c8abcf158ed12d0dd94480681186fda-Abstract.html>`_,
  MLSys 2019.
"""

import abc
import dataclasses
import types
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from distoptax.distributed import validation

__all__ = [
    "COLLECTIVES",
    "HierarchicalTopology",
    "ParameterServerTopology",
    "RingTopology",
    "TOPOLOGIES",
    "Topology",
    "TreeTopology",
    "make_topology",
    "parameter_server_seconds",
    "ring_all_gather_seconds",
    "ring_all_reduce_seconds",
    "ring_broadcast_seconds",
    "ring_reduce_scatter_seconds",
    "sendrecv_seconds",
    "tree_all_gather_seconds",
    "tree_all_reduce_seconds",
    "tree_broadcast_seconds",
    "tree_reduce_scatter_seconds",
]

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "broadcast",
               "sendrecv")
"""The collective kinds every topology prices."""


def _check_link(bandwidth: Any, latency: Any,
                prefix: str = "") -> tuple[float, float]:
  return (
      validation.check_real(f"{prefix}bandwidth", bandwidth, strict=True),
      validation.check_real(f"{prefix}latency", latency),
  )


def _check_args(name: str, num_bytes: Any, num_workers: Any, bandwidth: Any,
                latency: Any) -> tuple[float, int, float, float]:
  b = validation.check_real(name, num_bytes)
  n = validation.check_int("num_workers", num_workers, minimum=1)
  beta, alpha = _check_link(bandwidth, latency)
  return b, n, beta, alpha


# --------------------------------------------------------------------------
# Ring.
# --------------------------------------------------------------------------


def ring_all_reduce_seconds(
    num_bytes: float,
    num_workers: int,
    *,
    bandwidth: float,
    latency: float,
) -> float:
  r"""Time of a bandwidth-optimal ring all-reduce (Patarasuk & Yuan).

  The buffer of ``B`` bytes is cut into ``n`` chunks of ``B / n`` bytes. A
  reduce-scatter of ``n - 1`` rounds (every worker sends one chunk to its ring
  neighbour, which adds it to its own) is followed by an all-gather of
  ``n - 1`` rounds (every worker forwards one reduced chunk). Each round costs
  one message latency plus the chunk's transfer:

  .. math::

    T = 2(n - 1)\,\alpha + \frac{2(n - 1)}{n} \frac{B}{\beta}.

  Args:
    num_bytes: ``B``, bytes each worker contributes (and receives reduced).
    num_workers: ``n >= 1``; ``n = 1`` costs 0.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.

  Returns:
    Seconds until every worker holds the reduced buffer.

  Raises:
    ValueError: on ``n < 1``, negative bytes, ``β <= 0`` or ``α < 0``.

  Example:
    >>> ring_all_reduce_seconds(4e6, 4, bandwidth=1e9, latency=1e-5)
    0.00606
  """
  b, n, beta, alpha = _check_args("num_bytes", num_bytes, num_workers,
                                  bandwidth, latency)
  rounds = 2 * (n - 1)
  return rounds * alpha + rounds * (b / n) / beta


def ring_all_gather_seconds(
    bytes_per_worker: float,
    num_workers: int,
    *,
    bandwidth: float,
    latency: float,
) -> float:
  r"""Time of a ring all-gather (Thakur, Rabenseifner & Gropp).

  Every worker holds a block of ``B`` bytes; in each of ``n - 1`` rounds every
  worker forwards one block (its own first, then the one it just received) to
  its ring neighbour:

  .. math::

    T = (n - 1)\,\alpha + (n - 1) \frac{B}{\beta}.

  Args:
    bytes_per_worker: ``B``, the block each worker contributes.
    num_workers: ``n >= 1``; ``n = 1`` costs 0.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.

  Returns:
    Seconds until every worker holds all ``n`` blocks.

  Raises:
    ValueError: on ``n < 1``, negative bytes, ``β <= 0`` or ``α < 0``.

  Example:
    >>> ring_all_gather_seconds(1e6, 3, bandwidth=1e9, latency=0.0)
    0.002
  """
  b, n, beta, alpha = _check_args("bytes_per_worker", bytes_per_worker,
                                  num_workers, bandwidth, latency)
  return (n - 1) * alpha + (n - 1) * b / beta


def ring_reduce_scatter_seconds(
    num_bytes: float,
    num_workers: int,
    *,
    bandwidth: float,
    latency: float,
) -> float:
  r"""Time of a ring reduce-scatter: the first half of the ring all-reduce.

  .. math::

    T = (n - 1)\,\alpha + \frac{n - 1}{n} \frac{B}{\beta}.

  Args:
    num_bytes: ``B``, the buffer each worker holds; each ends with its
      reduced ``B / n`` block.
    num_workers: ``n >= 1``; ``n = 1`` costs 0.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.

  Returns:
    Seconds until every worker holds its reduced block.

  Raises:
    ValueError: on ``n < 1``, negative bytes, ``β <= 0`` or ``α < 0``.

  Example:
    >>> ring_reduce_scatter_seconds(4e6, 4, bandwidth=1e9, latency=0.0)
    0.003
  """
  b, n, beta, alpha = _check_args("num_bytes", num_bytes, num_workers,
                                  bandwidth, latency)
  return (n - 1) * alpha + (n - 1) * (b / n) / beta


def ring_broadcast_seconds(
    num_bytes: float,
    num_workers: int,
    *,
    bandwidth: float,
    latency: float,
) -> float:
  r"""Time of a ring broadcast: ring scatter, then ring all-gather.

  The root cuts ``B`` into ``n`` chunks and sends them down the ring, the
  farthest first (``n - 1`` rounds of one chunk), then a ring all-gather of
  the chunks (``n - 1`` rounds):

  .. math::

    T = 2(n - 1)\,\alpha + \frac{2(n - 1)}{n} \frac{B}{\beta}.

  Args:
    num_bytes: ``B``, the root's buffer.
    num_workers: ``n >= 1``; ``n = 1`` costs 0.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.

  Returns:
    Seconds until every worker holds the buffer.

  Raises:
    ValueError: on ``n < 1``, negative bytes, ``β <= 0`` or ``α < 0``.

  Example:
    >>> ring_broadcast_seconds(4e6, 4, bandwidth=1e9, latency=0.0)
    0.006
  """
  b, n, beta, alpha = _check_args("num_bytes", num_bytes, num_workers,
                                  bandwidth, latency)
  return 2 * (n - 1) * alpha + 2 * (n - 1) * (b / n) / beta


# --------------------------------------------------------------------------
# Binomial tree.
# --------------------------------------------------------------------------


def _levels(n: int) -> int:
  """``⌈log2 n⌉`` for ``n >= 1``."""
  return (n - 1).bit_length()


def tree_broadcast_seconds(
    num_bytes: float,
    num_workers: int,
    *,
    bandwidth: float,
    latency: float,
) -> float:
  r"""Time of a binomial-tree broadcast (Thakur et al.).

  .. math::

    T = \lceil \log_2 n \rceil (\alpha + B / \beta).

  Args:
    num_bytes: ``B``, the root's buffer.
    num_workers: ``n >= 1``; ``n = 1`` costs 0.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.

  Returns:
    Seconds until every worker holds the buffer.

  Raises:
    ValueError: on ``n < 1``, negative bytes, ``β <= 0`` or ``α < 0``.

  Example:
    >>> tree_broadcast_seconds(1e6, 5, bandwidth=1e9, latency=0.0)
    0.003
  """
  b, n, beta, alpha = _check_args("num_bytes", num_bytes, num_workers,
                                  bandwidth, latency)
  return _levels(n) * (alpha + b / beta)


def tree_all_reduce_seconds(
    num_bytes: float,
    num_workers: int,
    *,
    bandwidth: float,
    latency: float,
) -> float:
  r"""Time of a binomial-tree reduce followed by a binomial-tree broadcast.

  .. math::

    T = 2 \lceil \log_2 n \rceil (\alpha + B / \beta).

  Args:
    num_bytes: ``B``, bytes each worker contributes (and receives reduced).
    num_workers: ``n >= 1``; ``n = 1`` costs 0.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.

  Returns:
    Seconds until every worker holds the reduced buffer.

  Raises:
    ValueError: on ``n < 1``, negative bytes, ``β <= 0`` or ``α < 0``.

  Example:
    >>> tree_all_reduce_seconds(1e6, 8, bandwidth=1e9, latency=0.0)
    0.006
  """
  b, n, beta, alpha = _check_args("num_bytes", num_bytes, num_workers,
                                  bandwidth, latency)
  return 2 * _levels(n) * (alpha + b / beta)


def tree_all_gather_seconds(
    bytes_per_worker: float,
    num_workers: int,
    *,
    bandwidth: float,
    latency: float,
) -> float:
  r"""Time of a binomial-tree gather followed by a broadcast of all blocks.

  .. math::

    T = L\alpha + (n - 1)\frac{B}{\beta} + L\left(\alpha + \frac{nB}{\beta}
    \right), \qquad L = \lceil \log_2 n \rceil.

  Args:
    bytes_per_worker: ``B``, the block each worker contributes.
    num_workers: ``n >= 1``; ``n = 1`` costs 0.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.

  Returns:
    Seconds until every worker holds all ``n`` blocks.

  Raises:
    ValueError: on ``n < 1``, negative bytes, ``β <= 0`` or ``α < 0``.

  Example:
    >>> tree_all_gather_seconds(1e6, 2, bandwidth=1e9, latency=0.0)
    0.003
  """
  b, n, beta, alpha = _check_args("bytes_per_worker", bytes_per_worker,
                                  num_workers, bandwidth, latency)
  levels = _levels(n)
  return levels * alpha + (n - 1) * b / beta + levels * (alpha + n * b / beta)


def tree_reduce_scatter_seconds(
    num_bytes: float,
    num_workers: int,
    *,
    bandwidth: float,
    latency: float,
) -> float:
  r"""Time of a binomial-tree reduce followed by a binomial-tree scatter.

  .. math::

    T = L\left(\alpha + \frac{B}{\beta}\right) + L\alpha
    + \frac{n - 1}{n}\frac{B}{\beta}, \qquad L = \lceil \log_2 n \rceil.

  Args:
    num_bytes: ``B``, the buffer each worker holds; each ends with its
      reduced ``B / n`` block.
    num_workers: ``n >= 1``; ``n = 1`` costs 0.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.

  Returns:
    Seconds until every worker holds its reduced block.

  Raises:
    ValueError: on ``n < 1``, negative bytes, ``β <= 0`` or ``α < 0``.

  Example:
    >>> tree_reduce_scatter_seconds(4e6, 4, bandwidth=1e9, latency=0.0)
    0.011
  """
  b, n, beta, alpha = _check_args("num_bytes", num_bytes, num_workers,
                                  bandwidth, latency)
  levels = _levels(n)
  return levels * (alpha + b / beta) + levels * alpha + (n - 1) * (
      b / n) / beta


# --------------------------------------------------------------------------
# Parameter server.
# --------------------------------------------------------------------------


def parameter_server_seconds(
    push_bytes: float,
    pull_bytes: float,
    num_workers: int,
    *,
    bandwidth: float,
    latency: float,
    num_servers: int = 1,
) -> float:
  r"""Time of one push/pull exchange with (sharded) parameter servers.

  Every worker pushes ``push`` bytes, sharded evenly over ``s`` servers
  (``push / s`` to each); each server aggregates its shard once all pushes
  have arrived and sends ``pull / s`` bytes back to every worker. A link
  carries one message at a time; latency is propagation delay, paid once per
  phase because the messages of a phase are pipelined. The busiest link
  carries ``max(n, s)`` messages per phase (a server's link ``n``, a worker's
  link ``s``), hence

  .. math::

    T = 2\alpha + \frac{\max(n, s)}{s} \frac{push}{\beta}
        + \frac{\max(n, s)}{s} \frac{pull}{\beta},

  which for the usual ``s <= n`` is
  ``2α + n·push/(s·β) + n·pull/(s·β)``: the servers' links are the bottleneck.
  (For ``s > n`` each worker's own link, which must carry all of its ``push``
  bytes, is the bottleneck and more servers no longer help.)

  Assumptions: full-duplex links of equal bandwidth, a non-blocking switch,
  no incast losses or retransmissions (TCP incast collapse is not modelled),
  servers distinct from the workers (a worker's link is not shared with a
  server), aggregation time negligible, and each shard's pulls start when that
  shard's pushes have all arrived (synchronous data-parallel SGD).

  Args:
    push_bytes: bytes each worker sends (gradients or messages).
    pull_bytes: bytes each worker receives back (parameters or aggregates).
    num_workers: ``n >= 1``.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.
    num_servers: ``s >= 1``, servers the bytes are sharded over.

  Returns:
    Seconds until every worker has pulled its bytes.

  Raises:
    ValueError: on ``n < 1``, ``s < 1``, negative bytes, ``β <= 0`` or
      ``α < 0``.

  Example:
    >>> parameter_server_seconds(1e6, 1e6, 4, bandwidth=1e9, latency=0.0,
    ...                          num_servers=2)
    0.004
  """
  push = validation.check_real("push_bytes", push_bytes)
  pull = validation.check_real("pull_bytes", pull_bytes)
  n = validation.check_int("num_workers", num_workers, minimum=1)
  s = validation.check_int("num_servers", num_servers, minimum=1)
  beta, alpha = _check_link(bandwidth, latency)
  load = max(n, s) / s
  return 2 * alpha + load * push / beta + load * pull / beta


def _ps_broadcast_seconds(b: float, k: int, *, bandwidth: float,
                          latency: float, num_servers: int) -> float:
  """The root pushes ``B`` (its own link carries it all); ``k`` pull ``B``."""
  load = max(k, num_servers) / num_servers
  return 2 * latency + b / bandwidth + load * b / bandwidth


def sendrecv_seconds(
    num_bytes: float,
    num_workers: int,
    *,
    bandwidth: float,
    latency: float,
) -> float:
  r"""Time of a pairwise exchange: every worker swaps ``B`` with a partner.

  All pairs exchange at once over full-duplex links, one message each way:

  .. math::

    T = \alpha + B / \beta \quad (n \ge 2), \qquad T = 0 \quad (n = 1).

  Recursive doubling (Thakur et al.) is :math:`\log_2 n` such steps.

  Args:
    num_bytes: ``B``, bytes each worker sends (and receives).
    num_workers: ``n >= 1`` participants; one has no partner and costs 0.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.

  Returns:
    Seconds until every worker holds its partner's bytes.

  Raises:
    ValueError: on ``n < 1``, negative bytes, ``β <= 0`` or ``α < 0``.

  Example:
    >>> sendrecv_seconds(1e6, 8, bandwidth=1e9, latency=1e-5)
    0.00101
  """
  b, n, beta, alpha = _check_args("num_bytes", num_bytes, num_workers,
                                  bandwidth, latency)
  return 0.0 if n < 2 else alpha + b / beta


# --------------------------------------------------------------------------
# Topology objects.
# --------------------------------------------------------------------------

_Group = tuple[np.ndarray, float]
_FlatCost = Callable[..., float]

_RING: Mapping[str, _FlatCost] = types.MappingProxyType({
    "all_reduce": ring_all_reduce_seconds,
    "all_gather": ring_all_gather_seconds,
    "reduce_scatter": ring_reduce_scatter_seconds,
    "broadcast": ring_broadcast_seconds,
    "sendrecv": sendrecv_seconds,
})

_TREE: Mapping[str, _FlatCost] = types.MappingProxyType({
    "all_reduce": tree_all_reduce_seconds,
    "all_gather": tree_all_gather_seconds,
    "reduce_scatter": tree_reduce_scatter_seconds,
    "broadcast": tree_broadcast_seconds,
    "sendrecv": sendrecv_seconds,
})

# (bytes, participants, **link) -> seconds.
_PARAMETER_SERVER: Mapping[str, _FlatCost] = types.MappingProxyType({
    "all_reduce": lambda b, k, **link: parameter_server_seconds(
        b, b, k, **link),
    "all_gather": lambda b, k, **link: parameter_server_seconds(
        b, k * b, k, **link),
    "reduce_scatter": lambda b, k, **link: parameter_server_seconds(
        b, b / k, k, **link),
    "broadcast": _ps_broadcast_seconds,
    "sendrecv": lambda b, k, *, bandwidth, latency, num_servers: (
        sendrecv_seconds(b, k, bandwidth=bandwidth, latency=latency)),
})


class Topology(abc.ABC):
  """A network that prices collectives over a set of participating workers.

  Subclasses are frozen dataclasses with a ``num_workers`` field; they
  implement :meth:`_groups`. The public methods validate their arguments.
  """

  num_workers: int
  TIERS: ClassVar[tuple[str, ...]] = ()

  def groups(
      self,
      kind: str,
      num_bytes: float,
      participants: Any = None,
      *,
      tier: str | None = None,
  ) -> tuple[_Group, ...]:
    """Independent groups of one round and the seconds each takes.

    A round over the whole topology is one group: its participants. A round
    restricted to one tier of a hierarchical topology runs as several
    collectives in parallel (one per host, or one per local rank), each of
    which synchronises only its own members.

    Args:
      kind: one of :data:`COLLECTIVES`.
      num_bytes: ``B >= 0``, bytes per worker (see the module docstring).
      participants: ``None`` (all workers) or a ``[num_workers]`` boolean
        mask.
      tier: ``None`` or one of the topology's ``TIERS``.

    Returns:
      ``((mask, seconds), ...)``: disjoint boolean masks whose union is the
      participants, and the seconds of each group's collective.

    Raises:
      ValueError: on an unknown kind or tier, negative or NaN bytes, or a
        bad mask.

    Example:
      >>> topo = HierarchicalTopology(
      ...     4, workers_per_host=2, local_bandwidth=1e9, local_latency=0.0,
      ...     host_bandwidth=1e8, host_latency=0.0)
      >>> for members, seconds in topo.groups("all_gather", 1e6,
      ...                                     tier="hosts"):
      ...   print(members, seconds)
      [ True False  True False] 0.01
      [False  True False  True] 0.01
    """
    if kind not in COLLECTIVES:
      raise ValueError(
          f"Unknown collective kind {kind!r}; known: {list(COLLECTIVES)}.")
    b = validation.check_real("num_bytes", num_bytes)
    n = self.num_workers
    mask = (np.ones(n, dtype=bool) if participants is None
            else validation.check_mask("participants", participants, n))
    if tier is not None and tier not in self.TIERS:
      raise ValueError(
          f"Unknown tier {tier!r} for {type(self).__name__}; known: "
          f"{list(self.TIERS)} (or None for the whole topology).")
    return self._groups(kind, b, mask, tier)

  def cost(
      self,
      kind: str,
      num_bytes: float,
      participants: Any = None,
      *,
      tier: str | None = None,
  ) -> float:
    """Seconds of one collective: the slowest of its groups.

    Args:
      kind: one of :data:`COLLECTIVES`.
      num_bytes: ``B >= 0``, bytes per worker.
      participants: ``None`` (all workers) or a ``[num_workers]`` mask.
      tier: ``None`` or one of the topology's ``TIERS``.

    Returns:
      Seconds from a common start until every group is done.
    """
    return max(seconds for _, seconds in self.groups(
        kind, num_bytes, participants, tier=tier))

  def all_reduce(self, num_bytes: float, participants: Any = None, *,
                 tier: str | None = None) -> float:
    """Seconds of an all-reduce of ``num_bytes`` per worker."""
    return self.cost("all_reduce", num_bytes, participants, tier=tier)

  def all_gather(self, num_bytes: float, participants: Any = None, *,
                 tier: str | None = None) -> float:
    """Seconds of an all-gather of ``num_bytes`` contributed per worker."""
    return self.cost("all_gather", num_bytes, participants, tier=tier)

  def reduce_scatter(self, num_bytes: float, participants: Any = None, *,
                     tier: str | None = None) -> float:
    """Seconds of a reduce-scatter of a ``num_bytes`` buffer per worker."""
    return self.cost("reduce_scatter", num_bytes, participants, tier=tier)

  def broadcast(self, num_bytes: float, participants: Any = None, *,
                tier: str | None = None) -> float:
    """Seconds of a broadcast of ``num_bytes`` from one participant."""
    return self.cost("broadcast", num_bytes, participants, tier=tier)

  def sendrecv(self, num_bytes: float, participants: Any = None, *,
               tier: str | None = None) -> float:
    """Seconds of a pairwise exchange of ``num_bytes`` per worker."""
    return self.cost("sendrecv", num_bytes, participants, tier=tier)

  def describe(self) -> dict[str, Any]:
    """A JSON-serialisable description: registry name and fields."""
    names = {cls: name for name, cls in TOPOLOGIES.items()}
    out: dict[str, Any] = {"name": names.get(type(self), type(self).__name__)}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      out[field.name] = int(value) if isinstance(value, int) else float(value)
    return out

  @abc.abstractmethod
  def _groups(self, kind: str, num_bytes: float, mask: np.ndarray,
              tier: str | None) -> tuple[_Group, ...]:
    """Groups of a validated round."""


def _check_workers(num_workers: Any) -> int:
  return validation.check_int("num_workers", num_workers, minimum=1)


@dataclasses.dataclass(frozen=True)
class RingTopology(Topology):
  """Ring collectives over the participants (bandwidth-optimal, Hockney).

  Attributes:
    num_workers: ``n >= 1``.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.

  Example:
    >>> ring = RingTopology(8, bandwidth=1e9, latency=0.0)
    >>> ring.all_reduce(4e6, participants=[1, 1, 1, 1, 0, 0, 0, 0])
    0.006
  """

  num_workers: int
  _: dataclasses.KW_ONLY
  bandwidth: float
  latency: float

  def __post_init__(self):
    _check_workers(self.num_workers)
    _check_link(self.bandwidth, self.latency)

  def _groups(self, kind, num_bytes, mask, tier):
    del tier
    return ((mask, _RING[kind](num_bytes, int(mask.sum()),
                               bandwidth=self.bandwidth,
                               latency=self.latency)),)


@dataclasses.dataclass(frozen=True)
class TreeTopology(Topology):
  """Binomial-tree collectives over the participants (Thakur et al.).

  Attributes:
    num_workers: ``n >= 1``.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.

  Example:
    >>> TreeTopology(8, bandwidth=1e9, latency=1e-3).broadcast(0)
    0.003
  """

  num_workers: int
  _: dataclasses.KW_ONLY
  bandwidth: float
  latency: float

  def __post_init__(self):
    _check_workers(self.num_workers)
    _check_link(self.bandwidth, self.latency)

  def _groups(self, kind, num_bytes, mask, tier):
    del tier
    return ((mask, _TREE[kind](num_bytes, int(mask.sum()),
                               bandwidth=self.bandwidth,
                               latency=self.latency)),)


@dataclasses.dataclass(frozen=True)
class ParameterServerTopology(Topology):
  """Parameter servers, sharded evenly, distinct from the workers.

  Attributes:
    num_workers: ``n >= 1``.
    bandwidth: ``β > 0``, bytes per second per link.
    latency: ``α >= 0``, seconds per message.
    num_servers: ``s >= 1``.

  Example:
    >>> ps = ParameterServerTopology(4, bandwidth=1e9, latency=0.0,
    ...                              num_servers=2)
    >>> ps.all_reduce(1e6)
    0.004
  """

  num_workers: int
  _: dataclasses.KW_ONLY
  bandwidth: float
  latency: float
  num_servers: int = 1

  def __post_init__(self):
    _check_workers(self.num_workers)
    _check_link(self.bandwidth, self.latency)
    validation.check_int("num_servers", self.num_servers, minimum=1)

  def _groups(self, kind, num_bytes, mask, tier):
    del tier
    return ((mask, _PARAMETER_SERVER[kind](
        num_bytes, int(mask.sum()), bandwidth=self.bandwidth,
        latency=self.latency, num_servers=self.num_servers)),)


def _hierarchical_all_reduce(b, g_max, g_min, hosts, m, intra, inter):
  del m
  return (ring_reduce_scatter_seconds(b, g_max, **intra)
          + ring_all_reduce_seconds(b / g_min, hosts, **inter)
          + ring_all_gather_seconds(b / g_max, g_max, **intra))


def _hierarchical_reduce_scatter(b, g_max, g_min, hosts, m, intra, inter):
  del m
  return (ring_reduce_scatter_seconds(b, g_max, **intra)
          + ring_reduce_scatter_seconds(b / g_min, hosts, **inter))


def _hierarchical_all_gather(b, g_max, g_min, hosts, m, intra, inter):
  between = ((hosts - 1) * inter["latency"]
             + (m - g_min) * b / (g_min * inter["bandwidth"]))
  return between + ring_all_gather_seconds(m * b / g_max, g_max, **intra)


def _hierarchical_broadcast(b, g_max, g_min, hosts, m, intra, inter):
  del g_min, m
  return (ring_broadcast_seconds(b, hosts, **inter)
          + ring_broadcast_seconds(b, g_max, **intra))


def _hierarchical_sendrecv(b, g_max, g_min, hosts, m, intra, inter):
  del g_min, m
  links = ([intra] if g_max > 1 else []) + ([inter] if hosts > 1 else [])
  return max((sendrecv_seconds(b, 2, **link) for link in links), default=0.0)


_HIERARCHICAL: Mapping[str, _FlatCost] = types.MappingProxyType({
    "all_reduce": _hierarchical_all_reduce,
    "all_gather": _hierarchical_all_gather,
    "reduce_scatter": _hierarchical_reduce_scatter,
    "broadcast": _hierarchical_broadcast,
    "sendrecv": _hierarchical_sendrecv,
})


@dataclasses.dataclass(frozen=True)
class HierarchicalTopology(Topology):
  """Two tiers: rings within hosts and rings between hosts (BlueConnect).

  Worker ``w`` sits on host ``w // workers_per_host`` at local rank
  ``w % workers_per_host``. See the module docstring for the formulas.

  Attributes:
    num_workers: ``n``, a multiple of ``workers_per_host``.
    workers_per_host: ``g >= 1``.
    local_bandwidth: ``β₁ > 0``, intra-host bytes per second per link.
    local_latency: ``α₁ >= 0``, intra-host seconds per message.
    host_bandwidth: ``β₂ > 0``, inter-host bytes per second per worker.
    host_latency: ``α₂ >= 0``, inter-host seconds per message.

  Example:
    >>> topo = HierarchicalTopology(
    ...     8, workers_per_host=4, local_bandwidth=1e10, local_latency=0.0,
    ...     host_bandwidth=1e9, host_latency=0.0)
    >>> round(topo.all_reduce(4e6), 9)  # 2·(3/4)·4e6/1e10 + 2·(1/2)·1e6/1e9
    0.0016
  """

  num_workers: int
  _: dataclasses.KW_ONLY
  workers_per_host: int
  local_bandwidth: float
  local_latency: float
  host_bandwidth: float
  host_latency: float
  TIERS: ClassVar[tuple[str, ...]] = ("local", "hosts")

  def __post_init__(self):
    n = _check_workers(self.num_workers)
    g = validation.check_int("workers_per_host", self.workers_per_host,
                             minimum=1)
    if n % g:
      raise ValueError(
          f"num_workers must be a multiple of workers_per_host, got "
          f"num_workers={n!r}, workers_per_host={g!r}.")
    _check_link(self.local_bandwidth, self.local_latency, "local_")
    _check_link(self.host_bandwidth, self.host_latency, "host_")

  @property
  def num_hosts(self) -> int:
    """``h = n / g``."""
    return self.num_workers // self.workers_per_host

  def _links(self) -> tuple[dict[str, float], dict[str, float]]:
    return (dict(bandwidth=self.local_bandwidth, latency=self.local_latency),
            dict(bandwidth=self.host_bandwidth, latency=self.host_latency))

  def _groups(self, kind, num_bytes, mask, tier):
    intra, inter = self._links()
    # grid[j, r]: worker at host j, local rank r participates.
    grid = mask.reshape(self.num_hosts, self.workers_per_host)
    if tier is None:
      counts = grid.sum(axis=1)
      counts = counts[counts > 0]
      seconds = _HIERARCHICAL[kind](
          num_bytes, int(counts.max()), int(counts.min()), len(counts),
          int(counts.sum()), intra, inter)
      return ((mask, seconds),)
    labels, link = self._tier_groups(tier)
    groups = []
    for label in range(labels.max() + 1):
      members = mask & (labels == label)
      if members.any():
        groups.append((members, _RING[kind](num_bytes, int(members.sum()),
                                            **link)))
    return tuple(groups)

  def _tier_groups(self, tier: str) -> tuple[np.ndarray, dict[str, float]]:
    """Group label of every worker under ``tier``, and that tier's link."""
    workers = np.arange(self.num_workers)
    intra, inter = self._links()
    return {"local": (workers // self.workers_per_host, intra),
            "hosts": (workers % self.workers_per_host, inter)}[tier]


TOPOLOGIES: Mapping[str, type] = types.MappingProxyType({
    "ring": RingTopology,
    "tree": TreeTopology,
    "parameter_server": ParameterServerTopology,
    "hierarchical": HierarchicalTopology,
})
"""Topology name -> class."""


def make_topology(name: str, num_workers: int, **params: Any) -> Topology:
  """Builds a topology by registry name.

  Args:
    name: a key of :data:`TOPOLOGIES`.
    num_workers: ``n >= 1``.
    **params: the topology's fields, e.g. ``bandwidth=1e9, latency=5e-6``.

  Returns:
    The topology.

  Raises:
    ValueError: on an unknown name or parameter (listing the known ones) or
      bad values.

  Example:
    >>> make_topology("ring", 4, bandwidth=1e9, latency=0.0).all_gather(1e6)
    0.003
  """
  if name not in TOPOLOGIES:
    raise ValueError(
        f"Unknown topology {name!r}; known: {sorted(TOPOLOGIES)}.")
  cls = TOPOLOGIES[name]
  known = [f.name for f in dataclasses.fields(cls) if f.name != "num_workers"]
  unknown = sorted(set(params) - set(known))
  if unknown:
    raise ValueError(
        f"topology {name!r} takes parameters {known}, got unknown "
        f"{unknown} (values {[params[k] for k in unknown]}).")
  return cls(num_workers, **params)
