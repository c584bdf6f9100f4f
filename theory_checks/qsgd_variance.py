r"""QSGD's variance: slope 1/2 in d at s = 1, slope -1 in s for s << sqrt(d).

Claim (Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-
Efficient SGD via Gradient Quantization and Encoding", NeurIPS 2017,
arXiv:1610.02132, Lemma 3.1): the stochastic quantizer :math:`Q_s` with
:math:`s` levels is unbiased, :math:`E[Q_s(v)] = v`, and its variance obeys

.. math::
  E\|Q_s(v) - v\|^2 \le \min(d/s^2, \sqrt d / s)\,\|v\|^2 .

The exact variance follows from the definition (reference card
theory_checks.md §1, [der]): coordinate :math:`i` is rounded from
:math:`s r_i` (:math:`r_i = |v_i|/\|v\|`) to a neighbouring integer with
probability :math:`p_i = s r_i - \lfloor s r_i \rfloor` of rounding up, so

.. math::
  E\|Q_s(v) - v\|^2 = \frac{\|v\|^2}{s^2} \sum_i p_i (1 - p_i).

For :math:`s = 1`, :math:`p_i = r_i` and the normalised variance is exactly
:math:`\|v\|_1/\|v\|_2 - 1 \approx \sqrt{2d/\pi} - 1` for Gaussian
:math:`v`: the :math:`\sqrt d / s` bound is tight up to the constant
:math:`\sqrt{2/\pi}`, so the variance grows as :math:`d^{1/2}`. While every
:math:`s r_i < 1` (:math:`s \ll \sqrt d`) the same algebra gives
:math:`\|v\|_1/(s \|v\|_2) - 1`, slope :math:`-1/(1 - s/a)` in :math:`s`
with :math:`a = \|v\|_1/\|v\|_2`, i.e. :math:`-1` up to :math:`s/a`; the
sweep keeps :math:`s \le \sqrt d / 32` so that the exact slope stays within
0.02 of :math:`-1`. For :math:`s \ge 2\sqrt d` the fractional parts are
spread evenly, :math:`\sum_i p_i(1-p_i) \approx d/6`, and the variance falls
as :math:`s^{-2}` (the :math:`d/s^2` branch of the bound).

Measured quantity: :math:`E\|Q_s(v) - v\|^2/\|v\|^2` by Monte Carlo over
``num_draws`` keys of the library compressor
(``compressors.compressors.qsgd(s)``, one bucket, ``decode(encode(key, v))``),
for standard Gaussian :math:`v` (one fresh :math:`v` per seed and per
:math:`d`), with the exact expectation above computed in float64 beside it.
Vectors of different lengths share one compiled program by zero padding,
which changes nothing: a zero coordinate quantizes to zero with probability
one and does not change the norm.

Sub-claims (the check PASSes iff all six hold):

(a) :math:`s = 1`: log-log slope of the Monte-Carlo variance against
    :math:`d \in \{2^8, \dots, 2^{16}\}` is :math:`1/2 \pm 0.05`.
(b) :math:`d = 2^{20}`: log-log slope against
    :math:`s \in \{1, \dots, 32\}` (:math:`s \le \sqrt d/32`) is
    :math:`-1 \pm 0.05`.
(c) :math:`d = 2^{10}`: log-log slope against
    :math:`s \in \{64, \dots, 1024\}` (:math:`s \ge 2\sqrt d`) is
    :math:`-2 \pm 0.05` (card §1 item 4; the other branch of the bound).
(d) Monte Carlo agrees with the exact formula: :math:`|z| \le 4` at every
    point and seed, :math:`z` = (MC mean - exact) / exact standard error
    (the per-draw error is a sum of independent two-point variables whose
    variance is also exact).
(e) Lemma 3.1 (ii): the exact variance and the Monte-Carlo mean are at most
    :math:`\min(d/s^2, \sqrt d/s)\|v\|^2` at every point and seed.
(f) Lemma 3.1 (i), unbiasedness: :math:`U = R\|\bar Q_R - v\|^2 /
    E\|Q - v\|^2` has mean 1 and relative spread
    :math:`\sqrt{2/d_\mathrm{eff}}`, :math:`d_\mathrm{eff} = (\sum_i
    \mathrm{Var}_i)^2 / \sum_i \mathrm{Var}_i^2`; accepted when
    :math:`|U - 1| \le 4\sqrt{2/d_\mathrm{eff}}` at every point and seed
    (card §1 item 2).

``measured`` is the number of sub-claims that hold (expected 6, tolerance
0); ``ci`` is the 2.5-97.5% range of that count over bootstrap resamples of
the seeds. ``x``/``y`` (and the PNG) are the Monte-Carlo variances of (a)
against d. Quick mode: d up to :math:`2^{14}`, (b) at :math:`d = 2^{14}`
with :math:`s \in \{1, 2, 4\}`, (c) with :math:`s \in \{64, 1024\}`, fewer
draws; all six sub-claims are judged with the same tolerances.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from distoptax.algorithms import compressors
from distoptax.theory_checks import fit as fit_lib
from distoptax.theory_checks import harness

NAME = "qsgd_variance"

CLAIM = harness.Claim(
    name=NAME,
    statement=(
        "QSGD's quantizer Q_s is unbiased and E||Q_s(v) - v||^2 <= "
        "min(d/s^2, sqrt(d)/s) ||v||^2; for Gaussian v the variance grows as "
        "d^(1/2) at s = 1 (slope 0.5 +- 0.05), falls as s^-1 for s << "
        "sqrt(d) (slope -1 +- 0.05) and as s^-2 for s >= 2 sqrt(d) (slope -2 "
        "+- 0.05); Monte Carlo matches the exact variance "
        "(||v||^2/s^2) sum_i p_i (1 - p_i) within 4 standard errors."),
    source=("Alistarh, Grubic, Li, Tomioka, Vojnovic 2017, QSGD: "
            "Communication-Efficient SGD via Gradient Quantization and "
            "Encoding, NeurIPS 2017, arXiv:1610.02132, Lemma 3.1"),
    measured="number of the sub-claims (a)-(f) that hold",
    expected=6.0,
    tolerance=0.0,
)


@dataclasses.dataclass(frozen=True)
class Config:
  """Configuration of the sweeps.

  Attributes:
    dims: the dimensions d of sweep (a), at s = 1.
    small_levels_dim: d of sweep (b).
    small_levels: the levels s of sweep (b), all <= sqrt(d) / 32.
    large_levels_dim: d of sweep (c).
    large_levels: the levels s of sweep (c), all >= 2 sqrt(d).
    num_draws: Monte-Carlo draws (keys) per vector.
    draw_batch: draws evaluated at once (``vmap``) inside the ``scan``.
    num_seeds: seeds; each draws its own Gaussian v for every point.
    data_seed: seed of the Gaussian vectors.
    slope_d_tolerance: tolerance of (a).
    slope_small_tolerance: tolerance of (b).
    slope_large_tolerance: tolerance of (c).
    max_z: the largest accepted |z| in (d) and standardised deviation in
      (f).
  """

  dims: tuple[int, ...] = tuple(2**k for k in range(8, 17))
  small_levels_dim: int = 2**20
  small_levels: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
  large_levels_dim: int = 2**10
  large_levels: tuple[int, ...] = (64, 128, 256, 512, 1024)
  num_draws: int = 400
  draw_batch: int = 4
  num_seeds: int = 5
  data_seed: int = 0
  slope_d_tolerance: float = 0.05
  slope_small_tolerance: float = 0.05
  slope_large_tolerance: float = 0.05
  max_z: float = 4.0


QUICK = Config(dims=(2**8, 2**10, 2**12, 2**14), small_levels_dim=2**14,
               small_levels=(1, 2, 4), large_levels=(64, 1024),
               num_draws=96, draw_batch=8, num_seeds=3)
"""The CI-sized configuration (``--quick``); see the module docstring."""

SUB_CLAIM_KEYS = ("a", "b", "c", "d", "e", "f")
"""The sub-claims' keys, in order."""

