"""The training loop behind ``python -m distoptax.experiments.train``.

``train(config, workdir)`` builds dataset, partition, model, aggregation and
optimizer from the registries, runs the workers with the chosen runtime,
writes ``config.json`` and one JSON line per logged step to ``workdir``,
checkpoints (orbax), resumes, stops on a non-finite metric, and stops on
request (``should_stop``) with a checkpoint of the step it reached.

It runs unchanged in each process of a multi-process run (after
``jax.distributed.initialize``, with ``runtime='mesh'``): every process
runs the same loop over the global mesh, every process writes its shards of
each checkpoint, and process 0 alone writes ``config.json`` and
``metrics.jsonl``.

The step is the configured algorithm (``experiments.algorithms``):
synchronous data parallelism with the model held once
(``data_parallel(..., replicated_params=True)``) and a server optimizer
declared replicated, or a local algorithm with one model per worker synced
every ``period`` steps, whose global model is the one evaluated; metrics
then add the current period and the syncs so far.

Simulated time is a persistent :class:`~distoptax.distributed.Clock`
(compute model and topology from the configuration): each step advances it
by one local step of every participating worker and then charges the
step's communication rounds as its transforms recorded them (kind, bytes,
participants; ``dist.clock_rounds``). A local step records no round, so
the workers' clocks run apart between syncs and a period costs
``max_i (sum of worker i's step times) + sync``. Its :class:`ClockState`
is saved in every checkpoint and restored on resume, so a resumed run's
simulated seconds continue exactly as an uninterrupted run's. AdaComm with
an interval in simulated seconds reads the clock before every step (a host
input of the step). An algorithm whose system model is a schedule of its
own (a deadline, eager-SGD's partial all-reduce) brings an
``algorithms.Timing`` that advances the clock one step at a time through
that schedule (prefix-consistent, so a run whose step budget grows on
resume continues it exactly) and checks that each step ran what the
schedule priced.
"""

import os
import time
from typing import Any, Callable, NamedTuple

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.experiments import algorithms
from distoptax.experiments import checkpoint
from distoptax.experiments import datasets
from distoptax.experiments import label_flipping
from distoptax.experiments import metrics_io
from distoptax.experiments import models
from distoptax.experiments import partition
from distoptax.experiments import registries
from distoptax.experiments.config import ConfigError
from distoptax.experiments.config import RESUMABLE
from distoptax.experiments.config import TrainConfig


class NonFiniteError(RuntimeError):
  """A training metric became NaN or infinite; the run was stopped."""


class Interrupted(RuntimeError):
  """The run stopped on request (``should_stop``) after a checkpoint.

  Attributes:
    step: the step the run reached, which the last checkpoint holds.
  """

  def __init__(self, step: int, message: str):
    super().__init__(message)
    self.step = step


_AGGREGATE_SALT, _ATTACK_SALT = 3, 4


def derived_seed(seed: int, salt: int) -> int:
  """A seed for one component of a run, distinct for each ``salt``.

  The attack and the aggregation each get their own, so that their
  per-worker keys never coincide.
  """
  return int(np.random.SeedSequence([seed, salt]).generate_state(1)[0]
             & 0x7FFFFFFF)


class TrainResult(NamedTuple):
  """What a finished run returns (everything is also in ``workdir``).

  Attributes:
    step: number of steps applied.
    test_loss: final test loss of worker 0's parameters.
    test_accuracy: final test accuracy (``None`` for regression).
    params: worker 0's final parameters (host arrays).
    workdir: where config, metrics, checkpoint and curves are.
  """

  step: int
  test_loss: float
  test_accuracy: float | None
  params: Any
  workdir: str


def system_model(config: TrainConfig) -> dist.SystemModel:
  """The declared system model; its ``clock`` gives simulated seconds."""
  return dist.SystemModel(
      config.num_workers, config.compute_seconds,
      bandwidth=config.bandwidth, latency=config.latency,
      imbalance=config.imbalance or None,
      straggler=dist.make_straggler(config.straggler,
                                    **dict(config.straggler_params)),
      topology=config.topology, seed=config.seed)


