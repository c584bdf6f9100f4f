"""Gradient compressors: ``encode(key, x) -> message`` and ``decode``.

``COMPRESSORS`` maps the launcher's names to the factories. Every message is
a pytree of arrays with static shapes, exactly what the collective moves;
``coded_bits`` gives the length under a paper's entropy or run-length code
where one is defined.
"""

from distoptax.algorithms import registry
from distoptax.algorithms.compressors import packing
from distoptax.algorithms.compressors import selection
from distoptax.algorithms.compressors.base import Compressor
from distoptax.algorithms.compressors.base import identity
from distoptax.algorithms.compressors.base import leafwise
from distoptax.algorithms.compressors.base import LeafMessage
from distoptax.algorithms.compressors.casts import bfloat16
from distoptax.algorithms.compressors.casts import float16
from distoptax.algorithms.compressors.natural import natural
from distoptax.algorithms.compressors.qsgd import qsgd
from distoptax.algorithms.compressors.randomk import random_k
from distoptax.algorithms.compressors.sign import scaled_sign
from distoptax.algorithms.compressors.sign import sign
from distoptax.algorithms.compressors.terngrad import terngrad
from distoptax.algorithms.compressors.threelc import three_lc
from distoptax.algorithms.compressors.threelc import zero_run_decode
from distoptax.algorithms.compressors.threelc import zero_run_encode
from distoptax.algorithms.compressors.threshold import threshold
from distoptax.algorithms.compressors.topk import global_top_k
from distoptax.algorithms.compressors.topk import top_k
from distoptax.algorithms.compressors.topk import TreeMessage
from distoptax.algorithms.compressors.zipml import stochastic_rounding

COMPRESSORS = registry.Registry("compressor", {
    "bfloat16": bfloat16,
    "float16": float16,
    "global_top_k": global_top_k,
    "identity": identity,
    "natural": natural,
    "qsgd": qsgd,
    "random_k": random_k,
    "scaled_sign": scaled_sign,
    "sign": sign,
    "terngrad": terngrad,
    "three_lc": three_lc,
    "threshold": threshold,
    "top_k": top_k,
    "zipml": stochastic_rounding,
})

__all__ = [
    "COMPRESSORS",
    "Compressor",
    "LeafMessage",
    "TreeMessage",
    "bfloat16",
    "float16",
    "global_top_k",
    "identity",
    "leafwise",
    "natural",
    "packing",
    "qsgd",
    "random_k",
    "scaled_sign",
    "selection",
    "sign",
    "stochastic_rounding",
    "terngrad",
    "three_lc",
    "threshold",
    "top_k",
    "zero_run_decode",
    "zero_run_encode",
]
