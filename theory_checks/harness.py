"""Common harness of the theory checks: claims, results, files, report, main.

A check module defines a :class:`Claim`, runs a seeded sweep, fits the rate
(``theory_checks.fit``) and returns a :class:`CheckResult`. The harness writes
it as JSON + PNG, prints a PASS/FAIL block and turns it into an exit status.
Flags are parsed only in :func:`run_check_main`; everything else takes typed
arguments.
"""

import dataclasses
import json
import math
import os
import sys
from typing import Any, Callable, Mapping, NoReturn, Sequence

from absl import flags
import numpy as np

from distoptax.theory_checks import fit as fit_lib


@dataclasses.dataclass(frozen=True)
class Claim:
  """A stated, testable claim.

  The check passes iff ``|measured - expected| <= tolerance``, judged on the
  point estimate; whether the confidence interval covers ``expected`` is
  reported beside it.

  Attributes:
    name: short identifier, also the default output folder name.
    statement: the claim or formula in words.
    source: paper and arXiv id (theorem number where known).
    measured: what the measured number is (e.g. "log-log slope of ...").
    expected: the value the claim predicts.
    tolerance: the accepted absolute deviation from ``expected``.
  """

  name: str
  statement: str
  source: str
  measured: str
  expected: float
  tolerance: float

  def passes(self, value: float) -> bool:
    """Whether a measured value agrees with the claim within tolerance."""
    return bool(abs(value - self.expected) <= self.tolerance)


@dataclasses.dataclass(frozen=True)
class CheckResult:
  """The outcome of one check.

  Attributes:
    claim: the claim tested.
    measured: the measured value (e.g. the fitted slope).
    ci: 95% confidence interval ``(low, high)`` of ``measured``.
    x: the swept values, shape ``[num_x]``.
    y: per-seed measurements, shape ``[num_seeds, num_x]``.
    config: the full configuration of the run (JSON-serialisable).
    elapsed_s: wall-clock seconds the run took.
    fit: the fitted line, drawn on the plot; ``None`` for non-slope checks.
    x_label: axis label of ``x``.
    y_label: axis label of ``y``.
    extras: further check-specific numbers saved to the JSON.
  """

  claim: Claim
  measured: float
  ci: tuple[float, float]
  x: np.ndarray
  y: np.ndarray
  config: Mapping[str, Any]
  elapsed_s: float
  fit: fit_lib.SlopeFit | None = None
  x_label: str = "x"
  y_label: str = "y"
  extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def passed(self) -> bool:
    """PASS iff the point estimate is within tolerance of the claim."""
    return self.claim.passes(self.measured)

  @property
  def ci_covers_expected(self) -> bool:
    """Whether the confidence interval contains the expected value."""
    return bool(self.ci[0] <= self.claim.expected <= self.ci[1])


def resolve_config(default: Any, quick_config: Any, *, quick: bool,
                   seeds: int | None, overrides: Mapping[str, Any]) -> Any:
  """The configuration of one run of a check.

  Args:
    default: the full configuration (a frozen dataclass).
    quick_config: the ``--quick`` configuration (same class).
    quick: whether to start from ``quick_config``.
    seeds: the number of seeds (field ``num_seeds``), or ``None`` to keep it.
    overrides: further fields to replace.

  Returns:
    The configuration with ``num_seeds`` and ``overrides`` applied.

  Raises:
    ValueError: for an override that names no field of the configuration.

  Example:
    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Config:
    ...   num_steps: int = 100
    ...   num_seeds: int = 5
    >>> resolve_config(Config(), Config(num_steps=10), quick=True, seeds=2,
    ...                overrides={})
    Config(num_steps=10, num_seeds=2)
    >>> resolve_config(Config(), Config(), quick=False, seeds=None,
    ...                overrides={"steps": 3})
    Traceback (most recent call last):
    ...
    ValueError: Config has no field 'steps'; fields: ['num_seeds', 'num_steps']
  """
  config = quick_config if quick else default
  names = sorted(field.name for field in dataclasses.fields(config))
  for name in overrides:
    if name not in names:
      raise ValueError(f"{type(config).__name__} has no field {name!r}; "
                       f"fields: {names}")
  if seeds is not None:
    overrides = {**overrides, "num_seeds": seeds}
  return dataclasses.replace(config, **overrides)


def bootstrap_count_ci(count_fn: Callable[[np.ndarray], float],
                       num_seeds: int, *, num_resamples: int = 1000,
                       seed: int = 0) -> tuple[float, float]:
  """95% bootstrap range over seeds of a check's count of passed sub-claims.

  Args:
    count_fn: ``count_fn(rows) -> count``, the number of sub-claims that hold
      on the seeds ``rows`` (an int array of ``num_seeds`` indices drawn with
      replacement).
    num_seeds: the number of seeds of the run.
    num_resamples: bootstrap resamples.
    seed: seed of the resampling.

  Returns:
    The 2.5th and 97.5th percentiles of the resampled counts.

  Example:
    >>> gaps = np.array([1.0, 1.1, 0.9, 5.0])
    >>> lo, hi = bootstrap_count_ci(lambda rows: float(gaps[rows].mean() < 2),
    ...                             num_seeds=4)
    >>> (lo, hi)
    (0.0, 1.0)
  """
  rng = np.random.default_rng(seed)
  counts = []
  for _ in range(num_resamples):
    rows = rng.integers(0, num_seeds, num_seeds)
    counts.append(count_fn(rows))
  return (float(np.percentile(counts, 2.5)),
          float(np.percentile(counts, 97.5)))


