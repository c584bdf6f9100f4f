"""Common harness of the theory checks: claims, results, files, report, main.

A check module defines a :class:`Claim`, runs a seeded sweep, fits the rate
(``theory_checks.fit``) and returns a :class:`CheckResult`: its ``str`` is the
readable report and its ``plot()`` the figure. A check that counts
sub-claims lists them as :class:`SubClaim`; the ones a quick budget cannot
assess (declared by the check's ``QUICK_ASSESSED``) are reported as not
assessed, never as failures. The harness writes the result as JSON + PNG,
prints the report and turns the verdict into an exit status (1 on FAIL).
Flags are parsed only in :func:`run_check_main`; everything else takes typed
arguments.
"""

import dataclasses
import json
import math
import os
import sys
import time
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


PASS = "PASS"
"""Verdict: the claim (every sub-claim) holds within tolerance."""
FAIL = "FAIL"
"""Verdict: the claim or an assessed sub-claim does not hold."""
PARTIAL = "PARTIAL"
"""Verdict: every assessed sub-claim holds, some are not assessed."""
NOT_ASSESSED = "NOT ASSESSED"
"""Verdict of a sub-claim (or a check) that this budget cannot assess."""


@dataclasses.dataclass(frozen=True)
class SubClaim:
  """One sub-claim of a check and its outcome.

  A sub-claim that the run's budget cannot assess (``assessed=False``, e.g.
  a claim about a trained model in a 40-step quick run) is reported with its
  measured figures but never counts as a failure; ``assessed_by`` says which
  budget assesses it.

  Attributes:
    key: short identifier ("a", "1"), the one a check's ``QUICK_ASSESSED``
      lists.
    name: the sub-claim in words (begins with its key).
    holds: whether the measured figures satisfy it.
    assessed: whether the run's budget assesses it.
    assessed_by: for a sub-claim not assessed, the budget that assesses it.
    value: the measured figure, or ``None``.
    ci: 95% interval of ``value``, or ``None``.
    expected: the predicted value, or a text such as ``"<= 0.2"``.
    tolerance: accepted deviation from a numeric ``expected``; ``None``
      when ``expected`` is a text.
    measured: what ``value`` is, when the name does not say it.
    note: further facts printed after the line.
  """

  key: str
  name: str
  holds: bool
  assessed: bool = True
  assessed_by: str = ""
  value: float | None = None
  ci: tuple[float, float] | None = None
  expected: float | str | None = None
  tolerance: float | None = None
  measured: str = ""
  note: str = ""

  @property
  def verdict(self) -> str:
    """``PASS``, ``FAIL`` or, when not assessed, ``NOT ASSESSED``."""
    if not self.assessed:
      return NOT_ASSESSED
    return PASS if self.holds else FAIL


@dataclasses.dataclass(frozen=True)
class CheckResult:
  """The outcome of one check.

  ``str(result)`` (also what a notebook shows) is the readable report and
  :meth:`plot` draws the figure; ``x``, ``y`` and ``extras`` hold the data
  behind it.

  Attributes:
    claim: the claim tested.
    measured: the measured value (e.g. the fitted slope, or the number of
      assessed sub-claims that hold).
    ci: 95% confidence interval ``(low, high)`` of ``measured``.
    x: the swept values, shape ``[num_x]``.
    y: per-seed measurements, shape ``[num_seeds, num_x]``.
    config: the full configuration of the run (JSON-serialisable).
    elapsed_s: wall-clock seconds the run took.
    fit: the fitted line, drawn on the plot; ``None`` for non-slope checks.
    x_label: axis label of ``x``.
    y_label: axis label of ``y``.
    extras: further check-specific numbers saved to the JSON.
    sub_claims: the sub-claims, for a check that counts them; the verdict
      then follows them.
    details: check-specific tables, printed in the report.
    plot_fn: ``plot_fn(result) -> Figure`` draws the check's figure;
      ``None`` draws :func:`loglog_figure`.
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
  sub_claims: tuple[SubClaim, ...] = ()
  details: str = ""
  plot_fn: Callable[["CheckResult"], Any] | None = dataclasses.field(
      default=None, compare=False, repr=False)

  @property
  def not_assessed(self) -> tuple[SubClaim, ...]:
    """The sub-claims this run's budget does not assess."""
    return tuple(c for c in self.sub_claims if not c.assessed)

  @property
  def verdict(self) -> str:
    """``PASS``, ``FAIL``, ``PARTIAL`` or ``NOT ASSESSED``.

    Without sub-claims: ``PASS`` iff the point estimate is within tolerance
    of the claim. With sub-claims: ``FAIL`` if an assessed one fails;
    otherwise ``PARTIAL`` if some are not assessed (``NOT ASSESSED`` if
    none is), else ``PASS`` iff ``measured`` meets the claim.
    """
    if self.sub_claims:
      assessed = [c for c in self.sub_claims if c.assessed]
      if not all(c.holds for c in assessed):
        return FAIL
      if not assessed:
        return NOT_ASSESSED
      if len(assessed) < len(self.sub_claims):
        return PARTIAL
    return PASS if self.claim.passes(self.measured) else FAIL

  @property
  def passed(self) -> bool:
    """Whether the verdict is ``PASS`` (every part assessed and holding)."""
    return self.verdict == PASS

  @property
  def failed(self) -> bool:
    """Whether the verdict is ``FAIL``; what makes a run exit with 1."""
    return self.verdict == FAIL

  @property
  def ci_covers_expected(self) -> bool:
    """Whether the confidence interval contains the expected value."""
    return bool(self.ci[0] <= self.claim.expected <= self.ci[1])

  def plot(self) -> Any:
    """The check's figure, a ``matplotlib.figure.Figure`` (no pyplot)."""
    return (self.plot_fn or loglog_figure)(self)

  def __str__(self) -> str:
    return report(self)

  def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
    """IPython shows the report."""
    printer.text(f"CheckResult({self.claim.name})" if cycle else str(self))


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


