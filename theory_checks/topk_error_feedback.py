r"""Top-k with error feedback converges like SGD; without it, it stalls.

Claim (Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory", NeurIPS 2018,
arXiv:1809.07599, abstract and main theorem for strongly convex objectives;
reference card theory_checks.md §2): SGD whose update is sparsified to its
``k`` largest entries and whose dropped entries are kept in a local memory
and added back at the next step (error feedback, "Mem-SGD") converges at the
same rate as vanilla SGD, :math:`O(G^2/(\mu T))`; the compression enters
only higher-order terms, :math:`O((d/k)^2 G^2 \kappa/(\mu T^2) +
(d/k)^3 G^2/(\mu T^3))` (the card's reading, [mem]), with stepsizes
:math:`\eta_t = c/(\mu(a + t))`, a shift :math:`a \gtrsim d/k` and the
weighted average :math:`\bar x_T \propto \sum_t (a + t)^2 x_t`. Hence the
ratio of suboptimalities of top-k + EF and SGD, run with the same steps on
the same samples, tends to 1 as :math:`T` grows after a delay that depends
on :math:`d/k`. Without the memory the dropped mass is lost: with the same
:math:`1/t` steps each coordinate is updated only a fraction of the time,
the effective :math:`c\mu` falls below 1 and the rate degrades (the
negative control).

Set-up. Least squares :math:`f(w) = \frac{1}{2n}\|Xw - y\|^2` with
Gaussian features (``minibatch_sgd.make_problem``: n = 2000, d = 50, label
noise 1), :math:`\mu = \lambda_{\min}(X^\top X/n)`. ``m = 4`` workers,
each with its own sample per step (drawn i.i.d. with replacement, the same
indices for every method). The step is folded into the memory, as in
Mem-SGD: ``optax.chain(optax.scale_by_learning_rate(eta),
dist.aggregate(aggregators.mean(), compressor=topk.top_k(k=k),
error_feedback=True))`` under ``dist.simulate(dist.data_parallel(...),
m)``: each worker sends the top ``k`` of its memory plus
:math:`-\eta_t g_t` and keeps the rest; the server averages the sparse
messages. Baseline: the same chain without compressor; control: top-k
without error feedback. Step sizes as in the authors' experiments
(epfml/sparsifiedSGD ``experiment.py``: ``initial_lr = 2``, ``tau = d/k``,
``estimate='(t+tau)^2'``): :math:`\eta_t = 2/(\mu(a + t))`, :math:`a =
d/k = 25`, the same schedule for all three methods (the authors' SGD
baseline used a shift of 1). The gap :math:`f(\bar x_T) - f^* = \frac12
\bar\delta^\top H \bar\delta` is exact; the weighted average is kept as a
running mean of :math:`x_t - x^*` to stay accurate in float32.

Sub-claims (the check PASSes iff all five hold; a seed's gap is the mean
over ``replicas`` independent runs, and ratios are medians over seeds of the
per-seed ratio, the three methods of a run sharing their samples):

(a) SGD's gap falls as :math:`1/T`: log-log slope :math:`-1 \pm 0.15` on
    the rate window (card §2: ±0.15, window from :math:`\gtrsim 10 d/k` to
    :math:`T_{\max}`).
(b) Top-k + EF's gap falls as :math:`1/T`: the same slope and tolerance.
(c) The ratio gap(top-k + EF)/gap(SGD) at :math:`T_{\max}` is
    :math:`1 \pm 0.1` (the card asks < 1.5 at :math:`T \gg d/k`).
(d) The ratio tends to 1 from above: its means over the three log-spaced
    windows of checkpoints are non-increasing (each at most the previous
    one plus 0.02, the seed noise), and the first checkpoint's ratio exceeds
    the last one's.
(e) Negative control: without EF the ratio at :math:`T_{\max}` is at least
    10 and larger than at the start of the rate window (it stalls).

``measured`` is the number of sub-claims that hold (expected 5, tolerance
0); ``ci`` is the 2.5-97.5% range of that count over bootstrap resamples of
the seeds. ``x``/``y`` (and the PNG) are the checkpoints and the per-seed
ratio gap(top-k + EF)/gap(SGD).
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import distributed as dist
from distoptax.algorithms import aggregators
from distoptax.algorithms.compressors import topk
from distoptax.theory_checks import fit as fit_lib
from distoptax.theory_checks import harness
from distoptax.theory_checks import minibatch_sgd

NAME = "topk_error_feedback"

METHODS = ("sgd", "topk_ef", "topk")
"""Uncompressed SGD, top-k with error feedback, top-k without."""

CLAIM = harness.Claim(
    name=NAME,
    statement=(
        "On a strongly convex problem with stepsizes 2/(mu (a + t)), a = d/k, "
        "and the (a + t)^2-weighted average, top-k SGD with error feedback "
        "converges at SGD's O(1/T) rate: both gaps have log-log slope -1 +- "
        "0.15, the ratio gap(top-k + EF)/gap(SGD) decreases to 1 +- 0.1 at "
        "T_max, and top-k without error feedback stalls (ratio >= 10)."),
    source=("Stich, Cordonnier, Jaggi 2018, Sparsified SGD with Memory, "
            "NeurIPS 2018, arXiv:1809.07599 (main theorem, strongly convex "
            "case); step sizes from epfml/sparsifiedSGD experiment.py"),
    measured="number of the sub-claims (a)-(e) that hold",
    expected=5.0,
    tolerance=0.0,
)


@dataclasses.dataclass(frozen=True)
class Config:
  """Configuration of the run.

  Attributes:
    num_points: training-set size n.
    dim: dimension d.
    noise: standard deviation of the label noise.
    num_workers: m.
    batch_size: samples per worker per step.
    k: entries each worker sends per step.
    lr_scale: c in eta_t = c / (mu (a + t)).
    shift: a; ``None`` uses d / k.
    num_steps: T_max.
    num_checkpoints: log-spaced checkpoints from ``first_checkpoint`` to
      T_max.
    first_checkpoint: the first checkpoint.
    rate_window: inclusive window of T for the slopes (a), (b) and the
      start of (e).
    num_seeds: sampling seeds (the problem is fixed by ``data_seed``).
    replicas: independent sample streams per seed; a seed's gap is their
      mean (a per-run gap of the averaged iterate is roughly a scaled
      chi-square in d dimensions, relative spread ~ sqrt(2/d)).
    data_seed: seed of the synthetic problem.
    slope_tolerance: tolerance of (a) and (b).
    ratio_tolerance: tolerance of (c).
    trend_margin: the increase between windows that (d) tolerates.
    control_min_ratio: the least no-EF ratio at T_max for (e).
  """

  num_points: int = 2000
  dim: int = 50
  noise: float = 1.0
  num_workers: int = 4
  batch_size: int = 1
  k: int = 2
  lr_scale: float = 2.0
  shift: float | None = None
  num_steps: int = 50_000
  num_checkpoints: int = 16
  first_checkpoint: int = 100
  rate_window: tuple[float, float] = (1000.0, 50_000.0)
  num_seeds: int = 10
  replicas: int = 2
  data_seed: int = 0
  slope_tolerance: float = 0.15
  ratio_tolerance: float = 0.1
  trend_margin: float = 0.02
  control_min_ratio: float = 10.0


QUICK = Config(num_steps=5000, num_checkpoints=10, rate_window=(500.0, 5000.0),
               num_seeds=3, replicas=8)
"""The CI-sized configuration (``--quick``)."""

SUB_CLAIM_KEYS = ("a", "b", "c", "d", "e")
"""The sub-claims' keys, in order."""

