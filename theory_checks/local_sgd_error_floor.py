r"""Local SGD's error floor: a noise term in 1/m and a drift term in tau - 1.

Claim (Wang & Joshi, "Adaptive Communication Strategies to Achieve the Best
Error-Runtime Trade-off in Local-Update SGD", MLSys 2019, arXiv:1810.08313;
the bound of their Cooperative SGD analysis, arXiv:1808.07576): with m
workers, period :math:`\tau` and a fixed step :math:`\eta`, the error of
periodic averaging settles on a floor

.. math::
  \frac{\eta L \sigma^2}{m} + \eta^2 L^2 \sigma^2 (\tau - 1),

a **noise term** that falls as :math:`1/m` and a **drift term** (the
workers' models wandering apart between syncs) that grows linearly with
:math:`\tau - 1`. The drift term is the proof's bound on the discrepancy
:math:`\frac1m\sum_i \|w_i - \bar w\|^2` of the local models from their
average.

Set-up. A strongly convex quadratic :math:`f(w) = \tfrac12 (w - w^*)^\top H
(w - w^*)`, :math:`H = \mathrm{diag}(\lambda)` with :math:`\lambda` evenly
spaced in ``eigenvalues``, whose stochastic gradient adds Gaussian noise
:math:`\sigma \xi_i`, independent across workers and steps (the loss of
worker :math:`i` on its "batch" :math:`\xi_i` is :math:`f(w) + \sigma
\xi_i^\top w`). Training runs through the library:
``dist.simulate(dist.data_parallel(loss, dist.local_sgd(optax.sgd(lr),
period)), m)``, its ``step`` inside a ``jax.lax.scan``, ``vmap``-ed over
seeds (and, for the period sweep, over periods: the period is the
replicated ``LocalSGDState.period``, set per run after ``init``). All
workers start at :math:`w^*`; after a burn-in the excess loss of the mean
local model splits exactly, for a quadratic, into

.. math::
  \frac1m \sum_i f(w_i) - f^* =
    \underbrace{f(\bar w) - f^*}_{\text{noise term}}
    + \underbrace{\frac1m \sum_i \tfrac12 (w_i - \bar w)^\top H
      (w_i - \bar w)}_{\text{drift term}},

both averaged over the tail window ``[burn_in, burn_in + tail)``.

Why the split. On a quadratic the gradient is linear, so the average
:math:`\bar w` of the local models follows minibatch SGD with batch
:math:`m` exactly, whatever :math:`\tau`: the loss *at the average* has no
:math:`\tau` term (the trap of theory_checks.md §5). The drift the bound
charges lives in the spread of the local models (what the workers'
training losses report): after :math:`k` local steps since a sync, each
:math:`w_i - \bar w` has accumulated :math:`k` steps of noise, so its time
average over a period grows as :math:`(\tau - 1)/2`. Exact predictions
(saved as ``extras["predicted_*"]`` next to ``measured_over_predicted``):

.. math::
  \text{noise} = \sum_j \frac{\eta\sigma^2}{2m(2 - \eta\lambda_j)}, \qquad
  \text{drift} = \Big(1 - \frac1m\Big)\frac{\eta^2\sigma^2}{2}
    \sum_j \lambda_j \frac1\tau \sum_{k=0}^{\tau-1}
    \frac{1 - (1 - \eta\lambda_j)^{2k}}{1 - (1 - \eta\lambda_j)^2}.

The contraction :math:`(1-\eta\lambda)^{2k}` bends the drift below a line
by a few percent at :math:`\eta\lambda\tau \le 0.33`; the predicted
log-log slope over the default periods is saved too (about 0.97).

Sub-claims (log-log slopes of the seed means, bootstrap 95% CIs over
seeds):

(a) noise term against m (period ``noise_period``): slope -1 ± 0.15;
(b) drift term against :math:`\tau - 1` (``drift_workers`` workers):
    slope 1 ± 0.2.

``measured`` is the number that hold (expected 2).

Negative control: ``broken_sync=True`` replaces the mean of the
pseudo-gradients by worker 0's alone (a sync that "averages" one worker):
every worker restarts from worker 0's model, whose noise was never
averaged, so the noise term no longer falls with m and (a) must FAIL.
"""

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import distributed as dist
from distoptax.algorithms.aggregators import base as rule_base
from distoptax.theory_checks import fit as fit_lib
from distoptax.theory_checks import harness

