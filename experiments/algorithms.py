"""What the workers run between and at syncs: the launcher's ``algorithm``.

:data:`ALGORITHMS` maps ``TrainConfig.algorithm`` to a builder of the run's
optimizer. ``sync`` is synchronous data parallelism (one aggregate per
step, the model held once). The others keep one model per worker and
synchronise every ``period`` steps through ``distributed.local_sgd``:

* ``local_sgd``: the configured optimizer on each worker, the configured
  outer optimizer on the synced pseudo-gradient (FedAvg, FedProx, FedOpt,
  DiLoCo, post-local SGD and SLSGD are settings of it: see the shipped
  configs ``experiments/configs/local_*.py``);
* ``adacomm``: the same with the period adapted from the loss (AdaComm);
* ``local_adaalter``: Local AdaAlter (its own preconditioned optimizer);
* ``cser``: CSER (error reset): every step the models move by a
  block-sparsified average of the updates (ratio ``cser_ratio1``), every
  ``period`` steps the residuals are reset through a larger block
  (``cser_ratio2``), the authors' setting.

The aggregation rule, compressor and attack of the configuration apply to
the synced pseudo-gradients. The test metrics of a local algorithm are
those of the global model of the last sync (CSER and RPS: of the workers' mean
model).
"""

import dataclasses
import functools
import types
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import distributed as dist
from distoptax.algorithms import local as local_math
from distoptax.experiments.config import ConfigError
from distoptax.experiments.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Pieces:
  """What every algorithm builder receives from the trainer.

  Attributes:
    optimizer: the configured optimizer (:data:`OPTIMIZERS`).
    communication: ``(rule, compressor)`` of the configuration, with their
      seeds; ``None`` for a compressor that is a transformation of its own
      (PowerSGD).
    exchange: builds the synchronous step's communication transform
      (``aggregate`` or PowerSGD); called only by the algorithms that use
      it.
    attack: the Byzantine workers' update attack, or ``None``.
    seed: the seed of the synchronising transform's key stream.
    clock: the run's simulated clock (``trainer.system_model``).
    initial_params: ``initial_params()``, the model the run starts from
      (called only by the algorithms that size a schedule by it).
    shard_sizes: ``shard_sizes()``, each worker's number of training
      examples under the partition (called only when needed).
  """

  optimizer: optax.GradientTransformation
  communication: tuple[Any, Any] | None
  exchange: Callable[[], optax.GradientTransformation]
  attack: optax.GradientTransformation | None
  seed: int
  clock: dist.Clock
  initial_params: Callable[[], Any]
  shard_sizes: Callable[[], np.ndarray]


