r"""The declared system model: compute, network and drops in one object.

One machine has neither a network nor stragglers, so wall-clock claims
(AdaComm's speed-up, eager-SGD's tolerance of imbalance, compression
speed-ups) are evaluated against an explicit model instead. The model is
made of parts, each in its own module, all pure numpy on the host:

  * :mod:`~distoptax.distributed.stragglers`: compute seconds per local step
    (base, static imbalance, straggler distributions);
  * :mod:`~distoptax.distributed.topologies`: collective costs (ring, tree,
    parameter server, two-tier hierarchical);
  * :mod:`~distoptax.distributed.clock`: per-worker clocks, rounds, barriers
    over participants, asynchronous events;
  * :mod:`~distoptax.distributed.schedules`: what the model decides (deadline
    participation, arrival order and staleness, drops) as arrays.

:class:`SystemModel` composes them from a launcher's flat configuration and
prices one synchronous step:

.. math::

  T_{step} = \max_{i \in P} c_i + \sum_{r} T_r,
  \qquad c_i = c \cdot m_i + d_i,

where ``P`` is the set of workers that compute this step, ``c_i`` worker
``i``'s compute time at this step and ``T_r`` the cost of each of the step's
rounds. The byte-count form (``all_reduce_bytes``, ``all_gather_bytes``)
issues one round of each kind with non-zero bytes over all ``n`` workers
(non-participants contribute a masked zero, as the library's collectives
do, so they communicate but are not waited for), and a one-worker model runs
no collective. A persistent clock (local steps, partial rounds, events) is
``SystemModel.clock``.

This module also re-exports the straggler and ring/parameter-server names
that ``distoptax.distributed`` has always imported from it.
"""

import dataclasses
from typing import Any, NamedTuple, Sequence

import numpy as np

from distoptax.distributed import clock as clock_lib
from distoptax.distributed import validation
from distoptax.distributed.stragglers import ComputeModel
from distoptax.distributed.stragglers import ExponentialDelay
from distoptax.distributed.stragglers import InjectedDelay
from distoptax.distributed.stragglers import LogNormalDelay
from distoptax.distributed.stragglers import make_straggler
from distoptax.distributed.stragglers import NoStragglers
from distoptax.distributed.stragglers import ParetoDelay
from distoptax.distributed.stragglers import Straggler
from distoptax.distributed.stragglers import STRAGGLERS
from distoptax.distributed.topologies import make_topology
from distoptax.distributed.topologies import parameter_server_seconds
from distoptax.distributed.topologies import ring_all_gather_seconds
from distoptax.distributed.topologies import ring_all_reduce_seconds
from distoptax.distributed.topologies import Topology
from distoptax.distributed.topologies import TOPOLOGIES

__all__ = [
    "ExponentialDelay",
    "InjectedDelay",
    "LogNormalDelay",
    "NoStragglers",
    "ParetoDelay",
    "STRAGGLERS",
    "StepTime",
    "Straggler",
    "SystemModel",
    "TOPOLOGIES",
    "make_straggler",
    "parameter_server_seconds",
    "ring_all_gather_seconds",
    "ring_all_reduce_seconds",
]


class StepTime(NamedTuple):
  """Simulated seconds of one synchronous step.

  Attributes:
    compute: slowest computing worker's compute time.
    communication: time of the step's rounds after that.
    total: ``compute + communication``.
  """

  compute: float
  communication: float
  total: float