QUICK_ASSESSED = SUB_CLAIM_KEYS
"""The quick budget assesses every sub-claim (module docstring)."""

FULL_BUDGET = harness.full_budget(
    NAME, f"d up to 2^20, {Config.num_draws} draws, {Config.num_seeds} seeds")
"""The budget that assesses every sub-claim."""


def exact_moments(v: np.ndarray, num_levels: int) -> dict[str, float]:
  r"""Exact moments of :math:`\|Q_s(v) - v\|^2 / \|v\|^2` (float64).

  Coordinate :math:`i` has error :math:`\delta(1 - p_i)` with probability
  :math:`p_i` and :math:`-\delta p_i` otherwise, :math:`\delta =
  \|v\|/s`, independently across coordinates.

  Args:
    v: the vector (any float dtype; computed in float64).
    num_levels: s.

  Returns:
    ``variance`` (the normalised :math:`E\|Q - v\|^2`), ``draw_sd`` (the
    standard deviation of one draw of the normalised squared error),
    ``d_eff`` (:math:`(\sum \mathrm{Var}_i)^2 / \sum \mathrm{Var}_i^2`) and
    ``bound`` (:math:`\min(d/s^2, \sqrt d/s)`, d counting every
    coordinate of ``v``).
  """
  v = np.asarray(v, np.float64)
  d, s = v.size, float(num_levels)
  r = np.abs(v) / np.linalg.norm(v)
  y = s * r
  p = y - np.floor(y)
  per_coord = p * (1 - p) / s**2                     # E e_i^2 / ||v||^2
  fourth = p * (1 - p) * ((1 - p)**3 + p**3) / s**4  # E e_i^4 / ||v||^4
  return {
      "variance": float(per_coord.sum()),
      "draw_sd": float(np.sqrt(np.sum(fourth - per_coord**2))),
      "d_eff": float(per_coord.sum()**2 / np.sum(per_coord**2)),
      "bound": min(d / s**2, np.sqrt(d) / s),
  }


