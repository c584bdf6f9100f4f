"""Aggregation rules: functions of the stack ``[num_workers, ...]`` of updates.

Every rule is an :class:`AggregationRule` (``init``, ``update``, ``is_mean``)
to hand to ``distoptax.distributed.aggregate``. ``AGGREGATORS`` maps the
launcher's names to the factories; ``PREAGGREGATORS`` maps the names of the
stack-to-stack maps (NNM, bucketing, clipping) that
:func:`preaggregation.pre_aggregated` puts in front of any rule.
"""

from distoptax.algorithms import registry
from distoptax.algorithms.aggregators import preaggregation
from distoptax.algorithms.aggregators.base import AggregateFn
from distoptax.algorithms.aggregators.base import AggregationRule
from distoptax.algorithms.aggregators.base import mean_over_workers
from distoptax.algorithms.aggregators.base import stack_size
from distoptax.algorithms.aggregators.base import sum_over_workers
from distoptax.algorithms.aggregators.bulyan import bulyan
from distoptax.algorithms.aggregators.bulyan import BulyanState
from distoptax.algorithms.aggregators.byzantine_sgd import byzantine_sgd
from distoptax.algorithms.aggregators.byzantine_sgd import ByzantineSGDState
from distoptax.algorithms.aggregators.clipping import adaptive_robust_clipping
from distoptax.algorithms.aggregators.clipping import centered_clipping
from distoptax.algorithms.aggregators.clipping import CenteredClippingState
from distoptax.algorithms.aggregators.clipping import static_clipping
from distoptax.algorithms.aggregators.coordinatewise import mean_around_median
from distoptax.algorithms.aggregators.coordinatewise import median
from distoptax.algorithms.aggregators.coordinatewise import phocas
from distoptax.algorithms.aggregators.coordinatewise import trimmed_mean
from distoptax.algorithms.aggregators.geometric_median import geometric_median
from distoptax.algorithms.aggregators.geometric_median import GeometricMedianState
from distoptax.algorithms.aggregators.krum import krum
from distoptax.algorithms.aggregators.krum import KrumState
from distoptax.algorithms.aggregators.krum import multi_krum
from distoptax.algorithms.aggregators.majority_vote import majority_vote
from distoptax.algorithms.aggregators.mda import minimum_diameter_averaging
from distoptax.algorithms.aggregators.mda import MinimumDiameterState
from distoptax.algorithms.aggregators.mean import mean
from distoptax.algorithms.aggregators.preaggregation import pre_aggregated
from distoptax.algorithms.aggregators.preaggregation import PreAggregation
from distoptax.algorithms.aggregators.zeno import zeno
from distoptax.algorithms.aggregators.zeno import ZenoState

AGGREGATORS = registry.Registry("aggregator", {
    "adaptive_robust_clipping": adaptive_robust_clipping,
    "bulyan": bulyan,
    "byzantine_sgd": byzantine_sgd,
    "centered_clipping": centered_clipping,
    "geometric_median": geometric_median,
    "krum": krum,
    "majority_vote": majority_vote,
    "mean": mean,
    "mean_around_median": mean_around_median,
    "median": median,
    "minimum_diameter_averaging": minimum_diameter_averaging,
    "multi_krum": multi_krum,
    "phocas": phocas,
    "static_clipping": static_clipping,
    "trimmed_mean": trimmed_mean,
    "zeno": zeno,
})

PREAGGREGATORS = registry.Registry("pre-aggregation", {
    "adaptive_robust_clipping": preaggregation.adaptive_robust_clipping,
    "bucketing": preaggregation.bucketing,
    "nearest_neighbor_mixing": preaggregation.nearest_neighbor_mixing,
    "static_clipping": preaggregation.static_clipping,
})

__all__ = [
    "AGGREGATORS",
    "AggregateFn",
    "AggregationRule",
    "BulyanState",
    "ByzantineSGDState",
    "CenteredClippingState",
    "GeometricMedianState",
    "KrumState",
    "MinimumDiameterState",
    "PREAGGREGATORS",
    "PreAggregation",
    "ZenoState",
    "adaptive_robust_clipping",
    "bulyan",
    "byzantine_sgd",
    "centered_clipping",
    "geometric_median",
    "krum",
    "majority_vote",
    "mean",
    "mean_around_median",
    "mean_over_workers",
    "median",
    "minimum_diameter_averaging",
    "multi_krum",
    "phocas",
    "pre_aggregated",
    "preaggregation",
    "stack_size",
    "static_clipping",
    "sum_over_workers",
    "trimmed_mean",
    "zeno",
]
