r"""Pre-aggregations: stack -> stack maps composed in front of any rule.

A pre-aggregation maps the stack ``[n, ...]`` of updates to another stack
(``[n, ...]``, or ``[ceil(n / s), ...]`` for bucketing), optionally with a
state. :func:`pre_aggregated` composes one or several with an aggregation
rule, as ByzFL's ``RobustAggregator(aggregator, pre_aggregators)``::

  rule = pre_aggregated(
      [static_clipping(2.0), nearest_neighbor_mixing(1)],
      trimmed_mean(1))

The downstream rule is sized (``init``) and checked against the number of
rows the pre-aggregations produce. Non-finite policy: NNM and bucketing
produce a NaN row for every output that averages a non-finite input (so at
most ``f`` output rows are non-finite, and the downstream rule's own policy
applies); the clipping pre-aggregations turn non-finite rows into zeros.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from distoptax.algorithms.aggregators import base
from distoptax.algorithms.aggregators import clipping
from distoptax.algorithms.aggregators import coordinatewise
from distoptax.algorithms.aggregators import distances
from distoptax.worker_axis import keys


class PreAggregation(NamedTuple):
  """A stack -> stack map applied before an aggregation rule.

  Attributes:
    init: ``init(params, num_workers) -> state``.
    update: ``update(stacked, state, params=None, **extra_args) ->
      (stacked_out, state)``; ``stacked_out`` has
      ``num_outputs(num_workers)`` rows.
    num_outputs: ``num_outputs(num_workers) -> int``, the number of rows of
      the output (static).
  """

  init: Callable[..., optax.OptState]
  update: Callable[..., tuple[optax.Updates, optax.OptState]]
  num_outputs: Callable[[int], int]


def _same_size(n: int) -> int:
  return n


def _stateless(name: str,
               pre_fn: Callable[[optax.Updates], optax.Updates],
               check_workers: Callable[[int], None] | None = None,
               ) -> PreAggregation:
  """A stateless pre-aggregation keeping ``n`` rows.

  Its ``init`` and ``update`` are those of ``base.stateless_rule(pre_fn,
  check_workers=check_workers, name=name)``: ``pre_fn`` maps the stack to
  a stack of the same size.
  """
  rule = base.stateless_rule(pre_fn, check_workers=check_workers, name=name)
  return PreAggregation(rule.init, rule.update, _same_size)


def nearest_neighbor_mixing(num_byzantine: int) -> PreAggregation:
  r"""Nearest neighbour mixing (NNM, Allouah et al., AISTATS 2023).

  .. math::
    y_i = \frac{1}{n - f} \sum_{j \in N_i} x_j,

  with :math:`N_i` the :math:`n - f` workers nearest to :math:`x_i`
  **itself included** (it is always in :math:`N_i`, even against exact
  duplicates), the others taken by increasing distance with ties to the
  lowest index. Distances are those of the whole flattened update
  (:mod:`distances`). With ``f = 0`` every row becomes the mean.

  Args:
    num_byzantine: ``f``.

  Returns:
    A :class:`PreAggregation` keeping ``n`` rows (stateless).

  Raises:
    ValueError: unless ``n > 2f``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import preaggregation
    >>> nnm = preaggregation.nearest_neighbor_mixing(1)
    >>> x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    >>> nnm.update(x, nnm.init(None, 3))[0]
    Array([[2.5, 3.5, 4.5],
           [2.5, 3.5, 4.5],
           [5.5, 6.5, 7.5]], dtype=float32)

  Guarantees:
    Allouah et al.: composing NNM with an aggregation rule that is
    :math:`(f, \kappa)`-robust makes it :math:`(f, O(f/n))`-robust (optimal
    order under :math:`(G, B)`-gradient dissimilarity) for Krum,
    coordinate-wise median/trimmed mean and geometric median, among others.
    Cost :math:`O(n^2 d)`.

  References:
    Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by
    Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity",
    AISTATS 2023 (arXiv:2302.01772).
  """
  f = coordinatewise.check_num_byzantine("nearest_neighbor_mixing",
                                         num_byzantine)

  def check(n: int) -> None:
    coordinatewise.check_honest_majority("nearest_neighbor_mixing", n, f)

  def mix(stacked_updates):
    n = base.stack_size(stacked_updates)
    info = distances.distance_info(stacked_updates)
    eye = jnp.eye(n, dtype=bool)
    order = jnp.argsort(
        jnp.where(eye, -1.0, info.squared_distances), axis=1, stable=True)
    neighbours = order[:, :n - f]
    weights = jnp.sum(jax.nn.one_hot(neighbours, n, dtype=jnp.float32),
                      axis=1) / (n - f)
    return distances.combine_rows(weights, stacked_updates, info.nonfinite)

  return _stateless("nearest_neighbor_mixing", mix, check_workers=check)


class BucketingState(NamedTuple):
  """State of :func:`bucketing`.

  Attributes:
    key: raw ``uint32`` key data of the shared PRNG key; split every step,
      identical on every worker (the rule's state is replicated).
    workers: the number of workers ``init`` was given (static).
  """

  key: chex.Array
  workers: base.WorkerCount

  @property
  def num_workers(self) -> int:
    """The number of workers ``init`` built this state for."""
    return self.workers.num_workers


def bucketing(bucket_size: int, *, seed: int = 0) -> PreAggregation:
  r"""Bucketing (Karimireddy, He, Jaggi, ICLR 2022).

  Shuffles the ``n`` updates with a permutation :math:`\pi` drawn from a
  key shared by all workers (kept in the state, split every step), and
  averages consecutive buckets of ``s`` updates:

  .. math::
    y_b = \frac{1}{|B_b|} \sum_{k \in B_b} x_{\pi(k)}, \qquad
    B_b = \{b s, \dots, \min((b+1)s, n) - 1\},

  giving :math:`\lceil n / s \rceil` rows (the last bucket holds
  :math:`n - (\lceil n/s \rceil - 1) s` updates when ``s`` does not divide
  ``n``, as in ByzFL).

  Interaction with ``f``: each Byzantine worker lands in exactly one bucket,
  so at most ``f`` of the :math:`\lceil n/s \rceil` buckets are corrupted.
  Pass the **same** ``f`` to the downstream rule (as epfml's code does,
  rebuilding the rule with ``n := ceil(n / s)``): its precondition is then
  checked against :math:`\lceil n / s \rceil` rows, e.g. Krum after
  bucketing needs :math:`\lceil n/s \rceil > 2f + 2`. The paper's analysis
  needs :math:`\delta s \le` the downstream rule's breakdown fraction
  (:math:`\delta = f / n`), hence its default ``s = 2``.

  Args:
    bucket_size: ``s >= 1`` (``s = 1`` only shuffles).
    seed: seed of the shared key.

  Returns:
    A :class:`PreAggregation` with ``ceil(n / s)`` rows and a
    :class:`BucketingState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import preaggregation
    >>> pre = preaggregation.bucketing(2)
    >>> out, state = pre.update(jnp.arange(4.0)[:, None], pre.init(None, 4))
    >>> out.shape, float(out.mean())  # Two bucket means; their mean is 1.5.
    ((2, 1), 1.5)

  Guarantees:
    Karimireddy et al.: bucketing with ``s`` such that :math:`\delta s`
    stays below the downstream rule's breakdown fraction turns Krum,
    coordinate-wise median, geometric median (RFA) and centered clipping
    into robust aggregators under heterogeneous (non-IID) data, whose error
    vanishes with the honest heterogeneity and the Byzantine fraction
    (constants not re-derived here).

  References:
    Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous
    Datasets via Bucketing", ICLR 2022 (arXiv:2006.09365).
  """
  if (isinstance(bucket_size, bool) or not isinstance(bucket_size, int)
      or bucket_size < 1):
    raise ValueError(
        f"bucketing needs an integer bucket_size s >= 1; got s={bucket_size!r}")
  s = bucket_size

  def num_outputs(n: int) -> int:
    return -(-n // s)

  def init_fn(params, num_workers):
    del params
    return BucketingState(
        keys.transform_key(seed, "distoptax.algorithms.aggregators.bucketing"),
        base.worker_count(num_workers))

  def update_fn(stacked_updates, state, params=None, **extra_args):
    del params, extra_args
    n = base.stack_size(stacked_updates)
    base.check_state("bucketing", state, BucketingState, n)
    num_buckets = num_outputs(n)
    key, next_key = jax.random.split(jax.random.wrap_key_data(state.key))
    perm = jax.random.permutation(key, n)
    position_bucket = jnp.arange(n) // s
    sizes = jnp.asarray(
        [min((b + 1) * s, n) - b * s for b in range(num_buckets)],
        jnp.float32)
    weights = jnp.zeros((num_buckets, n), jnp.float32).at[
        position_bucket, perm].set(1.0 / sizes[position_bucket])
    out = distances.combine_rows(weights, stacked_updates)
    return out, BucketingState(jax.random.key_data(next_key), state.workers)

  return PreAggregation(init_fn, update_fn, num_outputs)


def static_clipping(max_norm: float) -> PreAggregation:
  r"""Clips every worker's whole update to norm at most ``max_norm``.

  .. math::
    y_i = x_i \min\Big(1, \frac{C}{\lVert x_i \rVert}\Big)

  ByzFL's ``Clipping(c=2)`` (which clips in place; this returns a new
  stack). Non-finite rows become zeros.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import preaggregation
    >>> pre = preaggregation.static_clipping(1.0)
    >>> pre.update(jnp.array([[3.0, 4.0], [0.3, 0.4]]), pre.init(None, 2))[0]
    Array([[0.6, 0.8],
           [0.3, 0.4]], dtype=float32)
  """
  clipping.check_positive("static_clipping", "max_norm", max_norm)

  return _stateless("static_clipping",
                    lambda stacked: clipping.clip_to_norm(stacked, max_norm))


def adaptive_robust_clipping(num_byzantine: int) -> PreAggregation:
  r"""Adaptive robust clipping (ARC, Allouah et al., ICLR 2025).

  Clips every update to the :math:`(k+1)`-th largest norm,
  :math:`k = \lfloor 2 (f/n)(n - f) \rfloor` (see
  :func:`clipping.adaptive_robust_clip`). Non-finite rows become zeros.

  Raises:
    ValueError: unless ``n > 2f``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import preaggregation
    >>> pre = preaggregation.adaptive_robust_clipping(1)
    >>> pre.update(jnp.array([[1.0], [2.0], [-3.0], [40.0]]),
    ...            pre.init(None, 4))[0]
    Array([[ 1.],
           [ 2.],
           [-3.],
           [ 3.]], dtype=float32)

  References:
    Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "Adaptive Gradient
    Clipping for Robust Federated Learning", ICLR 2025 (arXiv:2405.14432).
  """
  f = coordinatewise.check_num_byzantine("adaptive_robust_clipping",
                                         num_byzantine)

  return _stateless(
      "adaptive_robust_clipping",
      lambda stacked: clipping.adaptive_robust_clip(stacked, f),
      check_workers=lambda n: clipping.check_arc_workers(
          "adaptive_robust_clipping", n, f))


class PreAggregatedState(NamedTuple):
  """State of :func:`pre_aggregated`.

  Attributes:
    pre: tuple of the pre-aggregations' states, in application order.
    rule: the downstream rule's state (its ``selected`` mask, if any, refers
      to the pre-aggregated rows).
    workers: the number of workers ``init`` was given (static).
  """

  pre: tuple[Any, ...]
  rule: optax.OptState
  workers: base.WorkerCount

  @property
  def num_workers(self) -> int:
    """The number of workers ``init`` built this state for."""
    return self.workers.num_workers


def pre_aggregated(
    pre: PreAggregation | Sequence[PreAggregation],
    rule: base.AggregationRule,
) -> base.AggregationRule:
  """Applies pre-aggregation(s) to the stack, then ``rule``.

  Args:
    pre: one :class:`PreAggregation` or a sequence applied left to right.
    rule: the aggregation rule run on the pre-aggregated stack; its
      ``init`` receives the pre-aggregated row count.

  Returns:
    An :class:`AggregationRule` (``is_mean=False``) whose state is a
    :class:`PreAggregatedState`. Extra arguments reach every stage.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import krum, preaggregation
    >>> rule = preaggregation.pre_aggregated(
    ...     preaggregation.nearest_neighbor_mixing(1), krum(1))
    >>> x = jnp.array([[0.0], [1.0], [2.0], [3.0], [50.0]])
    >>> out, state = rule.update(x, rule.init(None, 5))
    >>> out, state.rule.selected
    (Array([1.5], dtype=float32), Array([1., 0., 0., 0., 0.], dtype=float32))
  """
  stages = (pre,) if isinstance(pre, PreAggregation) else tuple(pre)
  for stage in stages:
    if not isinstance(stage, PreAggregation):
      raise ValueError(
          f"pre_aggregated needs PreAggregation stages; got {type(stage)}")

  def init_fn(params, num_workers):
    states = []
    n = num_workers
    for stage in stages:
      states.append(stage.init(params, n))
      n = stage.num_outputs(n)
    return PreAggregatedState(tuple(states), rule.init(params, n),
                              base.worker_count(num_workers))

  def update_fn(stacked_updates, state, params=None, **extra_args):
    n = base.stack_size(stacked_updates)
    if not isinstance(state, PreAggregatedState):
      base.check_state("pre_aggregated", state, PreAggregatedState, n)
    states = []
    for stage, stage_state in zip(stages, state.pre):
      stacked_updates, stage_state = stage.update(
          stacked_updates, stage_state, params, **extra_args)
      states.append(stage_state)
    out, rule_state = rule.update(stacked_updates, state.rule, params,
                                  **extra_args)
    # After the stages, whose own checks name the preconditions first.
    base.check_state("pre_aggregated", state, PreAggregatedState, n)
    return out, PreAggregatedState(tuple(states), rule_state, state.workers)

  return base.AggregationRule(init_fn, update_fn)