NAME = "local_sgd_error_floor"

CLAIM = harness.Claim(
    name=NAME,
    statement=(
        "At a fixed step size, periodic-averaging (local) SGD on a strongly "
        "convex problem with gradient noise settles on an error floor "
        "eta*L*sigma^2/m + eta^2*L^2*sigma^2*(tau - 1): (a) a noise term "
        "whose log-log slope against m is -1 ± 0.15 and (b) a drift term "
        "whose log-log slope against tau - 1 is 1 ± 0.2."),
    source=("Wang & Joshi 2019, Adaptive Communication Strategies to "
            "Achieve the Best Error-Runtime Trade-off in Local-Update SGD, "
            "MLSys 2019, arXiv:1810.08313 (error-runtime bound; Cooperative "
            "SGD analysis, arXiv:1808.07576)"),
    measured="number of the sub-claims (a), (b) that hold",
    expected=2.0,
    tolerance=0.0,
)

SUB_CLAIM_KEYS = ("a", "b")
"""(a) noise-term slope against m; (b) drift-term slope against tau - 1."""

QUICK_ASSESSED = ("a", "b")
"""The quick budget assesses both slopes."""

NOISE_SLOPE = (-1.0, 0.15)
"""Expected slope of the noise term against m, and its tolerance."""

DRIFT_SLOPE = (1.0, 0.2)
"""Expected slope of the drift term against tau - 1, and its tolerance."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Configuration of the two sweeps.

  Attributes:
    dim: dimension d.
    eigenvalues: ``(mu, L)``; the Hessian's eigenvalues are evenly spaced
      in between.
    noise_std: sigma, the standard deviation of each gradient coordinate's
      noise.
    learning_rate: the fixed step eta.
    worker_counts: the swept m of sub-claim (a).
    noise_period: the period of sub-claim (a).
    periods: the swept tau of sub-claim (b) (each > 1).
    drift_workers: m of sub-claim (b).
    burn_in: steps discarded before the tail window.
    tail: steps in the tail window.
    num_seeds: noise seeds.
    broken_sync: negative control: the sync keeps worker 0's
      pseudo-gradient instead of the mean.
  """

  dim: int = 20
  eigenvalues: tuple[float, float] = (0.5, 1.0)
  noise_std: float = 1.0
  learning_rate: float = 0.01
  worker_counts: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
  noise_period: int = 4
  periods: tuple[int, ...] = (2, 3, 5, 9, 17, 33)
  drift_workers: int = 8
  burn_in: int = 600
  tail: int = 20000
  num_seeds: int = 10
  broken_sync: bool = False


QUICK = Config(tail=2400, num_seeds=3)
"""The CI-sized configuration (``--quick``)."""


def first_worker_rule() -> rule_base.AggregationRule:
  """A broken sync for the negative control: worker 0's update, not a mean.

  Returns:
    A stateless ``AggregationRule`` returning row 0 of the stack.
  """
  return rule_base.stateless_rule(
      lambda stack: jax.tree.map(lambda s: s[0], stack), name="first_worker")


def hessian_diagonal(config: Config) -> np.ndarray:
  """The eigenvalues of H, ``[dim]`` float64."""
  low, high = config.eigenvalues
  return np.linspace(low, high, config.dim)


