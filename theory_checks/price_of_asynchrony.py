r"""Price of asynchrony: bounded delays slow SGD down, the adversary most.

Claim (Alistarh, De Sa, Konstantinov, PODC 2018, arXiv:1803.08841): for
SGD in asynchronous shared memory with delays at most :math:`\tau`, there
is a fundamental trade-off between the maximum delay and the rate of
convergence; an adaptive adversary that controls the delays is the worst
case. Measured here on a strongly convex quadratic at a fixed step size:

* (a) the iterations to reach :math:`\varepsilon` grow with :math:`\tau`
  for every delay policy (non-decreasing over the sweep, within a slack of
  ``slack`` of the :math:`\tau = 0` count, and strictly larger at the
  largest :math:`\tau` than at :math:`\tau = 0`);
* (b) at every :math:`\tau` the adversarial policies (always the oldest
  iterate; the stored iterate farthest from the current one) need at least
  as many iterations as the stochastic ones (uniform, geometric), within
  the same slack.

Set-up. :math:`f(x) = \tfrac12 \sum_k \lambda_k x_k^2`, :math:`\lambda`
evenly spaced in ``[lambda_min, 1]``, :math:`x_0 = 3\cdot\mathbf 1`,
stochastic gradients :math:`\lambda \odot x + \sigma \xi` (Gaussian
:math:`\xi`), one worker, ``distributed.bounded_delay(optax.sgd(lr), tau,
policy)`` run through ``dist.simulate`` inside a ``lax.scan``, ``vmap``-ed
over seeds (each seed its own noise and its own delay key; the noise is the
same for every policy and :math:`\tau`: common random numbers). With
gradient noise the stationary gap rises with the delay (the delayed
recursion is less damped); at a small step and without noise small delays
can even speed a quadratic up, which is why the noise is part of the
claim's setting. :math:`\varepsilon` is ``eps_factor`` times the
:math:`\tau = 0` floor (the seed-mean gap over the last third of the run);
the iterations to :math:`\varepsilon` are the first step at which the
seed-mean gap, smoothed over ``window`` steps, is at most
:math:`\varepsilon` (the run length if never). The ``constant`` policy with
its default delay :math:`\tau` is ``adversarial_oldest``.

Negative control: ``ignore_delay=True`` runs every point with
:math:`\tau = 0`; the iterations no longer grow with :math:`\tau` and (a)
must FAIL.
"""

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import distributed as dist
from distoptax.distributed.bounded_delay import (
    KEY_NAME,
    bounded_delay,
    gradient_at)
from distoptax.theory_checks import harness
from distoptax.worker_axis import keys

NAME = "price_of_asynchrony"

SUB_CLAIM_KEYS = ("a", "b")
QUICK_ASSESSED = ("a", "b")

CLAIM = harness.Claim(
    name=NAME,
    statement=(
        "At a fixed step size on a strongly convex quadratic with noisy "
        "gradients, the iterations of bounded-delay SGD to reach eps grow "
        "with the delay bound tau under every delay policy (a), and the "
        "adversarial policies are never better than the stochastic ones "
        "(b)."),
    source=("Alistarh, De Sa, Konstantinov, The Convergence of SGD in "
            "Asynchronous Shared Memory, PODC 2018, arXiv:1803.08841 "
            "(trade-off between maximum delay and rate; adaptive "
            "adversary)"),
    measured="number of sub-claims (a), (b) that hold",
    expected=2.0,
    tolerance=0.0,
)

STOCHASTIC = ("uniform", "geometric")
ADVERSARIAL = ("adversarial_oldest", "adversarial_farthest")