_SYNC_TIME = (
    "a persistent per-worker clock: each step, every participating "
    "worker computes one local step (compute_seconds * imbalance_i + "
    "a straggler delay drawn from (seed, step, worker)), then the "
    "step's communication rounds, as its transforms recorded them "
    "(kind, bytes, participants), are charged in order under the "
    "topology, each paying its latency and waiting for its "
    "participants only; simulated_seconds is the latest worker "
    "clock")


def describe_time(clock: dist.Clock,
                  timing: algorithms.Timing | None = None) -> dict[str, Any]:
  """How the run's simulated seconds are made, for ``config.json``.

  Args:
    clock: the run's clock.
    timing: the algorithm's own timing, or ``None`` (:func:`default_timing`).

  Returns:
    The clock's description and ``simulated_seconds``, in words.
  """
  return {**clock.describe(),
          "simulated_seconds": _SYNC_TIME if timing is None
                               else timing.description}


def clock_step(clock: dist.Clock, state: dist.ClockState,
               metrics: dict[str, Any]) -> dist.ClockState:
  """Advances the clock by one synchronous step from its host metrics.

  Args:
    clock: the run's clock.
    state: the clock's state before the step.
    metrics: the step's metrics on the host, as the trainer's step returns
      them: ``comm`` holds the :class:`~distoptax.distributed.CommStats` of
      the step (their round records), and ``participation``, when the step
      reports it, a ``[num_workers]`` mask of the workers that computed.

  Returns:
    The clock's state after the step.
  """
  participation = metrics.get("participation")
  if participation is not None:
    # [n], or [workers, n] where the runtime keeps a copy per worker (all
    # copies are equal).
    participation = np.asarray(participation).reshape(
        -1, clock.num_workers)[0].astype(bool)
  return clock.sync_step(state, dist.clock_rounds(metrics["comm"]),
                         workers=participation)


def default_timing(clock: dist.Clock) -> algorithms.Timing:
  """One synchronous step per step, priced by :func:`clock_step`.

  The simulated seconds are the latest worker clock.
  """
  return algorithms.Timing(
      clock.init, lambda state, t, metrics: clock_step(clock, state, metrics),
      lambda state, t: float(state.time.max()), _SYNC_TIME)


def _with_round_records(
    step: dist.WorkerStep,
    more: Callable[[Any], dict[str, Any]] | None = None) -> dist.WorkerStep:
  """``step`` whose metrics also carry its communication stats (``comm``).

  The clock prices each step from its own round records, read on the host
  with the step's other metrics (the state keeps only the last step's).

  Args:
    step: the per-worker step.
    more: ``more(opt_state) -> dict`` of further per-step metrics (an
      algorithm's ``step_metrics``), or ``None``.

  Returns:
    The step with the metrics added.
  """

  def update(state, batch, **inputs):
    state, metrics = step.update(state, batch, **inputs)
    extra = {} if more is None else more(state.opt_state)
    return state, {**metrics, **extra,
                   "comm": dist.find_comm_stats(state.opt_state)}

  return step._replace(update=update)


def _loss_and_metrics(data: datasets.Dataset, model):
  """Per-batch loss for training and a full-set evaluation function."""
  if data.is_regression:
    loss_of = models.squared_loss
  else:
    loss_of = models.softmax_cross_entropy_loss

  def loss_fn(params, batch):
    x, y = batch
    return loss_of(model.apply(params, x), y)

  def evaluate(params, x, y):
    out = model.apply(params, x)
    acc = jnp.nan if data.is_regression else models.accuracy(out, y)
    return loss_of(out, y), acc

  return loss_fn, jax.jit(evaluate)


