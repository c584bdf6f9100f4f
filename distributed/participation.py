r"""Partial participation: client sampling and deadlines as aggregation masks.

Each round only some workers take part: ``k`` of ``n`` sampled (uniformly or
with given probabilities, federated-learning style), or those whose
simulated finish time meets a deadline (synchronous SGD with a cut-off; see
``schedules.deadline_schedule``). Either way the round's participants are a
bool ``[n]`` mask that is **the same on every worker**: drawn from the
transform's replicated key, or read from a host schedule by the replicated
step counter. Every worker still runs the round's collective; an absent
worker contributes exactly zero (``worker_axis`` masked collectives), so no
collective sits under a per-worker condition.

:func:`partial_aggregate` is ``aggregate`` under such a mask:

.. math::
  \hat u = \frac{\sum_{i \in S} w_i u_i}{Z}, \qquad
  Z = \begin{cases} |S| & \text{participants} \\ n & \text{workers} \\
  \sum_{i \in S} m_i & \text{examples} \end{cases}

for the mean rule (``w_i = m_i``, the example counts, with ``examples``;
1 otherwise), and :math:`\hat u = \mathrm{rule}(\{u_i : i \in S\})` for a
robust rule that supports a mask (mean, median, trimmed mean, geometric
median, Krum, Multi-Krum); any other rule is refused at construction. The
rule's preconditions (``n > 2f + 2`` for Krum, ``n > 2f`` for the trimmed
mean, ...) are checked against the smallest number of participants the
participation can produce.

References:
  McMahan, Moore, Ramage, Hampson & Agüera y Arcas, `Communication-efficient
  learning of deep networks from decentralized data
  <https://arxiv.org/abs/1602.05629>`_, AISTATS 2017 (FedAvg: a fraction of
  the clients per round).

  Li, Sahu, Zaheer, Sanjabi, Talwalkar & Smith, `Federated optimization in
  heterogeneous networks <https://arxiv.org/abs/1812.06127>`_, MLSys 2020
  (sampling with probabilities proportional to data size, simple average).

  Chen, Pan, Monga, Bengio & Jozefowicz, `Revisiting distributed
  synchronous SGD <https://arxiv.org/abs/1604.00981>`_, 2016 (dropping the
  slowest workers).
"""

from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.algorithms import aggregators
from distoptax.algorithms.aggregators import base as aggregator_base
from distoptax.algorithms import compressors
from distoptax.algorithms import registry
from distoptax.distributed import clock as clock_lib
from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.distributed import schedules
from distoptax.distributed import validation
from distoptax.worker_axis import collectives
from distoptax.worker_axis import keys
from distoptax.worker_axis import replication

KEY_NAME = "distoptax.distributed.partial_aggregate"
"""Salt of :func:`partial_aggregate`'s key stream."""

NORMALIZERS = ("participants", "workers", "examples")
"""Values of ``partial_aggregate(normalizer=...)`` for the mean rule."""

_PMEAN_NORMALIZER = {"participants": "participants", "workers": "workers",
                     "examples": "weights"}


class Participation(NamedTuple):
  """Who takes part in each round: a replicated bool ``[n]`` mask.

  Attributes:
    name: what it is, for messages and ``config.json``.
    check: ``check(n)`` raises ``ValueError`` if it cannot run on ``n``
      workers (e.g. a sample larger than ``n``, a schedule of another width).
    min_participants: ``min_participants(n)``, the fewest workers any round
      can have; the rule's preconditions are checked against it.
    mask: ``mask(key, step, n) -> bool[n]``, a pure function of the
      replicated step key and step counter, the same on every worker.
  """

  name: str
  check: Callable[[int], None]
  min_participants: Callable[[int], int]
  mask: Callable[[chex.PRNGKey, jax.Array, int], jax.Array]