@dataclasses.dataclass(frozen=True)
class SystemModel:
  r"""Workers, links and stragglers that turn a step into simulated seconds.

  Worker ``i``'s compute time at step ``t`` is

  .. math::

    c_i(t) = compute\_seconds \cdot m_i + d_i(t),

  with ``m_i`` the static ``imbalance`` factor (1 if ``None``) and ``d_i(t)``
  drawn from ``straggler`` with ``np.random.default_rng([seed, t])``, so the
  same step of a resumed run gets the same times (see
  :class:`~distoptax.distributed.stragglers.ComputeModel`).

  Attributes:
    num_workers: ``n >= 1``.
    compute_seconds: base compute seconds per step, ``>= 0``.
    bandwidth: ``β > 0``, bytes per second per link; required with a
      topology name, ``None`` with a topology object.
    latency: ``α >= 0``, seconds per message; as ``bandwidth``.
    imbalance: ``None`` or ``n`` static factors ``m_i > 0``.
    straggler: a :class:`~distoptax.distributed.stragglers.Straggler`,
      default no stragglers.
    topology: a key of :data:`TOPOLOGIES` built with ``bandwidth``,
      ``latency`` (and ``num_servers``), or a
      :class:`~distoptax.distributed.topologies.Topology` over ``n`` workers.
    num_servers: ``None``, or the servers of ``"parameter_server"``.
    seed: non-negative integer seed of the straggler and drop draws.
    drop_probability: probability in ``[0, 1]`` that a message is lost.
    clock: the :class:`~distoptax.distributed.clock.Clock` of these parts
      (derived, not an argument).

  Example:
    >>> model = SystemModel(4, 0.05, bandwidth=1e9, latency=0.0,
    ...                     imbalance=(1, 1, 1, 2))
    >>> t = model.step_seconds(0, all_reduce_bytes=4_000_000)
    >>> round(t.compute, 9), round(t.communication, 9)  # 2·(3/4)·4e6/1e9
    (0.1, 0.006)
  """

  num_workers: int
  compute_seconds: float
  _: dataclasses.KW_ONLY
  bandwidth: float | None = None
  latency: float | None = None
  imbalance: tuple[float, ...] | None = None
  straggler: Straggler = dataclasses.field(default_factory=NoStragglers)
  topology: str | Topology = "ring"
  num_servers: int | None = None
  seed: int = 0
  drop_probability: float = 0.0
  clock: clock_lib.Clock = dataclasses.field(
      init=False, repr=False, compare=False)

  def __post_init__(self):
    compute = ComputeModel(
        self.num_workers, self.compute_seconds, imbalance=self.imbalance,
        straggler=self.straggler, seed=self.seed)
    object.__setattr__(self, "imbalance", compute.imbalance)  # Normalised.
    network = self.topology
    if isinstance(network, Topology):
      given = {name: getattr(self, name)
               for name in ("bandwidth", "latency", "num_servers")
               if getattr(self, name) is not None}
      if given:
        raise ValueError(
            f"with a Topology object, its own fields set the links; got "
            f"{given} as well.")
    elif isinstance(network, str):
      if self.bandwidth is None or self.latency is None:
        raise ValueError(
            f"topology {network!r} needs bandwidth and latency, got "
            f"bandwidth={self.bandwidth!r}, latency={self.latency!r}.")
      params = dict(bandwidth=self.bandwidth, latency=self.latency)
      if self.num_servers is not None:
        params["num_servers"] = self.num_servers
      network = make_topology(network, compute.num_workers, **params)
    else:
      raise ValueError(
          f"topology must be a name in {sorted(TOPOLOGIES)} or a Topology, "
          f"got {network!r}.")
    object.__setattr__(self, "clock", clock_lib.Clock(
        compute, network, drop_probability=self.drop_probability))

  def compute_times(self, step: int) -> np.ndarray:
    """Compute seconds of every worker at ``step``.

    Args:
      step: non-negative step index.

    Returns:
      ``[num_workers]`` float64 array ``compute_seconds · m_i + d_i(step)``.

    Raises:
      ValueError: on a negative step, or a straggler returning a wrong shape
        or negative delays.
    """
    return self.clock.compute.times(step)

  def communication_seconds(
      self, *, all_reduce_bytes: int = 0, all_gather_bytes: int = 0
  ) -> float:
    r"""Seconds of one step's collectives under the model's topology.

    .. math::

      T_{comm} = [B_{AR} > 0]\, T_{AR}(B_{AR}) + [B_{AG} > 0]\, T_{AG}(B_{AG})

    Args:
      all_reduce_bytes: bytes each worker hands to the all-reduce (``psum``)
        this step, all tensors bucketed into one call.
      all_gather_bytes: bytes each worker contributes to the all-gather this
        step, bucketed into one call.

    Returns:
      Seconds; 0 when no bytes move or ``num_workers == 1``.

    Raises:
      ValueError: on negative or non-integer bytes.
    """
    rounds = self._byte_rounds(all_reduce_bytes, all_gather_bytes)
    state = self.clock.communicate(self.clock.init(), rounds)
    return float(state.time.max())

  def step_seconds(
      self,
      step: int,
      *,
      all_reduce_bytes: int = 0,
      all_gather_bytes: int = 0,
      participation: Any = None,
      rounds: Sequence[clock_lib.Round] | None = None,
  ) -> StepTime:
    """Simulated seconds of synchronous step ``step``, from a common start.

    Args:
      step: non-negative step index (selects the straggler draw).
      all_reduce_bytes: per-worker bytes handed to the all-reduce.
      all_gather_bytes: per-worker bytes handed to the all-gather.
      participation: ``[num_workers]`` boolean mask (or 0/1 values) of the
        workers that compute this step and are waited for; ``None`` means
        all. The byte-count rounds still run over all workers.
      rounds: the step's :class:`~distoptax.distributed.clock.Round` records,
        instead of the byte counts.

    Returns:
      A :class:`StepTime`; ``total`` is when the last worker is done.

    Raises:
      ValueError: on both byte counts and rounds, a mask of the wrong length,
        non-boolean values, or no participant.
    """
    if rounds is None:
      rounds = self._byte_rounds(all_reduce_bytes, all_gather_bytes)
    elif all_reduce_bytes or all_gather_bytes:
      raise ValueError(
          f"give either rounds or byte counts, got rounds={rounds!r} and "
          f"all_reduce_bytes={all_reduce_bytes!r}, "
          f"all_gather_bytes={all_gather_bytes!r}.")
    step = validation.check_int("step", step, minimum=0)
    n = self.num_workers
    start = self.clock.init()._replace(steps=np.full(n, step, np.int64))
    mask = (np.ones(n, dtype=bool) if participation is None
            else validation.check_mask("participation", participation, n))
    computed = self.clock.compute_steps(start, workers=mask)
    compute = float(computed.time[mask].max())
    total = float(self.clock.communicate(computed, rounds).time.max())
    return StepTime(compute=compute, communication=total - compute,
                    total=total)

  def describe(self) -> dict[str, Any]:
    """A JSON-serialisable description of the model, for ``config.json``."""
    network = self.clock.topology.describe()
    return {
        **self.clock.compute.describe(),
        "topology": network["name"],
        "network": network,
        "drop_probability": float(self.drop_probability),
        "step_time": (
            "max over computing workers of compute_seconds * imbalance_i "
            "+ straggler delay, plus the cost of each of the step's rounds "
            "(by default one all-reduce and one all-gather of the step's "
            "per-worker bytes over all workers) under the topology"),
    }

  def _byte_rounds(self, all_reduce_bytes: Any,
                   all_gather_bytes: Any) -> list[clock_lib.Round]:
    ar = validation.check_int("all_reduce_bytes", all_reduce_bytes, minimum=0)
    ag = validation.check_int("all_gather_bytes", all_gather_bytes, minimum=0)
    if self.num_workers == 1:
      return []
    kinds = (("all_reduce", ar), ("all_gather", ag))
    return [clock_lib.Round(kind, b) for kind, b in kinds if b > 0]