class Timing(NamedTuple):
  """How a run's steps advance its simulated clock (host side).

  Attributes:
    init: ``init() -> ClockState``, the clock before the first step.
    advance: ``advance(state, t, metrics) -> ClockState``, the clock after
      step ``t`` (0-based) from the one before it; ``metrics`` are the
      step's host metrics (``comm``: its round records, ``participation``
      when reported). It checks that the step ran what the model priced.
    seconds: ``seconds(state, t) -> float``, the run's simulated seconds
      after ``t`` steps, ``state`` the clock after them.
    description: how the seconds are made, for ``config.json``.
  """

  init: Callable[[], dist.ClockState]
  advance: Callable[[dist.ClockState, int, Mapping[str, Any]],
                    dist.ClockState]
  seconds: Callable[[dist.ClockState, int], float]
  description: str


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A run's optimizer and how the runtime holds its state.

  Attributes:
    tx: the transformation ``data_parallel`` runs.
    replicated_params: whether the model is held once (synchronous).
    needs_time: whether ``tx.update`` needs the clock's simulated seconds
      (``simulated_seconds=``, a host input of every step).
    model_of: ``model_of(state) -> params``, the model the run evaluates;
      default: the synchronous model, or the global model of the last
      sync of ``local_sgd``.
    timing: the clock of the run's system model; default (``None``): one
      synchronous step of the participants, then the step's recorded
      rounds (``trainer.clock_step``).
    step_metrics: ``step_metrics(opt_state) -> dict`` of per-worker arrays
      added to each step's metrics (traced, inside the step).
    log_metrics: ``log_metrics(steps, rows) -> dict``, the figures of a
      logged line from its steps (a ``range`` of 0-based indices) and their
      host metrics.
  """

  tx: optax.GradientTransformation
  replicated_params: bool
  needs_time: bool = False
  model_of: Callable[[Any], Any] | None = None
  timing: Timing | None = None
  step_metrics: Callable[[Any], dict[str, Any]] | None = None
  log_metrics: Callable[[range, list[dict[str, Any]]],
                        dict[str, Any]] | None = None


def _sgd(config: TrainConfig) -> optax.GradientTransformation:
  return optax.sgd(config.learning_rate, momentum=config.momentum or None,
                   nesterov=config.nesterov)


def _adam(config: TrainConfig) -> optax.GradientTransformation:
  return optax.adam(config.learning_rate, b1=config.momentum, b2=config.b2)


def _adamw(config: TrainConfig) -> optax.GradientTransformation:
  return optax.adamw(config.learning_rate, b1=config.momentum, b2=config.b2,
                     weight_decay=config.weight_decay)


OPTIMIZERS: Mapping[str, Callable[[TrainConfig],
                                  optax.GradientTransformation]]
OPTIMIZERS = types.MappingProxyType({
    "sgd": _sgd,      # momentum = heavy-ball coefficient (0: plain SGD)
    "adam": _adam,    # momentum = b1
    "adamw": _adamw,  # momentum = b1; decoupled weight_decay (DiLoCo's inner)
})
"""``TrainConfig.optimizer``: the server's optimizer in synchronous runs,
each worker's otherwise."""


def _outer_sgd(config: TrainConfig) -> optax.GradientTransformation:
  return optax.sgd(config.outer_learning_rate,
                   momentum=config.outer_momentum or None,
                   nesterov=config.outer_nesterov)


def _outer_fedopt(kind: str) -> Callable[[TrainConfig],
                                         optax.GradientTransformation]:
  def make(config: TrainConfig) -> optax.GradientTransformation:
    return local_math.fedopt_server(
        config.outer_learning_rate, config.outer_momentum, config.outer_b2,
        config.outer_eps, kind=kind)
  return make


OUTER_OPTIMIZERS: Mapping[str, Callable[[TrainConfig],
                                        optax.GradientTransformation]]
OUTER_OPTIMIZERS = types.MappingProxyType({
    # outer_momentum: heavy-ball coefficient (Nesterov with outer_nesterov).
    "sgd": _outer_sgd,
    # FedOpt servers: outer_momentum = b1, outer_b2, outer_eps = tau.
    **{kind: _outer_fedopt(kind) for kind in local_math.FEDOPT_KINDS},
})
"""``TrainConfig.outer_optimizer``: the server optimizer on the synced
pseudo-gradient of the local algorithms."""


def _needs_plain_communication(config: TrainConfig, pieces: Pieces) -> tuple:
  if pieces.communication is None:
    raise ConfigError(
        "compressor",
        f"compressor {config.compressor!r} is a synchronous transformation "
        f"of its own; algorithm={config.algorithm!r} syncs pseudo-gradients "
        "through a compressor of alg.compressors.COMPRESSORS")
  return pieces.communication


def _sync(config: TrainConfig, pieces: Pieces) -> Algorithm:
  partial = PARTICIPATIONS[config.participation](config, pieces)
  exchange = pieces.exchange() if partial is None else partial.exchange
  tx = optax.chain(
      *(() if pieces.attack is None else (pieces.attack,)),
      exchange, dist.replicated(pieces.optimizer))
  return Algorithm(tx, replicated_params=True,
                   timing=None if partial is None else partial.timing)


def _local_sgd(config: TrainConfig, pieces: Pieces) -> Algorithm:
  rule, compressor = _needs_plain_communication(config, pieces)
  tx = dist.local_sgd(
      pieces.optimizer, config.period, config.proximal_mu,
      outer=OUTER_OPTIMIZERS[config.outer_optimizer](config),
      state_policy=config.state_policy, warmup_steps=config.warmup_steps,
      rule=rule, compressor=compressor, error_feedback=config.error_feedback,
      worker_transform=pieces.attack, seed=pieces.seed)
  return Algorithm(tx, replicated_params=False)