def _make_sampler(data: datasets.Dataset, parts: partition.PaddedPartition,
                  batch_size: int, seed: int,
                  flipped_workers: np.ndarray | None = None):
  """``sample(step) -> (x, y)`` with leading ``[num_workers, batch_size]``.

  Worker ``i`` draws ``batch_size`` examples uniformly with replacement from
  its own shard; the draw depends only on ``(seed, step)``, so a resumed run
  sees the same batches as an uninterrupted one. The workers marked in
  ``flipped_workers`` (label flipping) get their labels flipped.
  """
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  indices, sizes = jnp.asarray(parts.indices), jnp.asarray(parts.sizes)
  data_key = jax.random.fold_in(jax.random.key(seed), 1)

  @jax.jit
  def sample(step):
    keys = jax.random.split(jax.random.fold_in(data_key, step), len(sizes))
    slots = jax.vmap(
        lambda k, s: jax.random.randint(k, (batch_size,), 0, s))(keys, sizes)
    rows = jnp.take_along_axis(indices, slots, axis=1)
    if flipped_workers is None:
      return x[rows], y[rows]
    return label_flipping.byzantine_label_flip(
        x[rows], y[rows], flipped_workers, data.num_outputs)

  return sample


def _validation_oracle(data: datasets.Dataset, loss_fn, batch_size: int,
                       seed: int):
  """``extra_args(state) -> {"value_fn": ...}`` for loss-oracle rules (Zeno).

  The server's validation batch: ``batch_size`` training examples drawn
  from ``(seed, state.step)``, hence the same on every worker (the state's
  step is replicated) and a different batch at every step. Rules that do
  not use ``value_fn`` ignore it and XLA drops the unused draw.
  """
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  key = jax.random.fold_in(jax.random.key(seed), 2)

  def extra_args(state: dist.TrainState) -> dict[str, Any]:
    rows = jax.random.randint(jax.random.fold_in(key, state.step),
                              (batch_size,), 0, len(data.x_train))
    batch = (x[rows], y[rows])
    return {"value_fn": lambda params: loss_fn(params, batch)}

  return extra_args


def _run_context(config: TrainConfig, salt: int) -> dict[str, Any]:
  """Values of the run that registered factories receive if they take them.

  ``seed`` is the component's own seed, derived from the run's with
  ``salt``.
  """
  return {"num_byzantine": config.num_byzantine,
          "num_suspicious": config.num_byzantine,
          "num_workers": config.num_workers,
          "learning_rate": config.learning_rate,
          "seed": derived_seed(config.seed, salt)}


def aggregation_rule(config: TrainConfig) -> alg.aggregators.AggregationRule:
  """The configured rule, behind the configured pre-aggregation if any."""
  context = _run_context(config, _AGGREGATE_SALT)
  rule = registries.call_with_params(
      registries.lookup(alg.aggregators.AGGREGATORS, config.aggregator,
                        "aggregator"),
      dict(config.aggregator_params), "aggregator", context)
  if config.preaggregation == "none":
    return rule
  pre = registries.call_with_params(
      registries.lookup(alg.aggregators.PREAGGREGATORS, config.preaggregation,
                        "preaggregation"),
      dict(config.preaggregation_params), "preaggregation", context)
  return alg.aggregators.pre_aggregated(pre, rule)


def _compressor(config: TrainConfig) -> alg.compressors.Compressor | None:
  """The configured compressor; ``None`` for a transformation of its own."""
  if config.compressor in registries.COMMUNICATORS:
    return None
  return registries.call_with_params(
      registries.lookup(
          {**alg.compressors.COMPRESSORS, **registries.COMMUNICATORS},
          config.compressor, "compressor"),
      dict(config.compressor_params), "compressor",
      _run_context(config, _AGGREGATE_SALT))