QUICK_ASSESSED = SUB_CLAIM_KEYS
"""The quick budget assesses every sub-claim: T_max = 5,000 = 200 d/k."""

FULL_BUDGET = harness.full_budget(
    NAME, f"T = {Config.num_steps:,}, {Config.num_seeds} seeds")
"""The budget that assesses every sub-claim."""


def checkpoints(config: Config) -> np.ndarray:
  """Log-spaced distinct step counts from the first checkpoint to T_max."""
  return np.unique(np.geomspace(config.first_checkpoint, config.num_steps,
                                config.num_checkpoints).round().astype(int))


def _loss(w, batch):
  x, y = batch
  return 0.5 * jnp.mean((x @ w - y) ** 2)


def _transform(method: str, schedule, k: int
               ) -> optax.GradientTransformationExtraArgs:
  if method == "sgd":
    agg = dist.aggregate(aggregators.mean())
  elif method in ("topk_ef", "topk"):
    agg = dist.aggregate(aggregators.mean(), compressor=topk.top_k(k=k),
                         error_feedback=method == "topk_ef")
  else:
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")
  return optax.chain(optax.scale_by_learning_rate(schedule), agg)


def _average_weights(shift: float, num_steps: int) -> np.ndarray:
  r"""``rho_t = w_t / sum_{i<=t} w_i`` for ``w_t = (a + t)^2``, float64."""
  t = np.arange(num_steps, dtype=np.float64)
  w = (shift + t) ** 2
  return w / np.cumsum(w)


