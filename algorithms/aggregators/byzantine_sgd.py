"""Byzantine SGD: a stateful filter on martingale statistics of each worker."""

import math
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import optax

from distoptax.algorithms.aggregators import base
from distoptax.algorithms.aggregators import distances
from distoptax.algorithms.aggregators import order_stats


class ByzantineSGDState(NamedTuple):
  """State of :func:`byzantine_sgd`.

  Attributes:
    a: float32 ``[num_workers]``, the paper's scalar
      :math:`A_i = \\sum_{t \\le k} \\langle g_{t,i}, x_t - x_1 \\rangle`.
    b: pytree like the params with a leading ``[num_workers]`` axis (float32
      or wider), the paper's vector :math:`B_i = \\sum_{t \\le k} g_{t,i}`.
    selected: float32 ``[num_workers]``, the good set (1.0 = good). It starts
      all ones and only ever loses workers.
    x1: the params at ``init``, :math:`x_1`.
    count: int32, the number of steps taken.
    no_majority: int32, the number of steps at which no good worker had
      more than ``n / 2`` good workers within the radius (for ``B`` or for
      the current gradients). It stays 0 while the paper's assumptions hold.
  """

  a: jax.Array
  b: optax.Updates
  selected: jax.Array
  x1: optax.Params
  count: jax.Array
  no_majority: jax.Array

  @property
  def num_workers(self) -> int:
    """The number of workers ``init`` built this state for."""
    return self.a.shape[0]


def _check_workers(num_byzantine: int | None, n: int) -> None:
  if n < 1:
    raise ValueError(f"byzantine_sgd needs n >= 1 workers; got n={n}")
  if num_byzantine is not None and not 0 <= 2 * num_byzantine < n:
    raise ValueError(
        "byzantine_sgd needs n > 2f (alpha = f/n < 1/2); got "
        f"n={n}, f={num_byzantine}")


def paper_thresholds(
    variance_bound: float,
    diameter: float | None,
    num_steps: int,
    num_workers: int,
    delta: float,
    *,
    concentration_scale: float = 4.0,
    log_scale: float = 16.0,
) -> tuple[float | None, float]:
  r"""The thresholds :math:`(\mathfrak{T}_A, \mathfrak{T}_B)` of Algorithm 1.

  .. math::
    \mathfrak{T}_A = c\, D V \sqrt{T \log(s\, m T / \delta)}, \qquad
    \mathfrak{T}_B = c\, V \sqrt{T \log(s\, m T / \delta)},

  with :math:`c` = ``concentration_scale`` (4) and :math:`s` = ``log_scale``
  (16). :math:`\mathfrak{T}_A` is ``None`` when ``diameter`` is ``None``.
  """
  log_term = math.log(log_scale * num_workers * num_steps / delta)
  if log_term <= 0:
    raise ValueError(
        "byzantine_sgd thresholds need log(s m T / delta) > 0; got "
        f"s={log_scale}, m={num_workers}, T={num_steps}, delta={delta}")
  root = math.sqrt(num_steps * log_term)
  t_b = concentration_scale * variance_bound * root
  t_a = None if diameter is None else t_b * diameter
  return t_a, t_b


def _flat_rows(leaf: jax.Array, n: int) -> jax.Array:
  return leaf.reshape(n, -1).astype(jnp.promote_types(leaf.dtype, jnp.float32))


def _pairwise_sq_dists(tree: optax.Updates) -> jax.Array:
  """``[n, n]`` squared distances between the rows of a stacked pytree.

  ``distances.distance_info`` (exact zero diagonal, +inf to and from a row
  holding NaN or inf, robust to huge finite rows), except that a non-finite
  row is at +inf from **itself** too: it must not count as its own
  neighbour in the majority test, where a count of 1 could make it the
  fallback centre and remove every worker.
  """
  info = distances.distance_info(tree)
  n = info.nonfinite.shape[0]
  self_inf = jnp.eye(n, dtype=bool) & info.nonfinite[:, None]
  return jnp.where(self_inf, jnp.inf, info.squared_distances)