def monte_carlo(vectors: np.ndarray, num_levels: int, key: jax.Array,
                num_draws: int, draw_batch: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Draws ``Q_s(v)`` with the library compressor for every row ``v``.

  Args:
    vectors: float32 ``[n, D]`` (zero padded rows are fine).
    num_levels: s.
    key: the PRNG key; row ``j`` of draw ``r`` uses ``fold_in(key_r, j)``.
    num_draws: R, a multiple of ``draw_batch``.
    draw_batch: draws evaluated at once.

  Returns:
    ``squared_errors`` float64 ``[R, n]`` (``||Q(v) - v||^2`` per draw) and
    ``mean_q`` float64 ``[n, D]`` (the mean of the R draws).
  """
  compressor = compressors.qsgd(num_levels)
  if num_draws % draw_batch:
    raise ValueError(f"num_draws={num_draws} must be a multiple of "
                     f"draw_batch={draw_batch}")

  @jax.jit
  def run(vectors, key):
    rows = jnp.arange(vectors.shape[0])

    def quantize(k):
      def one(j, v):
        return compressor.decode(compressor.encode(jax.random.fold_in(k, j),
                                                   v))
      return jax.vmap(one)(rows, vectors)

    def body(total, keys):
      q = jax.vmap(quantize)(keys)                       # [batch, n, D]
      return total + q.sum(axis=0), jnp.sum((q - vectors)**2, axis=-1)

    keys = jax.random.split(key, num_draws).reshape(
        num_draws // draw_batch, draw_batch)
    total, errors = jax.lax.scan(body, jnp.zeros_like(vectors), keys)
    return total / num_draws, errors.reshape(num_draws, -1)

  mean_q, errors = run(jnp.asarray(vectors, jnp.float32), key)
  return np.asarray(errors, np.float64), np.asarray(mean_q, np.float64)


def _gaussian(config: Config, seed: int, d: int) -> np.ndarray:
  rng = np.random.default_rng([config.data_seed, seed, d])
  return rng.normal(size=d).astype(np.float32)


def _points(config: Config) -> dict[str, list[tuple[int, int]]]:
  return {
      "d": [(d, 1) for d in config.dims],
      "small_s": [(config.small_levels_dim, s) for s in config.small_levels],
      "large_s": [(config.large_levels_dim, s) for s in config.large_levels],
  }


_QUANTITIES = ("mc", "exact", "se", "z", "bound", "unbiased_stat",
               "unbiased_band")


def sweep(config: Config, meter: harness.Progress | None = None
          ) -> dict[str, dict[str, np.ndarray]]:
  """Monte Carlo and exact figures at every point of the three sweeps.

  Rows (one Gaussian ``v`` per seed and point) that share ``s`` and the
  padded length (the largest ``d`` of their sweep) are quantized in one
  compiled program, so the whole check compiles once per distinct
  ``(s, length)``.

  Args:
    config: the configuration.
    meter: announces each compiled program (one per ``(s, length)``), if
      given.

  Returns:
    ``fig[sweep][quantity]`` of shape ``[num_seeds, num_points]`` for the
    sweeps ``"d"``, ``"small_s"``, ``"large_s"`` and the quantities ``mc``
    (normalised Monte-Carlo variance), ``exact``, ``se`` (exact standard
    error of ``mc``), ``z``, ``bound``, ``unbiased_stat`` (U of sub-claim
    (f)) and ``unbiased_band`` (``max_z * sqrt(2/d_eff)``).
  """
  points = _points(config)
  fig = {name: {q: np.zeros((config.num_seeds, len(ps)))
                for q in _QUANTITIES} for name, ps in points.items()}
  groups = {}
  for name, ps in points.items():
    length = max(d for d, _ in ps)
    for j, (d, s) in enumerate(ps):
      for seed in range(config.num_seeds):
        groups.setdefault((s, length), []).append((name, j, seed, d))
  key = jax.random.key(config.data_seed)
  for (s, length), rows in sorted(groups.items()):
    if meter is not None:
      meter.point(f"s = {s}, d <= {length}: {len(rows)} vectors (points x "
                  f"seeds) x {config.num_draws} draws")
    vs = [_gaussian(config, seed, d) for _, _, seed, d in rows]
    padded = np.zeros((len(rows), length), np.float32)
    for row, v in enumerate(vs):
      padded[row, :v.size] = v
    errors, mean_q = monte_carlo(
        padded, s, jax.random.fold_in(jax.random.fold_in(key, s), length),
        config.num_draws, config.draw_batch)
    for row, ((name, j, seed, _), v) in enumerate(zip(rows, vs)):
      v64 = v.astype(np.float64)
      norm2 = float(v64 @ v64)
      moments = exact_moments(v64, s)
      mc = errors[:, row].mean() / norm2
      se = moments["draw_sd"] / np.sqrt(config.num_draws)
      bias2 = np.sum((mean_q[row, :v.size] - v64)**2) / norm2
      out = fig[name]
      out["mc"][seed, j] = mc
      out["exact"][seed, j] = moments["variance"]
      out["se"][seed, j] = se
      out["z"][seed, j] = (mc - moments["variance"]) / se
      out["bound"][seed, j] = moments["bound"]
      out["unbiased_stat"][seed, j] = (config.num_draws * bias2
                                       / moments["variance"])
      out["unbiased_band"][seed, j] = config.max_z * np.sqrt(
          2 / moments["d_eff"])
  return fig


def _slope(x, y) -> fit_lib.SlopeFit:
  x = np.asarray(x, np.float64)
  return fit_lib.loglog_slope(x, y, window=(x.min(), x.max()))


def _judge(config: Config, fig: dict[str, dict[str, np.ndarray]]
           ) -> list[bool]:
  """The six sub-claims on per-seed figures ``fig[sweep][quantity]``."""
  slope_d = _slope(config.dims, fig["d"]["mc"]).slope
  slope_small = _slope(config.small_levels, fig["small_s"]["mc"]).slope
  slope_large = _slope(config.large_levels, fig["large_s"]["mc"]).slope
  every = {q: np.concatenate([fig[k][q] for k in fig], axis=1)
           for q in fig["d"]}
  return [
      abs(slope_d - 0.5) <= config.slope_d_tolerance,
      abs(slope_small + 1.0) <= config.slope_small_tolerance,
      abs(slope_large + 2.0) <= config.slope_large_tolerance,
      bool(np.all(np.abs(every["z"]) <= config.max_z)),
      bool(np.all(every["exact"] <= every["bound"])
           and np.all(every["mc"] <= every["bound"])),
      bool(np.all(np.abs(every["unbiased_stat"] - 1)
                  <= every["unbiased_band"])),
  ]


def run(*, quick: bool = False, seeds: int | None = None,
        progress: bool = True, **overrides) -> harness.CheckResult:
  """Runs the three sweeps and counts the sub-claims that hold.

  Args:
    quick: use :data:`QUICK` instead of ``Config()``; only the sub-claims
      in :data:`QUICK_ASSESSED` are then assessed.
    seeds: number of seeds, overriding the configuration's.
    progress: print a line per compiled program (``(s, length)``) to
      stderr.
    **overrides: further :class:`Config` fields (e.g. ``num_draws=1000``).

  Returns:
    The :class:`harness.CheckResult`; ``measured`` is the number of
    assessed sub-claims that hold, ``sub_claims`` has each one's figures
    and ``extras["sweeps"]`` the Monte-Carlo and exact variances.
  """
  config = harness.resolve_config(Config(), QUICK, quick=quick, seeds=seeds,
                                  overrides=overrides)
  assessed = harness.quick_assessment(SUB_CLAIM_KEYS, QUICK_ASSESSED,
                                      quick=quick)
  start = time.perf_counter()
  points = _points(config)
  num_programs = len({(s, max(d for d, _ in ps))
                      for ps in points.values() for _, s in ps})
  meter = harness.Progress(NAME, num_programs, enabled=progress)
  fig = sweep(config, meter)
  meter.done()
  elapsed = time.perf_counter() - start
  passed = _judge(config, fig)

  ci = harness.bootstrap_count_ci(
      lambda rows: harness.count_assessed(_judge(config, {
          k: {q: a[rows] for q, a in f.items()} for k, f in fig.items()}),
                                          assessed),
      config.num_seeds)

  xs = {"d": config.dims, "small_s": config.small_levels,
        "large_s": config.large_levels}
  fits = {k: _slope(xs[k], fig[k]["mc"]) for k in fig}
  exact_fits = {k: _slope(xs[k], fig[k]["exact"]) for k in fig}
  every_fig = {q: np.concatenate([fig[k][q] for k in fig], axis=1)
               for q in fig["d"]}
  specs = [
      ("d", "(a) variance vs d at s = 1", 0.5, config.slope_d_tolerance),
      ("small_s", f"(b) variance vs s at d = {config.small_levels_dim}, "
       "s <= sqrt(d)/32", -1.0, config.slope_small_tolerance),
      ("large_s", f"(c) variance vs s at d = {config.large_levels_dim}, "
       "s >= 2 sqrt(d)", -2.0, config.slope_large_tolerance),
  ]
  rows = [
      dict(name=name, value=fits[k].slope,
           ci=(fits[k].ci_low, fits[k].ci_high), expected=expected,
           tolerance=tol,
           measured="log-log slope of the Monte-Carlo variance",
           note=f"exact-formula slope {exact_fits[k].slope:.3f}")
      for k, name, expected, tol in specs]
  rows += [
      dict(name="(d) Monte Carlo matches the exact variance",
           measured="max |z| over points and seeds",
           value=float(np.max(np.abs(every_fig["z"]))),
           expected=f"<= {config.max_z:g}"),
      dict(name="(e) Lemma 3.1 (ii) bound min(d/s^2, sqrt(d)/s)",
           measured="max of exact / bound and of MC / bound",
           value=float(max(np.max(every_fig["exact"] / every_fig["bound"]),
                           np.max(every_fig["mc"] / every_fig["bound"]))),
           expected="<= 1"),
      dict(name="(f) Lemma 3.1 (i) unbiased",
           measured="max |U - 1| / (max_z sqrt(2/d_eff))",
           value=float(np.max(np.abs(every_fig["unbiased_stat"] - 1)
                              / every_fig["unbiased_band"] * config.max_z)),
           expected=f"<= {config.max_z:g}"),
  ]
  sub_claims = tuple(
      harness.SubClaim(key=key, holds=bool(p), assessed=a,
                       assessed_by="" if a else FULL_BUDGET, **row)
      for key, row, p, a in zip(SUB_CLAIM_KEYS, rows, passed, assessed))
  sweeps = {
      k: {"points": points[k],
          "mc_mean": fig[k]["mc"].mean(axis=0),
          "exact_mean": fig[k]["exact"].mean(axis=0),
          "mc_over_exact": (fig[k]["mc"] / fig[k]["exact"]).mean(axis=0),
          "max_abs_z": np.max(np.abs(fig[k]["z"]), axis=0),
          "bound": fig[k]["bound"][0],
          "exact_over_bound": (fig[k]["exact"] / fig[k]["bound"]).max(
              axis=0),
          "unbiased_stat_mean": fig[k]["unbiased_stat"].mean(axis=0),
          "slope": fits[k].slope,
          "slope_ci": (fits[k].ci_low, fits[k].ci_high),
          "exact_slope": exact_fits[k].slope}
      for k in fig}
  return harness.CheckResult(
      claim=CLAIM, measured=harness.count_assessed(passed, assessed), ci=ci,
      x=np.array(config.dims, np.float64), y=fig["d"]["mc"],
      config=dataclasses.asdict(config) | {"quick": quick},
      elapsed_s=elapsed, x_label="dimension d (s = 1)",
      y_label="E||Q_s(v) - v||^2 / ||v||^2 (Monte Carlo)",
      extras={"sweeps": sweeps}, sub_claims=sub_claims,
      details=sweeps_table(sweeps))


def sweeps_table(sweeps: dict[str, dict]) -> str:
  """The Monte-Carlo against exact variances at every point, as text.

  Args:
    sweeps: the result's ``extras["sweeps"]``.

  Returns:
    One line per (d, s): seed means of the Monte-Carlo and exact normalised
    variances, their ratio, the largest |z| and the bound.
  """
  lines = [f"{'d':>8} {'s':>5} {'MC':>10} {'exact':>10} {'MC/exact':>9} "
           f"{'max|z|':>7} {'bound':>9}"]
  for sweep_fig in sweeps.values():
    for j, (d, s) in enumerate(sweep_fig["points"]):
      lines.append(
          f"{d:>8} {s:>5} {sweep_fig['mc_mean'][j]:>10.4g} "
          f"{sweep_fig['exact_mean'][j]:>10.4g} "
          f"{sweep_fig['mc_over_exact'][j]:>9.4f} "
          f"{sweep_fig['max_abs_z'][j]:>7.2f} {sweep_fig['bound'][j]:>9.4g}")
  return "\n".join(lines)


def main(argv=None):
  """``python -m distoptax.theory_checks.qsgd_variance [--quick] ...``."""
  harness.run_check_main(run, argv)


if __name__ == "__main__":
  main()
