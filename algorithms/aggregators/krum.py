r"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017), as in the paper.

Both score each worker by the sum of its **squared** distances to its
**n - f - 2** nearest other workers and need **n > 2f + 2**. Peers differ on
all three (ByzFL and Garfield use n - f - 1 neighbours, Garfield unsquared
norms, Flower clamps the neighbour count silently; see
``third_party_notes/distance_rules.md``); this module follows the paper.
"""

from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import optax

from distoptax.algorithms.aggregators import base
from distoptax.algorithms.aggregators import coordinatewise
from distoptax.algorithms.aggregators import distances


class KrumState(NamedTuple):
  """State of :func:`krum` and :func:`multi_krum` (diagnostics only).

  Attributes:
    selected: float32 ``[num_workers]``, 1.0 for the workers whose updates
      were selected at the last step (one for Krum, ``m`` for Multi-Krum).
  """

  selected: jax.Array

  @property
  def num_workers(self) -> int:
    """The number of workers ``init`` built this state for."""
    return self.selected.shape[0]


def check_krum_workers(name: str, n: int, f: int) -> None:
  """Raises ``ValueError`` unless ``n > 2f + 2`` (Krum's precondition)."""
  if not n > 2 * f + 2:
    raise ValueError(f"{name} needs n > 2f + 2; got n={n}, f={f}")


def krum_scores(squared_distances: jax.Array, num_byzantine: int,
                nonfinite: jax.Array | None = None,
                present: jax.Array | None = None) -> jax.Array:
  r"""Krum's score of every worker.

  .. math::
    s(i) = \sum_{j \in N_i} \lVert x_i - x_j \rVert^2,

  with :math:`N_i` the :math:`n - f - 2` workers :math:`j \ne i` nearest to
  :math:`x_i`. A row at distance ``+inf`` (non-finite) scores ``+inf``; a
  finite row keeps a finite score while at most ``f`` rows are non-finite.

  Args:
    squared_distances: ``[n, n]`` from
      :func:`distances.pairwise_squared_distances`.
    num_byzantine: ``f``; ``n - f - 2 >= 0`` neighbours are summed (a
      negative count sums nothing).
    nonfinite: optional ``[n]`` bool; those rows score ``+inf`` even when
      no neighbour is summed.
    present: optional ``[n]`` bool participation mask: only the ``m`` rows
      present are neighbours, ``m - f - 2`` of them are summed (``m``
      traced), and absent rows score ``+inf``.

  Returns:
    ``[n]`` scores.
  """
  n = squared_distances.shape[0]
  off = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, squared_distances)
  if present is None:
    k = max(n - num_byzantine - 2, 0)
    scores = jnp.sum(jnp.sort(off, axis=1)[:, :k], axis=1)
  else:
    off = jnp.where(present[None, :], off, jnp.inf)
    k = jnp.sum(present, dtype=jnp.int32) - num_byzantine - 2
    column = lax.broadcasted_iota(jnp.int32, off.shape, 1)
    scores = jnp.sum(jnp.where(column < k, jnp.sort(off, axis=1), 0), axis=1)
    scores = jnp.where(present, scores, jnp.inf)
  if nonfinite is not None:
    scores = jnp.where(nonfinite, jnp.inf, scores)
  return scores


def _masked_inputs(name: str, stacked_updates: optax.Updates,
                   extra_args: dict[str, Any], n: int):
  """``(stack, present)``: absent rows replaced by the first present row.

  Without a mask ``present`` is ``None`` and the stack is unchanged. The
  replaced rows keep the distances between present rows exact (the Gram
  matrix is centred on a row) and are never selected.
  """
  present = extra_args.get(base.MASK_ARG)
  if present is None:
    return stacked_updates, None
  present = base.check_present(name, present, n)
  first = jnp.argmax(present)
  clean = jax.tree.map(
      lambda x: jnp.where(base.present_rows(present, x), x, x[first]),
      stacked_updates)
  return clean, present


def _ranking(scores: jax.Array, present: jax.Array | None) -> jax.Array:
  """Rows by increasing score, present rows first, ties to the lowest index."""
  if present is None:
    return jnp.argsort(scores, stable=True)
  iota = jnp.arange(scores.shape[0], dtype=jnp.int32)
  return lax.sort(((~present).astype(jnp.int32), scores, iota), num_keys=2,
                  is_stable=True)[2]


