r"""Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018), with recursive Krum.

Variant implemented: the paper's **iterative** selection. Krum is applied
:math:`\theta = n - 2f` times, each time to the updates not yet selected
(the neighbour count shrinks with the pool: ``r - f - 2`` for a pool of
``r``), and its winner is moved to the selection. Flower's 2025 strategy
instead keeps the :math:`\theta` lowest Krum scores computed once on all
``n`` updates ("one-shot"), which selects a different set in most random
instances (reference card, A6); AggregaThor/Garfield's native kernel uses
:math:`\theta = n - 2f - 2` and averages Multi-Krum at each step. See
``third_party_notes/distance_rules.md``.
"""

from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import optax

from distoptax.algorithms.aggregators import base
from distoptax.algorithms.aggregators import coordinatewise
from distoptax.algorithms.aggregators import distances
from distoptax.algorithms.aggregators import order_stats


class BulyanState(NamedTuple):
  """State of :func:`bulyan` (diagnostics only).

  Attributes:
    selected: float32 ``[num_workers]``, 1.0 for the :math:`\\theta = n - 2f`
      workers selected by the recursive Krum stage at the last step.
  """

  selected: jax.Array

  @property
  def num_workers(self) -> int:
    """The number of workers ``init`` built this state for."""
    return self.selected.shape[0]


def check_bulyan_workers(n: int, f: int) -> None:
  """Raises ``ValueError`` unless ``n >= 4f + 3``."""
  if not n >= 4 * f + 3:
    raise ValueError(f"bulyan needs n >= 4f + 3; got n={n}, f={f}")


def recursive_krum_selection(squared_distances: jax.Array,
                             nonfinite: jax.Array,
                             num_byzantine: int,
                             num_selected: int) -> jax.Array:
  r"""Indices chosen by Krum applied recursively, in selection order.

  Round ``t`` (``t = 0, 1, ...``) scores each of the ``r = n - t`` updates
  still in the pool by the sum of its squared distances to its
  ``r - f - 2`` nearest others **in the pool** (none when that count is
  not positive), picks the lowest score (ties: lowest index; non-finite
  rows score ``+inf`` and are picked only when nothing else is left) and
  removes it from the pool.

  Args:
    squared_distances: ``[n, n]``.
    nonfinite: ``[n]`` bool.
    num_byzantine: ``f``.
    num_selected: number of rounds :math:`\theta`.

  Returns:
    int32 ``[num_selected]``.
  """
  n = squared_distances.shape[0]
  f = num_byzantine
  eye = jnp.eye(n, dtype=bool)
  columns = jnp.arange(n)

  def body(t, carry):
    pool, order = carry
    k = n - t - f - 2
    off = jnp.where(eye | ~pool[None, :], jnp.inf, squared_distances)
    nearest = jnp.sort(off, axis=1)
    scores = jnp.sum(jnp.where(columns[None, :] < k, nearest, 0), axis=1)
    scores = jnp.where(nonfinite | ~pool, jnp.inf, scores)
    best = jnp.argmin(scores)
    # All remaining scores infinite: the lowest index still in the pool.
    best = jnp.where(jnp.isinf(scores[best]), jnp.argmax(pool), best)
    return pool.at[best].set(False), order.at[t].set(best)

  _, order = lax.fori_loop(
      0, num_selected, body,
      (jnp.ones((n,), bool), jnp.zeros((num_selected,), jnp.int32)))
  return order


def coordinatewise_stage(stacked_updates: optax.Updates, selected: jax.Array,
                         num_byzantine: int) -> optax.Updates:
  r"""Bulyan's second stage: MeaMed with ``drop = 2f`` over the selection.

  Per leaf and coordinate, the mean of the :math:`\theta - 2f` values of
  the selected workers closest to their median, ties to the lowest worker
  index. The selected rows are read in place (no gathered copy of the
  :math:`\theta` rows).

  Args:
    stacked_updates: pytree with leaves ``[n, ...]``.
    selected: int ``[theta]`` indices of the selected workers, in any order.
    num_byzantine: ``f``; needs ``theta > 2f``.

  Returns:
    Pytree with the leaves' shapes without the worker axis.
  """
  # The selected rows in worker order, so that ties go to the lowest index.
  rows = jnp.sort(selected)
  return jax.tree.map(
      lambda leaf: order_stats.mean_around_median_over_workers(
          leaf, 2 * num_byzantine, rows=rows), stacked_updates)