def gaps(config: Config, problem: dict[str, np.ndarray], method: str,
         indices: np.ndarray) -> dict[str, np.ndarray]:
  """Runs one method for every seed; returns the gaps at the checkpoints.

  Args:
    config: the configuration.
    problem: from ``minibatch_sgd.make_problem``.
    method: one of :data:`METHODS`.
    indices: ``[num_runs, num_steps, num_workers, batch_size]``.

  Returns:
    ``average`` and ``last``: ``[num_runs, num_checkpoints]`` gaps
    ``f(x) - f*`` of the weighted average and of the last iterate after
    ``checkpoints(config)`` steps.
  """
  mu = float(np.linalg.eigvalsh(problem["hessian"])[0])
  shift = config.dim / config.k if config.shift is None else config.shift
  scale = config.lr_scale / mu

  def schedule(count):
    return scale / (shift + count)

  runtime = dist.simulate(
      dist.data_parallel(_loss, _transform(method, schedule, config.k)),
      config.num_workers)
  w_star = jnp.asarray(problem["w_star"], jnp.float32)
  hessian = jnp.asarray(problem["hessian"], jnp.float32)
  x, y = jnp.asarray(problem["x"]), jnp.asarray(problem["y"])
  rho = jnp.asarray(_average_weights(shift, config.num_steps), jnp.float32)
  marks = jnp.asarray(checkpoints(config) - 1)

  def one_seed(seed_indices):
    state = runtime.init(jnp.zeros(config.dim, jnp.float32))

    def body(carry, inputs):
      state, mean_delta = carry
      idx, r = inputs
      state, _ = runtime.step(state, (x[idx], y[idx]))
      delta = dist.worker_slice(state.params) - w_star
      mean_delta = mean_delta + r * (delta - mean_delta)
      return (state, mean_delta), (0.5 * mean_delta @ hessian @ mean_delta,
                                   0.5 * delta @ hessian @ delta)

    _, (average, last) = jax.lax.scan(
        body, (state, jnp.zeros(config.dim, jnp.float32)),
        (seed_indices, rho))
    return average[marks], last[marks]

  average, last = jax.jit(jax.vmap(one_seed))(indices)
  return {"average": np.asarray(average, np.float64),
          "last": np.asarray(last, np.float64)}


def sample_indices(config: Config) -> np.ndarray:
  """Every worker's samples for every step and run (shared by methods).

  Returns:
    int32 ``[num_seeds * replicas, num_steps, num_workers, batch_size]``,
    run ``seed * replicas + r`` drawn from the generator
    ``(data_seed, seed, r)``.
  """
  return np.stack([
      np.random.default_rng([config.data_seed, seed, r]).integers(
          0, config.num_points,
          (config.num_steps, config.num_workers, config.batch_size),
          dtype=np.int32)
      for seed in range(config.num_seeds) for r in range(config.replicas)])


