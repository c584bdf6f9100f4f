r"""Clipping rules: centered clipping, static clipping and ARC.

Norms are those of each worker's whole update (all leaves flattened into one
vector). Non-finite policy: a worker whose update holds a NaN or an infinity
has no usable direction and is clipped to **zero** (its clip factor is 0 and
its entries are never multiplied, so ``0 * inf`` never appears). A norm is
computed without overflow (rescaled by the largest entry when the squared
norm would overflow float32).

The stack -> stack functions (:func:`clip_to_norm`,
:func:`adaptive_robust_clip`) are the pre-aggregations used by
``preaggregation.static_clipping`` and
``preaggregation.adaptive_robust_clipping``; :func:`static_clipping` and
:func:`adaptive_robust_clipping` here are the same clipping followed by the
mean, as aggregation rules.
"""

import numbers
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import optax

from distoptax.algorithms.aggregators import base
from distoptax.algorithms.aggregators import coordinatewise
from distoptax.algorithms.aggregators import distances


def _rows(leaf: jax.Array) -> jax.Array:
  acc = jnp.promote_types(leaf.dtype, jnp.float32)
  return jnp.reshape(leaf, (leaf.shape[0], -1)).astype(acc)


def worker_norms(stacked_tree: optax.Updates,
                 centre: optax.Updates | None = None) -> jax.Array:
  r"""``[n]`` Euclidean norms :math:`\lVert x_i - c \rVert` of whole updates.

  Rows holding NaN or infinities get ``+inf``. When a squared norm
  overflows float32, all norms are recomputed scaled by each row's largest
  finite magnitude, so a finite row always gets its (finite) norm unless the
  norm itself exceeds the float32 range.

  Args:
    stacked_tree: pytree with leaves ``[n, ...]``.
    centre: optional pytree of one worker's shape, subtracted first.

  Example:
    >>> import jax.numpy as jnp
    >>> worker_norms({"a": jnp.array([[3.0], [1e30]]),
    ...               "b": jnp.array([[4.0], [1e30]])})
    Array([5.0000000e+00, 1.4142135e+30], dtype=float32)
  """
  n = base.stack_size(stacked_tree)
  if centre is None:
    diffs = [_rows(leaf) for leaf in jax.tree.leaves(stacked_tree)]
  else:
    diffs = [_rows(leaf) - jnp.reshape(c, (1, -1)).astype(_rows(leaf).dtype)
             for leaf, c in zip(jax.tree.leaves(stacked_tree),
                                jax.tree.leaves(centre))]
  squares = sum(jnp.sum(jnp.square(d), axis=1) for d in diffs)

  def scaled(diffs):
    big = jnp.zeros((n,), diffs[0].dtype)
    for d in diffs:
      big = jnp.maximum(
          big, jnp.max(jnp.where(jnp.isfinite(d), jnp.abs(d), 0), axis=1,
                       initial=0))
    safe = jnp.where(big > 0, big, 1)[:, None]
    total = sum(jnp.sum(jnp.square(d / safe), axis=1) for d in diffs)
    return jnp.where(big > 0, big * jnp.sqrt(total), jnp.sqrt(total))

  norms = lax.cond(jnp.any(squares == jnp.inf), scaled,
                   lambda diffs: jnp.sqrt(squares), diffs)
  return jnp.where(jnp.isnan(norms), jnp.inf, norms)


def clip_factors(norms: jax.Array, threshold: jax.Array) -> jax.Array:
  r"""``min(1, threshold / norm)``; 1 for a zero norm, 0 for an infinite one."""
  factors = jnp.minimum(1.0, threshold / norms)
  factors = jnp.where(norms == 0, 1.0, factors)
  return jnp.where(jnp.isfinite(norms), factors, 0.0).astype(norms.dtype)


def scale_rows(stacked_tree: optax.Updates,
               factors: jax.Array) -> optax.Updates:
  """Row ``i`` times ``factors[i]``; a zero factor gives exact zeros."""

  def leaf_fn(leaf):
    shape = (-1,) + (1,) * (leaf.ndim - 1)
    f = jnp.reshape(factors, shape)
    scaled = (leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32)) * f)
    return jnp.where(f == 0, 0, scaled).astype(leaf.dtype)

  return jax.tree.map(leaf_fn, stacked_tree)


def arc_num_clipped(num_workers: int, num_byzantine: int) -> int:
  r"""ARC's :math:`k = \lfloor 2 (f / n) (n - f) \rfloor` (integer floor)."""
  return (2 * num_byzantine * (num_workers - num_byzantine)) // num_workers


# ARC needs an honest majority: ``ValueError`` naming n and f otherwise.
check_arc_workers = coordinatewise.check_honest_majority


def arc_threshold(norms: jax.Array, num_byzantine: int) -> jax.Array:
  """ARC's clipping threshold: the ``(k + 1)``-th largest norm."""
  n = norms.shape[0]
  k = arc_num_clipped(n, num_byzantine)
  return jnp.sort(norms)[n - k - 1]


