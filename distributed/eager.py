r"""eager-SGD: gradient averaging by partial (solo / majority) all-reduces.

Li, Ben-Nun, Di Girolamo, Alistarh & Hoefler's eager-SGD replaces the
all-reduce of synchronous SGD by a *partial collective*: a round starts as
soon as some processes are ready, and every process contributes what its
send buffer holds at that moment. Per worker :math:`i` of :math:`P`:

.. math::
  b_i \leftarrow \begin{cases} g_i(x_{s_i}) & i \text{ ready} \\
  0 & \text{otherwise} \end{cases}, \qquad
  x \leftarrow x - \eta\,\frac{1}{P} \sum_i b_i,

with :math:`x_{s_i}` the model worker :math:`i` read when its current
gradient computation started. A worker that is not ready sends zero (its
buffer was cleared after its last send) and keeps computing; its gradient,
computed on the older model, travels with the first round after it is done
(stale, never lost). The sum is divided by the full group size :math:`P`
(no renormalisation): a round with :math:`k` of :math:`P` ready takes a
step :math:`k/P` as large for identical gradients. Every worker applies the
same sum, so the replicas stay identical.

Who is ready is decided by the system model, on the host
(:func:`eager_schedule`): each worker's gradient computation ends at its
clock's finish time (compute model with load imbalance, see
``stragglers``); a round is triggered

* ``"solo"``: by the first worker to finish;
* ``"majority"``: by an *initiator* drawn from a seed shared by all
  workers (the reference code's ``rand_r(seed) % P``), so that in
  expectation half the workers have arrived;
* ``"sync"``: by the last one (synchronous SGD, the baseline);

and every ``limiter``-th round is forced fully synchronous, which bounds the
staleness (the reference scripts use 32). The transform
(:func:`eager_sgd`) reads the schedule's ready mask by its replicated round
counter, so the same masked all-reduce runs on every worker under
``simulate`` and ``on_mesh``.

Reference code checked: ``Shigangli/eager-SGD`` at d96905ae5c
(``opt_esgd_solo_imagenet_imbalance.py``: gradient scaled by
``1/comm_size``, buffer zeroed after the round, ``LIMITER 32``;
``opt_esgd_majority_imagenet_imbalance.py``: shared seed 6545343). See
``third_party_notes/partial_collectives.md``.

References:
  Li, Ben-Nun, Di Girolamo, Alistarh & Hoefler, `Taming unbalanced training
  workloads in deep learning with partial collective operations
  <https://arxiv.org/abs/1908.04207>`_, PPoPP 2020.
"""

from typing import Any, Callable, Mapping, NamedTuple
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.distributed import clock as clock_lib
from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.distributed import validation
from distoptax.worker_axis import collectives
from distoptax.worker_axis import replication

REFERENCE_LIMITER = 32
"""Asynchronous rounds between forced synchronous ones in the reference
ResNet-50 scripts (``#define LIMITER 32``)."""

_INITIATOR_STREAM = 2  # Third seed word of the initiator draws.


def _solo(finish: np.ndarray, rng: np.random.Generator) -> tuple[float, int]:
  del rng
  return float(finish.min()), -1


def _majority(finish: np.ndarray,
              rng: np.random.Generator) -> tuple[float, int]:
  initiator = int(rng.integers(finish.shape[0]))
  return float(finish[initiator]), initiator


def _sync(finish: np.ndarray, rng: np.random.Generator) -> tuple[float, int]:
  del rng
  return float(finish.max()), -1


TRIGGERS: Mapping[str, Callable[[np.ndarray, np.random.Generator],
                                tuple[float, int]]] = types.MappingProxyType({
                                    "majority": _majority,
                                    "solo": _solo,
                                    "sync": _sync,
                                })
"""Mode -> ``trigger(finish, rng) -> (time, initiator or -1)``."""


class EagerSchedule(NamedTuple):
  """``T`` rounds of an eager-SGD run of ``n`` workers.

  Attributes:
    ready: ``bool[T, n]``, the workers whose gradient is in their buffer
      when each round starts.
    trigger: ``float64[T]``, when each round starts.
    end: ``float64[T]``, when each round's all-reduce ends.
    initiator: ``int32[T]``, the majority initiator (-1 for solo, sync and
      forced rounds).
    forced: ``bool[T]``, the limiter's fully synchronous rounds.
  """

  ready: np.ndarray
  trigger: np.ndarray
  end: np.ndarray
  initiator: np.ndarray
  forced: np.ndarray


