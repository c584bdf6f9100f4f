r"""Schedules the system model decides, as arrays a jitted step takes as data.

Host side, pure numpy. Who participates under a deadline, when each worker
finishes, which worker's update arrives next and how stale it is, which
messages are dropped: these depend on the declared system model
(:class:`~distoptax.distributed.clock.Clock`), not on the training numbers,
so they are produced here, from the seed, before the steps that use them,
and fed to the jitted step as ordinary arrays (participation masks,
staleness indices, drop masks). Nothing random happens inside the step for
them, so ``simulate`` and ``on_mesh`` see the same schedule.

Every function takes a clock state and returns the state after the scheduled
steps or events with the arrays; producing a schedule in chunks (and
checkpointing the state between chunks) gives the same arrays as producing it
at once, and a run resumed from a checkpointed state continues the same
schedule.

Deadline rule (synchronous SGD with a deadline; the late workers' work is
dropped, like backup workers): every step starts when the previous one has
ended on all workers (``start = max_i time_i``); every worker computes its
local steps; the workers done by ``start + deadline`` participate. If some
are late the step's rounds start at the deadline (the server cannot know
earlier that no one else arrives), if none is late they start when the last
one is done, and if none made it the first to finish alone participates and
the rounds start then. Late workers abandon their work when the rounds start.

References:
  Chen, Pan, Monga, Bengio & Jozefowicz, `Revisiting distributed
  synchronous SGD <https://arxiv.org/abs/1604.00981>`_, 2016 (dropping the
  slowest workers).

  Xie, Koyejo & Gupta, `Asynchronous federated optimization
  <https://arxiv.org/abs/1903.03934>`_, 2019 (staleness-weighted mixing).

  Yu et al., `Distributed learning over unreliable networks
  <https://arxiv.org/abs/1810.07766>`_, ICML 2019 (independent message
  drops with probability ``p``).
"""

from typing import NamedTuple, Sequence

import numpy as np

from distoptax.distributed import clock as clock_lib
from distoptax.distributed import validation

__all__ = [
    "AsyncSchedule",
    "DeadlineSchedule",
    "async_schedule",
    "deadline_schedule",
    "drop_schedule",
]


class DeadlineSchedule(NamedTuple):
  """A deadline schedule of ``T`` synchronous steps of ``n`` workers.

  Attributes:
    participants: ``bool[T, n]``, the workers whose work each step uses.
    finish: ``float64[T, n]``, when each worker's local steps would end.
    start: ``float64[T]``, when each step starts.
    end: ``float64[T]``, when each step's last round ends.
  """

  participants: np.ndarray
  finish: np.ndarray
  start: np.ndarray
  end: np.ndarray


class AsyncSchedule(NamedTuple):
  """``E`` asynchronous arrivals at the server, in order.

  Attributes:
    worker: ``int32[E]``, the arriving worker.
    time: ``float64[E]``, when its task ended.
    staleness: ``int32[E]``, server updates since the model it read.
  """

  worker: np.ndarray
  time: np.ndarray
  staleness: np.ndarray


def deadline_schedule(
    clock: clock_lib.Clock,
    state: clock_lib.ClockState,
    num_steps: int,
    *,
    deadline: float,
    rounds: Sequence[clock_lib.Round] = (),
    local_steps: int = 1,
) -> tuple[clock_lib.ClockState, DeadlineSchedule]:
  r"""Who participates in each synchronous step under a deadline.

  With ``s`` the step's start and ``f_i = s + \sum_k c_{ik}``:

  .. math::

    P = \{i : f_i \le s + D\}, \qquad
    start\_of\_rounds = \begin{cases}
      \max_i f_i & P = \text{all} \\
      s + D & \emptyset \ne P \ne \text{all} \\
      \min_i f_i & P = \emptyset \text{ (then } P = \arg\min_i f_i)
    \end{cases}

  Args:
    clock: the system model.
    state: the clock state before the first step.
    num_steps: ``T >= 0`` steps to schedule.
    deadline: ``D >= 0`` seconds after a step's start.
    rounds: the :class:`~distoptax.distributed.clock.Round` records of every
      step (``participants=None``: every worker takes part, late ones
      included, to receive the new model).
    local_steps: local steps each worker computes per step, ``>= 1``.

  Returns:
    ``(state_after, schedule)``.

  Raises:
    ValueError: on a NaN, infinite or negative deadline, ``T < 0`` or bad
      rounds.

  Example:
    >>> from distoptax.distributed import stragglers, topologies
    >>> clock = clock_lib.Clock(
    ...     stragglers.ComputeModel(4, 1.0, imbalance=(1, 2, 3, 4)),
    ...     topologies.RingTopology(4, bandwidth=1e9, latency=0.0))
    >>> _, plan = deadline_schedule(clock, clock.init(), 2, deadline=2.5)
    >>> plan.participants
    array([[ True,  True, False, False],
           [ True,  True, False, False]])
    >>> plan.end
    array([2.5, 5. ])
  """
  t = validation.check_int("num_steps", num_steps, minimum=0)
  limit = validation.check_real("deadline", deadline)
  validation.check_int("local_steps", local_steps, minimum=1)
  state = clock.restore(state)
  n = clock.num_workers
  participants = np.zeros((t, n), dtype=bool)
  finish = np.zeros((t, n))
  start = np.zeros(t)
  end = np.zeros(t)
  for step in range(t):
    start[step] = state.time.max()
    state = state._replace(time=np.full(n, start[step]))
    state = clock.compute_steps(state, local_steps)
    finish[step] = state.time
    on_time = finish[step] <= start[step] + limit
    if on_time.all():
      cutoff = finish[step].max()
    elif on_time.any():
      cutoff = start[step] + limit
    else:
      cutoff = finish[step].min()
      on_time = finish[step] == cutoff
    participants[step] = on_time
    state = clock.communicate(
        state._replace(time=np.minimum(finish[step], cutoff)), rounds)
    end[step] = state.time.max()
  return state, DeadlineSchedule(participants, finish, start, end)