def clip_to_norm(stacked_tree: optax.Updates, max_norm) -> optax.Updates:
  r"""Clips each worker's whole update to norm at most ``max_norm``.

  :math:`y_i = x_i \min(1, C / \lVert x_i \rVert)`.

  Stack -> stack (same shapes). Non-finite rows become zeros.

  Example:
    >>> import jax.numpy as jnp
    >>> clip_to_norm(jnp.array([[3.0, 4.0], [0.3, 0.4]]), 1.0)
    Array([[0.6, 0.8],
           [0.3, 0.4]], dtype=float32)
  """
  return scale_rows(stacked_tree,
                    clip_factors(worker_norms(stacked_tree), max_norm))


def adaptive_robust_clip(stacked_tree: optax.Updates,
                         num_byzantine: int) -> optax.Updates:
  r"""Adaptive robust clipping (ARC) of the stack, stack -> stack.

  With :math:`k = \lfloor 2 (f/n)(n - f) \rfloor` and :math:`C` the
  :math:`(k+1)`-th largest norm, every update is clipped to :math:`C`, i.e.
  the :math:`k` largest are scaled down to norm :math:`C` and the others are
  unchanged (equal norms tie harmlessly: all are clipped to the same
  :math:`C`). Non-finite rows count as infinitely large and become zeros
  (for ``n > 2f``, :math:`k \ge f`, so up to ``f`` of them are always among
  the clipped).

  Example:
    >>> import jax.numpy as jnp
    >>> adaptive_robust_clip(jnp.array([[1.0], [2.0], [-3.0], [40.0]]), 1)
    Array([[ 1.],
           [ 2.],
           [-3.],
           [ 3.]], dtype=float32)
  """
  n = base.stack_size(stacked_tree)
  check_arc_workers("adaptive_robust_clipping", n, num_byzantine)
  norms = worker_norms(stacked_tree)
  return scale_rows(
      stacked_tree, clip_factors(norms, arc_threshold(norms, num_byzantine)))


def check_positive(name: str, arg: str, value) -> None:
  """Raises ``ValueError`` for a (non-traced) real ``value`` that is not > 0."""
  if isinstance(value, numbers.Real) and not value > 0:
    raise ValueError(f"{name} needs {arg} > 0; got {arg}={value!r}")


def _mean_of_scaled(stacked_tree, factors):
  n = factors.shape[0]
  return distances.combine_rows(factors / n, stacked_tree, factors == 0)


def static_clipping(max_norm: float) -> base.AggregationRule:
  r"""Mean of the statically clipped updates.

  .. math::
    \frac{1}{n} \sum_i x_i \min\Big(1, \frac{C}{\lVert x_i \rVert}\Big)

  Not a robust rule by itself (it bounds each worker's influence by
  :math:`C / n`); usually a pre-aggregation (ByzFL ``Clipping(c=2)``) in
  front of a robust rule, see ``preaggregation.static_clipping``. NaN/inf
  updates count as zero.

  Args:
    max_norm: :math:`C > 0`.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import clipping
    >>> rule = clipping.static_clipping(max_norm=1.0)
    >>> rule.update(jnp.array([[3.0, 4.0], [0.0, 0.2]]), rule.init(None, 2))[0]
    Array([0.3, 0.5], dtype=float32)
  """
  check_positive("static_clipping", "max_norm", max_norm)

  def aggregate(stacked_updates):
    factors = clip_factors(worker_norms(stacked_updates), max_norm)
    return _mean_of_scaled(stacked_updates, factors)

  return base.stateless_rule(aggregate)


def adaptive_robust_clipping(num_byzantine: int) -> base.AggregationRule:
  r"""Mean of the ARC-clipped updates (Allouah et al., ICLR 2025).

  .. math::
    k = \Big\lfloor 2 \frac{f}{n} (n - f) \Big\rfloor, \quad
    C = \lVert x_{\pi(k+1)} \rVert, \quad
    \frac{1}{n} \sum_i x_i \min\Big(1, \frac{C}{\lVert x_i \rVert}\Big),

  with :math:`\pi` sorting the norms in non-increasing order. The paper
  uses ARC as a pre-aggregation in front of a robust rule (e.g. NNM then
  coordinate-wise trimmed mean); see
  ``preaggregation.adaptive_robust_clipping``.
  This rule is that clipping followed by the mean.

  Args:
    num_byzantine: ``f``.

  Raises:
    ValueError: unless ``n > 2f``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import clipping
    >>> rule = clipping.adaptive_robust_clipping(num_byzantine=1)
    >>> x = jnp.array([[1.0], [2.0], [-3.0], [40.0]])
    >>> rule.update(x, rule.init(None, 4))[0]
    Array([0.75], dtype=float32)

  Guarantees:
    Allouah et al.: ARC preserves the robustness coefficient of the
    aggregation it precedes (up to a constant) and bounds the norm of the
    output by the (k+1)-th largest input norm, which improves the
    asymptotic error of Robust-DGD when the model is well initialised.

  References:
    Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "Adaptive Gradient
    Clipping for Robust Federated Learning", ICLR 2025 (arXiv:2405.14432).
  """
  f = coordinatewise.check_num_byzantine("adaptive_robust_clipping",
                                         num_byzantine)

  def aggregate(stacked_updates):
    norms = worker_norms(stacked_updates)
    factors = clip_factors(norms, arc_threshold(norms, f))
    return _mean_of_scaled(stacked_updates, factors)

  return base.stateless_rule(
      aggregate,
      check_workers=lambda n: check_arc_workers("adaptive_robust_clipping",
                                                n, f))