def communication(config: TrainConfig) -> optax.GradientTransformation:
  """The transform that communicates and aggregates the workers' updates.

  ``aggregate(rule, compressor, error_feedback)`` for a registered
  compressor; the PowerSGD transformation (which has rounds of its own and
  its own error feedback) in place of the mean's all-reduce.
  """
  compressor = _compressor(config)
  if compressor is None:
    if (config.aggregator, config.preaggregation) != ("mean", "none"):
      raise ValueError(
          f"compressor {config.compressor!r} averages by itself; it needs "
          f"aggregator='mean' and preaggregation='none', got "
          f"{config.aggregator!r} and {config.preaggregation!r}")
    if config.error_feedback:
      raise ValueError(
          f"compressor {config.compressor!r} keeps its own error feedback "
          "(on by default; --compressor_params=error_feedback=0 turns it "
          "off); drop --error_feedback")
    return registries.call_with_params(
        registries.COMMUNICATORS[config.compressor],
        dict(config.compressor_params), "compressor",
        _run_context(config, _AGGREGATE_SALT))
  return dist.aggregate(aggregation_rule(config), compressor=compressor,
                        error_feedback=config.error_feedback,
                        seed=derived_seed(config.seed, _AGGREGATE_SALT))


def _load(config: TrainConfig) -> tuple[datasets.Dataset,
                                        partition.PaddedPartition, Any]:
  """The run's dataset, its partition and the model."""
  data = datasets.load_dataset(config.dataset)
  parts = partition.pad_partition(partition.partition(
      None if data.is_regression else data.y_train, config.num_workers,
      config.partition, seed=config.seed, alpha=config.dirichlet_alpha,
      classes_per_worker=config.classes_per_worker,
      num_examples=len(data.x_train)))
  model = models.make_model(config.model, num_outputs=data.num_outputs,
                            image_shape=data.image_shape, hidden=config.hidden)
  return data, parts, model


def initial_params(config: TrainConfig, data: datasets.Dataset,
                   model: Any) -> Any:
  """The model a run starts from (from the run's seed)."""
  return model.init(jax.random.key(config.seed), data.x_train[:1])


def build_algorithm(
    config: TrainConfig, *, params: Any = None,
    shard_sizes: np.ndarray | None = None) -> algorithms.Algorithm:
  """The run's optimizer (``config.algorithm``) and how it is held.

  Args:
    config: the run's configuration.
    params: the model the run starts from; default: built from the
      configuration (dataset and model) when an algorithm needs it.
    shard_sizes: each worker's number of training examples; default: from
      the configuration's partition when needed.

  Returns:
    The :class:`~distoptax.experiments.algorithms.Algorithm`.
  """
  optimizer = registries.lookup(algorithms.OPTIMIZERS, config.optimizer,
                                "optimizer")
  compressor = _compressor(config)

  def start_params():
    if params is not None:
      return params
    data, _, model = _load(config)
    return initial_params(config, data, model)

  def sizes():
    return (np.asarray(_load(config)[1].sizes) if shard_sizes is None
            else np.asarray(shard_sizes))

  pieces = algorithms.Pieces(
      optimizer=optimizer(config),
      communication=(None if compressor is None
                     else (aggregation_rule(config), compressor)),
      exchange=lambda: communication(config),
      attack=update_attack(config),
      seed=derived_seed(config.seed, _AGGREGATE_SALT),
      clock=system_model(config).clock,
      initial_params=start_params,
      shard_sizes=sizes)
  return registries.lookup(algorithms.ALGORITHMS, config.algorithm,
                           "algorithm")(config, pieces)


def model_of(state: dist.TrainState,
             algorithm: algorithms.Algorithm | None = None) -> Any:
  """The model a run evaluates: ``algorithm.model_of`` if it has one, else
  the synchronous model or the global model of the last sync of a local
  algorithm."""
  if algorithm is not None and algorithm.model_of is not None:
    return algorithm.model_of(state)
  local = algorithms.find_local_state(state.opt_state)
  if local is not None:
    return local.global_params
  return dist.worker_slice(state).params


def _schedule_metrics(state: dist.TrainState) -> dict[str, int]:
  """The current period and the syncs so far, for local algorithms."""
  local = algorithms.find_local_state(state.opt_state)
  if local is None:
    return {}
  return {"period": int(_first(_to_host(local.period))),
          "num_syncs": int(_first(_to_host(local.num_syncs)))}


