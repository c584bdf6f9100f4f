"""Majority vote: the server side of signSGD."""

import jax
import jax.numpy as jnp

from distoptax.algorithms.aggregators import base


def majority_vote() -> base.AggregationRule:
  r"""The majority of the workers' signs, coordinatewise.

  .. math::
    \hat g = \mathrm{sign}\Big(\sum_{i=1}^{n} \mathrm{sign}(g_i)\Big)

  With the sign compressor (``compressors.sign()``) every :math:`g_i` is a
  vector of :math:`\pm 1` and this is the vote of signSGD: each coordinate
  moves by one step in the direction most workers chose. A tie (possible
  with an even number of workers) gives 0, no step, where GRACE picks +1.
  Fed with real-valued updates, every worker still has one vote per
  coordinate (the sign of its value): a NaN abstains and :math:`\pm\infty`
  votes :math:`\pm 1`, so non-finite inputs never reach the output.

  Returns:
    An :class:`AggregationRule` with ``is_mean=False`` (the stack is
    all-gathered).

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms import aggregators
    >>> rule = aggregators.majority_vote()
    >>> votes = jnp.array([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0],
    ...                    [-1.0, -1.0, 1.0], [1.0, -1.0, -1.0]])
    >>> rule.update(votes, rule.init(None, 4))[0]
    Array([ 1., -1.,  0.], dtype=float32)

  Guarantees:
    For smooth non-convex objectives with unimodal, symmetric gradient
    noise, signSGD with majority vote converges at the rate of
    full-precision distributed SGD, with one bit per coordinate in both
    directions (Bernstein et al. 2018), and tolerates a minority of
    adversarial workers that only flip signs (Bernstein et al. 2019).

  References:
    Bernstein, Wang, Azizzadenesheli, Anandkumar, "signSGD: Compressed
    Optimisation for Non-Convex Problems", ICML 2018, arXiv:1802.04434;
    Bernstein, Zhao, Azizzadenesheli, Anandkumar, "signSGD with Majority
    Vote is Communication Efficient and Fault Tolerant", ICLR 2019,
    arXiv:1810.05291.
  """

  def vote(x):
    votes = jnp.sign(jnp.where(jnp.isnan(x), jnp.zeros((), x.dtype), x))
    return jnp.sign(base.sum_over_workers(votes)).astype(x.dtype)

  return base.stateless_rule(lambda stacked: jax.tree.map(vote, stacked),
                             is_mean=False, name="majority_vote")
