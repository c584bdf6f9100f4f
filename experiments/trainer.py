"""The training loop behind ``python -m distoptax.experiments.train``.

``train(config, workdir)`` builds dataset, partition, model, aggregation and
optimizer from the registries, runs the workers with the chosen runtime,
writes ``config.json`` and one JSON line per logged step to ``workdir``,
checkpoints, resumes, and stops on a non-finite metric.
"""

import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.experiments import checkpoint
from distoptax.experiments import datasets
from distoptax.experiments import label_flipping
from distoptax.experiments import metrics_io
from distoptax.experiments import models
from distoptax.experiments import partition
from distoptax.experiments import registries
from distoptax.experiments.config import TrainConfig


class NonFiniteError(RuntimeError):
  """A training metric became NaN or infinite; the run was stopped."""


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
  """The declared system model that turns bytes into simulated seconds."""
  return dist.SystemModel(
      config.num_workers, config.compute_seconds,
      bandwidth=config.bandwidth, latency=config.latency,
      imbalance=config.imbalance or None,
      straggler=dist.make_straggler(config.straggler,
                                    **dict(config.straggler_params)),
      topology=config.topology, seed=config.seed)


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


def _run_context(config: TrainConfig) -> dict[str, Any]:
  """Values of the run that registered factories receive if they take them."""
  return {"num_byzantine": config.num_byzantine,
          "num_suspicious": config.num_byzantine,
          "num_workers": config.num_workers,
          "learning_rate": config.learning_rate,
          "seed": config.seed}


def aggregation_rule(config: TrainConfig) -> alg.aggregators.AggregationRule:
  """The configured rule, behind the configured pre-aggregation if any."""
  context = _run_context(config)
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