def bulyan(num_byzantine: int) -> base.AggregationRule:
  r"""Bulyan over Krum, with the paper's recursive selection.

  1. Selection: :math:`\theta = n - 2f` rounds of Krum on the shrinking
     pool (:func:`recursive_krum_selection`), giving the set :math:`S`.
  2. Per coordinate :math:`k`, the mean of the :math:`\beta = \theta - 2f`
     values of :math:`\{x_{i,k}\}_{i \in S}` closest to their median
     (midpoint of the two middle values for even :math:`\theta`), ties at
     the cut-off distance to the lowest worker index
     (``order_stats.mean_around_median_over_workers`` on the selected rows
     in worker order, with ``drop = 2f``).

  .. math::
    \mathrm{Bulyan}(x)_k = \frac{1}{\beta} \sum_{i \in M_k} x_{i,k},
    \quad M_k = \text{the } \beta \text{ indices of } S \text{ closest to }
    \mathrm{med}_{i \in S}\, x_{i,k}.

  Stage 1 treats the whole pytree as one vector per worker; stage 2 is
  leaf by leaf. With ``f = 0`` Bulyan is the mean. A non-finite update is
  never selected while finite ones remain, and NaN counts as ``+inf`` in
  stage 2, so at most ``f`` non-finite updates never reach the output.

  Ties: the last rounds sum few neighbours (``f - 1`` in the last one:
  none for ``f = 1``, one for ``f = 2``), where scores tie exactly (no
  neighbour: all zero; one neighbour: two mutual nearest neighbours, as
  :math:`d_{ij} = d_{ji}`); the lowest index wins, so the rule is
  permutation invariant only up to those ties. For the same reason
  identical colluding vectors (at distance 0) can be selected in those
  rounds; there are at most ``f`` of them among the :math:`\theta`
  selected, and stage 2 drops ``2f`` values per coordinate.

  Args:
    num_byzantine: ``f``.

  Returns:
    An :class:`AggregationRule` whose state is a :class:`BulyanState`.

  Raises:
    ValueError: at ``init`` or first trace, unless ``n >= 4f + 3``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms import aggregators
    >>> rule = aggregators.bulyan(num_byzantine=1)
    >>> x = jnp.array([[0.0, 9.0], [1.0, 8.0], [2.0, 7.0], [3.0, 6.0],
    ...                [4.0, 5.0], [5.0, 4.0], [100.0, -100.0]])
    >>> out, state = rule.update(x, rule.init(None, 7))
    >>> out
    Array([2., 7.], dtype=float32)
    >>> state.selected
    Array([1., 1., 1., 1., 1., 0., 0.], dtype=float32)

  Guarantees:
    El Mhamdi et al.: for ``n >= 4f + 3``, Bulyan over a Byzantine-resilient
    rule (here Krum) is Byzantine resilient and reduces the attacker's
    leeway from :math:`\Omega(\sqrt{d})` (Krum and other
    :math:`\ell_2`-based rules) to :math:`O(1/\sqrt{d})`. Note that the last
    two rounds run Krum on pools of ``2f + 2`` and ``2f + 1`` updates, below
    Krum's own ``n > 2f + 2``, exactly as the recursion prescribes; the
    coordinate-wise stage is what carries the guarantee there. Cost:
    :math:`O(n^2 d)` distances, :math:`O(\theta n^2 \log n)` selection, then
    the coordinate-wise stage on :math:`\theta` rows.

  References:
    El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed
    Learning in Byzantium", ICML 2018 (arXiv:1802.07927).
  """
  coordinatewise.check_num_byzantine("bulyan", num_byzantine)
  f = num_byzantine

  def init_fn(params: optax.Params, num_workers: int) -> BulyanState:
    del params
    check_bulyan_workers(num_workers, f)
    return BulyanState(jnp.zeros((num_workers,), jnp.float32))

  def update_fn(
      stacked_updates: optax.Updates,
      state: BulyanState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, BulyanState]:
    del params, extra_args
    n = base.stack_size(stacked_updates)
    check_bulyan_workers(n, f)
    base.check_state("bulyan", state, BulyanState, n)
    theta = n - 2 * f
    info = distances.distance_info(stacked_updates)
    order = recursive_krum_selection(info.squared_distances, info.nonfinite,
                                     f, theta)
    selected = jnp.zeros((n,), jnp.float32).at[order].set(1.0)
    out = coordinatewise_stage(stacked_updates, order, f)
    return out, BulyanState(selected)

  return base.AggregationRule(init_fn, update_fn)
