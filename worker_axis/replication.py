"""Which state is per worker and which is replicated: the declaration.

A transform's state mixes two kinds of leaves (DESIGN.md, "The worker
axis"):

* **per-worker** leaves (error memories, local models, local optimizer
  state, per-worker keys) differ across workers; a runtime stores them with
  a leading ``[num_workers]`` axis;
* **replicated** leaves (step counters, the server or global model, an
  aggregation rule's state, shared keys, a communication period) are the
  same on every worker; a runtime stores them **once** (once per device on a
  mesh) and hands the same value to every worker.

A state ``NamedTuple`` declares its replicated fields with the class
decorator :func:`replicated_fields`; everything below such a field is
replicated, everything else is per worker. The state keeps optax's shape
(a plain ``NamedTuple`` of arrays), so the transform still composes in
``optax.chain`` and runs under a bare ``jax.vmap`` (where every leaf simply
gets the worker axis). :func:`replicated` declares the whole state of any
optax transformation replicated, e.g. a server-side optimizer that only
ever sees aggregated updates.

Why it matters: a condition on replicated state is the same on every worker,
so ``lax.cond(step % period == 0, sync, keep)`` stays a conditional under
the runtimes (an HLO ``conditional`` on a mesh) and the collective inside it
is really skipped. Were the step counter stored per worker, ``vmap`` would
batch the predicate and turn the ``cond`` into a ``select`` that runs both
branches, and the all-reduce would execute every step.

The runtimes check the declaration at trace time: a transform whose
replicated output depends on per-worker data (a leaf that ``vmap`` sees as
batched) fails with a ``ValueError`` naming the leaf.
"""

from typing import Any, Callable, NamedTuple

import jax
import optax

_FIELDS_ATTR = "_replicated_fields"


def replicated_fields(*names: str) -> Callable[[type], type]:
  """Class decorator: declares fields of a state ``NamedTuple`` replicated.

  Args:
    *names: field names of the decorated ``NamedTuple``; every leaf below
      them is replicated (held once by a runtime).

  Returns:
    The decorator; it returns the class itself with the declaration
    attached.

  Raises:
    TypeError: if the decorated class is not a ``NamedTuple``.
    ValueError: if a name is not one of its fields.

  Example:
    >>> from typing import NamedTuple
    >>> import jax.numpy as jnp
    >>> from distoptax import worker_axis
    >>> @worker_axis.replicated_fields("count")
    ... class CounterState(NamedTuple):
    ...   count: jnp.ndarray
    ...   error: jnp.ndarray
    >>> worker_axis.replication_mask(CounterState(jnp.zeros(()), jnp.ones(3)))
    CounterState(count=True, error=False)
  """

  def decorate(cls: type) -> type:
    fields = getattr(cls, "_fields", None)
    if not (isinstance(cls, type) and issubclass(cls, tuple)
            and fields is not None):
      raise TypeError(
          f"replicated_fields decorates a NamedTuple class; got {cls!r}")
    unknown = [n for n in names if n not in fields]
    if unknown:
      raise ValueError(
          f"replicated_fields: {unknown} are not fields of {cls.__name__} "
          f"(fields: {list(fields)})")
    setattr(cls, _FIELDS_ATTR, frozenset(names))
    return cls

  return decorate


def declared_replicated(cls: type) -> frozenset[str]:
  """The field names ``cls`` declares replicated (empty if none)."""
  return getattr(cls, _FIELDS_ATTR, frozenset())


def replication_mask(tree: Any) -> Any:
  """A tree like ``tree`` with ``True`` at replicated leaves.

  A leaf is replicated when some ``NamedTuple`` above it declares the field
  that holds it with :func:`replicated_fields`.

  Args:
    tree: a state pytree (e.g. a ``TrainState`` or an optax state).

  Returns:
    A pytree of Python bools with the structure of ``tree``.
  """

  def walk(node: Any, inherited: bool) -> Any:
    fields = declared_replicated(type(node))
    if fields and isinstance(node, tuple):
      return type(node)(*(walk(value, inherited or name in fields)
                          for name, value in zip(node._fields, node)))
    children, treedef = jax.tree_util.tree_flatten(
        node, is_leaf=lambda x: x is not node)
    if len(children) == 1 and children[0] is node:  # A leaf.
      return inherited
    return jax.tree_util.tree_unflatten(
        treedef, [walk(child, inherited) for child in children])

  return walk(tree, False)


def worker_axes_tree(tree: Any, per_worker_axis: Any = 0) -> Any:
  """``vmap``-style axes for ``tree``: ``None`` where replicated.

  Args:
    tree: a state pytree.
    per_worker_axis: what to put at per-worker leaves (``0`` for ``vmap``'s
      ``in_axes``, a ``PartitionSpec`` for ``shard_map``'s specs).

  Returns:
    A pytree with the structure of ``tree`` (``None`` marks replicated
    leaves, as ``vmap`` expects; with a ``PartitionSpec`` a replicated leaf
    gets ``PartitionSpec()``).
  """
  replicated_value = (None if not isinstance(per_worker_axis,
                                             jax.sharding.PartitionSpec)
                      else jax.sharding.PartitionSpec())
  return jax.tree.map(
      lambda r: replicated_value if r else per_worker_axis,
      replication_mask(tree))


@replicated_fields("inner")
class ReplicatedState(NamedTuple):
  """State of :func:`replicated`: the wrapped state, held once.

  Attributes:
    inner: the wrapped transformation's state; replicated.
  """

  inner: optax.OptState


def replicated(
    tx: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """Declares the whole state of ``tx`` replicated.

  Use it for a transformation that only ever sees values that are the same
  on every worker, e.g. the server-side optimizer after
  ``distributed.aggregate``: a runtime then stores its state (momentum,
  Adam moments, step counts) once instead of once per worker. If ``tx``
  receives per-worker values, the runtime refuses it at trace time.

  Args:
    tx: any optax transformation.

  Returns:
    The same transformation with its state wrapped in a
    :class:`ReplicatedState`; extra arguments are passed through.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from distoptax import worker_axis
    >>> tx = worker_axis.replicated(optax.sgd(0.1, momentum=0.9))
    >>> state = tx.init(jnp.zeros(2))
    >>> worker_axis.replication_mask(state)
    ReplicatedState(inner=(TraceState(trace=True), EmptyState()))
  """
  tx = optax.with_extra_args_support(tx)

  def init_fn(params: optax.Params) -> ReplicatedState:
    return ReplicatedState(tx.init(params))

  def update_fn(updates, state: ReplicatedState, params=None, **extra_args):
    updates, inner = tx.update(updates, state.inner, params, **extra_args)
    return updates, ReplicatedState(inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
