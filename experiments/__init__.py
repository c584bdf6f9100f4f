"""Experiment launchers, datasets, models, metrics and plots.

The launchers (``train``, ``plot``, ``bench``) are run as modules
(``python -m distoptax.experiments.train``); this package exports the library
parts they are built from. ``TrainConfig`` defines every option of ``train``
once; ``configs`` holds the shipped configurations.
"""

from distoptax.experiments import checkpoint
from distoptax.experiments import configs
from distoptax.experiments import curves
from distoptax.experiments import datasets
from distoptax.experiments import metrics_io
from distoptax.experiments import models
from distoptax.experiments import partition
from distoptax.experiments import registries
from distoptax.experiments import trainer
from distoptax.experiments.config import TrainConfig

__all__ = [
    "TrainConfig",
    "checkpoint",
    "configs",
    "curves",
    "datasets",
    "metrics_io",
    "models",
    "partition",
    "registries",
    "trainer",
]
