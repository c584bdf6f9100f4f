"""Pure math of local and federated updates: proximal terms, server rules.

The synchronisation itself (periodic averaging over the worker axis) lives
in ``distoptax.distributed.local_sgd``; this package holds the per-worker
and server-side math it composes, with no collective and no mesh.
"""

from distoptax.algorithms.local.adaalter import check_denominator
from distoptax.algorithms.local.adaalter import DENOMINATORS
from distoptax.algorithms.local.adaalter import local_adaalter_step
from distoptax.algorithms.local.adaalter import LocalAdaAlterState
from distoptax.algorithms.local.adaalter import sync_accumulators
from distoptax.algorithms.local.adacomm import adacomm_period
from distoptax.algorithms.local.adacomm import check_form
from distoptax.algorithms.local.adacomm import check_periods
from distoptax.algorithms.local.adacomm import choose_initial_period
from distoptax.algorithms.local.adacomm import PERIOD_FORMS
from distoptax.algorithms.local.error_reset import block_sparsifier
from distoptax.algorithms.local.error_reset import check_ratios
from distoptax.algorithms.local.error_reset import overall_ratio
from distoptax.algorithms.local.error_reset import reset_direct
from distoptax.algorithms.local.error_reset import reset_residual
from distoptax.algorithms.local.fedopt import FEDOPT_KINDS
from distoptax.algorithms.local.fedopt import fedopt_server
from distoptax.algorithms.local.fedopt import FedOptServerState
from distoptax.algorithms.local.proximal import check_proximal_mu
from distoptax.algorithms.local.proximal import proximal_gradient
from distoptax.algorithms.local.proximal import proximal_term

__all__ = [
    "DENOMINATORS",
    "FEDOPT_KINDS",
    "LocalAdaAlterState",
    "PERIOD_FORMS",
    "adacomm_period",
    "block_sparsifier",
    "check_denominator",
    "check_form",
    "check_periods",
    "check_ratios",
    "choose_initial_period",
    "FedOptServerState",
    "check_proximal_mu",
    "fedopt_server",
    "local_adaalter_step",
    "overall_ratio",
    "proximal_gradient",
    "proximal_term",
    "reset_direct",
    "reset_residual",
    "sync_accumulators",
]
