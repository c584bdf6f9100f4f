"""Runs every registered theory check and prints a summary table.

Usage: ``python -m distoptax.theory_checks.run_all [--quick] [--outdir DIR]
[--seeds N]``. Each check writes its JSON and PNG to ``<outdir>/<name>``
(default ``results/<name>``) and prints its report; progress (which check,
which point of its sweep) goes to stderr. A sub-claim that the budget cannot
assess (``--quick`` runs declare theirs in each check's ``QUICK_ASSESSED``)
is reported as not assessed, with the budget that assesses it, and is not a
failure. Exits with status 1 if any check's verdict is FAIL, else 0.
"""

import os
import sys
import time
from typing import Mapping, NoReturn, Sequence

from distoptax.theory_checks import harness


def summary_table(results: Sequence[harness.CheckResult]) -> str:
  """One line per check (value, CI, expected, seconds, verdict), then notes.

  A check with sub-claims not assessed at its budget gets a note under the
  table naming them and the budget that assesses them.

  Args:
    results: the checks' results.

  Returns:
    The table as text.
  """
  header = (f"{'check':<24} {'measured':>9} {'95% CI':>21} "
            f"{'expected':>15} {'seconds':>8}  result")
  lines = [header, "-" * len(header)]
  notes = []
  for r in results:
    ci = f"[{r.ci[0]:.3f}, {r.ci[1]:.3f}]"
    expected = f"{r.claim.expected:g} ± {r.claim.tolerance:g}"
    skipped = r.not_assessed
    verdict = r.verdict
    if skipped:
      assessed = len(r.sub_claims) - len(skipped)
      verdict += f" ({assessed} of {len(r.sub_claims)} assessed)"
      keys = ", ".join(c.key for c in skipped)
      notes.append(f"{r.claim.name}: sub-claim(s) {keys} not assessed at "
                   f"this budget; assessed by {skipped[0].assessed_by}")
    lines.append(
        f"{r.claim.name:<24} {r.measured:>9.3f} {ci:>21} {expected:>15} "
        f"{r.elapsed_s:>8.1f}  {verdict}")
  return "\n".join(lines + notes)


def main(argv: Sequence[str] | None = None,
         checks: Mapping[str, harness.RunFn] | None = None) -> NoReturn:
  """Runs ``checks`` (default: the registry ``CHECKS``) and exits.

  Args:
    argv: the command line (``sys.argv`` if ``None``).
    checks: name -> run function; defaults to ``theory_checks.CHECKS``.

  Raises:
    SystemExit: status 1 if any check's verdict is FAIL, else 0.
  """
  if checks is None:
    from distoptax.theory_checks import CHECKS  # pylint: disable=g-import-not-at-top
    checks = CHECKS
  parsed = harness.parse_flags(
      argv, "Output root; each check writes to <outdir>/<name>. "
      "Default: results.")
  root = parsed.outdir or "results"
  budget = "quick" if parsed.quick else "full"
  start = time.perf_counter()
  results = []
  for i, (name, run_fn) in enumerate(checks.items(), 1):
    print(f"run_all [{i}/{len(checks)}] {name} ({budget} budget, at "
          f"{time.perf_counter() - start:.1f} s)", file=sys.stderr,
          flush=True)
    result = run_fn(quick=parsed.quick, seeds=parsed.seeds)
    harness.write_result(result, os.path.join(root, name))
    print(result, end="\n\n", flush=True)
    results.append(result)
  print(summary_table(results))
  failed = [r.claim.name for r in results if r.failed]
  print(f"{len(results)} checks, {len(failed)} failed"
        + (f": {', '.join(failed)}" if failed else "")
        + f"; {time.perf_counter() - start:.0f} s")
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