def eager_schedule(
    clock: clock_lib.Clock,
    num_rounds: int,
    *,
    mode: str,
    message_bytes: int,
    limiter: int | None = REFERENCE_LIMITER,
    state: clock_lib.ClockState | None = None,
    first_round: int = 0,
) -> tuple[clock_lib.ClockState, EagerSchedule]:
  r"""Who is ready in each round of a solo, majority or synchronous run.

  Each worker's clock holds the end of its current gradient computation
  (``time[i]``). Round ``r`` starts at the trigger time :math:`t_r` of the
  mode, the workers with ``time[i] <= t_r`` are ready, and the all-reduce
  of ``message_bytes`` over all ``n`` workers ends at
  :math:`t_r + C` (``C`` the topology's cost). The ready workers then read
  the new model and start their next computation at :math:`t_r + C`
  (``clock.compute_steps``: base time, imbalance, straggler draws); the
  others keep computing (their computation overlaps the round). Rounds
  ``r`` with ``(r + 1) % limiter == 0`` are forced synchronous (the last
  finisher triggers). The majority initiator of round ``r`` is drawn from
  ``default_rng([seed, r, 2])``, the clock's seed: the same on every worker
  and after a resume.

  Args:
    clock: the system model (compute model with the load imbalance, and the
      topology that prices the all-reduce).
    num_rounds: ``T >= 0``.
    mode: a key of :data:`TRIGGERS`.
    message_bytes: bytes each worker hands to the all-reduce.
    limiter: ``L >= 1`` or ``None`` (never forced).
    state: the clock state, each worker's current computation already
      started; default: ``clock.compute_steps(clock.init())``.
    first_round: index of the first round (for a schedule made in chunks).

  Returns:
    ``(state_after, schedule)``.

  Raises:
    ValueError: for an unknown mode (listing the known ones) or bad counts.

  Example:
    >>> from distoptax.distributed import stragglers, topologies
    >>> clock = clock_lib.Clock(
    ...     stragglers.ComputeModel(4, 1.0, imbalance=(1, 1, 1, 3)),
    ...     topologies.RingTopology(4, bandwidth=1e9, latency=0.0))
    >>> _, plan = eager_schedule(clock, 4, mode="solo", message_bytes=0,
    ...                          limiter=4)
    >>> plan.ready.astype(int)
    array([[1, 1, 1, 0],
           [1, 1, 1, 0],
           [1, 1, 1, 1],
           [1, 1, 1, 1]])
    >>> plan.end
    array([1., 2., 3., 6.])
  """
  if mode not in TRIGGERS:
    raise ValueError(f"eager_schedule: unknown mode {mode!r}; known: "
                     f"{sorted(TRIGGERS)}")
  t = validation.check_int("num_rounds", num_rounds, minimum=0)
  b = validation.check_int("message_bytes", message_bytes, minimum=0)
  first = validation.check_int("first_round", first_round, minimum=0)
  if limiter is not None:
    limiter = validation.check_int("limiter", limiter, minimum=1)
  n = clock.num_workers
  state = (clock.compute_steps(clock.init()) if state is None
           else clock.restore(state))
  cost = clock.topology.cost("all_reduce", b)
  ready = np.zeros((t, n), bool)
  trigger = np.zeros(t)
  end = np.zeros(t)
  initiator = np.full(t, -1, np.int32)
  forced = np.zeros(t, bool)
  for i in range(t):
    r = first + i
    finish = state.time
    forced[i] = limiter is not None and (r + 1) % limiter == 0
    rng = np.random.default_rng(
        [int(clock.compute.seed), r, _INITIATOR_STREAM])
    when, who = TRIGGERS["sync" if forced[i] else mode](finish, rng)
    trigger[i], initiator[i] = when, who
    ready[i] = finish <= when
    end[i] = when + cost
    time = finish.copy()
    time[ready[i]] = end[i]
    state = clock.compute_steps(state._replace(time=time), workers=ready[i])
  return state, EagerSchedule(ready, trigger, end, initiator, forced)


@replication.replicated_fields("step")
class EagerSGDState(NamedTuple):
  """State of :func:`eager_sgd`.

  Attributes:
    step: rounds run so far, int32 (replicated): the schedule's row.
    pending: this worker's gradient in progress (float32 or wider), computed
      on the model it read when it started; zero after it was sent.
    busy: bool, whether this worker is still computing ``pending`` (it
      missed the last round).
    sent: int32, gradients this worker has delivered.
    comm: bytes this worker handed to collectives (``CommStats``).
  """

  step: jax.Array
  pending: optax.Updates
  busy: jax.Array
  sent: jax.Array
  comm: comm_stats.CommStats