@dataclasses.dataclass(frozen=True)
class Config:
  """Configuration of the sweep.

  Attributes:
    taus: the delay bounds swept (the first must be 0).
    policies: delay policies (stochastic and adversarial).
    geometric_p: ``p`` of the geometric policy.
    num_seeds: seeds (noise and delay keys).
    num_steps: SGD steps per run.
    dim: dimension.
    lambda_min: smallest curvature (the largest is 1).
    noise: gradient noise :math:`\\sigma`.
    learning_rate: the fixed step (stable at the largest tau:
      ``lr < 2 sin(pi / (2 (2 tau + 1)))``).
    eps_factor: :math:`\\varepsilon` over the tau = 0 floor.
    window: smoothing window of the seed-mean gap.
    slack: tolerated decrease, as a fraction of the tau = 0 count.
    ignore_delay: negative control, every point runs with tau = 0.
  """

  taus: tuple[int, ...] = (0, 1, 2, 4, 8, 16)
  policies: tuple[str, ...] = STOCHASTIC + ADVERSARIAL
  geometric_p: float = 0.25
  num_seeds: int = 32
  num_steps: int = 2000
  dim: int = 10
  lambda_min: float = 0.2
  noise: float = 1.0
  learning_rate: float = 0.05
  eps_factor: float = 1.25
  window: int = 100
  slack: float = 0.02
  ignore_delay: bool = False


QUICK = Config(taus=(0, 4, 16), num_seeds=16, num_steps=1500)
"""The CI-sized configuration (``--quick``)."""


def _loss_fn(lams):
  def loss(x, xi):
    return 0.5 * jnp.sum(lams * x ** 2) + jnp.sum(xi * x)
  return loss


def gap_curves(config: Config, policy: str, tau: int) -> np.ndarray:
  """Seed-mean gap :math:`f(x_t)` of one (policy, tau), ``[num_steps]``."""
  lams = jnp.linspace(config.lambda_min, 1.0, config.dim)
  tau_run = 0 if config.ignore_delay else tau
  params = ({"p": config.geometric_p} if policy == "geometric" else None)
  tx = bounded_delay(optax.sgd(config.learning_rate), tau_run, policy,
                     policy_params=params)
  step = dist.data_parallel(_loss_fn(lams), tx, gradient_at=gradient_at,
                            replicated_params=True)
  runtime = dist.simulate(step, 1)
  state = runtime.init(jnp.full((config.dim,), 3.0))
  seed_keys = jnp.stack([keys.transform_key(s, KEY_NAME)
                         for s in range(config.num_seeds)])
  noise = np.random.default_rng(0).normal(
      size=(config.num_seeds, config.num_steps, 1, config.dim)
  ).astype(np.float32) * config.noise

  def one_seed(key, xi):
    s = state._replace(opt_state=state.opt_state._replace(key=key))

    def body(s, xi_t):
      s, _ = runtime.step(s, xi_t)
      return s, 0.5 * jnp.sum(lams * s.params ** 2)

    return jax.lax.scan(body, s, xi)[1]

  gaps = jax.jit(jax.vmap(one_seed))(seed_keys, noise)
  return np.asarray(gaps, np.float64).mean(axis=0)


def iterations_to_eps(curve: np.ndarray, eps: float, window: int) -> int:
  """First step whose smoothed gap is at most ``eps`` (else the length)."""
  smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
  below = np.flatnonzero(smooth <= eps)
  return int(below[0] + window) if below.size else len(curve)


def judge(config: Config, iters: dict[str, np.ndarray]) -> tuple[bool, bool]:
  """Sub-claims (a) and (b) from iterations ``[policy] -> [num_taus]``."""
  slack = config.slack * iters[config.policies[0]][0]
  grows = all(
      np.all(np.diff(row) >= -slack) and row[-1] > row[0]
      for row in iters.values())
  stochastic = [iters[p] for p in config.policies if p in STOCHASTIC]
  adversarial = [iters[p] for p in config.policies if p in ADVERSARIAL]
  worst_case = bool(
      np.all(np.min(adversarial, axis=0) >= np.max(stochastic, axis=0)
             - slack)) if stochastic and adversarial else False
  return bool(grows), worst_case