def krum(num_byzantine: int) -> base.AggregationRule:
  r"""Krum: returns the update of the worker with the lowest Krum score.

  .. math::
    \mathrm{Krum}(x_1, \dots, x_n) = x_{i^\star}, \qquad
    i^\star = \operatorname*{arg\,min}_i \sum_{j \in N_i}
      \lVert x_i - x_j \rVert^2,

  with :math:`N_i` the :math:`n - f - 2` nearest other workers. Ties go to
  the lowest worker index. The output is one of the inputs, bit for bit
  (gathered, not computed). The whole pytree is one vector per worker.
  In the example, workers 2 and 3 tie with score 10 and worker 2 wins.

  Under a participation mask (``present=``) the same over the ``m`` rows
  present (``m - f - 2`` neighbours; ``m > 2f + 2`` is the caller's to
  guarantee, see ``AggregationRule.supports_mask``); absent rows are never
  selected.

  Args:
    num_byzantine: ``f``, the number of Byzantine workers tolerated.

  Returns:
    An :class:`AggregationRule` whose state is a :class:`KrumState`.

  Raises:
    ValueError: at ``init`` or first trace, unless ``n > 2f + 2``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms import aggregators
    >>> rule = aggregators.krum(num_byzantine=2)
    >>> x = jnp.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0],
    ...                [-90.0]])
    >>> out, state = rule.update(x, rule.init(None, 8))
    >>> out
    Array([2.], dtype=float32)
    >>> state.selected
    Array([0., 0., 1., 0., 0., 0., 0., 0.], dtype=float32)

  Guarantees:
    Blanchard et al. (Proposition 1): for ``2f + 2 < n`` and i.i.d. honest
    gradients with variance :math:`\sigma^2`, Krum is
    :math:`(\alpha, f)`-Byzantine resilient when
    :math:`\eta(n, f)\sqrt{d}\,\sigma < \lVert g \rVert`, with
    :math:`\eta^2 = 2\big(n - f + \frac{f(n - f - 2) + f^2(n - f - 1)}
    {n - 2f - 2}\big)`. Cost :math:`O(n^2 d)`.

  References:
    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017
    (arXiv:1703.02757).
  """
  coordinatewise.check_num_byzantine("krum", num_byzantine)
  f = num_byzantine

  def init_fn(params: optax.Params, num_workers: int) -> KrumState:
    del params
    check_krum_workers("krum", num_workers, f)
    return KrumState(selected=jnp.zeros((num_workers,), jnp.float32))

  def update_fn(
      stacked_updates: optax.Updates,
      state: KrumState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, KrumState]:
    del params
    n = base.stack_size(stacked_updates)
    check_krum_workers("krum", n, f)
    base.check_state("krum", state, KrumState, n)
    stacked_updates, present = _masked_inputs("krum", stacked_updates,
                                              extra_args, n)
    info = distances.distance_info(stacked_updates)
    scores = krum_scores(info.squared_distances, f, info.nonfinite, present)
    best = _ranking(scores, present)[0]  # Ties: the lowest index.
    selected = jax.nn.one_hot(best, n, dtype=jnp.float32)
    return distances.take_row(stacked_updates, best), KrumState(selected)

  return base.AggregationRule(init_fn, update_fn, supports_mask=True)


def multi_krum(num_byzantine: int,
               num_selected: int | None = None) -> base.AggregationRule:
  r"""Multi-Krum: averages the ``m`` updates with the lowest Krum scores.

  .. math::
    \mathrm{MultiKrum}_m(x_1, \dots, x_n) = \frac{1}{m} \sum_{i \in S_m} x_i,

  with :math:`S_m` the :math:`m` workers of lowest score
  :math:`\sum_{j \in N_i} \lVert x_i - x_j \rVert^2` (:math:`N_i`: the
  :math:`n - f - 2` nearest other workers), ties to the lowest index.
  ``m = 1`` is Krum; ``m = n`` is the mean.

  Under a participation mask (``present=``) the same over the rows present,
  ``n`` being their (traced) count.

  Args:
    num_byzantine: ``f``.
    num_selected: ``m``; ``None`` (default) selects ``n - f``, as in ByzFL
      (AggregaThor's default is ``n - f - 2``). Robustness needs
      ``m <= n - f``: beyond it a Byzantine update may be averaged in.

  Returns:
    An :class:`AggregationRule` whose state is a :class:`KrumState`.

  Raises:
    ValueError: unless ``n > 2f + 2`` and ``1 <= m <= n``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms import aggregators
    >>> rule = aggregators.multi_krum(num_byzantine=2)
    >>> x = jnp.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0],
    ...                [-90.0]])
    >>> out, state = rule.update(x, rule.init(None, 8))
    >>> out
    Array([2.5], dtype=float32)
    >>> state.selected
    Array([1., 1., 1., 1., 1., 1., 0., 0.], dtype=float32)

  Guarantees:
    Blanchard et al. state Multi-Krum with the same condition as Krum and a
    variance reduced by about ``m``; arXiv:2602.03899 proves it is never
    less robust than Krum.

  References:
    Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017
    (arXiv:1703.02757).
  """
  coordinatewise.check_num_byzantine("multi_krum", num_byzantine)
  f = num_byzantine
  if num_selected is not None and (
      isinstance(num_selected, bool) or not isinstance(num_selected, int)
      or num_selected < 1):
    raise ValueError(
        "multi_krum needs an integer num_selected m >= 1; "
        f"got m={num_selected!r}")

  def resolve(n: int) -> int:
    check_krum_workers("multi_krum", n, f)
    m = n - f if num_selected is None else num_selected
    if m > n:
      raise ValueError(f"multi_krum needs 1 <= m <= n; got m={m}, n={n}, f={f}")
    return m

  def init_fn(params: optax.Params, num_workers: int) -> KrumState:
    del params
    resolve(num_workers)
    return KrumState(selected=jnp.zeros((num_workers,), jnp.float32))

  def update_fn(
      stacked_updates: optax.Updates,
      state: KrumState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, KrumState]:
    del params
    n = base.stack_size(stacked_updates)
    m = resolve(n)
    base.check_state("multi_krum", state, KrumState, n)
    stacked_updates, present = _masked_inputs("multi_krum", stacked_updates,
                                              extra_args, n)
    info = distances.distance_info(stacked_updates)
    scores = krum_scores(info.squared_distances, f, info.nonfinite, present)
    order = _ranking(scores, present)
    if present is not None and num_selected is None:
      m = jnp.sum(present, dtype=jnp.int32) - f
    keep = jnp.arange(n) < m
    selected = jnp.zeros((n,), jnp.float32).at[order].set(
        keep.astype(jnp.float32))
    out = distances.combine_rows(selected / m, stacked_updates, info.nonfinite)
    return out, KrumState(selected)

  return base.AggregationRule(init_fn, update_fn, supports_mask=True)
