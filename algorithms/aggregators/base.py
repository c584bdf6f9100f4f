"""The aggregation-rule contract shared by every robust and plain rule."""

from collections.abc import Callable
import dataclasses
import operator
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from distoptax.worker_axis.collectives import sum_over_workers


class AggregateFn(Protocol):
  """Maps a stack of per-worker updates to one update.

  Every leaf of ``stacked_updates`` carries a leading worker axis
  ``[num_workers, ...]``; the result has the shape of one worker's update.
  Unknown extra arguments (``value=``, ``value_fn=``, ...) are ignored.
  """

  def __call__(
      self,
      stacked_updates: optax.Updates,
      state: optax.OptState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    ...


class AggregationRule(NamedTuple):
  """A pair of pure functions that reduce a stack of worker updates.

  The signature of ``update`` is that of optax's experimental
  ``Aggregator``: it receives updates with a leading worker axis and returns
  the aggregated direction. ``distoptax.distributed.aggregate`` moves the
  updates over the worker axis and calls it; the rule itself knows nothing of
  devices or collectives.

  Attributes:
    init: ``init(params, num_workers) -> state`` (``optax.EmptyState()`` when
      stateless). Unlike optax's ``Aggregator``, it receives the number of
      workers, so that a rule can keep per-worker state (Byzantine SGD's
      statistics) and diagnostics (Krum's ``selected`` mask) of static shape.
    update: see :class:`AggregateFn`.
    is_mean: True when the rule is exactly the arithmetic mean of the stack,
      so the caller may compute it with one all-reduce (``psum / n``) instead
      of gathering the stack.
    supports_mask: True when ``update`` takes ``present=``, a bool ``[n]``
      participation mask, and aggregates only the rows present (absent rows
      may hold anything, NaN included). The number of rows present is
      traced; the rule's preconditions hold for it when they hold at
      ``init(params, k)`` for every count ``k`` that can occur (what
      ``distoptax.distributed.partial_aggregate`` checks). A rule without
      it refuses ``present=`` (see :func:`refuse_mask`).
  """

  init: optax.TransformInitFn
  update: AggregateFn
  is_mean: bool = False
  supports_mask: bool = False


MASK_ARG = "present"
"""Name of the participation-mask extra argument of a rule's ``update``."""


def check_present(name: str, present: Any, n: int) -> jax.Array:
  """Returns the participation mask ``present`` as a bool ``[n]`` array.

  Args:
    name: the rule, for messages.
    present: booleans or 0/1 numbers, one per row of the stack.
    n: the stack's row count.

  Raises:
    ValueError: if the mask's shape is not ``(n,)``.
    TypeError: if it is not boolean or numeric.
  """
  present = jnp.asarray(present)
  if present.shape != (n,):
    raise ValueError(
        f"{name}: the participation mask must have shape ({n},) (one entry "
        f"per worker); got shape {present.shape}")
  if not (present.dtype == jnp.bool_
          or jnp.issubdtype(present.dtype, jnp.number)):
    raise TypeError(f"{name}: the participation mask must be boolean or "
                    f"0/1 numbers; got dtype {present.dtype}")
  return present != 0


def refuse_mask(name: str, extra_args: Any) -> None:
  """Raises ``ValueError`` if a rule without mask support got ``present=``.

  Args:
    name: the rule, for the message.
    extra_args: the extra arguments ``update`` received.
  """
  if extra_args.get(MASK_ARG) is not None:
    raise ValueError(
        f"{name} does not aggregate under a participation mask "
        f"({MASK_ARG}=...); rules that do: mean, median, trimmed_mean, "
        f"geometric_median, krum, multi_krum")


def present_rows(present: jax.Array, x: jax.Array) -> jax.Array:
  """``present`` broadcast against a stacked leaf ``x`` of shape ``[n, ...]``."""
  return present.reshape((-1,) + (1,) * (x.ndim - 1))


def stack_size(stacked_updates: optax.Updates) -> int:
  """Returns the size of the leading worker axis, checked across leaves.

  Raises:
    ValueError: if the leaves disagree on the leading axis or have none.
  """
  sizes = {leaf.shape[0] if leaf.ndim else None
           for leaf in jax.tree.leaves(stacked_updates)}
  if None in sizes or len(sizes) != 1:
    raise ValueError(
        "stacked updates must share one leading worker axis; got leading "
        f"sizes {sorted(map(str, sizes))}")
  return sizes.pop()


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class WorkerCount:
  """The number of workers a rule's state was built for.

  A static pytree node (no leaves, like ``optax.EmptyState``): free under
  ``jit``, ``vmap`` and ``shard_map``, and readable at trace time, so that
  ``update`` can reject a stack of another size. The state of every
  stateless rule, and a field of the states that hold no per-worker array.

  Attributes:
    num_workers: ``n`` as given to ``init``.
  """

  num_workers: int


def worker_count(num_workers: int) -> WorkerCount:
  """``WorkerCount(num_workers)``; ``TypeError`` unless it is an integer."""
  try:
    return WorkerCount(operator.index(num_workers))
  except TypeError:
    raise TypeError(
        f"num_workers must be an integer; got {type(num_workers).__name__} "
        f"{num_workers!r}") from None


def check_state(name: str, state: Any, state_type: type, n: int) -> None:
  """Raises unless ``state`` is what ``init`` built for ``n`` workers.

  Args:
    name: the rule, for messages.
    state: what ``update`` received; its ``num_workers`` is the count its
      ``init`` was given.
    state_type: the class ``init`` returns.
    n: the stack's worker count.

  Raises:
    TypeError: if ``state`` is not a ``state_type`` (e.g. ``None``).
    ValueError: naming both counts, if the state was built for another
      number of workers.
  """
  if not isinstance(state, state_type):
    raise TypeError(
        f"{name} update needs the state its init returned (a "
        f"{state_type.__name__}); got {type(state).__name__}")
  if state.num_workers != n:
    raise ValueError(
        f"{name} state was built for n={state.num_workers} workers; got a "
        f"stack of n={n}")


def stateless_rule(
    aggregate_fn: Callable[[optax.Updates], optax.Updates],
    *,
    check_workers: Callable[[int], None] | None = None,
    is_mean: bool = False,
    name: str = "rule",
    masked_fn: Callable[[optax.Updates, jax.Array], optax.Updates]
    | None = None,
) -> AggregationRule:
  """Builds a stateless :class:`AggregationRule` from a function of the stack.

  ``init`` returns a :class:`WorkerCount`; ``update`` checks the stack's
  leading worker axis with :func:`stack_size` (so a malformed stack always
  raises) and against the count ``init`` was given (:func:`check_state`),
  ignores ``params`` and extra arguments, and returns
  ``(aggregate_fn(stacked_updates), state)``.

  Args:
    aggregate_fn: ``aggregate_fn(stacked_updates) -> aggregated``, a pure
      function of the stack (leaves ``[n, ...]``).
    check_workers: optional ``check_workers(n)`` raising ``ValueError`` when
      the rule cannot run on ``n`` workers; called by ``init`` with
      ``num_workers`` and by ``update`` (at trace time) with the stack size.
    is_mean: see :class:`AggregationRule`; True only if ``aggregate_fn`` is
      exactly the arithmetic mean over workers.
    name: the rule's name, for messages.
    masked_fn: optional ``masked_fn(stacked_updates, present) -> aggregated``
      over the rows where the bool ``[n]`` mask ``present`` is True; with
      it, ``update`` takes ``present=`` (``supports_mask=True``), without it
      ``update`` refuses ``present=`` with a ``ValueError``.

  Returns:
    An :class:`AggregationRule` whose state is a :class:`WorkerCount`.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators import base
    >>> def check(n):
    ...   if n < 2:
    ...     raise ValueError(f"max needs n >= 2; got n={n}")
    >>> rule = base.stateless_rule(
    ...     lambda stack: jax.tree.map(lambda x: x.max(axis=0), stack),
    ...     check_workers=check, name="max")
    >>> rule.update(jnp.array([[1.0, 5.0], [3.0, 2.0]]), rule.init(None, 2))
    (Array([3., 5.], dtype=float32), WorkerCount(num_workers=2))
    >>> rule.init(None, 1)
    Traceback (most recent call last):
    ...
    ValueError: max needs n >= 2; got n=1
    >>> rule.update(jnp.zeros((3, 2)), rule.init(None, 2))
    Traceback (most recent call last):
    ...
    ValueError: max state was built for n=2 workers; got a stack of n=3
  """

  def init_fn(params: optax.Params, num_workers: int) -> WorkerCount:
    del params
    if check_workers is not None:
      check_workers(num_workers)
    return worker_count(num_workers)

  def update_fn(
      stacked_updates: optax.Updates,
      state: WorkerCount,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, WorkerCount]:
    del params
    n = stack_size(stacked_updates)
    if check_workers is not None:
      check_workers(n)
    check_state(name, state, WorkerCount, n)
    present = extra_args.get(MASK_ARG)
    if present is None:
      return aggregate_fn(stacked_updates), state
    if masked_fn is None:
      refuse_mask(name, extra_args)
    return masked_fn(stacked_updates, check_present(name, present, n)), state

  return AggregationRule(init_fn, update_fn, is_mean=is_mean,
                         supports_mask=masked_fn is not None)


def mean_over_workers(x: jax.Array) -> jax.Array:
  """Mean of ``x`` over its leading (worker) axis (see ``sum_over_workers``)."""
  return sum_over_workers(x) / x.shape[0]


def check_params(name: str, params: Any, stacked_updates: optax.Updates,
                 missing: str) -> None:
  """Raises ``ValueError`` unless a rule that needs ``params`` got them.

  Args:
    name: the rule, for the message.
    params: what ``update`` received.
    stacked_updates: the stack, whose tree structure ``params`` must share.
    missing: the message when ``params`` is ``None``.
  """
  if params is None:
    raise ValueError(missing)
  if jax.tree.structure(params) != jax.tree.structure(stacked_updates):
    raise ValueError(
        f"{name}: params and the stacked updates must have the same tree "
        f"structure; got {jax.tree.structure(params)} and "
        f"{jax.tree.structure(stacked_updates)}")
