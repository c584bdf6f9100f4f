"""Theory checks: each stated convergence claim as a measurable, fitted test.

Every check module exposes ``run(*, quick=False, seeds=None, progress=True)
-> CheckResult`` and a ``main()`` (``python -m
distoptax.theory_checks.<name> [--quick] [--outdir DIR] [--seeds N]``), and
declares in ``QUICK_ASSESSED`` which of its sub-claims (``SUB_CLAIM_KEYS``)
the quick budget assesses. A result prints as its report (claim, source,
value with its CI, tolerance, verdict, tables) and ``result.plot()`` returns
its figure. :data:`CHECKS` maps each registered check's name to its ``run``
for ``python -m distoptax.theory_checks.run_all``. The notebooks in
``theory_checks/notebooks/`` run the quick checks family by family.

The check modules are imported when ``CHECKS`` is first read, not with the
package, so that ``python -m`` on a check module does not import it twice.
"""

import importlib
import types
from typing import Any

from distoptax.theory_checks import fit
from distoptax.theory_checks import harness
from distoptax.theory_checks.fit import loglog_slope
from distoptax.theory_checks.fit import semilog_rate
from distoptax.theory_checks.fit import SlopeFit
from distoptax.theory_checks.harness import CheckResult
from distoptax.theory_checks.harness import Claim
from distoptax.theory_checks.harness import Progress
from distoptax.theory_checks.harness import report
from distoptax.theory_checks.harness import run_check_main
from distoptax.theory_checks.harness import slope_result
from distoptax.theory_checks.harness import SubClaim
from distoptax.theory_checks.harness import write_result

_CHECK_MODULES = (
    "minibatch_sgd",
    "byzantine_sgd_rate",
    "fall_of_empires",
    "qsgd_variance",
    "topk_error_feedback",
    "threelc_mnist",
    "local_sgd_error_floor",
    "adacomm_wall_clock",
    "local_adaalter_mnist",
    "slsgd_attack",
    "blueconnect_scaling",
    "cser_mnist",
    "eager_sgd_imbalance",
    "unreliable_networks",
    "fedasync_staleness",
    "price_of_asynchrony",
)
"""The registry: each check's name is its module's name in this package."""


def __getattr__(name: str) -> Any:
  if name == "CHECKS":
    return types.MappingProxyType({
        module: importlib.import_module(f"{__name__}.{module}").run
        for module in _CHECK_MODULES})
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHECKS",
    "CheckResult",
    "Claim",
    "Progress",
    "SlopeFit",
    "SubClaim",
    "fit",
    "harness",
    "loglog_slope",
    "report",
    "run_check_main",
    "semilog_rate",
    "slope_result",
    "write_result",
]