def _adacomm(config: TrainConfig, pieces: Pieces) -> Algorithm:
  rule, compressor = _needs_plain_communication(config, pieces)
  if pieces.attack is not None:
    raise ConfigError(
        "attack", f"attack {config.attack!r} acts on what workers send; "
        "algorithm='adacomm' takes no worker transform (use local_sgd, or a "
        "data attack such as label_flip)")
  seconds = config.adacomm_interval_seconds or None
  tx = dist.adacomm(
      pieces.optimizer, config.period, config.adacomm_tau_max,
      config.adacomm_interval, interval_seconds=seconds,
      form=config.adacomm_form,
      outer=OUTER_OPTIMIZERS[config.outer_optimizer](config),
      state_policy=config.state_policy, rule=rule, compressor=compressor,
      error_feedback=config.error_feedback, seed=pieces.seed)
  return Algorithm(tx, replicated_params=False, needs_time=seconds is not None)


def _local_adaalter(config: TrainConfig, pieces: Pieces) -> Algorithm:
  if pieces.attack is not None or (
      config.aggregator, config.preaggregation, config.compressor) != (
          "mean", "none", "identity"):
    raise ConfigError(
        "algorithm",
        "algorithm='local_adaalter' averages parameters and accumulators "
        "with plain all-reduces: it needs aggregator='mean', "
        "preaggregation='none', compressor='identity' and no update attack; "
        f"got {config.aggregator!r}, {config.preaggregation!r}, "
        f"{config.compressor!r}, attack {config.attack!r}")
  tx = dist.local_adaalter(
      config.learning_rate, config.period, config.adaalter_eps,
      config.weight_decay, denominator=config.adaalter_denominator)
  return Algorithm(tx, replicated_params=False)


def _mean_model(state: Any) -> Any:
  """The workers' models averaged (their leading axis)."""
  return jax.tree.map(lambda w: jnp.mean(w, axis=0), state.params)


def _cser(config: TrainConfig, pieces: Pieces) -> Algorithm:
  if pieces.attack is not None or (
      config.aggregator, config.preaggregation, config.compressor) != (
          "mean", "none", "identity"):
    raise ConfigError(
        "algorithm",
        "algorithm='cser' compresses with its own block sparsifiers "
        "(cser_ratio1, cser_ratio2) and averages: it needs aggregator="
        "'mean', preaggregation='none', compressor='identity' and no update "
        f"attack; got {config.aggregator!r}, {config.preaggregation!r}, "
        f"{config.compressor!r}, attack {config.attack!r}")
  tx = dist.cser(
      pieces.optimizer, config.period,
      local_math.block_sparsifier(config.cser_ratio1),
      local_math.block_sparsifier(config.cser_ratio2),
      variant=config.cser_variant, form=config.cser_form, seed=pieces.seed)
  return Algorithm(tx, replicated_params=False, model_of=_mean_model)


def _same_rounds(recorded: Sequence[dist.Round],
                 expected: Sequence[dist.Round]) -> bool:
  """Whether two lists of rounds agree in kind, bytes, participants, tier."""

  def key(r: dist.Round) -> tuple:
    who = None if r.participants is None else tuple(
        np.asarray(r.participants, bool).tolist())
    return r.kind, int(r.bytes), who, r.tier

  return [key(r) for r in recorded] == [key(r) for r in expected]


def _mismatch(what: str, t: int, recorded: Any, expected: Any) -> None:
  """Raises: the step ran other than its system model priced it."""
  raise RuntimeError(
      f"{what} of step {t + 1} differ from the system model's schedule "
      f"(ran {recorded!r}, priced {expected!r}); the schedule was made for "
      "another model or configuration")