def eager_sgd(ready: Any, *,
              axis_name: str = collectives.WORKERS
              ) -> optax.GradientTransformationExtraArgs:
  r"""Averages gradients by eager-SGD's partial all-reduce.

  Round :math:`r` with the ready mask :math:`R_r` (row ``r mod T`` of
  ``ready``), per worker :math:`i`:

  .. math::
    b_i = \begin{cases} p_i & \text{busy}_i \\ g_i & \text{otherwise}
    \end{cases}, \qquad
    \hat g = \frac{1}{P} \sum_i [i \in R_r]\, b_i, \qquad
    p_i \leftarrow [i \notin R_r]\, b_i,\ \text{busy}_i \leftarrow
    i \notin R_r,

  with :math:`g_i` the gradient at the current model (what a worker that
  just started computes) and :math:`p_i` the gradient a busy worker started
  on an earlier model. One masked all-reduce of the gradient's bytes runs
  on every worker every round; put the transform first in the chain, e.g.
  ``optax.chain(eager_sgd(plan.ready), optax.sgd(lr))``, with
  ``data_parallel(..., replicated_params=True)``.

  Args:
    ready: ``bool[T, n]`` ready masks, e.g. ``eager_schedule(...).ready``.
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`EagerSGDState`; the update is the same on every worker.

  Raises:
    ValueError: for a ready table that is not ``bool[T, n]`` (checked again
      against the number of workers at ``init``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> tx = eager_sgd([[True, True, False, False]])  # 2 of 4 ready.
    >>> def step(g):
    ...   return tx.update(g, tx.init(g))[0]
    >>> jax.vmap(step, axis_name="workers")(jnp.ones((4, 1)))[0]
    Array([0.5], dtype=float32)

  Guarantees:
    With every worker ready in every round it is synchronous SGD's mean.
    Every gradient computed is applied exactly once, in the round its
    worker is ready (at most ``limiter - 1`` rounds late when the schedule
    has a limiter), scaled by :math:`1/P`. Li et al. prove convergence of
    the solo and majority variants for non-convex objectives under bounded
    staleness.

  References:
    Li, Ben-Nun, Di Girolamo, Alistarh & Hoefler, PPoPP 2020
    (arXiv:1908.04207).
  """
  table = np.asarray(ready)
  if (table.ndim != 2 or table.shape[0] < 1
      or not (table.dtype == bool or np.all((table == 0) | (table == 1)))):
    raise ValueError(f"eager_sgd: ready must be bool[T, n] with T >= 1; "
                     f"got shape {table.shape}: {ready!r}")
  table = table.astype(bool)

  def init_fn(params: optax.Params) -> EagerSGDState:
    n = collectives.num_workers(axis_name)
    if table.shape[1] != n:
      raise ValueError(f"eager_sgd: ready must have shape (T, {n}) (one "
                       f"column per worker); got shape {table.shape}")
    return EagerSGDState(
        step=jnp.zeros((), jnp.int32),
        pending=communication.init_memory(params),
        busy=jnp.zeros((), bool),
        sent=jnp.zeros((), jnp.int32),
        comm=comm_stats.init_comm_stats(capacity=1))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    n = collectives.num_workers(axis_name)
    row = jnp.asarray(table)[state.step % table.shape[0]]
    here = row[collectives.worker_index(axis_name)]
    buffer = jax.tree.map(
        lambda p, g: jnp.where(state.busy, p, g.astype(p.dtype)),
        state.pending, updates)
    rounds = communication.Rounds(state.comm, axis_name)
    total = rounds.all_reduce(buffer, weight=here)
    out = jax.tree.map(lambda s, g: (s / n).astype(g.dtype), total, updates)
    pending = jax.tree.map(lambda b: jnp.where(here, jnp.zeros_like(b), b),
                           buffer)
    return out, EagerSGDState(state.step + 1, pending, ~here,
                              state.sent + here.astype(jnp.int32),
                              rounds.finish())

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = [
    "EagerSGDState",
    "EagerSchedule",
    "REFERENCE_LIMITER",
    "TRIGGERS",
    "eager_schedule",
    "eager_sgd",
]