def quick_assessment(keys: Sequence[str], quick_assessed: Sequence[str], *,
                     quick: bool) -> tuple[bool, ...]:
  """Which sub-claims a run assesses: all, or a quick run's declared ones.

  Args:
    keys: every sub-claim's key, in order.
    quick_assessed: the keys a quick run can assess (the check's
      ``QUICK_ASSESSED``).
    quick: whether the run is at the quick budget.

  Returns:
    One bool per key.

  Raises:
    ValueError: if ``quick_assessed`` names a key that is not in ``keys``.

  Example:
    >>> quick_assessment(("1", "2", "3"), ("1", "3"), quick=True)
    (True, False, True)
    >>> quick_assessment(("1", "2", "3"), ("1", "3"), quick=False)
    (True, True, True)
  """
  unknown = sorted(set(quick_assessed) - set(keys))
  if unknown:
    raise ValueError(f"quick_assessed names unknown sub-claims {unknown}; "
                     f"keys: {list(keys)}")
  return tuple(not quick or key in quick_assessed for key in keys)


def count_assessed(holds: Sequence[bool], assessed: Sequence[bool]) -> float:
  """The number of assessed sub-claims that hold.

  Example:
    >>> count_assessed([True, False, True], [True, False, True])
    2.0
  """
  return float(sum(bool(h) for h, a in zip(holds, assessed, strict=True)
                   if a))


def full_budget(name: str, description: str) -> str:
  """``assessed_by`` of a sub-claim that only the full run assesses.

  Example:
    >>> full_budget("fall_of_empires", "1,200 steps, 5 seeds")
    'the full budget (1,200 steps, 5 seeds): python -m \
distoptax.theory_checks.fall_of_empires'
  """
  return (f"the full budget ({description}): python -m "
          f"distoptax.theory_checks.{name}")


def sub_claim_line(sub_claim: SubClaim) -> str:
  """One line: verdict, name, measured value, CI, expectation, details.

  Args:
    sub_claim: the sub-claim.

  Returns:
    The line, without a trailing newline.

  Example:
    >>> sub_claim_line(SubClaim("a", "(a) slope", True, value=-1.02,
    ...                         ci=(-1.1, -0.95), expected=-1.0,
    ...                         tolerance=0.15))
    'PASS          (a) slope: -1.02 (95% CI [-1.1, -0.95]), expected -1 ± 0.15'
    >>> sub_claim_line(SubClaim("4", "4. Zeno", False, assessed=False,
    ...                         assessed_by="the full budget", value=0.125,
    ...                         expected="<= 0.05"))
    'NOT ASSESSED  4. Zeno: 0.125, expected <= 0.05; not judged at this \
budget, assessed by the full budget'
  """
  c = sub_claim
  line = f"{c.verdict:<12}  {c.name}"
  if c.value is not None:
    line += f": {c.value:.4g}"
  if c.ci is not None:
    line += f" (95% CI [{c.ci[0]:.4g}, {c.ci[1]:.4g}])"
  if c.expected is not None:
    line += ", expected " + (
        str(c.expected) if c.tolerance is None
        else f"{c.expected:g} ± {c.tolerance:g}")
  if c.measured:
    line += f" [{c.measured}]"
  if c.note:
    line += f"; {c.note}"
  if not c.assessed:
    line += f"; not judged at this budget, assessed by {c.assessed_by}"
  return line


class Progress:
  """Reports a check's sweep points, one line each on stderr.

  Each line names the check, the point's number out of ``total``, what the
  point computes and the seconds since the check started, so that a user
  sees which part of a minutes-long run is under way.
  """

  def __init__(self, name: str, total: int, *, enabled: bool = True):
    """Starts the clock.

    Args:
      name: the check's name.
      total: the number of points :meth:`point` will announce.
      enabled: whether to print (``False``: silent).
    """
    self._name = name
    self._total = total
    self._enabled = enabled
    self._count = 0
    self._start = time.perf_counter()

  def _print(self, text: str) -> None:
    if self._enabled:
      print(text, file=sys.stderr, flush=True)

  def point(self, description: str) -> None:
    """Announces the next sweep point, which starts now."""
    self._count += 1
    self._print(f"{self._name} [{self._count}/{self._total}] {description} "
                f"(at {time.perf_counter() - self._start:.1f} s)")

  def done(self) -> None:
    """Announces the end of the sweep."""
    self._print(f"{self._name}: sweep done in "
                f"{time.perf_counter() - self._start:.1f} s")


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
      "verdict": result.verdict,
      "passed": result.passed,
      "failed": result.failed,
      "measured": result.measured,
      "ci": result.ci,
      "ci_covers_expected": result.ci_covers_expected,
      "claim": dataclasses.asdict(result.claim),
      "sub_claims": [dataclasses.asdict(c) | {"verdict": c.verdict}
                     for c in result.sub_claims],
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