class CenteredClippingState(NamedTuple):
  """State of :func:`centered_clipping`.

  Attributes:
    center: the previous aggregate (zeros before the first step), one
      worker's shape; the next step starts its iterations from it.
  """

  center: optax.Updates


def centered_clipping(radius: float, *,
                      iterations: int = 1) -> base.AggregationRule:
  r"""Centered clipping (Karimireddy, He, Jaggi, ICML 2021).

  Starting from the previous aggregate :math:`v_0` (the state), repeat
  ``iterations`` (:math:`L`) times

  .. math::
    v_{l+1} = v_l + \frac{1}{n} \sum_{i=1}^{n}
      (x_i - v_l) \min\Big(1, \frac{\tau}{\lVert x_i - v_l \rVert}\Big),

  output :math:`v_L` and keep it as the next centre. With :math:`\tau =
  \infty` and :math:`L = 1` it is the mean. A worker whose update holds
  NaN/inf contributes 0 (its difference is clipped to zero length). The
  paper pairs it with worker momentum (``optax.trace`` before the
  aggregation); its code uses :math:`\tau = 100, L = 1` on CIFAR-10 and
  :math:`\tau = 10, L = 3` on MNIST.

  Args:
    radius: the clipping radius :math:`\tau > 0`.
    iterations: :math:`L \ge 1`.

  Returns:
    An :class:`AggregationRule` whose state is a
    :class:`CenteredClippingState` (its ``init`` needs ``params`` to shape
    the centre).

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import clipping
    >>> rule = clipping.centered_clipping(radius=1.0)
    >>> x = jnp.array([[0.5], [1.0], [100.0]])
    >>> state = rule.init(jnp.zeros(1), 3)
    >>> out, state = rule.update(x, state)
    >>> out
    Array([0.8333333], dtype=float32)
    >>> rule.update(x, state)[0]  # Starts from the previous aggregate.
    Array([1.1111112], dtype=float32)

  Guarantees:
    Karimireddy et al. show that, started close enough to the honest mean
    and with a suitable :math:`\tau`, centered clipping is a
    :math:`(\delta, c)`-robust aggregator for a Byzantine fraction
    :math:`\delta` below a constant (0.1 in the paper), and that with worker
    momentum it converges on smooth non-convex problems at the optimal
    rate up to an :math:`O(\sqrt{\delta})` term (constants not
    re-derived here; see ``third_party_notes/distance_rules.md``).

  References:
    Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
    Optimization", ICML 2021 (arXiv:2012.10333).
  """
  check_positive("centered_clipping", "radius", radius)
  if (isinstance(iterations, bool) or not isinstance(iterations, int)
      or iterations < 1):
    raise ValueError(
        f"centered_clipping needs an integer iterations >= 1; got "
        f"iterations={iterations!r}")

  def init_fn(params: optax.Params, num_workers: int) -> CenteredClippingState:
    del num_workers
    if params is None:
      raise ValueError(
          "centered_clipping needs params at init to shape its centre")
    return CenteredClippingState(center=jax.tree.map(jnp.zeros_like, params))

  def update_fn(
      stacked_updates: optax.Updates,
      state: CenteredClippingState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, CenteredClippingState]:
    del params, extra_args
    n = base.stack_size(stacked_updates)

    def step(_, v):
      norms = worker_norms(stacked_updates, centre=v)
      factors = clip_factors(norms, radius)
      weights = factors / n
      total = distances.combine_rows(weights, stacked_updates, factors == 0)
      pull = jnp.sum(weights)
      return jax.tree.map(
          lambda v, s: (v + (s.astype(v.dtype) - pull.astype(v.dtype) * v)),
          v, total)

    center = lax.fori_loop(0, iterations, step, state.center)
    out = jax.tree.map(lambda c, u: c.astype(u.dtype), center,
                       jax.tree.map(lambda leaf: leaf[0], stacked_updates))
    return out, CenteredClippingState(center)

  return base.AggregationRule(init_fn, update_fn)