def everyone() -> Participation:
  """Every worker takes part in every round (the full aggregate).

  Example:
    >>> import jax
    >>> everyone().mask(jax.random.key(0), 0, 3)
    Array([ True,  True,  True], dtype=bool)
  """
  return Participation(
      "everyone", lambda n: None, lambda n: n,
      lambda key, step, n: jnp.ones((n,), bool))


def client_sampling(num_sampled: int,
                    weights: Sequence[float] | None = None) -> Participation:
  r"""``k`` of the ``n`` workers per round, drawn without replacement.

  Uniformly, or sequentially with probabilities proportional to ``weights``
  (``jax.random.choice(replace=False, p=...)``, e.g. the workers' data
  sizes, as FedProx samples), from the round's replicated key.

  Args:
    num_sampled: ``k >= 1`` workers per round; ``k <= n`` is checked when the
      number of workers is known.
    weights: optional ``n`` positive sampling weights.

  Returns:
    A :class:`Participation` with exactly ``k`` participants per round.

  Raises:
    ValueError: for ``k < 1`` or non-positive weights; at ``init`` for
      ``k > n`` or weights of another length.

  Example:
    >>> import jax
    >>> sampler = client_sampling(2)
    >>> int(sampler.mask(jax.random.key(0), 0, 5).sum())
    2
    >>> sampler.check(1)
    Traceback (most recent call last):
    ...
    ValueError: client_sampling: sample size num_sampled=2 exceeds the number of workers n=1
  """
  k = validation.check_int("num_sampled", num_sampled, minimum=1)
  p = None
  if weights is not None:
    p = np.asarray(weights, dtype=np.float64)
    if p.ndim != 1 or not np.all(np.isfinite(p)) or not np.all(p > 0):
      raise ValueError(f"client_sampling: weights must be one positive "
                       f"finite number per worker; got {weights!r}")
    p = p / p.sum()

  def check(n: int) -> None:
    if k > n:
      raise ValueError(f"client_sampling: sample size num_sampled={k} "
                       f"exceeds the number of workers n={n}")
    if p is not None and p.shape != (n,):
      raise ValueError(f"client_sampling: weights must have one entry per "
                       f"worker, shape ({n},); got shape {p.shape}")

  def mask(key, step, n):
    del step
    chosen = jax.random.choice(
        key, n, (k,), replace=False,
        p=None if p is None else jnp.asarray(p, jnp.float32))
    return jnp.zeros((n,), bool).at[chosen].set(True)

  name = f"client_sampling(k={k}{', weighted' if p is not None else ''})"
  return Participation(name, check, lambda n: k, mask)


def scheduled(participants: Any) -> Participation:
  """Participants read from a host schedule ``bool[T, n]`` by the step.

  Round ``t`` uses row ``t mod T`` (schedule at least as many rounds as the
  run takes for a non-repeating one). The schedule is data of the step, the
  same under ``simulate`` and ``on_mesh``, e.g.
  ``schedules.deadline_schedule(...).participants``.

  Args:
    participants: ``bool[T, n]`` (or 0/1), every row with a participant.

  Returns:
    A :class:`Participation`.

  Raises:
    ValueError: for a schedule that is not 2-D, not 0/1, or has an empty
      row; at ``init`` for a width other than the number of workers.

  Example:
    >>> import jax
    >>> plan = scheduled([[1, 0, 1], [0, 1, 1]])
    >>> plan.mask(jax.random.key(0), 3, 3)  # Row 3 mod 2.
    Array([False,  True,  True], dtype=bool)
  """
  table = np.asarray(participants)
  if table.ndim != 2 or table.shape[0] < 1:
    raise ValueError(f"scheduled: participants must be bool[T, n] with "
                     f"T >= 1; got shape {table.shape}")
  rows = [validation.check_mask(f"participants[{t}]", row, table.shape[1])
          for t, row in enumerate(table)]
  table = np.stack(rows)
  fewest = int(table.sum(axis=1).min())

  def check(n: int) -> None:
    if table.shape[1] != n:
      raise ValueError(
          f"scheduled: the participation schedule must have shape (T, {n}) "
          f"(one column per worker); got shape {table.shape}")

  def mask(key, step, n):
    del key, n
    rows = jnp.asarray(table)
    return rows[jnp.asarray(step) % table.shape[0]]

  return Participation(f"scheduled(T={table.shape[0]})", check,
                       lambda n: fewest, mask)


