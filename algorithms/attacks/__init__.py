"""Attacks: worker-side transforms that replace the Byzantine workers' updates."""

from distoptax.algorithms import registry
from distoptax.algorithms.attacks.base import AttackContext
from distoptax.algorithms.attacks.base import AttackState
from distoptax.algorithms.attacks.base import make_attack
from distoptax.algorithms.attacks.omniscient import a_little_is_enough
from distoptax.algorithms.attacks.omniscient import alie_z
from distoptax.algorithms.attacks.omniscient import inner_product_manipulation
from distoptax.algorithms.attacks.omniscient import mimic
from distoptax.algorithms.attacks.simple import gaussian
from distoptax.algorithms.attacks.simple import non_finite
from distoptax.algorithms.attacks.simple import sign_flip
from distoptax.algorithms.attacks.simple import zero

ATTACKS = registry.Registry("attack", {
    "a_little_is_enough": a_little_is_enough,
    "gaussian": gaussian,
    "inner_product_manipulation": inner_product_manipulation,
    "mimic": mimic,
    "non_finite": non_finite,
    "sign_flip": sign_flip,
    "zero": zero,
})

__all__ = [
    "ATTACKS",
    "AttackContext",
    "AttackState",
    "a_little_is_enough",
    "alie_z",
    "gaussian",
    "inner_product_manipulation",
    "make_attack",
    "mimic",
    "non_finite",
    "sign_flip",
    "zero",
]