def _majority_centre(sq: jax.Array, good: jax.Array, radius: float,
                     n: int) -> tuple[jax.Array, jax.Array]:
  """Index of the paper's "median": a good worker with > n/2 good neighbours.

  The lowest such index is returned. If none exists (the assumptions fail),
  the good worker with the most good neighbours (lowest index on ties) is
  returned and ``found`` is False.
  """
  near = (sq <= radius * radius) & good[None, :]
  counts = jnp.sum(near, axis=1)
  counts = jnp.where(good, counts, -1)
  passing = counts * 2 > n
  found = jnp.any(passing)
  centre = jnp.where(found, jnp.argmax(passing), jnp.argmax(counts))
  return centre, found


def byzantine_sgd(
    variance_bound: float,
    *,
    diameter: float | None = None,
    num_steps: int | None = None,
    delta: float = 0.01,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    filter_scale: float = 2.0,
    concentration_scale: float = 4.0,
    log_scale: float = 16.0,
    divide_by_num_workers: bool = False,
    num_byzantine: int | None = None,
) -> base.AggregationRule:
  r"""Filters out, for good, workers whose running statistics drift.

  For every worker :math:`i` the state accumulates, over steps
  :math:`t = 1, \dots, k` at iterates :math:`x_t` (``params``),

  .. math::
    A_i = \sum_{t \le k} \langle g_{t,i}, x_t - x_1 \rangle, \qquad
    B_i = \sum_{t \le k} g_{t,i}.

  Then, with ``good`` the current good set and :math:`m = n` workers:

  * :math:`A_{med}` = the median of :math:`A_1, \dots, A_m`;
  * :math:`B_{med}` = :math:`B_i` of the lowest-index good :math:`i` such
    that more than :math:`m/2` good :math:`j` have
    :math:`\|B_j - B_i\| \le \mathfrak{T}_B`;
  * :math:`g_{med}` = :math:`g_{k,i}` of the lowest-index good :math:`i` such
    that more than :math:`m/2` good :math:`j` have
    :math:`\|g_{k,j} - g_{k,i}\| \le 2V`;
  * a worker stays good iff :math:`|A_i - A_{med}| \le s\,\mathfrak{T}_A`,
    :math:`\|B_i - B_{med}\| \le s\,\mathfrak{T}_B` and
    :math:`\|g_{k,i} - g_{med}\| \le 4V` (:math:`s` = ``filter_scale``);
    a removed worker never comes back;
  * the result is the mean of the current gradients of the new good set
    (the paper divides the sum by :math:`m` instead:
    ``divide_by_num_workers=True``).

  The thresholds default to the paper's (see :func:`paper_thresholds`):
  :math:`\mathfrak{T}_A = 4DV\sqrt{T\log(16mT/\delta)}`,
  :math:`\mathfrak{T}_B = 4V\sqrt{T\log(16mT/\delta)}`, fixed over the run.
  Which constants could be checked against the paper's text is recorded in
  ``third_party_notes/zeno_byzantine_sgd.md``.

  The paper takes a projected step onto the ball
  :math:`\|x - x_1\| \le D`; here the rule returns the direction and the
  projection, if wanted, belongs to the optimizer chain
  (``optax.projections.projection_l2_ball`` around :math:`x_1`).

  Conventions:
    * Ties: the paper takes "any" worker that passes the majority test; this
      rule takes the lowest index. If none passes (the assumptions
      :math:`\alpha < 1/2` and :math:`\|g - \nabla f\| \le V` are violated),
      it takes the good worker with the most good neighbours and counts the
      step in ``state.no_majority``.
    * Even :math:`m`: :math:`A_{med}` is the midpoint of the two middle
      values.
    * Non-finite inputs: a worker that sends a NaN or +-inf entry gets
      non-finite statistics; its distances are +inf (it can be no one's
      neighbour) and its comparisons fail, so it is removed at that step and
      contributes nothing. :math:`A_{med}` maps NaN to +inf, so at most
      :math:`f < m/2` such workers leave it finite.
    * The statistics of removed workers keep accumulating (they still send)
      and still enter :math:`A_{med}`; they are never averaged.
    * If every worker is removed the result is zero.

  Args:
    variance_bound: :math:`V`, the almost-sure bound
      :math:`\|g_{t,i} - \nabla f(x_t)\| \le V` of honest gradients.
    diameter: :math:`D`, a bound on :math:`\|x_t - x_1\|`; needed for the
      default :math:`\mathfrak{T}_A`.
    num_steps: :math:`T`, the horizon used in the default thresholds.
    delta: the failure probability in the default thresholds.
    threshold_a: :math:`\mathfrak{T}_A`; overrides the default.
    threshold_b: :math:`\mathfrak{T}_B`; overrides the default.
    filter_scale: the factor :math:`s` on :math:`\mathfrak{T}_A` and
      :math:`\mathfrak{T}_B` in the filter (2 in the paper, as recalled; the
      epfml implementation uses 1).
    concentration_scale: the constant 4 in the default thresholds.
    log_scale: the constant 16 inside the logarithm.
    divide_by_num_workers: divide the sum of good gradients by :math:`m`
      (paper) rather than by the size of the good set (epfml).
    num_byzantine: optional :math:`f`, only to check :math:`m > 2f`.

  ``variance_bound``, ``diameter``, ``threshold_a``, ``threshold_b`` and
  ``filter_scale`` may be traced values (``optax.inject_hyperparams``);
  ``num_steps``, ``delta`` and the two constants must be Python numbers.

  Returns:
    An :class:`AggregationRule` whose state is a :class:`ByzantineSGDState`.
    ``update`` requires ``params`` (the current :math:`x_t`).

  Raises:
    ValueError: at construction when a default threshold lacks its inputs
      or a constant is out of range; at ``init`` or the first trace when
      ``num_byzantine`` is given and :math:`m \le 2f`; at ``update`` when
      ``params`` is missing.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators.byzantine_sgd import (
    ...     byzantine_sgd)
    >>> rule = byzantine_sgd(1.0, threshold_a=10.0, threshold_b=10.0)
    >>> x = jnp.zeros(2)
    >>> state = rule.init(x, 3)
    >>> stack = jnp.array([[1.0, 0.0], [1.5, 0.0], [9.0, 0.0]])
    >>> out, state = rule.update(stack, state, x)
    >>> out
    Array([1.25, 0.  ], dtype=float32)
    >>> state.selected
    Array([1., 1., 0.], dtype=float32)

  Guarantees:
    (Alistarh, Allen-Zhu and Li 2018, Theorem 1.) For a smooth convex
    objective, gradients bounded as above and an :math:`\alpha < 1/2`
    fraction of Byzantine workers, with probability :math:`1 - \delta` no
    honest worker is ever removed and the projected iterates reach an
    :math:`\varepsilon`-minimiser in
    :math:`T = \tilde O(1/\varepsilon + 1/(\varepsilon^2 m) +
    \alpha^2/\varepsilon^2)` steps; :math:`\tilde O(1/\sigma +
    1/(\sigma\varepsilon m) + \alpha^2/(\sigma\varepsilon))` when
    :math:`\sigma`-strongly convex. Matching lower bounds (Theorem 2) make
    the :math:`\alpha^2/\varepsilon^2` term unavoidable.

  References:
    Alistarh, Allen-Zhu and Li, "Byzantine Stochastic Gradient Descent",
    NeurIPS 2018, arXiv:1803.08917.
  """
  def concrete(value) -> bool:  # Traced values (inject_hyperparams) skip.
    return isinstance(value, (int, float))

  if concrete(variance_bound) and not variance_bound > 0:
    raise ValueError(
        f"byzantine_sgd needs variance_bound V > 0; got {variance_bound}")
  if not 0 < delta < 1:
    raise ValueError(f"byzantine_sgd needs 0 < delta < 1; got {delta}")
  if concrete(filter_scale) and not filter_scale >= 1:
    raise ValueError(
        f"byzantine_sgd needs filter_scale >= 1; got {filter_scale}")
  if (threshold_a is None or threshold_b is None) and num_steps is None:
    raise ValueError(
        "byzantine_sgd needs num_steps (T) for the default thresholds, or "
        "both threshold_a and threshold_b")
  if threshold_a is None and diameter is None:
    raise ValueError(
        "byzantine_sgd needs diameter (D) for the default threshold_a, or "
        "threshold_a itself")
  if num_steps is not None and num_steps < 1:
    raise ValueError(f"byzantine_sgd needs num_steps >= 1; got {num_steps}")
  for name, value in (("threshold_a", threshold_a),
                      ("threshold_b", threshold_b), ("diameter", diameter)):
    if value is not None and concrete(value) and not value > 0:
      raise ValueError(f"byzantine_sgd needs {name} > 0; got {value}")

  def thresholds(n: int) -> tuple[float, float]:
    t_a, t_b = threshold_a, threshold_b
    if t_a is None or t_b is None:
      paper_a, paper_b = paper_thresholds(
          variance_bound, diameter, num_steps, n, delta,
          concentration_scale=concentration_scale, log_scale=log_scale)
      t_a = paper_a if t_a is None else t_a
      t_b = paper_b if t_b is None else t_b
    return t_a, t_b

  def init_fn(params: optax.Params, num_workers: int) -> ByzantineSGDState:
    _check_workers(num_byzantine, num_workers)
    thresholds(num_workers)
    if params is None:
      raise ValueError("byzantine_sgd needs the initial params x_1 at init")
    b = jax.tree.map(
        lambda p: jnp.zeros((num_workers,) + jnp.shape(p),
                            jnp.promote_types(jnp.result_type(p),
                                              jnp.float32)), params)
    return ByzantineSGDState(
        a=jnp.zeros((num_workers,), jnp.float32),
        b=b,
        selected=jnp.ones((num_workers,), jnp.float32),
        x1=jax.tree.map(jnp.asarray, params),
        count=jnp.zeros((), jnp.int32),
        no_majority=jnp.zeros((), jnp.int32))

  def update_fn(
      stacked_updates: optax.Updates,
      state: ByzantineSGDState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, ByzantineSGDState]:
    del extra_args
    n = base.stack_size(stacked_updates)
    _check_workers(num_byzantine, n)
    base.check_state("byzantine_sgd", state, ByzantineSGDState, n)
    base.check_params(
        "byzantine_sgd", params, stacked_updates,
        "byzantine_sgd needs the current params x_t: call "
        "update(updates, state, params)")
    t_a, t_b = thresholds(n)

    # A_i += <g_i, x_t - x_1>, B_i += g_i.
    inner = jnp.zeros((n,), jnp.float32)
    for g, x, x1 in zip(jax.tree.leaves(stacked_updates),
                        jax.tree.leaves(params), jax.tree.leaves(state.x1)):
      travel = (jnp.asarray(x, jnp.float32) -
                jnp.asarray(x1, jnp.float32)).reshape(-1)
      inner = inner + lax.dot_general(
          _flat_rows(g, n), travel, (((1,), (0,)), ((), ())),
          precision=lax.Precision.HIGHEST,
          preferred_element_type=jnp.float32)
    a = state.a + inner
    b = jax.tree.map(lambda acc, g: acc + g.astype(acc.dtype), state.b,
                     stacked_updates)

    good = state.selected > 0
    a_med = order_stats.median_over_workers(a)  # NaN counts as +inf.
    sq_b = _pairwise_sq_dists(b)
    centre_b, found_b = _majority_centre(sq_b, good, t_b, n)
    sq_g = _pairwise_sq_dists(stacked_updates)
    centre_g, found_g = _majority_centre(sq_g, good, 2.0 * variance_bound, n)

    keep_a = jnp.abs(a - a_med) <= filter_scale * t_a
    keep_b = sq_b[centre_b] <= (filter_scale * t_b) ** 2
    keep_g = sq_g[centre_g] <= (4.0 * variance_bound) ** 2
    new_good = good & keep_a & keep_b & keep_g

    num_good = jnp.sum(new_good).astype(jnp.float32)
    denom = float(n) if divide_by_num_workers else jnp.maximum(num_good, 1.0)
    weights = new_good.astype(jnp.float32) / denom
    # Every non-finite row is removed, so flagging all removed rows leaves
    # them out (not weighted by 0: 0 * NaN = NaN).
    aggregated = distances.combine_rows(weights, stacked_updates, ~new_good)
    new_state = ByzantineSGDState(
        a=a, b=b, selected=new_good.astype(jnp.float32), x1=state.x1,
        count=state.count + 1,
        no_majority=state.no_majority + (
            ~(found_b & found_g)).astype(jnp.int32))
    return aggregated, new_state

  return base.AggregationRule(init_fn, update_fn)
