r"""Compute time of each worker's local steps: base, imbalance, stragglers.

Host side, pure numpy. Worker ``i``'s ``k``-th local step takes

.. math::

  c_{ik} = c \cdot m_i + d_{ik},

with ``c`` the base compute seconds of one local step, ``m_i > 0`` a static
per-worker imbalance factor (1 by default) and ``d_{ik} >= 0`` a random
straggler delay. The delays of local step ``k`` of all ``n`` workers are drawn
in one call from ``np.random.default_rng([seed, k])``, so ``c_{ik}`` is a
function of ``(seed, k, i)`` alone: a run resumed at step ``k`` draws what an
uninterrupted run draws, whatever was queried before.

Straggler distributions (registry :data:`STRAGGLERS`): none, exponential,
log-normal, injected (eager-SGD's artificial imbalance: a fixed delay with a
probability) and Pareto type II (heavy tail). Each is a frozen dataclass with
an analytic ``mean`` and ``sample(rng, num_workers)``; any object with these
two members satisfies the :class:`Straggler` protocol.

References:
  Wang & Joshi, `Adaptive communication strategies to achieve the best
  error-runtime trade-off in local-update SGD
  <https://arxiv.org/abs/1810.08313>`_, MLSys 2019 (AdaComm; i.i.d. compute
  times per worker and step).

  Li, Ben-Nun, Di Girolamo, Alistarh & Hoefler, `Taming unbalanced training
  workloads in deep learning with partial collective operations
  <https://arxiv.org/abs/1908.04207>`_, PPoPP 2020 (eager-SGD; injected
  imbalance).
"""

import dataclasses
import math
import types
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from distoptax.distributed import validation

__all__ = [
    "ComputeModel",
    "ExponentialDelay",
    "InjectedDelay",
    "LogNormalDelay",
    "NoStragglers",
    "ParetoDelay",
    "STRAGGLERS",
    "Straggler",
    "describe_straggler",
    "make_straggler",
]


@runtime_checkable
class Straggler(Protocol):
  """Per-step extra compute seconds of each worker."""

  @property
  def mean(self) -> float:
    """Analytic mean extra seconds of one worker."""

  def sample(self, rng: np.random.Generator, num_workers: int) -> np.ndarray:
    """Returns ``[num_workers]`` non-negative extra seconds."""


def _num_workers(num_workers: int) -> int:
  return validation.check_int("num_workers", num_workers, minimum=1)


@dataclasses.dataclass(frozen=True)
class NoStragglers:
  """No extra delay: every worker takes exactly its base compute time.

  Example:
    >>> NoStragglers().sample(np.random.default_rng(0), 3)
    array([0., 0., 0.])
  """

  @property
  def mean(self) -> float:
    return 0.0

  def sample(self, rng: np.random.Generator, num_workers: int) -> np.ndarray:
    del rng
    return np.zeros(_num_workers(num_workers))


@dataclasses.dataclass(frozen=True)
class ExponentialDelay:
  """Exponentially distributed extra delay, ``d_i ~ Exp(mean)``.

  Attributes:
    mean: ``E[d_i] >= 0`` seconds (0 means no delay).

  Example:
    >>> d = ExponentialDelay(0.1).sample(np.random.default_rng(0), 4)
    >>> d.shape, bool((d >= 0).all())
    ((4,), True)
  """

  mean: float

  def __post_init__(self):
    validation.check_real("mean", self.mean)

  def sample(self, rng: np.random.Generator, num_workers: int) -> np.ndarray:
    return rng.exponential(float(self.mean), _num_workers(num_workers))