def communication(config: TrainConfig) -> optax.GradientTransformation:
  """The transform that communicates and aggregates the workers' updates.

  ``aggregate(rule, compressor, error_feedback)`` for a registered
  compressor; the PowerSGD transformation (which has rounds of its own and
  its own error feedback) in place of the mean's all-reduce.
  """
  params = dict(config.compressor_params)
  if config.compressor in registries.COMMUNICATORS:
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
        registries.COMMUNICATORS[config.compressor], params, "compressor",
        _run_context(config))
  compressor = registries.call_with_params(
      registries.lookup(
          {**alg.compressors.COMPRESSORS, **registries.COMMUNICATORS},
          config.compressor, "compressor"),
      params, "compressor", _run_context(config))
  return dist.aggregate(aggregation_rule(config), compressor=compressor,
                        error_feedback=config.error_feedback,
                        seed=config.seed)


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
      factory, dict(config.attack_params), "attack", _run_context(config))


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
  bucketing). ``byzantine_selected_fraction``: the same, averaged over the
  Byzantine workers, when rows are workers and there are Byzantine workers.
  Nothing is logged for rules that keep no selection.
  """
  if "selected" not in rows[0]:
    return {}
  fraction = np.mean([np.asarray(m["selected"])[0] for m in rows], axis=0)
  out = {"selected_fraction": [round(float(v), 6) for v in fraction]}
  f = config.num_byzantine
  if f and config.preaggregation == "none" and len(fraction) == (
      config.num_workers):
    out["byzantine_selected_fraction"] = float(np.mean(fraction[:f]))
  return out


def _prepare_workdir(config: TrainConfig, workdir: str, resume: bool) -> None:
  os.makedirs(workdir, exist_ok=True)
  has_run = (checkpoint.exists(workdir)
             or os.path.exists(os.path.join(workdir, metrics_io.METRICS_FILE)))
  if resume:
    if not checkpoint.exists(workdir):
      raise ValueError(f"cannot resume: no checkpoint in {workdir}")
    saved = TrainConfig.from_json(metrics_io.read_config(workdir))
    changed = saved.differences(config, ignore=("steps",))
    if changed:
      raise ValueError(
          f"cannot resume {workdir} with a different configuration; "
          f"changed (saved, now): {changed}")
  elif has_run:
    raise ValueError(
        f"{workdir} already holds a run; pass resume=True (--resume) to "
        "continue it or choose another workdir")
  metrics_io.write_config(workdir, config.to_json())


def train(config: TrainConfig, workdir: str, *, resume: bool = False,
          progress: Callable[[str], None] = print) -> TrainResult:
  """Runs (or resumes) one training run described by ``config``.

  Args:
    config: the run's configuration.
    workdir: directory for ``config.json``, ``metrics.jsonl``, the checkpoint
      and ``curves.png``.
    resume: continue from the checkpoint in ``workdir`` (the configuration
      must match, except ``steps``, which may grow).
    progress: called with one line of text at every logged step.

  Returns:
    A :class:`TrainResult`.

  Raises:
    NonFiniteError: if the training or test loss becomes NaN/Inf; the message
      names the step and the metric, and the last checkpoint stays in place.
    ValueError: on an unknown registry name or an invalid configuration.
  """
  _prepare_workdir(config, workdir, resume)
  data = datasets.load_dataset(config.dataset)
  parts = partition.partition(
      None if data.is_regression else data.y_train, config.num_workers,
      config.partition, seed=config.seed, alpha=config.dirichlet_alpha,
      classes_per_worker=config.classes_per_worker,
      num_examples=len(data.x_train))
  model = models.make_model(config.model, num_outputs=data.num_outputs,
                            image_shape=data.image_shape, hidden=config.hidden)
  loss_fn, evaluate = _loss_and_metrics(data, model)
  optimizer = registries.lookup(registries.OPTIMIZERS, config.optimizer,
                                "optimizer")
  attack = update_attack(config)
  tx = optax.chain(
      *(() if attack is None else (attack,)),
      communication(config),
      optimizer(config.learning_rate, config.momentum))
  worker_step = dist.data_parallel(
      loss_fn, tx, extra_args=_validation_oracle(
          data, loss_fn, config.validation_batch_size, config.seed))
  runtime = registries.lookup(registries.RUNTIMES, config.runtime, "runtime")(
      worker_step, config.num_workers)
  system = system_model(config)
  sample = _make_sampler(data, partition.pad_partition(parts),
                         config.batch_size, config.seed,
                         _flipped_workers(config, data))

  params = model.init(jax.random.key(config.seed), data.x_train[:1])
  state = runtime.init(params)
  start, simulated, elapsed_before = 0, 0.0, 0.0
  if resume:
    restored, meta = checkpoint.restore(workdir, state)
    state = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding),
                         restored, state)
    start, simulated = meta["step"], meta["simulated_seconds"]
    elapsed_before = meta["elapsed_seconds"]
    metrics_io.truncate_after(workdir, start)
    progress(f"resumed {workdir} at step {start}")
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  t0 = time.perf_counter()
  pending = []

  def test_metrics(step: int) -> tuple[float, float | None]:
    loss, acc = map(float, evaluate(
        dist.worker_slice(state.params), x_test, y_test))
    if not np.isfinite(loss):
      raise NonFiniteError(
          f"non-finite test_loss at step {step}; training stopped, last "
          f"checkpoint in {workdir}")
    return loss, None if data.is_regression else acc

  def flush(step: int) -> dict[str, Any]:
    nonlocal simulated, pending
    rows = jax.device_get(pending)
    first = step - len(rows)
    for i, m in enumerate(rows):
      loss = np.asarray(m["loss"])
      if not np.all(np.isfinite(loss)):
        bad = np.flatnonzero(~np.isfinite(loss)).tolist()
        raise NonFiniteError(
            f"non-finite train_loss at step {first + i} (workers {bad}); "
            f"training stopped, last checkpoint in {workdir}")
      simulated += system.step_seconds(
          first + i,
          all_reduce_bytes=int(np.asarray(m["all_reduce_bytes"])[0]),
          all_gather_bytes=int(np.asarray(m["all_gather_bytes"])[0])).total
    pending = []
    test_loss, test_acc = test_metrics(step)
    stats = dist.find_comm_stats(state.opt_state)
    row = {
        "step": step,
        "train_loss": float(np.mean([np.mean(m["loss"]) for m in rows])),
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "wire_bytes": sum(dist.total_bytes(s) for s in stats),
        "coded_bytes": sum(dist.total_coded_bytes(s) for s in stats),
        "wire_bytes_step": int(np.asarray(rows[-1]["all_reduce_bytes"])[0]
                               + np.asarray(rows[-1]["all_gather_bytes"])[0]),
        "simulated_seconds": simulated,
        "elapsed_seconds": elapsed_before + time.perf_counter() - t0,
        **_selection_metrics(config, rows),
    }
    metrics_io.append(workdir, [row])
    acc_text = "" if test_acc is None else f" test_acc {test_acc:.4f}"
    progress(f"step {step}/{config.steps} train_loss {row['train_loss']:.4f}"
             f" test_loss {test_loss:.4f}{acc_text}"
             f" wire {row['wire_bytes'] / 2**20:.1f} MiB"
             f" simulated {simulated:.2f} s"
             f" elapsed {row['elapsed_seconds']:.1f} s" + (
                 f" byzantine_selected {row['byzantine_selected_fraction']:.2f}"
                 if "byzantine_selected_fraction" in row else ""))
    return row

  row = None
  for t in range(start, config.steps):
    state, metrics = runtime.step(state, sample(t))
    pending.append(metrics)
    done = t + 1
    if done % config.log_every == 0 or done == config.steps:
      row = flush(done)
      if done % config.checkpoint_every == 0 or done == config.steps:
        checkpoint.save(workdir, state, {
            "step": done, "simulated_seconds": simulated,
            "elapsed_seconds": row["elapsed_seconds"]})

  if row is None:  # Resumed at the last step: nothing ran, nothing logged.
    test_loss, test_acc = test_metrics(config.steps)
  else:
    test_loss, test_acc = row["test_loss"], row["test_accuracy"]
  return TrainResult(config.steps, test_loss, test_acc,
                     jax.device_get(dist.worker_slice(state.params)), workdir)