def _windows(steps: np.ndarray) -> list[np.ndarray]:
  """Three contiguous groups of checkpoints, equal in log T."""
  edges = np.geomspace(steps[0], steps[-1], 4)
  groups = [(steps >= lo) & (steps < hi) for lo, hi in zip(edges, edges[1:])]
  groups[-1] |= steps == steps[-1]
  return [np.flatnonzero(g) for g in groups]


def _judge(config: Config, steps: np.ndarray,
           gap: dict[str, np.ndarray]) -> tuple[list[bool], dict]:
  """The five sub-claims on per-seed average gaps ``gap[method]``."""
  window = config.rate_window
  slope_sgd = fit_lib.loglog_slope(steps, gap["sgd"], window=window,
                                   num_bootstrap=1).slope
  slope_ef = fit_lib.loglog_slope(steps, gap["topk_ef"], window=window,
                                  num_bootstrap=1).slope
  ratio = np.median(gap["topk_ef"] / gap["sgd"], axis=0)
  control = np.median(gap["topk"] / gap["sgd"], axis=0)
  means = [ratio[w].mean() for w in _windows(steps)]
  start = np.flatnonzero(steps >= window[0])[0]
  passed = [
      abs(slope_sgd + 1) <= config.slope_tolerance,
      abs(slope_ef + 1) <= config.slope_tolerance,
      abs(ratio[-1] - 1) <= config.ratio_tolerance,
      bool(all(b <= a + config.trend_margin for a, b in zip(means, means[1:]))
           and ratio[0] > ratio[-1]),
      bool(control[-1] >= config.control_min_ratio
           and control[-1] > control[start]),
  ]
  figures = {"slope_sgd": slope_sgd, "slope_topk_ef": slope_ef,
             "ratio": ratio, "control_ratio": control,
             "window_means": means}
  return passed, figures


