"""The worker axis: collectives over it and which state is replicated along it.

The bottom of distoptax: imports nothing else from the package, so that
``algorithms`` (attacks gather the honest updates) and ``distributed`` (the
runtimes) both build on it.
"""

from distoptax.worker_axis.collectives import all_gather
from distoptax.worker_axis.collectives import local_axis_name
from distoptax.worker_axis.collectives import NORMALIZERS
from distoptax.worker_axis.collectives import num_workers
from distoptax.worker_axis.collectives import pmean
from distoptax.worker_axis.collectives import psum
from distoptax.worker_axis.collectives import reduce_scatter
from distoptax.worker_axis.collectives import sum_over_workers
from distoptax.worker_axis.collectives import tier_all_gather
from distoptax.worker_axis.collectives import tier_axis_name
from distoptax.worker_axis.collectives import tier_psum
from distoptax.worker_axis.collectives import Tiers
from distoptax.worker_axis.collectives import worker_axes
from distoptax.worker_axis.collectives import worker_index
from distoptax.worker_axis.collectives import WORKERS
from distoptax.worker_axis.keys import transform_key
from distoptax.worker_axis.replication import declared_replicated
from distoptax.worker_axis.replication import replicated
from distoptax.worker_axis.replication import replicated_fields
from distoptax.worker_axis.replication import ReplicatedState
from distoptax.worker_axis.replication import replication_mask
from distoptax.worker_axis.replication import worker_axes_tree

__all__ = [
    "NORMALIZERS",
    "ReplicatedState",
    "Tiers",
    "WORKERS",
    "all_gather",
    "declared_replicated",
    "local_axis_name",
    "num_workers",
    "pmean",
    "psum",
    "reduce_scatter",
    "replicated",
    "replicated_fields",
    "replication_mask",
    "sum_over_workers",
    "tier_all_gather",
    "tier_axis_name",
    "tier_psum",
    "transform_key",
    "worker_axes",
    "worker_axes_tree",
    "worker_index",
]
