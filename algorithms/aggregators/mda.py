r"""Minimum-diameter averaging (MDA, "Brute" in Garfield/AggregaThor)."""

import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.algorithms.aggregators import base
from distoptax.algorithms.aggregators import coordinatewise
from distoptax.algorithms.aggregators import distances

DEFAULT_MAX_SUBSETS = 100_000
_PAIRS_PER_BATCH = 2**22


class MinimumDiameterState(NamedTuple):
  """State of :func:`minimum_diameter_averaging` (diagnostics only).

  Attributes:
    selected: float32 ``[num_workers]``, 1.0 for the ``n - f`` workers of the
      minimum-diameter subset at the last step.
  """

  selected: jax.Array

  @property
  def num_workers(self) -> int:
    """The number of workers ``init`` built this state for."""
    return self.selected.shape[0]


def _subset_masks(n: int, size: int) -> np.ndarray:
  """All subsets of ``range(n)`` of ``size`` as bool masks, lexicographic."""
  masks = np.zeros((math.comb(n, size), n), bool)
  for row, subset in enumerate(itertools.combinations(range(n), size)):
    masks[row, list(subset)] = True
  return masks


def subset_diameters(squared_distances: jax.Array,
                     masks: jax.Array) -> jax.Array:
  """Largest squared distance within each subset: ``[S]`` for ``[S, n]``."""
  n = squared_distances.shape[0]
  num = masks.shape[0]
  batch = min(num, max(1, _PAIRS_PER_BATCH // (n * n)))
  padded = -(-num // batch) * batch
  masks = jnp.concatenate(
      [masks, jnp.zeros((padded - num, n), bool)], axis=0)

  def one_batch(m):
    inside = m[:, :, None] & m[:, None, :]
    return jnp.max(jnp.where(inside, squared_distances[None], 0), axis=(1, 2))

  out = jax.lax.map(one_batch, masks.reshape(-1, batch, n))
  return out.reshape(-1)[:num]


def minimum_diameter_averaging(
    num_byzantine: int, *, max_subsets: int = DEFAULT_MAX_SUBSETS,
) -> base.AggregationRule:
  r"""Averages the ``n - f`` updates that are closest together.

  .. math::
    S^\star = \operatorname*{arg\,min}_{|S| = n - f}
      \max_{i, j \in S} \lVert x_i - x_j \rVert, \qquad
    \mathrm{MDA}(x_1, \dots, x_n) = \frac{1}{n - f} \sum_{i \in S^\star} x_i.

  The search is exhaustive: all :math:`\binom{n}{f}` subsets are scored
  (:math:`O(\binom{n}{f} n^2)` on top of the :math:`O(n^2 d)` distances), so
  the rule is only for small ``n`` or ``f``; e.g. ``C(20, 5) = 15504`` and
  ``C(32, 4) = 35960`` subsets are fine, ``C(32, 8) ~ 1.05e7`` is refused.
  Ties go to the lexicographically lowest subset (the first in
  ``itertools.combinations`` order). Squared distances are compared (same
  order as distances). A subset holding a non-finite row has infinite
  diameter, so such rows are never averaged in while ``<= f`` of them exist.

  Args:
    num_byzantine: ``f``.
    max_subsets: largest :math:`\binom{n}{f}` accepted (default 100000).

  Returns:
    An :class:`AggregationRule` whose state is a
    :class:`MinimumDiameterState`.

  Raises:
    ValueError: unless ``n > 2f``, and if :math:`\binom{n}{f}` exceeds
      ``max_subsets``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import mda
    >>> rule = mda.minimum_diameter_averaging(num_byzantine=1)
    >>> x = jnp.array([[0.0], [1.0], [2.0], [9.0]])
    >>> out, state = rule.update(x, rule.init(None, 4))
    >>> out, state.selected
    (Array([1.], dtype=float32), Array([1., 1., 1., 0.], dtype=float32))

  Guarantees:
    The diameter of the selected subset is at most that of the honest
    subset (which is one of the candidates), so for ``n > 2f`` every selected
    update lies within the honest diameter of some honest update and the
    output within it of the honest updates. The cited paper turns this into
    :math:`(\alpha, f)`-Byzantine resilience under a bound on the honest
    variance relative to the gradient norm (not re-derived here).

  References:
    El Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "Genuinely Distributed
    Byzantine Machine Learning", PODC 2020 (arXiv:1905.03853); the same rule
    is Garfield's "brute" and ByzFL's ``MDA``.
  """
  f = coordinatewise.check_num_byzantine("minimum_diameter_averaging",
                                         num_byzantine)

  def check(n: int) -> None:
    coordinatewise.check_honest_majority("minimum_diameter_averaging", n, f)
    count = math.comb(n, f)
    if count > max_subsets:
      raise ValueError(
          "minimum_diameter_averaging enumerates C(n, f) subsets, "
          f"C({n}, {f}) = {count} > max_subsets={max_subsets}; got n={n}, "
          f"f={f}")

  def init_fn(params: optax.Params, num_workers: int) -> MinimumDiameterState:
    del params
    check(num_workers)
    return MinimumDiameterState(jnp.zeros((num_workers,), jnp.float32))

  def update_fn(
      stacked_updates: optax.Updates,
      state: MinimumDiameterState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, MinimumDiameterState]:
    del params, extra_args
    n = base.stack_size(stacked_updates)
    check(n)
    base.check_state("minimum_diameter_averaging", state,
                     MinimumDiameterState, n)
    masks = jnp.asarray(_subset_masks(n, n - f))
    info = distances.distance_info(stacked_updates)
    diameters = subset_diameters(info.squared_distances, masks)
    best = jnp.argmin(diameters)  # First occurrence: lexicographic ties.
    selected = masks[best].astype(jnp.float32)
    out = distances.combine_rows(selected / (n - f), stacked_updates,
                                 info.nonfinite)
    return out, MinimumDiameterState(selected)

  return base.AggregationRule(init_fn, update_fn)