def run(*, quick: bool = False, seeds: int | None = None,
        progress: bool = True, **overrides) -> harness.CheckResult:
  """Trains the three methods and counts the sub-claims that hold.

  Args:
    quick: use :data:`QUICK` instead of ``Config()``; only the sub-claims
      in :data:`QUICK_ASSESSED` are then assessed.
    seeds: number of seeds, overriding the configuration's.
    progress: print a line per method (the sweep's points) to stderr.
    **overrides: further :class:`Config` fields (e.g. ``k=5``).

  Returns:
    The :class:`harness.CheckResult`; ``measured`` is the number of
    assessed sub-claims that hold, ``sub_claims`` has each one's figures.
  """
  config = harness.resolve_config(Config(), QUICK, quick=quick, seeds=seeds,
                                  overrides=overrides)
  assessed = harness.quick_assessment(SUB_CLAIM_KEYS, QUICK_ASSESSED,
                                      quick=quick)
  start = time.perf_counter()
  meter = harness.Progress(NAME, len(METHODS), enabled=progress)
  problem = minibatch_sgd.make_problem(config.num_points, config.dim,
                                       config.noise, config.data_seed)
  indices = sample_indices(config)
  results = {}
  for method in METHODS:
    meter.point(f"method {method}: {config.num_seeds} seeds x "
                f"{config.replicas} replicas x {config.num_steps:,} steps")
    results[method] = gaps(config, problem, method, indices)
  meter.done()
  elapsed = time.perf_counter() - start

  steps = checkpoints(config).astype(np.float64)

  def per_seed(runs):  # [seeds * replicas, C] -> mean over replicas.
    return runs.reshape(config.num_seeds, config.replicas, -1).mean(axis=1)

  gap = {m: per_seed(results[m]["average"]) for m in METHODS}
  last = {m: per_seed(results[m]["last"]) for m in METHODS}
  passed, figures = _judge(config, steps, gap)
  ci = harness.bootstrap_count_ci(
      lambda rows: harness.count_assessed(
          _judge(config, steps, {m: g[rows] for m, g in gap.items()})[0],
          assessed),
      config.num_seeds)

  fits = {m: fit_lib.loglog_slope(steps, gap[m], window=config.rate_window)
          for m in METHODS}
  ratio = figures["ratio"]
  below = np.flatnonzero(ratio <= 1 + config.ratio_tolerance)
  mu = float(np.linalg.eigvalsh(problem["hessian"])[0])
  rows = [
      dict(name="(a) SGD gap vs T", measured="log-log slope",
           value=fits["sgd"].slope,
           ci=(fits["sgd"].ci_low, fits["sgd"].ci_high), expected=-1.0,
           tolerance=config.slope_tolerance),
      dict(name="(b) top-k + EF gap vs T", measured="log-log slope",
           value=fits["topk_ef"].slope,
           ci=(fits["topk_ef"].ci_low, fits["topk_ef"].ci_high),
           expected=-1.0, tolerance=config.slope_tolerance),
      dict(name="(c) ratio gap(top-k + EF)/gap(SGD) at T_max",
           measured="median over seeds", value=float(ratio[-1]),
           expected=1.0, tolerance=config.ratio_tolerance),
      dict(name="(d) the ratio decreases to 1",
           measured="first checkpoint's ratio; window means "
           + ", ".join(f"{m:.3f}" for m in figures["window_means"]),
           value=float(ratio[0]),
           expected=f"window means non-increasing (+{config.trend_margin})"),
      dict(name="(e) control: top-k without EF stalls",
           measured="ratio gap(top-k)/gap(SGD) at T_max",
           value=float(figures["control_ratio"][-1]),
           expected=f">= {config.control_min_ratio:g} and growing"),
  ]
  sub_claims = tuple(
      harness.SubClaim(key=key, holds=bool(p), assessed=a,
                       assessed_by="" if a else FULL_BUDGET, **row)
      for key, row, p, a in zip(SUB_CLAIM_KEYS, rows, passed, assessed))
  extras = {
      "mu": mu,
      "shift": config.dim / config.k if config.shift is None
               else config.shift,
      "steps": steps,
      "gap_median": {m: np.median(g, axis=0) for m, g in gap.items()},
      "ratio_median": ratio,
      "control_ratio_median": figures["control_ratio"],
      "last_iterate_ratio_median": np.median(
          last["topk_ef"] / last["sgd"], axis=0),
      "first_step_within_tolerance": (
          float(steps[below[0]]) if below.size else None),
      "slopes": {m: f.slope for m, f in fits.items()},
  }
  return harness.CheckResult(
      claim=CLAIM, measured=harness.count_assessed(passed, assessed),
      ci=ci, x=steps,
      y=gap["topk_ef"] / gap["sgd"],
      config=dataclasses.asdict(config) | {"quick": quick},
      elapsed_s=elapsed, x_label="steps T",
      y_label="gap(top-k + EF) / gap(SGD), weighted average",
      sub_claims=sub_claims,
      extras=extras, details=ratio_table(extras))


def ratio_table(extras: dict) -> str:
  """The gaps and ratios at every checkpoint, as text.

  Args:
    extras: the result's ``extras``.

  Returns:
    One line per checkpoint T: SGD's median gap and the median ratios of
    top-k with and without error feedback to it.
  """
  lines = [f"{'T':>8} {'gap SGD':>10} {'EF/SGD':>8} {'noEF/SGD':>9}"]
  for j, t in enumerate(extras["steps"]):
    lines.append(f"{int(t):>8} {extras['gap_median']['sgd'][j]:>10.3e} "
                 f"{extras['ratio_median'][j]:>8.3f} "
                 f"{extras['control_ratio_median'][j]:>9.1f}")
  return "\n".join(lines)


def main(argv=None):
  """``python -m distoptax.theory_checks.topk_error_feedback [--quick]``."""
  harness.run_check_main(run, argv)


if __name__ == "__main__":
  main()