def sub_claim_line(sub_claim: Mapping[str, Any]) -> str:
  """``PASS  name: value (95% CI [lo, hi]), expected e ± tol`` of a sub-claim.

  Args:
    sub_claim: a dict with ``passed``, ``name``, ``value``, ``ci`` (a pair or
      ``None``), ``expected`` and ``tolerance`` (``None`` when ``expected`` is
      already a text such as ``"<= 0.5"``).

  Returns:
    The line, without a trailing newline; checks append their own details.

  Example:
    >>> sub_claim_line({"passed": True, "name": "(a) slope", "value": -1.02,
    ...                 "ci": (-1.1, -0.95), "expected": -1.0,
    ...                 "tolerance": 0.15})
    'PASS  (a) slope: -1.020 (95% CI [-1.100, -0.950]), expected -1 ± 0.15'
  """
  c = sub_claim
  ci = "" if c["ci"] is None else (
      f" (95% CI [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}])")
  expected = (c["expected"] if c["tolerance"] is None
              else f"{c['expected']:g} ± {c['tolerance']:g}")
  return (f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: "
          f"{c['value']:.3f}{ci}, expected {expected}")


def slope_result(
    claim: Claim,
    x: Any,
    y: Any,
    *,
    window: tuple[float, float],
    config: Mapping[str, Any],
    elapsed_s: float,
    x_label: str = "x",
    y_label: str = "y",
    extras: Mapping[str, Any] | None = None,
    num_bootstrap: int = 2000,
) -> CheckResult:
  """Fits a log-log slope over ``window`` and wraps it as a result.

  Args:
    claim: the claim; its ``expected`` is the theoretical slope.
    x: swept values ``[num_x]``.
    y: per-seed measurements ``[num_seeds, num_x]``.
    window: the declared fit window, see ``fit.loglog_slope``.
    config: configuration of the run, saved with the result.
    elapsed_s: wall-clock seconds of the run.
    x_label: axis label of ``x``.
    y_label: axis label of ``y``.
    extras: further numbers to save.
    num_bootstrap: bootstrap resamples for the CI.

  Returns:
    A :class:`CheckResult` whose ``measured`` is the fitted slope.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  fitted = fit_lib.loglog_slope(x, y, window=window,
                                num_bootstrap=num_bootstrap)
  return CheckResult(
      claim=claim, measured=fitted.slope, ci=(fitted.ci_low, fitted.ci_high),
      x=x, y=y, config=dict(config), elapsed_s=float(elapsed_s), fit=fitted,
      x_label=x_label, y_label=y_label, extras=dict(extras or {}))


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def to_json(result: CheckResult) -> dict[str, Any]:
  """A JSON-serialisable dict of every number in ``result``."""
  return _jsonable({
      "name": result.claim.name,
      "passed": result.passed,
      "measured": result.measured,
      "ci": result.ci,
      "ci_covers_expected": result.ci_covers_expected,
      "claim": dataclasses.asdict(result.claim),
      "fit": None if result.fit is None else result.fit._asdict(),
      "x_label": result.x_label,
      "y_label": result.y_label,
      "x": result.x,
      "y": result.y,
      "y_mean": np.mean(result.y, axis=0),
      "config": result.config,
      "extras": result.extras,
      "elapsed_s": result.elapsed_s,
  })


def _plot(result: CheckResult, path: str) -> None:
  # A bare Figure with an Agg canvas: no pyplot, no global backend switch.
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure  # pylint: disable=g-import-not-at-top

  claim, x, y = result.claim, result.x, result.y
  fig = figure.Figure(figsize=(6, 4.5))
  backend_agg.FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.fill_between(x, y.min(axis=0), y.max(axis=0), alpha=0.25,
                  label=f"min-max over {y.shape[0]} seeds")
  ax.plot(x, np.median(y, axis=0), "o", label="median over seeds")
  fitted = result.fit
  if fitted is not None:
    lo, hi = fitted.window
    in_window = (x >= lo) & (x <= hi)
    xs = np.geomspace(x[in_window].min(), x[in_window].max(), 50)
    half_ci = (fitted.ci_high - fitted.ci_low) / 2
    ax.plot(xs, np.exp(fitted.intercept) * xs ** fitted.slope, "--",
            label=(f"fit slope {fitted.slope:.2f} ± {half_ci:.2f} "
                   f"(theory {claim.expected:g})"))
    x0 = x[in_window][0]
    y0 = np.mean(y[:, in_window][:, 0])
    ax.plot(xs, y0 * (xs / x0) ** claim.expected, "-", color="grey",
            linewidth=0.8, label=f"slope {claim.expected:g}")
  ax.set_xlabel(result.x_label)
  ax.set_ylabel(result.y_label)
  status = "PASS" if result.passed else "FAIL"
  ax.set_title(f"{claim.name}: {status}", fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def write_result(result: CheckResult, outdir: str | os.PathLike[str]
                 ) -> tuple[str, str]:
  """Writes ``<outdir>/<name>.json`` and ``<outdir>/<name>.png``.

  Args:
    result: the check's outcome.
    outdir: the folder (created if missing).

  Returns:
    The paths of the JSON and PNG files.
  """
  os.makedirs(outdir, exist_ok=True)
  base = os.path.join(os.fspath(outdir), result.claim.name)
  json_path, png_path = base + ".json", base + ".png"
  with open(json_path, "w") as f:
    json.dump(to_json(result), f, indent=2)
  _plot(result, png_path)
  return json_path, png_path


def report(result: CheckResult) -> str:
  """A readable block: claim, measured value with CI, tolerance, PASS/FAIL."""
  claim = result.claim
  deviation = abs(result.measured - claim.expected)
  status = "PASS" if result.passed else "FAIL"
  window = "" if result.fit is None else f", fit window {result.fit.window}"
  lines = [
      f"== {claim.name}: {status} ==",
      f"claim:     {claim.statement}",
      f"source:    {claim.source}",
      f"measured:  {claim.measured}",
      f"value:     {result.measured:.4f}  "
      f"(95% CI [{result.ci[0]:.4f}, {result.ci[1]:.4f}])",
      f"expected:  {claim.expected:g} ± {claim.tolerance:g}  "
      f"(|deviation| = {deviation:.4f})",
      f"CI covers expected: {'yes' if result.ci_covers_expected else 'no'}",
      f"seeds: {result.y.shape[0]}, x: {result.x.tolist()}{window}, "
      f"elapsed: {result.elapsed_s:.1f} s",
      f"result:    {status}",
  ]
  return "\n".join(lines)


RunFn = Callable[..., CheckResult]
"""``run_fn(*, quick: bool, seeds: int | None) -> CheckResult``."""


def _define_common_flags(flag_values: flags.FlagValues, outdir_help: str):
  flags.DEFINE_bool("quick", False, "Small CI-sized sweep (3 seeds).",
                    flag_values=flag_values)
  flags.DEFINE_string("outdir", None, outdir_help, flag_values=flag_values)
  flags.DEFINE_integer("seeds", None, "Number of seeds (overrides the "
                       "check's default).", lower_bound=1,
                       flag_values=flag_values)


def parse_flags(argv: Sequence[str] | None, outdir_help: str
                ) -> flags.FlagValues:
  """Parses ``--quick``, ``--outdir``, ``--seeds`` into a fresh FlagValues.

  Args:
    argv: the command line including the program name (``sys.argv`` if
      ``None``).
    outdir_help: help text of ``--outdir``.

  Returns:
    The parsed flag values (not the global ``absl.flags.FLAGS``).

  Raises:
    SystemExit: with status 2 on a bad command line.
  """
  argv = list(sys.argv if argv is None else argv)
  flag_values = flags.FlagValues()
  _define_common_flags(flag_values, outdir_help)
  try:
    rest = flag_values(argv)
    if len(rest) > 1:
      raise flags.Error(f"unexpected arguments: {rest[1:]}")
  except flags.Error as e:
    print(f"{e}\n\n{flag_values.get_help()}", file=sys.stderr)
    sys.exit(2)
  return flag_values


def run_check_main(run_fn: RunFn,
                   argv: Sequence[str] | None = None, *,
                   describe: Callable[[CheckResult], str] | None = None
                   ) -> NoReturn:
  """The ``main()`` of a check module.

  Flags: ``--quick`` (bool), ``--outdir`` (default ``results/<name>``),
  ``--seeds`` (int, optional). Runs ``run_fn(quick=..., seeds=...)``, writes
  the JSON and PNG, prints the report and exits with status 0 on PASS, 1 on
  FAIL (2 on a bad command line).

  Args:
    run_fn: the check's run function.
    argv: the command line (``sys.argv`` if ``None``).
    describe: ``describe(result) -> text`` printed before the report (a
      check's table of sub-claims), or ``None``.

  Raises:
    SystemExit: always, with the exit status.
  """
  parsed = parse_flags(argv, "Output folder; default results/<check name>.")
  result = run_fn(quick=parsed.quick, seeds=parsed.seeds)
  if describe is not None:
    print(describe(result))
  outdir = parsed.outdir or os.path.join("results", result.claim.name)
  paths = write_result(result, outdir)
  print(report(result))
  print("wrote " + ", ".join(paths))
  sys.exit(0 if result.passed else 1)
