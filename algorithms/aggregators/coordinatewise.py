r"""Coordinate-wise robust rules: median, trimmed mean, MeaMed and Phocas.

Every rule here works leaf by leaf and coordinate by coordinate on the stack
``[n, ...]`` of worker updates, through the order statistics of
:mod:`~distoptax.algorithms.aggregators.order_stats` (unrolled min/max
networks for ``n <= 64``). Conventions, pinned by tests:

* even ``n``: the median is the midpoint of the two middle values (numpy,
  ByzFL, epfml; ``torch.median`` and Garfield take the lower one);
* ties at the cut-off distance of MeaMed and Phocas go to the lowest worker
  index (a stable sort by distance);
* NaN is mapped to ``+inf`` before ordering; ``+inf`` and ``-inf`` are
  ordered and trimmed like any other extreme value, so at most ``f``
  non-finite inputs never reach the output.

``f`` (``num_byzantine``) is a count of workers, not a fraction (Flower's and
FedML's trimmed means take a fraction per side). Each rule checks
``n > 2f`` when the state is created (``init`` receives ``num_workers``) and
again when the update is traced, and raises ``ValueError`` naming ``n`` and
``f``.
"""

import numbers
from typing import Any, Callable

import jax

from distoptax.algorithms.aggregators import base
from distoptax.algorithms.aggregators import order_stats


def check_num_byzantine(name: str, num_byzantine: Any) -> int:
  """Returns ``num_byzantine`` if it is an integer >= 0, else raises.

  Raises:
    ValueError: for a negative, boolean or non-integral value.
  """
  if (isinstance(num_byzantine, bool)
      or not isinstance(num_byzantine, numbers.Integral)
      or num_byzantine < 0):
    raise ValueError(f"{name} needs an integer num_byzantine f >= 0; "
                     f"got f={num_byzantine!r}")
  return int(num_byzantine)


def check_honest_majority(name: str, n: int, f: int) -> None:
  """Raises ``ValueError`` unless ``n > 2f``."""
  if not n > 2 * f:
    raise ValueError(f"{name} needs n > 2f; got n={n}, f={f}")