def predicted_noise(config: Config, num_workers: Any) -> np.ndarray:
  """Exact stationary ``f(w_bar) - f*`` (minibatch SGD with batch m)."""
  lam = hessian_diagonal(config)
  eta, var = config.learning_rate, config.noise_std ** 2
  m = np.asarray(num_workers, np.float64)[..., None]
  return np.sum(eta * var / (2 * m * (2 - eta * lam)), axis=-1)


def predicted_drift(config: Config, num_workers: int, period: Any
                    ) -> np.ndarray:
  """Exact time-averaged drift term at stationarity, per period."""
  lam = hessian_diagonal(config)
  eta, var = config.learning_rate, config.noise_std ** 2
  rho = (1 - eta * lam) ** 2
  out = []
  for tau in np.atleast_1d(period):
    k = np.arange(int(tau))[:, None]
    spread = ((1 - rho ** k) / (1 - rho)).mean(axis=0)
    out.append((1 - 1 / num_workers) * eta ** 2 * var / 2
               * np.sum(lam * spread))
  return np.asarray(out)


def _make_runtime(config: Config, num_workers: int, period: int):
  lam = jnp.asarray(hessian_diagonal(config), jnp.float32)
  sigma = config.noise_std

  def loss(w, xi):
    return 0.5 * jnp.sum(lam * (w - 1.0) ** 2) + sigma * jnp.dot(xi, w)

  rule = first_worker_rule() if config.broken_sync else None
  tx = dist.local_sgd(optax.sgd(config.learning_rate), period, rule=rule)
  return dist.simulate(dist.data_parallel(loss, tx), num_workers), lam


def tail_terms(config: Config, num_workers: int, periods: tuple[int, ...]
               ) -> tuple[np.ndarray, np.ndarray]:
  """Noise and drift terms for every (period, seed) at ``num_workers``.

  Args:
    config: the configuration.
    num_workers: m.
    periods: the periods, run side by side (vmapped; each run's replicated
      ``period`` is set after ``init``).

  Returns:
    ``noise, drift``, each ``[len(periods), num_seeds]`` tail means.
  """
  runtime, lam = _make_runtime(config, num_workers, 1)
  state = runtime.init(jnp.ones(config.dim, jnp.float32))
  steps = config.burn_in + config.tail

  def one_run(period, seed):
    opt = state.opt_state._replace(period=period)
    key = jax.random.key(seed)

    def body(carry, t):
      xi = jax.random.normal(jax.random.fold_in(key, t),
                             (num_workers, config.dim), jnp.float32)
      carry, _ = runtime.step(carry, xi)
      w = carry.params
      w_bar = w.mean(axis=0)
      noise = 0.5 * jnp.sum(lam * (w_bar - 1.0) ** 2)
      drift = 0.5 * jnp.mean(jnp.sum(lam * (w - w_bar) ** 2, axis=-1))
      keep = t >= config.burn_in
      return carry, (jnp.where(keep, noise, 0.0), jnp.where(keep, drift, 0.0))

    _, (noise, drift) = jax.lax.scan(body, state._replace(opt_state=opt),
                                     jnp.arange(steps))
    return noise.sum() / config.tail, drift.sum() / config.tail

  over_seeds = jax.vmap(one_run, in_axes=(None, 0))
  over_periods = jax.jit(jax.vmap(over_seeds, in_axes=(0, None)))
  noise, drift = over_periods(jnp.asarray(periods, jnp.int32),
                              jnp.arange(config.num_seeds))
  return np.asarray(noise, np.float64), np.asarray(drift, np.float64)


def _check_config(config: Config) -> None:
  if any(p < 2 for p in config.periods):
    raise ValueError(f"periods must all be >= 2 (the fit is against "
                     f"tau - 1 on log axes); got {config.periods}")
  if config.drift_workers < 2:
    raise ValueError(f"drift_workers must be >= 2 (one worker has no "
                     f"drift); got {config.drift_workers}")
  if len(config.worker_counts) < 2 or len(config.periods) < 2:
    raise ValueError(
        f"each sweep needs >= 2 points; got worker_counts="
        f"{config.worker_counts}, periods={config.periods}")


