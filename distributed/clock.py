r"""The simulated clock: per-worker time from compute draws and priced rounds.

Host side, pure numpy. The clock turns what a run did (local steps per
worker, communication rounds) into simulated seconds under a declared model:
a :class:`~distoptax.distributed.stragglers.ComputeModel` (base compute
seconds, static imbalance, straggler draws) and a
:class:`~distoptax.distributed.topologies.Topology` (collective costs). It is
functional: every method takes a :class:`ClockState` and returns a new one.

Model and conventions:

  * **Per-worker clocks.** ``time[i]`` (float64 seconds) is when worker ``i``
    is done with everything charged to it so far.
  * **Compute.** A local step of worker ``i`` adds ``c_{ik}``, where ``k`` is
    the worker's own count of local steps so far (``steps[i]``) and
    ``c_{ik}`` is drawn from ``(seed, k, i)`` alone (see
    ``ComputeModel.times`` in :mod:`~distoptax.distributed.stragglers`).
    So ``H`` local steps from a common start cost
    ``max_i Σ_k c_{ik}``, not ``H · max_i c_{ik}``.
  * **Rounds.** A :class:`Round` is one collective: its kind, the bytes each
    worker hands to it, its participants (``None``: all) and, on a
    hierarchical topology, its tier. Rounds are charged in order; each pays
    its own latency. A round is a barrier over its participants only: it
    starts when the last participant's clock reaches it, and ends ``T``
    seconds later for all of them, ``T`` being the topology's cost over the
    participants. Non-participants' clocks are not advanced and do not delay
    it. A round on one tier of a hierarchical topology runs as parallel
    groups (one per host, or per local rank), each a barrier of its own.
  * **Asynchronous events.** For methods with a server that applies updates
    as they arrive (asynchronous SGD, FedAsync), ``time[i]`` is when worker
    ``i``'s current task ends. The next event is the worker with the smallest
    clock (ties: the lowest index). Its staleness is the number of server
    updates applied since the model it read (``version - read_version[i]``).
    Completing the event charges the worker's rounds (priced over that worker
    alone), applies the update (``version += 1``), lets the worker read the
    new model and starts its next task.
  * **Drops.** Each message is lost independently with ``drop_probability``;
    the decisions of step ``t`` come from ``default_rng([seed, t, 1])``, a
    stream independent of the compute draws.
  * **State.** :class:`ClockState` is a NamedTuple of numpy arrays: a
    checkpoint stores ``state._asdict()`` (``np.savez``, orbax or JSON lists)
    and :meth:`Clock.restore` rebuilds and checks it; a resumed run then
    continues exactly as an uninterrupted one.

References:
  Wang & Joshi, `Adaptive communication strategies to achieve the best
  error-runtime trade-off in local-update SGD
  <https://arxiv.org/abs/1810.08313>`_, MLSys 2019 (the runtime of a period
  of local steps is ``max_i Σ_k c_{ik}`` plus the communication delay).

  Xie, Koyejo & Gupta, `Asynchronous federated optimization
  <https://arxiv.org/abs/1903.03934>`_, 2019 (staleness as server updates
  since the model was read).

  Lai et al., `FedScale: benchmarking model and system performance of
  federated learning at scale <https://arxiv.org/abs/2105.11367>`_, ICML 2022
  (an event-driven virtual clock over per-client completion times).
"""

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from distoptax.distributed import stragglers
from distoptax.distributed import topologies
from distoptax.distributed import validation

__all__ = ["Clock", "ClockState", "Event", "Round"]

_DROP_STREAM = 1  # Third seed word of the drop draws; compute draws use two.


class Round(NamedTuple):
  """One communication round, as a step records it.

  Attributes:
    kind: one of :data:`~distoptax.distributed.topologies.COLLECTIVES`:
      ``"all_reduce"``, ``"all_gather"``, ``"reduce_scatter"`` or
      ``"broadcast"``.
    bytes: integer bytes each participant hands to the collective.
    participants: ``None`` (all workers) or a ``[num_workers]`` boolean mask
      of the workers that take part in the round.
    tier: ``None`` (the whole topology) or a tier of a hierarchical topology
      (``"local"`` or ``"hosts"``).
  """

  kind: str
  bytes: int
  participants: np.ndarray | None = None
  tier: str | None = None