@dataclasses.dataclass(frozen=True)
class LogNormalDelay:
  r"""Log-normally distributed extra delay with a given mean.

  .. math::

    d_i = \exp(\mu + \sigma z_i), \quad z_i \sim N(0, 1), \quad
    \mu = \log(mean) - \sigma^2 / 2, \quad\text{so } E[d_i] = mean.

  Attributes:
    mean: ``E[d_i] >= 0`` seconds (0 means no delay).
    sigma: ``σ >= 0``, standard deviation of ``log d_i``.

  Example:
    >>> LogNormalDelay(0.0, 1.0).sample(np.random.default_rng(0), 2)
    array([0., 0.])
  """

  mean: float
  sigma: float

  def __post_init__(self):
    validation.check_real("mean", self.mean)
    validation.check_real("sigma", self.sigma)

  def sample(self, rng: np.random.Generator, num_workers: int) -> np.ndarray:
    n = _num_workers(num_workers)
    z = rng.standard_normal(n)  # Drawn even when mean == 0: same stream.
    if self.mean == 0:
      return np.zeros(n)
    sigma = float(self.sigma)
    mu = math.log(self.mean) - 0.5 * sigma**2
    return np.exp(mu + sigma * z)


@dataclasses.dataclass(frozen=True)
class InjectedDelay:
  """Injected load imbalance, as in eager-SGD's experiments.

  Each worker is independently delayed by ``delay`` seconds with probability
  ``p`` and not at all otherwise: ``d_i = delay · Bernoulli(p)``, so
  ``E[d_i] = p · delay``.

  Attributes:
    probability: ``p`` in ``[0, 1]``.
    delay: seconds ``>= 0`` added to a delayed worker.

  Example:
    >>> InjectedDelay(1.0, 0.5).sample(np.random.default_rng(0), 2)
    array([0.5, 0.5])
  """

  probability: float
  delay: float

  def __post_init__(self):
    validation.check_probability("probability", self.probability)
    validation.check_real("delay", self.delay)

  @property
  def mean(self) -> float:
    return float(self.probability) * float(self.delay)

  def sample(self, rng: np.random.Generator, num_workers: int) -> np.ndarray:
    hit = rng.random(_num_workers(num_workers)) < self.probability
    return np.where(hit, float(self.delay), 0.0)


@dataclasses.dataclass(frozen=True)
class ParetoDelay:
  r"""Heavy-tailed extra delay: a Pareto type II (Lomax) distribution.

  The delay starts at 0 (most workers are barely late) with a power-law tail:

  .. math::

    P(d_i > t) = (1 + t / scale)^{-shape}, \qquad
    E[d_i] = \frac{scale}{shape - 1}.

  Equivalently ``d_i = X - scale`` for ``X`` Pareto type I with minimum
  ``scale``.

  Attributes:
    scale: seconds ``>= 0``.
    shape: tail index ``> 1`` (a finite mean delay; the variance is finite
      for ``shape > 2`` only).

  Example:
    >>> ParetoDelay(0.2, 3.0).mean
    0.1
  """

  scale: float
  shape: float

  def __post_init__(self):
    validation.check_real("scale", self.scale)
    shape = validation.check_real("shape", self.shape)
    if shape <= 1:
      raise ValueError(
          f"shape must be > 1 for a finite mean delay, got {self.shape!r}.")

  @property
  def mean(self) -> float:
    return float(self.scale) / (float(self.shape) - 1.0)

  def sample(self, rng: np.random.Generator, num_workers: int) -> np.ndarray:
    return float(self.scale) * rng.pareto(
        float(self.shape), _num_workers(num_workers))


STRAGGLERS: Mapping[str, type] = types.MappingProxyType({
    "none": NoStragglers,
    "exponential": ExponentialDelay,
    "lognormal": LogNormalDelay,
    "injected": InjectedDelay,
    "pareto": ParetoDelay,
})
"""Straggler distribution name -> class."""


def make_straggler(name: str, **params: float) -> Straggler:
  """Builds a straggler distribution by registry name.

  Args:
    name: a key of :data:`STRAGGLERS`.
    **params: the distribution's fields, e.g. ``mean=0.1``.

  Returns:
    The distribution.

  Raises:
    ValueError: on an unknown name (listing the known ones) or bad values.

  Example:
    >>> make_straggler("exponential", mean=0.1)
    ExponentialDelay(mean=0.1)
  """
  if name not in STRAGGLERS:
    raise ValueError(
        f"Unknown straggler distribution {name!r}; known: "
        f"{sorted(STRAGGLERS)}.")
  return STRAGGLERS[name](**params)