def probe_rounds(tx: optax.GradientTransformation, params: Any,
                 num_workers: int) -> list[dist.Round]:
  """The rounds one update of ``tx`` runs, each over every worker.

  One ``init`` and ``update`` of ``tx`` on zero gradients, vmapped over
  ``num_workers`` workers; the round records (kind and bytes: static
  shapes) are what every later step of the same model records.

  Args:
    tx: a communicating transformation (its first update is probed).
    params: the model (its shapes and dtypes).
    num_workers: ``n``.

  Returns:
    The :class:`~distoptax.distributed.Round` records, ``participants``
    ``None``.
  """
  zeros = jax.tree.map(jnp.zeros_like, params)

  def step(g):
    return tx.update(g, tx.init(g), g)[1]

  state = jax.vmap(step, in_axes=None, axis_size=num_workers,
                   axis_name=dist.WORKERS)(zeros)
  return [r._replace(participants=None) for r in dist.clock_rounds(state)]


def _needs_plain_exchange(config: TrainConfig, pieces: Pieces) -> None:
  """Refuses what an algorithm with its own exchange cannot apply."""
  wanted = (("attack", pieces.attack is None, "no update attack"),
            ("aggregator", config.aggregator == "mean", "aggregator='mean'"),
            ("preaggregation", config.preaggregation == "none",
             "preaggregation='none'"),
            ("compressor", config.compressor == "identity",
             "compressor='identity'"),
            ("error_feedback", not config.error_feedback,
             "error_feedback=False"))
  for name, ok, need in wanted:
    if not ok:
      raise ConfigError(
          name, f"algorithm={config.algorithm!r} sums plain updates in its "
          f"own collectives: it needs {need}; got {name}="
          f"{getattr(config, name)!r}")


class _Partial(NamedTuple):
  """A partial step's exchange and, when it has its own, its timing."""

  exchange: optax.GradientTransformation
  timing: Timing | None


def _partial_exchange(config: TrainConfig, pieces: Pieces,
                      participation: Any) -> optax.GradientTransformation:
  """``partial_aggregate`` of the configured rule and compressor."""
  if pieces.communication is None:
    raise ConfigError(
        "compressor", f"compressor {config.compressor!r} is a synchronous "
        f"transformation of its own; participation="
        f"{config.participation!r} aggregates through a compressor of "
        "alg.compressors.COMPRESSORS")
  if config.error_feedback:
    raise ConfigError(
        "error_feedback", f"participation={config.participation!r} "
        "aggregates with distributed.partial_aggregate, which keeps no "
        "error feedback: drop error_feedback")
  rule, compressor = pieces.communication
  if not (rule.is_mean or rule.supports_mask):
    name = "preaggregation" if config.preaggregation != "none" else (
        "aggregator")
    raise ConfigError(
        name, f"{name}={getattr(config, name)!r} cannot aggregate under a "
        f"participation mask (participation={config.participation!r}); "
        "rules that can: mean, median, trimmed_mean, geometric_median, "
        "krum, multi_krum, without pre-aggregation")
  examples = (pieces.shard_sizes()
              if config.participation_normalizer == "examples" else None)
  return dist.partial_aggregate(
      rule, participation, normalizer=config.participation_normalizer,
      examples=examples, compressor=compressor, seed=pieces.seed)


def _everyone(config: TrainConfig, pieces: Pieces) -> None:
  """Every worker in every step: the full synchronous exchange."""
  del config, pieces
  return None


def _client_sampling(config: TrainConfig, pieces: Pieces) -> _Partial:
  """``participation_k`` workers drawn per step; the participants' clocks
  are charged (the default timing reads the participation metric)."""
  return _Partial(_partial_exchange(
      config, pieces, dist.client_sampling(config.participation_k)), None)