def _coordinatewise_rule(
    name: str, f: int | None,
    leaf_fn: Callable[[jax.Array], jax.Array],
    masked_leaf_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> base.AggregationRule:
  """A stateless rule applying ``leaf_fn`` to every leaf of the stack.

  With ``masked_leaf_fn(leaf, present)`` the rule also aggregates under a
  participation mask (``present=``), over the rows present only.
  """

  def check(n: int) -> None:
    if n < 1:
      raise ValueError(f"{name} needs n >= 1 workers; got n={n}")
    if f is not None:
      check_honest_majority(name, n, f)

  masked_fn = None
  if masked_leaf_fn is not None:
    masked_fn = lambda stacked, present: jax.tree.map(
        lambda x: masked_leaf_fn(x, present), stacked)
  return base.stateless_rule(lambda stacked: jax.tree.map(leaf_fn, stacked),
                             check_workers=check, name=name,
                             masked_fn=masked_fn)


def median(num_byzantine: int | None = None) -> base.AggregationRule:
  r"""Coordinate-wise (marginal) median.

  .. math::
    \mathrm{Med}(x_1, \dots, x_n)_k = \mathrm{median}(x_{1,k}, \dots, x_{n,k})

  For even ``n`` the midpoint of the two middle values. NaN counts as
  ``+inf``. Under a participation mask (``present=``) the median of the rows
  present. The rule has no parameter; ``num_byzantine``, when given, is only
  checked against ``n > 2f`` (the median's breakdown point is 1/2).

  References:
    Yin, Chen, Ramchandran and Bartlett, *Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates*, ICML 2018
    (arXiv:1803.01498). Xie, Koyejo and Gupta, *Generalized
    Byzantine-tolerant SGD*, 2018 (arXiv:1802.10116), "marginal median".

  Args:
    num_byzantine: optional ``f`` to validate against the number of workers.

  Returns:
    A stateless :class:`AggregationRule`.

  Raises:
    ValueError: if ``num_byzantine`` is not an integer >= 0, or (at ``init``
      or trace) if ``n <= 2f``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import coordinatewise
    >>> rule = coordinatewise.median()
    >>> stack = jnp.array([[1.0, -2.0], [3.0, 50.0], [2.0, jnp.nan],
    ...                    [9.0, 0.0]])
    >>> out, _ = rule.update(stack, rule.init(None, 4))
    >>> out  # even n: midpoint of the two middle values
    Array([ 2.5, 25. ], dtype=float32)

  Guarantees:
    Each coordinate stays within the range of the honest values while fewer
    than half of the values are Byzantine. Yin et al. prove the order-optimal
    rate :math:`\tilde O(\alpha / \sqrt{m} + 1/\sqrt{nm})` (``m`` samples
    per worker, :math:`\alpha = f/n`) for strongly convex losses under
    bounded skewness of the gradients; per coordinate, so the
    :math:`\ell_2` error carries a dimension factor.
  """
  f = None if num_byzantine is None else check_num_byzantine(
      "median", num_byzantine)
  return _coordinatewise_rule("median", f, order_stats.median_over_workers,
                              order_stats.masked_median_over_workers)


def trimmed_mean(num_byzantine: int) -> base.AggregationRule:
  r"""Coordinate-wise trimmed mean: drops the ``f`` largest and ``f`` smallest.

  .. math::
    \mathrm{TrMean}_f(x_1, \dots, x_n)_k = \frac{1}{n - 2f}
      \sum_{j = f + 1}^{n - f} x_{(j), k}

  where :math:`x_{(1),k} \le \dots \le x_{(n),k}` sorts coordinate ``k``.
  With ``f = 0`` it is the mean. NaN counts as ``+inf``. Under a
  participation mask (``present=``) ``n`` is the number of rows present.

  References:
    Yin, Chen, Ramchandran and Bartlett, ICML 2018 (arXiv:1803.01498),
    with the trimmed fraction :math:`\beta = f/n`.

  Args:
    num_byzantine: ``f``, the number of values removed from each end of
      every coordinate (a count, not a fraction); needs ``n > 2f``.

  Returns:
    A stateless :class:`AggregationRule`.

  Raises:
    ValueError: if ``num_byzantine`` is not an integer >= 0, or (at ``init``
      or trace) if ``n <= 2f``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import coordinatewise
    >>> rule = coordinatewise.trimmed_mean(num_byzantine=1)
    >>> stack = jnp.array([[1.0], [2.0], [3.0], [1e30], [4.0]])
    >>> rule.update(stack, rule.init(None, 5))[0]
    Array([3.], dtype=float32)

  Guarantees:
    Each coordinate stays within the range of the honest values when at
    most ``f`` values are Byzantine. Yin et al. prove the order-optimal
    rate for :math:`\beta \ge \alpha` under sub-exponential gradients.
  """
  f = check_num_byzantine("trimmed_mean", num_byzantine)
  return _coordinatewise_rule(
      "trimmed_mean", f,
      lambda x: order_stats.trimmed_mean_over_workers(x, f),
      lambda x, present: order_stats.masked_trimmed_mean_over_workers(
          x, present, f))


def mean_around_median(num_byzantine: int) -> base.AggregationRule:
  r"""MeaMed: per coordinate, mean of the n - f values nearest the median.

  .. math::
    \mathrm{MeaMed}_f(x)_k = \frac{1}{n - f} \sum_{i \in S_k} x_{i,k},
    \qquad S_k = \operatorname*{arg\,min}_{|S| = n - f}
      \sum_{i \in S} |x_{i,k} - \mathrm{med}_k|

  with :math:`\mathrm{med}_k` the coordinate-wise median (midpoint for
  even ``n``). Values at the same distance from the median are taken by
  the lowest worker index (the first ``n - f`` of a stable sort by
  distance); this only matters when values on both sides of the median tie
  at the cut-off. With ``f = 0`` it is the mean. NaN counts as ``+inf``.

  References:
    Xie, Koyejo and Gupta, *Generalized Byzantine-tolerant SGD*, 2018
    (arXiv:1802.10116).

  Args:
    num_byzantine: ``f``, the number of values left out per coordinate;
      needs ``n > 2f``.

  Returns:
    A stateless :class:`AggregationRule`.

  Raises:
    ValueError: if ``num_byzantine`` is not an integer >= 0, or (at ``init``
      or trace) if ``n <= 2f``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import coordinatewise
    >>> rule = coordinatewise.mean_around_median(num_byzantine=1)
    >>> stack = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    >>> rule.update(stack, rule.init(None, 3))[0]  # 1 and 7 tie: worker 0
    Array([2.5, 3.5, 4.5], dtype=float32)

  Guarantees:
    Xie et al. prove dimensional Byzantine resilience (each coordinate may
    be corrupted by a different set of at most ``f < n/2`` workers). The
    output is *not* confined to the range of the honest values: with at
    most ``f`` Byzantine values it lies within distance ``D`` of the
    median, ``D`` the largest distance from the median to an honest value
    (e.g. honest ``{0, 10, 10}`` and a Byzantine ``10.5`` with ``f = 1``
    give ``10.1667``).
  """
  f = check_num_byzantine("mean_around_median", num_byzantine)
  return _coordinatewise_rule(
      "mean_around_median", f,
      lambda x: order_stats.mean_around_median_over_workers(x, f))


def phocas(num_byzantine: int) -> base.AggregationRule:
  r"""Phocas: per coordinate, mean of the n - f values nearest the trimmed mean.

  .. math::
    \mathrm{Phocas}_f(x)_k = \frac{1}{n - f} \sum_{i \in S_k} x_{i,k},
    \qquad S_k = \operatorname*{arg\,min}_{|S| = n - f}
      \sum_{i \in S} |x_{i,k} - \mathrm{TrMean}_f(x)_k|

  with :func:`trimmed_mean`'s centre and the same ``f``. Ties at the cut-off
  distance go to the lowest worker index. With ``f = 0`` it is the mean.
  NaN counts as ``+inf``. Some peer code calls a vector-wise filter (drop
  the ``f`` workers farthest from the trimmed mean in :math:`\ell_2`)
  "Phocas"; the paper's rule, implemented here, is coordinate-wise.

  References:
    Xie, Koyejo and Gupta, *Phocas: dimensional Byzantine-resilient
    stochastic gradient descent*, 2018 (arXiv:1805.09682).

  Args:
    num_byzantine: ``f``, values trimmed per side for the centre and left
      out of the mean; needs ``n > 2f``.

  Returns:
    A stateless :class:`AggregationRule`.

  Raises:
    ValueError: if ``num_byzantine`` is not an integer >= 0, or (at ``init``
      or trace) if ``n <= 2f``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import coordinatewise
    >>> rule = coordinatewise.phocas(num_byzantine=1)
    >>> stack = jnp.array([[0.0], [10.0], [10.0], [10.5]])
    >>> rule.update(stack, rule.init(None, 4))[0]  # centre 10: keeps 10.5
    Array([10.166667], dtype=float32)

  Guarantees:
    Dimensional Byzantine resilience for ``f < n/2`` (Xie et al.). Like
    MeaMed, the output may leave the range of the honest values: with at
    most ``f`` Byzantine values it lies within distance ``D`` of the
    trimmed mean, ``D`` the largest distance from it to an honest value.
  """
  f = check_num_byzantine("phocas", num_byzantine)
  return _coordinatewise_rule(
      "phocas", f, lambda x: order_stats.phocas_over_workers(x, f))
