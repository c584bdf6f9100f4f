"""Gradient compressors: ``encode(key, x) -> message`` and ``decode``.

``COMPRESSORS`` maps the launcher's names to the factories. Every message is
a pytree of arrays with static shapes, exactly what the collective moves;
``coded_bits`` gives the length under a paper's entropy or run-length code
where one is defined.
"""

import types

from distoptax.algorithms.compressors import packing
from distoptax.algorithms.compressors import selection
from distoptax.algorithms.compressors.base import Compressor
from distoptax.algorithms.compressors.base import identity
from distoptax.algorithms.compressors.base import leafwise
from distoptax.algorithms.compressors.base import LeafMessage
from distoptax.algorithms.compressors.randomk import random_k
from distoptax.algorithms.compressors.threelc import three_lc
from distoptax.algorithms.compressors.threelc import zero_run_decode
from distoptax.algorithms.compressors.threelc import zero_run_encode
from distoptax.algorithms.compressors.threshold import threshold
from distoptax.algorithms.compressors.topk import global_top_k
from distoptax.algorithms.compressors.topk import top_k
from distoptax.algorithms.compressors.topk import TreeMessage

COMPRESSORS = types.MappingProxyType({
    "global_top_k": global_top_k,
    "identity": identity,
    "random_k": random_k,
    "three_lc": three_lc,
    "threshold": threshold,
    "top_k": top_k,
})

__all__ = [
    "COMPRESSORS",
    "Compressor",
    "LeafMessage",
    "TreeMessage",
    "global_top_k",
    "identity",
    "leafwise",
    "packing",
    "random_k",
    "selection",
    "three_lc",
    "threshold",
    "top_k",
    "zero_run_decode",
    "zero_run_encode",
]