def _deadline(config: TrainConfig, pieces: Pieces) -> _Partial:
  """The workers that finish within ``deadline_seconds`` of each step's
  start (``deadline_schedule`` on the run's clock, the step's rounds over
  every worker); the step's seconds are the schedule's."""
  clock = pieces.clock
  rounds = probe_rounds(_partial_exchange(config, pieces, dist.everyone()),
                        pieces.initial_params(), config.num_workers)
  participation, plan = dist.deadline_participation(
      clock, config.steps, deadline_seconds=config.deadline_seconds,
      rounds=rounds)
  schedule = functools.partial(dist.deadline_schedule, clock,
                               deadline=config.deadline_seconds,
                               rounds=rounds)

  def advance(state, t, metrics):
    state, step = schedule(state, 1)
    who = plan.participants[t]
    ran = np.asarray(metrics["participation"]).reshape(
        -1, config.num_workers)[0].astype(bool)
    if not (np.array_equal(step.participants[0], who)
            and np.array_equal(ran, who)):
      _mismatch("the participants", t, ran, who)
    recorded = [r._replace(participants=None)
                for r in dist.clock_rounds(metrics["comm"])]
    if not _same_rounds(recorded, rounds):
      _mismatch("the rounds", t, recorded, rounds)
    return state

  timing = Timing(
      clock.init, advance, lambda state, t: float(state.time.max()),
      "distributed.deadline_schedule on the clock, one step at a time: "
      "each step starts when the last one ends; every worker computes one "
      "local step; those done within deadline_seconds of the start take "
      "part; the step's rounds start at the deadline (or when all are "
      "done) and run over every worker (the late ones receive the model); "
      "simulated_seconds is the step's end")
  return _Partial(_partial_exchange(config, pieces, participation), timing)


PARTICIPATIONS: Mapping[str, Callable[[TrainConfig, Pieces],
                                      _Partial | None]]
PARTICIPATIONS = types.MappingProxyType({
    "everyone": _everyone,
    "client_sampling": _client_sampling,
    "deadline": _deadline,
})
"""``TrainConfig.participation`` -> builder of algorithm ``sync``'s
exchange (``None``: the full one) and its timing."""


def rounds_late(ready: np.ndarray) -> np.ndarray:
  """How many rounds each applied gradient of an eager run missed.

  Args:
    ready: ``bool[T, n]``, the schedule's ready masks.

  Returns:
    ``int64[T, n]``: where ``ready[r, i]``, the rounds ``r`` is after the
    last round before it in which worker ``i`` was ready (-1 at the start),
    minus one: the server updates between the model the gradient was
    computed on and the round that applies it; 0 elsewhere.

  Example:
    >>> rounds_late(np.array([[1, 0], [1, 0], [1, 1]], bool)).tolist()
    [[0, 0], [0, 0], [0, 2]]
  """
  late = np.zeros(ready.shape, np.int64)
  last = np.full(ready.shape[1], -1, np.int64)
  for r, row in enumerate(ready):
    late[r, row] = r - last[row] - 1
    last[row] = r
  return late


def _eager_timing(clock: dist.Clock, plan: dist.EagerSchedule,
                  schedule: Callable[..., Any],
                  message_bytes: int) -> Timing:
  """The clock of an eager run: its schedule, one round per step."""

  def advance(state, t, metrics):
    state, step = schedule(1, state=state, first_round=t)
    ready = plan.ready[t]
    if not (np.array_equal(step.ready[0], ready)
            and step.end[0] == plan.end[t]):
      _mismatch("the ready workers", t, step.ready[0], ready)
    recorded = dist.clock_rounds(metrics["comm"])
    expected = [dist.Round("all_reduce", message_bytes,
                           None if ready.all() else ready)]
    if not _same_rounds(recorded, expected):
      _mismatch("the rounds", t, recorded, expected)
    return state

  def seconds(state, t):
    del state
    return 0.0 if t == 0 else float(plan.end[t - 1])

  return Timing(
      lambda: clock.compute_steps(clock.init()), advance, seconds,
      "distributed.eager_schedule on the clock (mode eager_mode, limiter "
      "eager_limiter): each worker's gradient ends at its clock; a round "
      "starts at its mode's trigger (first finisher, the shared initiator's "
      "finish, or the last finisher), the workers done by then are ready, "
      "the all-reduce of the gradient runs over every worker, and the ready "
      "workers start their next gradient when it ends; simulated_seconds "
      "is the end of the step's round")


def _find(opt_state: Any, kind: type) -> Any:
  """The first node of type ``kind`` in ``opt_state``."""
  for node in jax.tree.leaves(opt_state,
                              is_leaf=lambda x: isinstance(x, kind)):
    if isinstance(node, kind):
      return node
  raise ValueError(f"no {kind.__name__} in the optimizer state")