def run(*, quick: bool = False, seeds: int | None = None,
        progress: bool = True, **overrides) -> harness.CheckResult:
  """Runs every (policy, tau) and judges (a) and (b).

  Args:
    quick: use :data:`QUICK`.
    seeds: number of seeds, overriding the configuration's.
    progress: print a line per policy to stderr.
    **overrides: further :class:`Config` fields (``ignore_delay=True``).

  Returns:
    The :class:`harness.CheckResult`; ``y`` holds the iterations to eps
    (one row per policy), ``extras`` the floors and curves.
  """
  config = harness.resolve_config(Config(), QUICK, quick=quick, seeds=seeds,
                                  overrides=overrides)
  if config.taus[0] != 0:
    raise ValueError(f"config.taus must start with 0; got {config.taus}")
  start = time.perf_counter()
  meter = harness.Progress(NAME, len(config.policies), enabled=progress)
  curves = {}
  for policy in config.policies:
    meter.point(f"policy {policy}: taus {config.taus}, {config.num_seeds} "
                f"seeds x {config.num_steps} steps")
    curves[policy] = [gap_curves(config, policy, tau) for tau in config.taus]
  meter.done()
  tail = config.num_steps // 3
  floor0 = float(np.mean(curves[config.policies[0]][0][-tail:]))
  eps = config.eps_factor * floor0
  iters = {p: np.array([iterations_to_eps(c, eps, config.window)
                        for c in curves[p]], np.float64)
           for p in config.policies}
  floors = {p: [float(np.mean(c[-tail:])) for c in curves[p]]
            for p in config.policies}
  holds = judge(config, iters)
  assessed = harness.quick_assessment(SUB_CLAIM_KEYS, QUICK_ASSESSED,
                                      quick=quick)
  names = ("(a) iterations to eps non-decreasing in tau for every policy, "
           "larger at the largest tau",
           "(b) adversarial policies need at least as many iterations as "
           "stochastic ones at every tau")
  sub_claims = tuple(
      harness.SubClaim(key=k, name=n, holds=h, assessed=a,
                       expected=f"holds (slack {config.slack:g} x iters at "
                                f"tau=0)")
      for k, n, h, a in zip(SUB_CLAIM_KEYS, names, holds, assessed))
  measured = harness.count_assessed(holds, assessed)
  table = "\n".join(
      [f"iterations to eps = {eps:.4g} ({config.eps_factor:g} x floor at "
       f"tau = 0), taus {list(config.taus)}:"]
      + [f"  {p:<22} {iters[p].astype(int).tolist()}  floors "
         f"{np.round(floors[p], 4).tolist()}" for p in config.policies])
  return harness.CheckResult(
      claim=CLAIM, measured=measured, ci=(measured, measured),
      x=np.array(config.taus, np.float64),
      y=np.stack([iters[p] for p in config.policies]),
      config=dataclasses.asdict(config) | {"quick": quick},
      elapsed_s=time.perf_counter() - start,
      x_label="delay bound tau", y_label="iterations to eps",
      extras={"eps": eps, "floor_tau0": floor0, "policies":
              list(config.policies), "iterations": iters, "floors": floors},
      sub_claims=sub_claims, details=table, plot_fn=plot_iterations)


def plot_iterations(result: harness.CheckResult) -> Any:
  """Iterations to eps against tau, one line per policy."""
  fig = harness.new_figure(6.4, 4.2)
  ax = fig.add_subplot()
  for row, policy in zip(result.y, result.extras["policies"]):
    style = "--" if policy in ADVERSARIAL else "-"
    ax.plot(result.x, row, style + "o", label=policy)
  ax.set_xlabel(result.x_label)
  ax.set_ylabel(result.y_label + " (run length if never)")
  ax.set_title(f"{result.claim.name}: {result.verdict}", fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def main(argv=None):
  """``python -m distoptax.theory_checks.price_of_asynchrony [--quick]``."""
  harness.run_check_main(run, argv)


if __name__ == "__main__":
  main()