def update_attack(config: TrainConfig) -> optax.GradientTransformation | None:
  """The worker-side attack transform, or None (no attack or a data attack)."""
  if config.attack == "none":
    return None
  if config.attack in registries.DATA_ATTACKS:
    if config.attack_params:
      raise ValueError(
          f"attack {config.attack!r} takes no parameters; got "
          f"{dict(config.attack_params)}")
    return None
  factory = registries.lookup(
      {**alg.attacks.ATTACKS, **dict.fromkeys(registries.DATA_ATTACKS)},
      config.attack, "attack")
  return registries.call_with_params(
      factory, dict(config.attack_params), "attack",
      _run_context(config, _ATTACK_SALT))


def _flipped_workers(config: TrainConfig,
                     data: datasets.Dataset) -> np.ndarray | None:
  if config.attack != "label_flip":
    return None
  if data.is_regression:
    raise ValueError(
        f"attack 'label_flip' needs a classification dataset; "
        f"{config.dataset!r} is a regression")
  return label_flipping.byzantine_workers(config.num_workers,
                                          config.num_byzantine)


def _selection_metrics(config: TrainConfig,
                       rows: list[dict[str, Any]]) -> dict[str, Any]:
  """Which rows the rule kept, as fractions of the logged steps.

  ``selected_fraction[i]``: the fraction of the steps since the last log at
  which row ``i`` entered the aggregate (rows are workers, or buckets behind
  bucketing). When rows are workers and there are Byzantine workers:
  ``byzantine_selected_fraction_mean``, ``selected_fraction`` averaged over
  the Byzantine workers (Krum, which keeps one of 25 workers per step, gives
  at most 1/11 with 11 Byzantine workers), and
  ``any_byzantine_selected_fraction``, the fraction of the steps at which the
  rule kept at least one Byzantine update. Nothing is logged for rules that
  keep no selection.
  """
  if "selected" not in rows[0]:
    return {}
  # One mask per step: [rows], or [workers, rows] where the runtime keeps a
  # copy per worker (all copies are equal).
  masks = [np.asarray(m["selected"]) for m in rows]
  masks = np.stack([m[0] if m.ndim == 2 else m for m in masks])
  fraction = np.mean(masks, axis=0)
  out = {"selected_fraction": [round(float(v), 6) for v in fraction]}
  f = config.num_byzantine
  if f and config.preaggregation == "none" and len(fraction) == (
      config.num_workers):
    out["byzantine_selected_fraction_mean"] = float(np.mean(fraction[:f]))
    out["any_byzantine_selected_fraction"] = float(
        np.mean(np.any(masks[:, :f] > 0, axis=1)))
  return out


def _participation_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
  """``participation``: the fraction of the workers that took part in the
  logged steps, where the step reports its participants (a partial
  aggregate); nothing otherwise."""
  if "participation" not in rows[0]:
    return {}
  masks = [np.asarray(m["participation"]) for m in rows]
  masks = np.stack([m[0] if m.ndim == 2 else m for m in masks])
  return {"participation": float(np.mean(masks > 0))}


def _step_bytes(metrics: dict[str, Any]) -> int:
  """Bytes one worker handed to the collectives of a step.

  The all-reduce and all-gather bytes of the step's metrics, plus the
  bytes of its rounds of other kinds (reduce-scatter, broadcast) from its
  round records.
  """
  other = sum(r.bytes for r in dist.clock_rounds(metrics["comm"])
              if r.kind not in ("all_reduce", "all_gather"))
  return int(_first(metrics["all_reduce_bytes"])
             + _first(metrics["all_gather_bytes"]) + other)


def _check_batch_fits(config: TrainConfig,
                      parts: partition.PaddedPartition) -> None:
  smallest = int(parts.sizes.min())
  if config.batch_size > smallest:
    worker = int(np.argmin(parts.sizes))
    raise ConfigError(
        "batch_size",
        f"batch_size={config.batch_size} is larger than worker {worker}'s "
        f"shard ({smallest} examples of {config.dataset!r} under "
        f"partition={config.partition!r} with {config.num_workers} "
        f"workers); each step would repeat examples: use batch_size <= "
        f"{smallest}")


