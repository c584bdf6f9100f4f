"""Pure algorithm math: compressors, aggregation rules, update rules."""

from distoptax.algorithms import aggregators
from distoptax.algorithms import attacks
from distoptax.algorithms import compressors
from distoptax.algorithms import local
from distoptax.algorithms import yellowfin

__all__ = ["aggregators", "attacks", "compressors", "local", "yellowfin"]
