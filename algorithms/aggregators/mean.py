"""Arithmetic mean: the non-robust baseline rule."""

import jax

from distoptax.algorithms.aggregators import base
from distoptax.algorithms.aggregators import order_stats


def mean() -> base.AggregationRule:
  r"""Averages the updates of all workers.

  .. math::
    \bar g = \frac{1}{n} \sum_{i=1}^{n} g_i

  Under a participation mask (``present=``) the mean of the rows present.

  Returns:
    An :class:`AggregationRule` with ``is_mean=True``, so
    ``distoptax.distributed.aggregate`` runs it as one all-reduce.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms import aggregators
    >>> rule = aggregators.mean()
    >>> out, _ = rule.update(jnp.array([[1.0, 2.0], [3.0, 6.0]]),
    ...                      rule.init(None, 2))
    >>> out
    Array([2., 4.], dtype=float32)

  Guarantees:
    Unbiased for i.i.d. honest workers, with the variance of one worker's
    update divided by n. Not robust: one Byzantine worker moves the mean
    arbitrarily far.
  """

  return base.stateless_rule(
      lambda stacked: jax.tree.map(base.mean_over_workers, stacked),
      is_mean=True, name="mean",
      masked_fn=lambda stacked, present: jax.tree.map(
          lambda x: order_stats.masked_mean_over_workers(x, present),
          stacked))