def _prepare_workdir(config: TrainConfig,
                     workdir: str, resume: bool) -> checkpoint.Checkpoints:
  """Checks the workdir against ``resume``."""
  has_run = os.path.exists(os.path.join(workdir, metrics_io.METRICS_FILE))
  os.makedirs(workdir, exist_ok=True)
  checkpoints = checkpoint.Checkpoints(workdir)
  if resume:
    if checkpoints.latest_step() is None:
      raise checkpoint.CheckpointError(
          f"cannot resume: no checkpoint in {workdir}")
    saved = TrainConfig.from_json(metrics_io.read_config(workdir))
    changed = saved.differences(config, ignore=RESUMABLE)
    if changed:
      raise ConfigError(
          sorted(changed)[0],
          f"cannot resume {workdir} with a different configuration; "
          f"changed (saved, now): {changed}; only {', '.join(RESUMABLE)} "
          "may change")
  elif has_run or checkpoints.latest_step() is not None:
    raise ValueError(
        f"{workdir} already holds a run; pass resume=True (--resume) to "
        "continue it or choose another workdir")
  return checkpoints


def _to_host(tree: Any) -> Any:
  """Host (numpy) values of a tree; in every process of a multi-process run.

  A global array that this process does not hold whole is gathered from
  all processes (a collective: every process calls this at the same point).
  """
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)


def _restored_clock(clock: dist.Clock, meta: dict[str, Any], directory: str,
                    step: int) -> dist.ClockState:
  """The clock state saved with the checkpoint of ``step``."""
  try:
    return clock.restore(meta["clock"])
  except (KeyError, TypeError, ValueError) as e:
    detail = "it has none" if isinstance(e, KeyError) else str(e)
    where = os.path.join(directory, str(step))
    raise checkpoint.CheckpointError(
        f"checkpoint {where} holds no usable simulated clock state "
        f"({detail}); it was written by an older distoptax or damaged: "
        "start a new run in another workdir") from e