def _slope_sub_claim(key, name, x, y, expected, assessed):
  fitted = fit_lib.loglog_slope(x, y, window=(x.min(), x.max()))
  holds = abs(fitted.slope - expected[0]) <= expected[1]
  return fitted, harness.SubClaim(
      key=key, name=name, holds=bool(holds), assessed=assessed,
      value=fitted.slope, ci=(fitted.ci_low, fitted.ci_high),
      expected=expected[0], tolerance=expected[1], measured="log-log slope")


def run(*, quick: bool = False, seeds: int | None = None,
        progress: bool = True, **overrides) -> harness.CheckResult:
  """Runs both sweeps and fits the two slopes.

  Args:
    quick: use :data:`QUICK` instead of ``Config()``.
    seeds: number of seeds, overriding the configuration's.
    progress: print a line per sweep point to stderr.
    **overrides: further :class:`Config` fields (e.g. ``broken_sync=True``).

  Returns:
    The :class:`harness.CheckResult`; ``measured`` is the number of
    sub-claims that hold, ``x``/``y`` the noise sweep (m, per-seed noise
    term), ``extras`` the drift sweep, the predictions and both fits.
  """
  config = harness.resolve_config(Config(), QUICK, quick=quick, seeds=seeds,
                                  overrides=overrides)
  _check_config(config)
  assessed = harness.quick_assessment(SUB_CLAIM_KEYS, QUICK_ASSESSED,
                                      quick=quick)
  start = time.perf_counter()
  meter = harness.Progress(NAME, len(config.worker_counts) + 1,
                           enabled=progress)
  steps = config.burn_in + config.tail
  noise_cols = []
  for m in config.worker_counts:
    meter.point(f"noise sweep m = {m}, tau = {config.noise_period}: "
                f"{config.num_seeds} seeds x {steps:,} steps")
    noise, _ = tail_terms(config, m, (config.noise_period,))
    noise_cols.append(noise[0])
  meter.point(f"drift sweep m = {config.drift_workers}, tau in "
              f"{config.periods}: {config.num_seeds} seeds x {steps:,} steps")
  _, drift = tail_terms(config, config.drift_workers, config.periods)
  meter.done()
  elapsed = time.perf_counter() - start

  m = np.asarray(config.worker_counts, np.float64)
  tau_minus_1 = np.asarray(config.periods, np.float64) - 1
  noise_y = np.stack(noise_cols, axis=1)
  drift_y = drift.T
  noise_fit, noise_claim = _slope_sub_claim(
      "a", f"(a) noise term f(w_bar) - f* against m (tau = "
      f"{config.noise_period})", m, noise_y, NOISE_SLOPE, assessed[0])
  drift_fit, drift_claim = _slope_sub_claim(
      "b", f"(b) drift term against tau - 1 (m = {config.drift_workers})",
      tau_minus_1, drift_y, DRIFT_SLOPE, assessed[1])
  sub_claims = (noise_claim, drift_claim)
  holds = [c.holds for c in sub_claims]

  def count(rows):
    slopes = (
        fit_lib.loglog_slope(m, noise_y[rows], window=(m.min(), m.max()),
                             num_bootstrap=1).slope,
        fit_lib.loglog_slope(tau_minus_1, drift_y[rows],
                             window=(tau_minus_1.min(), tau_minus_1.max()),
                             num_bootstrap=1).slope)
    return harness.count_assessed(
        [abs(s - e[0]) <= e[1]
         for s, e in zip(slopes, (NOISE_SLOPE, DRIFT_SLOPE))], assessed)

  ci = harness.bootstrap_count_ci(count, config.num_seeds, num_resamples=200)
  pred_noise = predicted_noise(config, m)
  pred_drift = predicted_drift(config, config.drift_workers, config.periods)
  extras = {
      "tau_minus_1": tau_minus_1,
      "drift": drift_y,
      "noise_fit": noise_fit._asdict(),
      "drift_fit": drift_fit._asdict(),
      "predicted_noise": pred_noise,
      "predicted_drift": pred_drift,
      "predicted_noise_slope": np.polyfit(np.log(m), np.log(pred_noise),
                                          1)[0],
      "predicted_drift_slope": np.polyfit(np.log(tau_minus_1),
                                          np.log(pred_drift), 1)[0],
      "noise_measured_over_predicted": noise_y.mean(axis=0) / pred_noise,
      "drift_measured_over_predicted": drift_y.mean(axis=0) / pred_drift,
  }
  details = "\n".join([
      "noise term (seed means) by m: " + ", ".join(
          f"{int(a)}: {b:.3g}" for a, b in zip(m, noise_y.mean(axis=0))),
      "drift term (seed means) by tau: " + ", ".join(
          f"{int(a) + 1}: {b:.3g}" for a, b in zip(tau_minus_1,
                                                     drift_y.mean(axis=0))),
      "measured / exact prediction: noise " + ", ".join(
          f"{v:.3f}" for v in extras["noise_measured_over_predicted"])
      + "; drift " + ", ".join(
          f"{v:.3f}" for v in extras["drift_measured_over_predicted"]),
  ])
  return harness.CheckResult(
      claim=CLAIM, measured=harness.count_assessed(holds, assessed), ci=ci,
      x=m, y=noise_y, config=dataclasses.asdict(config) | {"quick": quick},
      elapsed_s=elapsed, x_label="workers m",
      y_label="tail mean of the noise term f(w_bar) - f*", extras=extras,
      sub_claims=sub_claims, details=details, plot_fn=plot_floor)