def new_figure(width: float, height: float) -> Any:
  """A bare ``matplotlib`` Figure on an Agg canvas: no pyplot, no backend."""
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(width, height))
  backend_agg.FigureCanvasAgg(fig)
  return fig


def loglog_figure(result: CheckResult) -> Any:
  """Per-seed ``y`` against ``x`` on log-log axes, with the fitted line.

  Args:
    result: the check's outcome.

  Returns:
    A ``matplotlib.figure.Figure``: the min-max band and median over seeds,
    the fit over its window with the theoretical slope beside it, the
    verdict in the title.
  """
  claim, x, y = result.claim, result.x, result.y
  fig = new_figure(6, 4.5)
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
  ax.set_title(f"{claim.name}: {result.verdict}", fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


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
  result.plot().savefig(png_path, dpi=120)
  return json_path, png_path


def _verdict_line(result: CheckResult) -> str:
  verdict = result.verdict
  skipped = result.not_assessed
  if not skipped:
    return verdict
  keys = ", ".join(c.key for c in skipped)
  assessed = len(result.sub_claims) - len(skipped)
  if verdict == FAIL:
    return (f"FAIL (and {len(skipped)} sub-claim(s) not assessed at this "
            f"budget: {keys})")
  return (f"{verdict}: the {assessed} sub-claim(s) assessed at this budget "
          f"hold; {len(skipped)} ({keys}) not assessed at this budget, "
          f"assessed by {skipped[0].assessed_by}")


def report(result: CheckResult) -> str:
  """The readable block: claim, value with CI, tolerance, verdict, tables.

  Also ``str(result)``; ``run_all`` and each check's ``main`` print it.
  """
  claim = result.claim
  deviation = abs(result.measured - claim.expected)
  window = "" if result.fit is None else f", fit window {result.fit.window}"
  lines = [
      f"== {claim.name}: {result.verdict} ==",
      f"claim:     {claim.statement}",
      f"source:    {claim.source}",
      f"measured:  {claim.measured}",
  ]
  skipped = result.not_assessed
  if skipped:
    assessed = len(result.sub_claims) - len(skipped)
    lines += [
        f"value:     {result.measured:.4f}  (95% CI [{result.ci[0]:.4f}, "
        f"{result.ci[1]:.4f}]) of the {assessed} sub-claim(s) assessed at "
        f"this budget",
        f"expected:  {claim.expected:g} ± {claim.tolerance:g}  (every "
        f"sub-claim; {len(skipped)} not assessed at this budget)",
    ]
  else:
    lines += [
        f"value:     {result.measured:.4f}  "
        f"(95% CI [{result.ci[0]:.4f}, {result.ci[1]:.4f}])",
        f"expected:  {claim.expected:g} ± {claim.tolerance:g}  "
        f"(|deviation| = {deviation:.4f})",
        f"CI covers expected: {'yes' if result.ci_covers_expected else 'no'}",
    ]
  lines.append(f"seeds: {result.y.shape[0]}, x: {result.x.tolist()}{window}, "
               f"elapsed: {result.elapsed_s:.1f} s")
  if result.details:
    lines.append(result.details)
  if result.sub_claims:
    lines.append("sub-claims:")
    lines += ["  " + sub_claim_line(c) for c in result.sub_claims]
  lines.append(f"result:    {_verdict_line(result)}")
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
                   argv: Sequence[str] | None = None) -> NoReturn:
  """The ``main()`` of a check module.

  Flags: ``--quick`` (bool), ``--outdir`` (default ``results/<name>``),
  ``--seeds`` (int, optional). Runs ``run_fn(quick=..., seeds=...)`` (its
  progress goes to stderr), writes the JSON and PNG, prints the report
  (``str(result)``) and exits with status 1 if the verdict is FAIL, else 0
  (a sub-claim the budget does not assess is not a failure); 2 on a bad
  command line.

  Args:
    run_fn: the check's run function.
    argv: the command line (``sys.argv`` if ``None``).

  Raises:
    SystemExit: always, with the exit status.
  """
  parsed = parse_flags(argv, "Output folder; default results/<check name>.")
  result = run_fn(quick=parsed.quick, seeds=parsed.seeds)
  outdir = parsed.outdir or os.path.join("results", result.claim.name)
  paths = write_result(result, outdir)
  print(result)
  print("wrote " + ", ".join(paths))
  sys.exit(1 if result.failed else 0)