def _first(x: Any) -> Any:
  """The value of a per-step metric, whether kept per worker or once."""
  return np.asarray(x).reshape(-1)[0]


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(config: TrainConfig, workdir: str, *, resume: bool = False,
          progress: Callable[[str], None] = print,
          on_step: Callable[[int, int], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> TrainResult:
  """Runs (or resumes) one training run described by ``config``.

  Args:
    config: the run's configuration.
    workdir: directory for ``config.json``, ``metrics.jsonl``, the
      checkpoints and ``curves.png``.
    resume: continue from the latest checkpoint in ``workdir`` (the
      configuration must match the saved one except for
      ``config.RESUMABLE``: steps and logging).
    progress: called with one line of text at the start, after the first
      step, and at every logged step (with steps per second and the time
      left).
    on_step: called as ``on_step(step, steps)`` after each step is
      dispatched (e.g. to advance a progress bar).
    should_stop: polled after each step (in a multi-process run, at each
      logged step, and the processes agree); when it returns True the run
      logs the steps since the last log, saves a checkpoint of the current
      step and raises :class:`Interrupted`.

  Returns:
    A :class:`TrainResult`.

  Raises:
    NonFiniteError: if the training or test loss becomes NaN/Inf; the message
      names the step, the metric and the step the last checkpoint holds.
    Interrupted: when ``should_stop`` asked for it.
    ConfigError: an invalid setting (``field`` names it).
    checkpoint.CheckpointError: on resume, if the checkpoint is missing,
      damaged or another run's.
    metrics_io.RunFileError: on resume, if ``config.json`` or
      ``metrics.jsonl`` is missing or damaged.
    ValueError: on an unknown registry name.
  """
  multiprocess = jax.process_count() > 1
  primary = jax.process_index() == 0
  if multiprocess and config.runtime != "mesh":
    raise ConfigError(
        "runtime",
        f"runtime={config.runtime!r} would run every worker in each of the "
        f"{jax.process_count()} processes; a multi-process run needs "
        "runtime='mesh'")
  checkpoints = _prepare_workdir(config, workdir, resume)
  data, parts, model = _load(config)
  _check_batch_fits(config, parts)
  loss_fn, evaluate = _loss_and_metrics(data, model)
  params = initial_params(config, data, model)
  algorithm = build_algorithm(config, params=params,
                              shard_sizes=np.asarray(parts.sizes))
  worker_step = _with_round_records(dist.data_parallel(
      loss_fn, algorithm.tx, extra_args=_validation_oracle(
          data, loss_fn, config.validation_batch_size, config.seed),
      replicated_params=algorithm.replicated_params), algorithm.step_metrics)
  runtime = registries.lookup(registries.RUNTIMES, config.runtime, "runtime")(
      worker_step, config.num_workers)
  clock = system_model(config).clock
  timing = algorithm.timing or default_timing(clock)
  if primary:
    metrics_io.write_config(workdir, config.to_json(),
                            system_model=describe_time(clock,
                                                       algorithm.timing))
  sample = _make_sampler(data, parts, config.batch_size, config.seed,
                         _flipped_workers(config, data))

  state = runtime.init(params)
  start, clock_state, elapsed_before = 0, timing.init(), 0.0
  if resume:
    state, meta = checkpoints.restore(state)
    saved = meta.get("config")
    if saved is not None:
      changed = TrainConfig.from_json(saved).differences(
          config, ignore=RESUMABLE)
      if changed:
        raise checkpoint.CheckpointError(
            f"the latest checkpoint in {workdir} was written by a run with "
            f"another configuration (checkpoint, config.json): {changed}; "
            "it belongs to another run")
    start, elapsed_before = meta["step"], meta["elapsed_seconds"]
    clock_state = _restored_clock(clock, meta, checkpoints.directory, start)
    if primary and metrics_io.truncate_after(workdir, start):
      progress(f"dropped the torn last line of {metrics_io.METRICS_FILE} "
               "(the run stopped while writing it); its step is rerun")
    progress(f"resumed {workdir} at step {start}")
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  saved_step = start if resume else None

  def last_checkpoint() -> str:
    if saved_step is None:
      return "no checkpoint was written yet"
    return f"the last checkpoint holds step {saved_step} (in {workdir})"

  def test_metrics(step: int) -> tuple[float, float | None]:
    loss, acc = map(float, evaluate(_to_host(model_of(state, algorithm)),
                                    x_test, y_test))
    if not np.isfinite(loss):
      raise NonFiniteError(
          f"non-finite test_loss at step {step}; training stopped, "
          f"{last_checkpoint()}")
    return loss, None if data.is_regression else acc

  pending = []
  t0 = t_first = time.perf_counter()

  clocked = 0   # Rows of ``pending`` whose steps the clock has charged.
  charged = start   # Steps the clock has charged.

  def advance_clock(rows: list[dict[str, Any]]) -> None:
    nonlocal clock_state, clocked, charged
    for m in rows[clocked:]:
      clock_state = timing.advance(clock_state, charged, m)
      charged += 1
    clocked = len(rows)

  def flush(step: int) -> dict[str, Any]:
    nonlocal pending, clocked
    rows = _to_host(pending)
    first = step - len(rows)
    for i, m in enumerate(rows):
      loss = np.asarray(m["loss"])
      if not np.all(np.isfinite(loss)):
        bad = np.flatnonzero(~np.isfinite(loss.reshape(-1))).tolist()
        raise NonFiniteError(
            f"non-finite train_loss at step {first + i + 1} (workers "
            f"{bad}); training stopped, {last_checkpoint()}")
    advance_clock(rows)
    pending, clocked = [], 0
    simulated = timing.seconds(clock_state, step)
    test_loss, test_acc = test_metrics(step)
    stats = _to_host(dist.find_comm_stats(state.opt_state))
    seconds = time.perf_counter() - t0
    row = {
        "step": step,
        "train_loss": float(np.mean([np.mean(m["loss"]) for m in rows])),
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "wire_bytes": sum(dist.total_bytes(s) for s in stats),
        "coded_bytes": sum(dist.total_coded_bytes(s) for s in stats),
        "wire_bytes_step": _step_bytes(rows[-1]),
        "simulated_seconds": simulated,
        "elapsed_seconds": elapsed_before + seconds,
        **_schedule_metrics(state),
        **_selection_metrics(config, rows),
        **_participation_metrics(rows),
        **({} if algorithm.log_metrics is None
           else algorithm.log_metrics(range(first, step), rows)),
    }
    if primary:
      metrics_io.append(workdir, [row])
    # Steps per second after the first step (which compiles).
    rate = (step - start - 1) / max(time.perf_counter() - t_first, 1e-9)
    acc_text = "" if test_acc is None else f" test_acc {test_acc:.4f}"
    selection = (f" any_byzantine_selected "
                 f"{row['any_byzantine_selected_fraction']:.2f}"
                 if "any_byzantine_selected_fraction" in row else "")
    if "period" in row:
      selection += f" period {row['period']} syncs {row['num_syncs']}"
    progress(f"step {step}/{config.steps} train_loss {row['train_loss']:.4f}"
             f" test_loss {test_loss:.4f}{acc_text}"
             f" wire {row['wire_bytes'] / 2**20:.1f} MiB"
             f" simulated {simulated:.2f} s{selection}"
             f" | {rate:.1f} steps/s, elapsed "
             f"{_duration(row['elapsed_seconds'])}, left "
             f"{_duration((config.steps - step) / rate) if rate else '?'}")
    return row

  def save(step: int, row: dict[str, Any]) -> None:
    nonlocal saved_step
    checkpoints.save(step, state, {
        "simulated_seconds": row["simulated_seconds"],
        "clock": {name: value.tolist()
                  for name, value in clock_state._asdict().items()},
        "elapsed_seconds": row["elapsed_seconds"],
        "config": config.to_json()})
    saved_step = step

  def stop_requested(done: int) -> bool:
    if should_stop is None:
      return False
    if not multiprocess:
      return bool(should_stop())
    if done % config.log_every:
      return False
    asked = np.int32(bool(should_stop()))
    return bool(np.any(multihost_utils.process_allgather(asked)))

  progress(f"training steps {start + 1}-{config.steps} of {config.steps}: "
           f"{config.num_workers} workers ({config.runtime}), {config.model} "
           f"on {config.dataset}; the first step compiles")
  row = None
  for t in range(start, config.steps):
    batch = sample(t)
    if multiprocess:
      batch = jax.device_get(batch)
    inputs = None
    if algorithm.needs_time:
      # The period rule reads the clock, so each step is charged before
      # the next one runs (a host round trip per step); only the steps not
      # yet charged come to the host, once.
      pending[clocked:] = _to_host(pending[clocked:])
      advance_clock(pending)
      inputs = {"simulated_seconds": np.float32(
          timing.seconds(clock_state, t))}
    state, metrics = runtime.step(state, batch, inputs)
    pending.append(metrics)
    done = t + 1
    if t == start:
      jax.block_until_ready(metrics)
      t_first = time.perf_counter()
      progress(f"step {done}/{config.steps} ran in {t_first - t0:.1f} s "
               "(compilation included)")
    if on_step is not None:
      on_step(done, config.steps)
    if done % config.log_every == 0 or done == config.steps:
      row = flush(done)
      if done % config.checkpoint_every == 0 or done == config.steps:
        save(done, row)
    if done < config.steps and stop_requested(done):
      if pending:
        row = flush(done)
      save(done, row)
      raise Interrupted(
          done, f"stopped at step {done} of {config.steps}; the checkpoint "
          f"in {checkpoints.directory} holds step {done}")

  if row is None:  # Resumed at the last step: nothing ran, nothing logged.
    test_loss, test_acc = test_metrics(config.steps)
  else:
    test_loss, test_acc = row["test_loss"], row["test_accuracy"]
  return TrainResult(config.steps, test_loss, test_acc,
                     _to_host(model_of(state, algorithm)), workdir)
