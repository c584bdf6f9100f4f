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
those of the global model of the last sync (CSER: of the workers' mean
model, as the authors evaluate it).
"""

import dataclasses
import types
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
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
  """

  optimizer: optax.GradientTransformation
  communication: tuple[Any, Any] | None
  exchange: Callable[[], optax.GradientTransformation]
  attack: optax.GradientTransformation | None
  seed: int


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
  """

  tx: optax.GradientTransformation
  replicated_params: bool
  needs_time: bool = False
  model_of: Callable[[Any], Any] | None = None


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
  del config
  tx = optax.chain(
      *(() if pieces.attack is None else (pieces.attack,)),
      pieces.exchange(), dist.replicated(pieces.optimizer))
  return Algorithm(tx, replicated_params=True)


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


ALGORITHMS: Mapping[str, Callable[[TrainConfig, Pieces], Algorithm]]
ALGORITHMS = types.MappingProxyType({
    "sync": _sync,
    "local_sgd": _local_sgd,
    "adacomm": _adacomm,
    "local_adaalter": _local_adaalter,
    "cser": _cser,
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