def describe_straggler(straggler: Straggler) -> dict[str, Any]:
  """A JSON-serialisable description: registry name, fields, mean.

  Example:
    >>> describe_straggler(InjectedDelay(0.5, 0.2))
    {'name': 'injected', 'probability': 0.5, 'delay': 0.2, 'mean_seconds': 0.1}
  """
  names = {cls: name for name, cls in STRAGGLERS.items()}
  out: dict[str, Any] = {
      "name": names.get(type(straggler), type(straggler).__qualname__)}
  if dataclasses.is_dataclass(straggler):
    for field in dataclasses.fields(straggler):
      out[field.name] = float(getattr(straggler, field.name))
  out["mean_seconds"] = float(straggler.mean)
  return out


@dataclasses.dataclass(frozen=True)
class ComputeModel:
  r"""Seconds of every worker's local steps, reproducible from the seed.

  .. math::

    c_{ik} = compute\_seconds \cdot m_i + d_{ik}, \qquad
    d_{\cdot k} \sim straggler \text{ drawn with }
    \mathtt{default\_rng([seed, k])}.

  Attributes:
    num_workers: ``n >= 1``.
    compute_seconds: base seconds of one local step, ``>= 0``.
    imbalance: ``None`` (all 1) or ``n`` static factors ``m_i > 0``.
    straggler: a :class:`Straggler`, default :class:`NoStragglers`.
    seed: non-negative integer seed of the straggler draws.

  Example:
    >>> model = ComputeModel(3, 0.5, imbalance=(1.0, 2.0, 1.0))
    >>> model.times(0)
    array([0.5, 1. , 0.5])
  """

  num_workers: int
  compute_seconds: float
  _: dataclasses.KW_ONLY
  imbalance: tuple[float, ...] | None = None
  straggler: Straggler = dataclasses.field(default_factory=NoStragglers)
  seed: int = 0

  def __post_init__(self):
    n = validation.check_int("num_workers", self.num_workers, minimum=1)
    validation.check_real("compute_seconds", self.compute_seconds)
    if self.imbalance is not None:
      try:
        factors = tuple(float(m) for m in self.imbalance)
      except (TypeError, ValueError):
        raise ValueError(
            f"imbalance must be a sequence of {n} positive factors, got "
            f"{self.imbalance!r}.") from None
      if len(factors) != n or not all(
          math.isfinite(m) and m > 0 for m in factors):
        raise ValueError(
            f"imbalance must be {n} finite factors > 0 (one per worker), got "
            f"{self.imbalance!r}.")
      object.__setattr__(self, "imbalance", factors)  # Hashable, normalised.
    if not isinstance(self.straggler, Straggler):
      raise ValueError(
          "straggler must have a `mean` and a `sample(rng, num_workers)` "
          f"method (see STRAGGLERS), got {self.straggler!r}.")
    validation.check_int("seed", self.seed, minimum=0)

  def times(self, step: int) -> np.ndarray:
    """Seconds of local step ``step`` of every worker.

    Args:
      step: non-negative local step index ``k``.

    Returns:
      ``[num_workers]`` float64 array of ``c_{ik}``.

    Raises:
      ValueError: on a negative step, or a straggler returning a wrong shape,
        NaN or negative delays.
    """
    step = validation.check_int("step", step, minimum=0)
    n = self.num_workers
    rng = np.random.default_rng([int(self.seed), step])
    extra = np.asarray(self.straggler.sample(rng, n), dtype=np.float64)
    if extra.shape != (n,) or not np.all(extra >= 0):
      raise ValueError(
          f"straggler {self.straggler!r} must return {n} non-negative delays, "
          f"got {extra!r}.")
    return float(self.compute_seconds) * self.factors() + extra

  def factors(self) -> np.ndarray:
    """The ``[num_workers]`` imbalance factors ``m_i`` as float64."""
    if self.imbalance is None:
      return np.ones(self.num_workers)
    return np.asarray(self.imbalance, dtype=np.float64)

  def describe(self) -> dict[str, Any]:
    """A JSON-serialisable description, for ``config.json``."""
    return {
        "num_workers": int(self.num_workers),
        "compute_seconds": float(self.compute_seconds),
        "imbalance": None if self.imbalance is None else list(self.imbalance),
        "straggler": describe_straggler(self.straggler),
        "seed": int(self.seed),
    }