def _eager_step_metrics(opt_state: Any) -> dict[str, Any]:
  return {"eager_sent": _find(opt_state, dist.EagerSGDState).sent}


def _eager_log_metrics(plan: dist.EagerSchedule) -> Callable[..., dict]:
  """The figures of an eager run's logged line, from its schedule."""
  late = rounds_late(plan.ready)

  def log(steps: range, rows: list[dict[str, Any]]) -> dict[str, Any]:
    ready = plan.ready[steps.start:steps.stop]
    applied = late[steps.start:steps.stop][ready]
    return {
        "ready_fraction": float(ready.mean()),
        "staleness_mean": float(applied.mean()),
        "staleness_max": int(applied.max()),
        "staleness_histogram": np.bincount(applied).tolist(),
        "forced_rounds": int(plan.forced[steps.start:steps.stop].sum()),
        "gradients_applied": int(np.sum(rows[-1]["eager_sent"])),
    }

  return log


def _eager_sgd(config: TrainConfig, pieces: Pieces) -> Algorithm:
  _needs_plain_exchange(config, pieces)
  n = config.num_workers
  probe = probe_rounds(dist.eager_sgd(np.ones((1, n), bool)),
                       pieces.initial_params(), n)
  if [r.kind for r in probe] != ["all_reduce"]:
    raise RuntimeError(f"eager_sgd ran rounds {probe}; expected one "
                       "all-reduce")
  message_bytes = probe[0].bytes
  schedule = functools.partial(
      dist.eager_schedule, pieces.clock, mode=config.eager_mode,
      message_bytes=message_bytes, limiter=config.eager_limiter or None)
  _, plan = schedule(config.steps)
  tx = optax.chain(dist.eager_sgd(plan.ready),
                   dist.replicated(pieces.optimizer))
  return Algorithm(
      tx, replicated_params=True,
      timing=_eager_timing(pieces.clock, plan, schedule, message_bytes),
      step_metrics=_eager_step_metrics, log_metrics=_eager_log_metrics(plan))


def _rps_step_metrics(opt_state: Any) -> dict[str, Any]:
  state = _find(opt_state, dist.RPSState)
  return {"rps_dropped": state.dropped,
          "rps_delivered_bytes": state.delivered_bytes,
          "rps_total_dropped": state.total_dropped}


def _rps_log_metrics(steps: range,
                     rows: list[dict[str, Any]]) -> dict[str, Any]:
  """Messages lost and bytes delivered in the logged steps."""
  del steps
  return {
      "drops": int(sum(np.sum(m["rps_dropped"]) for m in rows)),
      "drops_total": int(np.sum(rows[-1]["rps_total_dropped"])),
      "delivered_bytes": int(sum(np.sum(m["rps_delivered_bytes"],
                                        dtype=np.int64) for m in rows)),
  }


def _rps(config: TrainConfig, pieces: Pieces) -> Algorithm:
  _needs_plain_exchange(config, pieces)
  tx = optax.chain(pieces.optimizer,
                   dist.rps(config.drop_probability, seed=pieces.seed))
  return Algorithm(tx, replicated_params=False, model_of=_mean_model,
                   step_metrics=_rps_step_metrics,
                   log_metrics=_rps_log_metrics)


ALGORITHMS: Mapping[str, Callable[[TrainConfig, Pieces], Algorithm]]
ALGORITHMS = types.MappingProxyType({
    "sync": _sync,
    "local_sgd": _local_sgd,
    "adacomm": _adacomm,
    "local_adaalter": _local_adaalter,
    "cser": _cser,
    "eager_sgd": _eager_sgd,
    "rps": _rps,
})
"""``TrainConfig.algorithm`` -> builder of the run's :class:`Algorithm`."""


def find_local_state(opt_state: Any) -> dist.LocalSGDState | None:
  """The :class:`~distoptax.distributed.LocalSGDState` in ``opt_state``."""
  found = []

  def visit(node):
    if isinstance(node, dist.LocalSGDState):
      found.append(node)
      return
    if isinstance(node, (tuple, list)):
      for child in node:
        visit(child)

  visit(opt_state)
  return found[0] if found else None