def async_schedule(
    clock: clock_lib.Clock,
    state: clock_lib.ClockState,
    num_events: int,
    *,
    rounds: Sequence[clock_lib.Round] = (),
    local_steps: int = 1,
) -> tuple[clock_lib.ClockState, AsyncSchedule]:
  """The next ``num_events`` arrivals of an asynchronous run, in order.

  Each arrival is one ``Clock.complete_next`` (see
  :mod:`~distoptax.distributed.clock`).

  Args:
    clock: the system model.
    state: the clock state, every worker's first task already started (e.g.
      ``clock.compute_steps(clock.init(), local_steps)``).
    num_events: ``E >= 0``.
    rounds: each arrival's :class:`~distoptax.distributed.clock.Round`
      records (``participants=None``).
    local_steps: local steps of each task, ``>= 1``.

  Returns:
    ``(state_after, schedule)``.

  Example:
    >>> from distoptax.distributed import stragglers, topologies
    >>> clock = clock_lib.Clock(
    ...     stragglers.ComputeModel(3, 1.0, imbalance=(1, 2, 3)),
    ...     topologies.ParameterServerTopology(3, bandwidth=1e9, latency=0.0))
    >>> _, plan = async_schedule(clock, clock.compute_steps(clock.init()), 5)
    >>> plan.worker, plan.staleness
    (array([0, 0, 1, 0, 2], dtype=int32), array([0, 0, 2, 1, 4], dtype=int32))
  """
  e = validation.check_int("num_events", num_events, minimum=0)
  state = clock.restore(state)
  worker = np.zeros(e, np.int32)
  time = np.zeros(e)
  staleness = np.zeros(e, np.int32)
  for index in range(e):
    state, event = clock.complete_next(state, rounds, num_steps=local_steps)
    worker[index], time[index], staleness[index] = event
  return state, AsyncSchedule(worker, time, staleness)


def drop_schedule(
    clock: clock_lib.Clock,
    first_step: int,
    num_steps: int,
    shape: int | tuple[int, ...] = (),
) -> np.ndarray:
  """Message drops of steps ``first_step .. first_step + num_steps - 1``.

  Row ``t`` is :meth:`Clock.drops <distoptax.distributed.clock.Clock.drops>`
  of step ``first_step + t``: a function of ``(seed, step)`` alone.

  Args:
    clock: the system model (its ``drop_probability`` and seed).
    first_step: the first step index, ``>= 0``.
    num_steps: ``T >= 0``.
    shape: the shape of one step's decisions.

  Returns:
    ``bool[T, *shape]``, ``True`` where a message is dropped.

  Example:
    >>> from distoptax.distributed import stragglers, topologies
    >>> clock = clock_lib.Clock(
    ...     stragglers.ComputeModel(4, 1.0),
    ...     topologies.RingTopology(4, bandwidth=1e9, latency=0.0),
    ...     drop_probability=1.0)
    >>> drop_schedule(clock, 10, 2, (4,))
    array([[ True,  True,  True,  True],
           [ True,  True,  True,  True]])
  """
  first = validation.check_int("first_step", first_step, minimum=0)
  t = validation.check_int("num_steps", num_steps, minimum=0)
  rows = [clock.drops(first + step, shape) for step in range(t)]
  if rows:
    return np.stack(rows)
  return np.zeros((0,) + clock.drops(first, shape).shape, dtype=bool)