class ClockState(NamedTuple):
  """The clock's state: small numpy arrays, safe to checkpoint.

  Attributes:
    time: ``float64[n]``, each worker's clock in seconds.
    steps: ``int64[n]``, local steps each worker has computed (the index of
      its next compute draw).
    version: ``int64[]``, server updates applied (asynchronous events).
    read_version: ``int64[n]``, the version each worker last read.
  """

  time: np.ndarray
  steps: np.ndarray
  version: np.ndarray
  read_version: np.ndarray


class Event(NamedTuple):
  """One asynchronous arrival at the server.

  Attributes:
    worker: the worker whose task ends first.
    time: its clock when the task ends (before its communication).
    staleness: server updates applied since the model its task read.
  """

  worker: int
  time: float
  staleness: int


@dataclasses.dataclass(frozen=True)
class Clock:
  r"""Per-worker simulated clocks driven by a compute model and a topology.

  A synchronous period of ``H`` local steps followed by rounds ``R`` costs,
  from a common start,

  .. math::

    T = \max_i \sum_{k=1}^{H} c_{ik} + \sum_{r \in R} T_r,

  with ``T_r`` the topology's cost of round ``r`` over its participants.

  Attributes:
    compute: the :class:`~distoptax.distributed.stragglers.ComputeModel`.
    topology: a :class:`~distoptax.distributed.topologies.Topology` over the
      same number of workers.
    drop_probability: probability in ``[0, 1]`` that a message is lost.

  Example:
    >>> from distoptax.distributed import stragglers, topologies
    >>> clock = Clock(
    ...     stragglers.ComputeModel(4, 0.1, imbalance=(1, 1, 2, 1)),
    ...     topologies.RingTopology(4, bandwidth=1e9, latency=0.0))
    >>> state = clock.sync_step(clock.init(), [Round("all_reduce", 2_000_000)],
    ...                         num_steps=3)
    >>> state.time  # 3 steps of the slowest worker, then 2·(3/4)·2e6/1e9
    array([0.603, 0.603, 0.603, 0.603])
  """

  compute: stragglers.ComputeModel
  topology: topologies.Topology
  _: dataclasses.KW_ONLY
  drop_probability: float = 0.0

  def __post_init__(self):
    if not isinstance(self.compute, stragglers.ComputeModel):
      raise TypeError(
          f"compute must be a ComputeModel, got {self.compute!r}.")
    if not isinstance(self.topology, topologies.Topology):
      raise TypeError(
          f"topology must be a Topology (see TOPOLOGIES), got "
          f"{self.topology!r}.")
    if self.topology.num_workers != self.compute.num_workers:
      raise ValueError(
          f"the compute model has num_workers={self.compute.num_workers!r} "
          f"but the topology has num_workers={self.topology.num_workers!r}.")
    validation.check_probability("drop_probability", self.drop_probability)

  @property
  def num_workers(self) -> int:
    """``n``."""
    return self.compute.num_workers

  def init(self) -> ClockState:
    """All clocks at 0, no step computed, no server update applied."""
    n = self.num_workers
    return ClockState(np.zeros(n), np.zeros(n, np.int64),
                      np.zeros((), np.int64), np.zeros(n, np.int64))

  def restore(self, saved: Mapping[str, Any] | ClockState) -> ClockState:
    """Rebuilds a state from ``state._asdict()`` (or checks a state).

    Args:
      saved: a :class:`ClockState` or a mapping with its four fields, as
        array-likes (numpy arrays, lists from JSON).

    Returns:
      A :class:`ClockState` of fresh float64/int64 arrays.

    Raises:
      ValueError: on missing or extra fields, wrong shapes, non-integer
        counters, NaN or infinite times, negative counters, or a worker that
        read a version the server has not reached.
    """
    if isinstance(saved, ClockState):
      saved = saved._asdict()
    if not isinstance(saved, Mapping) or set(saved) != set(
        ClockState._fields):
      raise ValueError(
          f"a clock state needs exactly the fields {list(ClockState._fields)},"
          f" got {saved!r}.")
    n = self.num_workers
    shapes = {"time": (n,), "steps": (n,), "version": (),
              "read_version": (n,)}
    arrays = {}
    for name, shape in shapes.items():
      raw = np.asarray(saved[name])
      if raw.shape != shape:
        raise ValueError(
            f"clock state {name} must have shape {shape}, got shape "
            f"{raw.shape}: {saved[name]!r}.")
      if name == "time":
        if raw.dtype.kind not in "iuf" or not np.all(np.isfinite(raw)):
          raise ValueError(
              f"clock state time must be finite seconds, got {raw!r}.")
        arrays[name] = raw.astype(np.float64)
      else:
        if raw.dtype.kind not in "iu" or np.any(raw < 0):
          raise ValueError(
              f"clock state {name} must be non-negative integers, got "
              f"{raw!r}.")
        arrays[name] = raw.astype(np.int64)
    if np.any(arrays["read_version"] > arrays["version"]):
      raise ValueError(
          f"clock state read_version {arrays['read_version']!r} exceeds the "
          f"server version {arrays['version']!r}.")
    return ClockState(**arrays)

  def compute_steps(
      self,
      state: ClockState,
      num_steps: int = 1,
      *,
      workers: Any = None,
  ) -> ClockState:
    r"""Advances the chosen workers' clocks by their next local steps.

    .. math::

      time_i \leftarrow time_i + \sum_{k=steps_i}^{steps_i + H - 1} c_{ik},
      \qquad steps_i \leftarrow steps_i + H.

    Args:
      state: the current state.
      num_steps: ``H >= 1`` local steps.
      workers: ``None`` (all) or a ``[n]`` boolean mask of the workers that
        compute; the others' clocks and step counts are unchanged.

    Returns:
      The new state.

    Raises:
      ValueError: on a bad state, ``H < 1`` or a bad mask.
    """
    state = self.restore(state)
    h = validation.check_int("num_steps", num_steps, minimum=1)
    n = self.num_workers
    mask = (np.ones(n, dtype=bool) if workers is None
            else validation.check_mask("workers", workers, n))
    chosen = np.flatnonzero(mask)
    time, steps = state.time, state.steps
    draws: dict[int, np.ndarray] = {}
    for k in range(h):
      index = steps[chosen] + k
      for step in np.unique(index):
        if step not in draws:
          draws[int(step)] = self.compute.times(int(step))
        who = chosen[index == step]
        time[who] += draws[int(step)][who]
    steps[chosen] += h
    return state._replace(time=time, steps=steps)

  def communicate(self, state: ClockState,
                  rounds: Sequence[Round]) -> ClockState:
    """Charges rounds in order, each a barrier over its participants.

    Args:
      state: the current state.
      rounds: the step's :class:`Round` records, in the order they ran.

    Returns:
      The new state: each round's participants end at the round's start
      (their latest clock) plus its cost; the others are unchanged.

    Raises:
      TypeError: on a record that is not a :class:`Round`.
      ValueError: on an unknown kind or tier, non-integer or negative bytes,
        or a participants mask of the wrong length or with no worker.

    Example:
      >>> from distoptax.distributed import stragglers, topologies
      >>> clock = Clock(stragglers.ComputeModel(4, 0.0),
      ...               topologies.RingTopology(4, bandwidth=1e9, latency=0.5))
      >>> state = clock.restore({**clock.init()._asdict(),
      ...                        "time": [0.0, 3.0, 1.0, 9.0]})
      >>> who = np.array([True, False, True, False])
      >>> clock.communicate(state, [Round("broadcast", 0, who)]).time
      array([2., 3., 2., 9.])
    """
    state = self.restore(state)
    time = state.time
    for record in self._check_rounds(rounds):
      for members, seconds in self.topology.groups(
          record.kind, record.bytes, record.participants, tier=record.tier):
        time[members] = time[members].max() + seconds
    return state._replace(time=time)

  def sync_step(
      self,
      state: ClockState,
      rounds: Sequence[Round] = (),
      *,
      num_steps: int = 1,
      workers: Any = None,
  ) -> ClockState:
    """``num_steps`` local steps of ``workers``, then ``rounds``.

    Args:
      state: the current state.
      rounds: the :class:`Round` records that end the period.
      num_steps: ``H >= 1`` local steps before communicating.
      workers: ``None`` (all) or a ``[n]`` mask of the workers that compute.

    Returns:
      The new state.
    """
    state = self.compute_steps(state, num_steps, workers=workers)
    return self.communicate(state, rounds)

  def next_event(self, state: ClockState) -> Event:
    """The worker whose task ends first, its end time and its staleness.

    Args:
      state: the current state (each clock at the end of its current task).

    Returns:
      An :class:`Event`; ties go to the lowest worker index.
    """
    state = self.restore(state)
    worker = int(np.argmin(state.time))
    return Event(worker, float(state.time[worker]),
                 int(state.version - state.read_version[worker]))

  def complete_next(
      self,
      state: ClockState,
      rounds: Sequence[Round] = (),
      *,
      num_steps: int = 1,
  ) -> tuple[ClockState, Event]:
    """Applies the next arrival and starts that worker's next task.

    The worker pays ``rounds`` (priced over it alone, e.g. a push and a pull
    with the parameter server), the server applies its update, the worker
    reads the new model and computes ``num_steps`` local steps.

    Args:
      state: the current state; start all tasks first with
        :meth:`compute_steps`.
      rounds: the worker's :class:`Round` records; their ``participants``
        must be ``None`` (the event's worker is the only participant).
      num_steps: ``H >= 1`` local steps of the next task.

    Returns:
      ``(new_state, event)``.

    Raises:
      ValueError: on a round that names participants, or bad rounds.

    Example:
      >>> from distoptax.distributed import stragglers, topologies
      >>> clock = Clock(
      ...     stragglers.ComputeModel(2, 1.0, imbalance=(1, 3)),
      ...     topologies.ParameterServerTopology(2, bandwidth=1e9,
      ...                                        latency=0.0))
      >>> state = clock.compute_steps(clock.init())
      >>> for _ in range(4):
      ...   state, event = clock.complete_next(state)
      ...   print(event)
      Event(worker=0, time=1.0, staleness=0)
      Event(worker=0, time=2.0, staleness=0)
      Event(worker=0, time=3.0, staleness=0)
      Event(worker=1, time=3.0, staleness=3)
    """
    rounds = self._check_rounds(rounds)
    for index, record in enumerate(rounds):
      if record.participants is not None:
        raise ValueError(
            f"rounds[{index}].participants must be None in an asynchronous "
            f"event (the arriving worker is the only participant), got "
            f"{record.participants!r}.")
    event = self.next_event(state)
    state = self.restore(state)
    alone = np.arange(self.num_workers) == event.worker
    state = self.communicate(
        state, [record._replace(participants=alone) for record in rounds])
    version = state.version + 1
    read_version = state.read_version
    read_version[event.worker] = version
    state = state._replace(version=version, read_version=read_version)
    return self.compute_steps(state, num_steps, workers=alone), event

  def drops(self, step: int, shape: int | tuple[int, ...] = ()) -> np.ndarray:
    """Which messages of ``step`` are lost, drawn from ``(seed, step)``.

    Args:
      step: non-negative step index.
      shape: the shape of the decisions, e.g. ``(n,)`` for one message per
        worker or ``(2, n, n)`` for pushes and pulls between ``n`` workers
        and ``n`` servers.

    Returns:
      A boolean array of ``shape``: ``True`` where the message is dropped,
      each independently with probability ``drop_probability``.

    Raises:
      ValueError: on a negative step or a bad shape.
    """
    step = validation.check_int("step", step, minimum=0)
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    dims = tuple(validation.check_int("shape", d, minimum=0) for d in dims)
    rng = np.random.default_rng([int(self.compute.seed), step, _DROP_STREAM])
    return rng.random(dims) < self.drop_probability

  def describe(self) -> dict[str, Any]:
    """A JSON-serialisable description, for ``config.json``."""
    return {
        "compute": self.compute.describe(),
        "topology": self.topology.describe(),
        "drop_probability": float(self.drop_probability),
    }

  def _check_rounds(self, rounds: Sequence[Round]) -> list[Round]:
    if isinstance(rounds, Round):
      raise TypeError(
          f"rounds must be a sequence of Round records, got one Round "
          f"{rounds!r}; wrap it in a list.")
    checked = []
    for index, record in enumerate(rounds):
      if not isinstance(record, Round):
        raise TypeError(
            f"rounds[{index}] must be a Round, got {record!r}.")
      if record.kind not in topologies.COLLECTIVES:
        raise ValueError(
            f"rounds[{index}].kind {record.kind!r} is unknown; known: "
            f"{list(topologies.COLLECTIVES)}.")
      num_bytes = validation.check_int(
          f"rounds[{index}].bytes", record.bytes, minimum=0)
      participants = record.participants
      if participants is not None:
        participants = validation.check_mask(
            f"rounds[{index}].participants", participants, self.num_workers)
      checked.append(record._replace(bytes=num_bytes,
                                     participants=participants))
    return checked