def deadline(
    clock: clock_lib.Clock,
    num_steps: int,
    *,
    deadline_seconds: float,
    rounds: Sequence[clock_lib.Round] = (),
    local_steps: int = 1,
    state: clock_lib.ClockState | None = None,
) -> tuple[Participation, schedules.DeadlineSchedule]:
  """Deadline-based participation from the declared system model.

  A worker whose simulated finish time misses ``start + deadline_seconds``
  sits the round out (``schedules.deadline_schedule``); the schedule is
  produced on the host from the clock's seed, before training.

  Args:
    clock: the system model.
    num_steps: rounds to schedule.
    deadline_seconds: ``D >= 0`` after each round's start.
    rounds: each round's communication records, priced by the clock.
    local_steps: local steps per round.
    state: the clock state to start from (default: ``clock.init()``).

  Returns:
    ``(participation, schedule)``: :func:`scheduled` of the schedule's
    participants, and the schedule (finish, start and end times).

  Example:
    >>> from distoptax.distributed import stragglers, topologies
    >>> clock = clock_lib.Clock(
    ...     stragglers.ComputeModel(4, 1.0, imbalance=(1, 2, 3, 4)),
    ...     topologies.RingTopology(4, bandwidth=1e9, latency=0.0))
    >>> who, plan = deadline(clock, 2, deadline_seconds=2.5)
    >>> plan.participants[0], who.min_participants(4)
    (array([ True,  True, False, False]), 2)
  """
  start = clock.init() if state is None else state
  _, plan = schedules.deadline_schedule(
      clock, start, num_steps, deadline=deadline_seconds, rounds=rounds,
      local_steps=local_steps)
  return scheduled(plan.participants), plan


PARTICIPATION = registry.Registry("participation", {
    "client_sampling": client_sampling,
    "everyone": everyone,
    "scheduled": scheduled,
})
"""Launcher names of the participation factories."""


@replication.replicated_fields("rule_state", "key", "step", "participants")
class PartialAggregateState(NamedTuple):
  """State of :func:`partial_aggregate`.

  Attributes:
    rule_state: the aggregation rule's state (replicated).
    key: the shared key data, split every step (replicated).
    step: rounds run so far, int32 (replicated).
    participants: float32 ``[n]``, 1.0 for the last round's participants
      (replicated).
    comm: bytes this worker handed to collectives (``CommStats``); its round
      records carry the participants, so the clock waits for them only.
  """

  rule_state: optax.OptState
  key: chex.PRNGKey
  step: jax.Array
  participants: jax.Array
  comm: comm_stats.CommStats


def _check_examples(examples: Any) -> np.ndarray | None:
  if examples is None:
    return None
  counts = np.asarray(examples)
  if (counts.ndim != 1 or counts.dtype.kind not in "iuf"
      or not np.all(np.isfinite(counts)) or not np.all(counts > 0)):
    raise ValueError(f"partial_aggregate: examples must be one positive "
                     f"count per worker; got {examples!r}")
  return counts.astype(np.float32)