def _panel(ax, x, y, fitted, expected, predicted, xlabel, ylabel, title):
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.fill_between(x, y.min(axis=0), y.max(axis=0), alpha=0.25,
                  label=f"min-max over {y.shape[0]} seeds")
  ax.plot(x, y.mean(axis=0), "o", label="seed mean")
  ax.plot(x, predicted, ":", color="k", label="exact prediction")
  half = (fitted["ci_high"] - fitted["ci_low"]) / 2
  ax.plot(x, np.exp(fitted["intercept"]) * x ** fitted["slope"], "--",
          label=f"fit slope {fitted['slope']:.2f} ± {half:.2f} "
                f"(theory {expected:g})")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)


def plot_floor(result: harness.CheckResult) -> Any:
  """Two log-log panels: noise term against m, drift term against tau - 1.

  Args:
    result: this check's result.

  Returns:
    A ``matplotlib.figure.Figure``.
  """
  ex, cfg = result.extras, result.config
  fig = harness.new_figure(11, 4.5)
  left, right = fig.subplots(1, 2)
  _panel(left, result.x, result.y, ex["noise_fit"], NOISE_SLOPE[0],
         ex["predicted_noise"], "workers m", "noise term f(w_bar) - f*",
         f"{result.claim.name}: {result.verdict}\n(a) noise term, tau = "
         f"{cfg['noise_period']}")
  _panel(right, np.asarray(ex["tau_minus_1"]), np.asarray(ex["drift"]),
         ex["drift_fit"], DRIFT_SLOPE[0], ex["predicted_drift"],
         "tau - 1", "drift term mean_i (w_i - w_bar)' H (w_i - w_bar) / 2",
         f"(b) drift term, m = {cfg['drift_workers']}")
  fig.suptitle(f"eta = {cfg['learning_rate']}, sigma = {cfg['noise_std']}",
               fontsize=10)
  fig.tight_layout()
  return fig


def main(argv=None):
  """``python -m distoptax.theory_checks.local_sgd_error_floor [--quick]``."""
  harness.run_check_main(run, argv)


if __name__ == "__main__":
  main()