def partial_aggregate(
    rule: aggregators.AggregationRule,
    participation: Participation,
    *,
    normalizer: str = "participants",
    examples: Sequence[float] | None = None,
    compressor: compressors.Compressor | None = None,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Aggregates the updates of each round's participants only.

  Every round draws the participants :math:`S` (:class:`Participation`,
  replicated), and every worker runs the same masked collective: the mean
  rule with a summable compressor is one all-reduce of
  :math:`\sum_{i \in S} w_i\,\mathrm{enc}(u_i)` (and of the normaliser,
  4 bytes); any other case all-gathers the messages with the absent rows
  zeroed and applies the rule to the rows present (``present=``):

  .. math::
    \hat u = \frac{\sum_{i \in S} w_i u_i}{Z} \ (\text{mean}), \qquad
    \hat u = \mathrm{rule}(\{u_i\}_{i \in S}) \ (\text{robust}).

  Args:
    rule: the aggregation rule; a rule other than the mean must support a
      participation mask (``rule.supports_mask``).
    participation: who takes part (:func:`everyone`, :func:`client_sampling`,
      :func:`scheduled`, :func:`deadline`).
    normalizer: for the mean rule, :math:`Z`: ``"participants"``
      (:math:`|S|`, torchft), ``"workers"`` (:math:`n`, SCAFFOLD's server
      control update) or ``"examples"`` (:math:`\sum_{i\in S} m_i`, FedJAX;
      needs ``examples``). Robust rules take ``"participants"``.
    examples: ``n`` example counts :math:`m_i`, the weights :math:`w_i` of
      the ``"examples"`` normaliser.
    compressor: how updates travel; ``None`` uncompressed.
    axis_name: the logical worker axis.
    seed: seed of the transform's key stream (participants and
      compression), salted with :data:`KEY_NAME`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`PartialAggregateState`; the update is the same on every worker.

  Raises:
    ValueError: for an unknown normaliser, ``"examples"`` without counts or
      with a robust rule, a rule that does not support a mask, and at
      ``init`` for a participation or counts that do not fit the number of
      workers, or a rule whose precondition fails for the fewest
      participants.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from distoptax import algorithms as alg
    >>> tx = partial_aggregate(alg.aggregators.median(),
    ...                        scheduled([[1, 1, 1, 0]]))
    >>> def step(u):
    ...   return tx.update(u, tx.init(u))[0]
    >>> u = jnp.array([[1.0], [5.0], [2.0], [jnp.nan]])
    >>> jax.vmap(step, axis_name="workers")(u)[:, 0]
    Array([2., 2., 2., 2.], dtype=float32)

  Guarantees:
    With :func:`everyone` the result equals ``aggregate(rule)``'s (up to
    float rounding of the sums). With uniform sampling and the
    ``"participants"`` normaliser the mean is an unbiased estimate of the
    full mean (each worker is in :math:`S` with probability :math:`k/n`);
    with ``"workers"`` it is :math:`k/n` of it in expectation. A robust rule
    keeps its breakdown guarantee relative to the participants: Krum needs
    :math:`|S| > 2f + 2` Byzantine-free slots among those present.

  References:
    McMahan et al. 2017 (arXiv:1602.05629); Li et al. 2020
    (arXiv:1812.06127); Blanchard et al. 2017 (arXiv:1703.02757).
  """
  if normalizer not in NORMALIZERS:
    raise ValueError(f"partial_aggregate: normalizer must be one of "
                     f"{NORMALIZERS}; got {normalizer!r}")
  if not isinstance(participation, Participation):
    raise TypeError(f"partial_aggregate: participation must be a "
                    f"Participation (see PARTICIPATION); got "
                    f"{participation!r}")
  counts = _check_examples(examples)
  if normalizer == "examples" and counts is None:
    raise ValueError("partial_aggregate: normalizer='examples' needs the "
                     "workers' example counts (examples=...)")
  if not rule.is_mean:
    if not rule.supports_mask:
      raise ValueError(
          "partial_aggregate: this rule does not aggregate under a "
          "participation mask (rule.supports_mask is False); rules that do: "
          "mean, median, trimmed_mean, geometric_median, krum, multi_krum")
    if normalizer != "participants":
      raise ValueError(
          f"partial_aggregate: normalizer={normalizer!r} is for the mean "
          f"rule; a robust rule aggregates the rows present "
          f"(normalizer='participants')")
  compressor = compressors.identity() if compressor is None else compressor
  all_reduce = rule.is_mean and compressor.summable

  def init_fn(params: optax.Params) -> PartialAggregateState:
    n = collectives.num_workers(axis_name)
    participation.check(n)
    if counts is not None and counts.shape != (n,):
      raise ValueError(f"partial_aggregate: examples must have one count "
                       f"per worker, shape ({n},); got shape {counts.shape}")
    fewest = participation.min_participants(n)
    try:
      rule.init(params, fewest)
    except ValueError as error:
      raise ValueError(
          f"partial_aggregate with {participation.name}: a round can have "
          f"as few as {fewest} participants of n={n} workers, and the "
          f"rule's precondition fails for them: {error}") from None
    return PartialAggregateState(
        rule_state=rule.init(params, n),
        key=keys.transform_key(seed, KEY_NAME),
        step=jnp.zeros((), jnp.int32),
        participants=jnp.zeros((n,), jnp.float32),
        comm=comm_stats.init_comm_stats(capacity=1))

  def update_fn(updates, state, params=None, **extra_args):
    step_key, next_key = communication.step_keys(state.key)
    mask_key, code_key = jax.random.split(step_key)
    n = collectives.num_workers(axis_name)
    present = participation.mask(mask_key, state.step, n)
    here = present[collectives.worker_index(axis_name)]
    weight = here
    if counts is not None and normalizer == "examples":
      weight = here * jnp.asarray(counts)[collectives.worker_index(axis_name)]
    if not compressor.shared_key:
      code_key = communication.worker_key(code_key, axis_name)
    message, _, coded = communication.encode(compressor, code_key, updates)
    rounds = communication.Rounds(state.comm, axis_name)
    rule_state = state.rule_state
    if all_reduce:
      out = compressor.decode(rounds.mean(
          message, weight=weight, normalizer=_PMEAN_NORMALIZER[normalizer],
          coded_bytes=coded))
    else:
      stacked = jax.vmap(compressor.decode)(
          rounds.all_gather(message, mask=here, coded_bytes=coded))
      if rule.is_mean and normalizer != "participants":
        w = present.astype(jnp.float32)
        if normalizer == "examples":
          w = w * jnp.asarray(counts)
        total = jnp.sum(w) if normalizer == "examples" else float(n)
        out = jax.tree.map(
            lambda s: jnp.tensordot(w / total, jnp.where(
                aggregator_base.present_rows(present, s), s, 0), axes=1),
            stacked)
      else:
        out, rule_state = rule.update(stacked, rule_state, params,
                                      present=present, **extra_args)
    out = jax.tree.map(lambda a, u: a.astype(u.dtype), out, updates)
    return out, PartialAggregateState(
        rule_state, next_key, state.step + 1, present.astype(jnp.float32),
        rounds.finish())

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_participants(opt_state: optax.OptState) -> jax.Array | None:
  """The last round's participants of the first partial aggregate.

  What a step reports as its ``participation`` metric, so that the clock
  charges compute to the participants only (``experiments.trainer``).

  Args:
    opt_state: an optimizer state holding a :class:`PartialAggregateState`.

  Returns:
    Its float32 ``[n]`` mask (1.0 for the participants), or ``None``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from distoptax import algorithms as alg
    >>> tx = optax.chain(partial_aggregate(alg.aggregators.mean(),
    ...                                    scheduled([[1, 0, 1]])),
    ...                  optax.sgd(0.1))
    >>> def step(g):
    ...   return find_participants(tx.update(g, tx.init(g))[1])
    >>> jax.vmap(step, axis_name="workers")(jnp.ones((3, 2)))[0]
    Array([1., 0., 1.], dtype=float32)
  """
  for node in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, PartialAggregateState)):
    if isinstance(node, PartialAggregateState):
      return node.participants
  return None


__all__ = [
    "KEY_NAME",
    "NORMALIZERS",
    "PARTICIPATION",
    "PartialAggregateState",
    "Participation",
    "client_sampling",
    "deadline",
    "everyone",
    "find_participants",
    "partial_aggregate",
    "scheduled",
]
