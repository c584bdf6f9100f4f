"""The attack contract: worker-side transforms that replace Byzantine updates.

An attack is an ``optax.GradientTransformationExtraArgs`` placed in the chain
*before* ``distoptax.distributed.aggregate``. Every worker runs it on its own
update; a Byzantine worker replaces its update with a crafted one, an honest
worker passes its update through bit for bit. Which workers are Byzantine is
static: the first ``num_byzantine`` worker indices by default, or an explicit
boolean ``byzantine_mask`` of length ``num_workers``.

Omniscient attacks (inner product manipulation, A Little Is Enough, mimic)
see every worker's honest update through ``collectives.all_gather``. That
gather simulates the adversary's knowledge; it is not traffic of the training
protocol, so attacks keep no ``CommStats`` and the bytes never reach the
system model.

All workers compute the crafted vector (under ``vmap`` a per-worker branch
would run both sides anyway, and a collective must never sit under a
per-worker condition); ``jnp.where`` then keeps the honest update on honest
workers, so their outputs are bitwise unchanged.
"""

from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.algorithms.aggregators import base as aggregator_base
from distoptax.worker_axis import collectives
from distoptax.worker_axis import replication


@replication.replicated_fields('key')
class AttackState(NamedTuple):
  """State of the attacks that draw random numbers.

  Attributes:
    key: raw PRNG key data (``uint32[2]``), identical on every worker and
      split once per step; each worker draws with
      ``fold_in(key, worker_index)``.
  """

  key: chex.Array


class AttackContext(NamedTuple):
  """What an attack's crafting function knows about the worker axis.

  Attributes:
    num_workers: ``n``, a static Python int.
    byzantine: static ``numpy`` bool array ``[n]``; True marks a Byzantine
      worker.
    worker_index: this worker's index (a traced int32 scalar).
    axis_name: the logical worker axis, for collectives.
  """

  num_workers: int
  byzantine: np.ndarray
  worker_index: jax.Array
  axis_name: str

  @property
  def num_byzantine(self) -> int:
    return int(self.byzantine.sum())

  @property
  def honest_indices(self) -> np.ndarray:
    """Indices of the honest workers, ascending (static)."""
    return np.flatnonzero(~self.byzantine)


CraftFn = Callable[[optax.Updates, Any, AttackContext],
                   tuple[optax.Updates, Any]]
"""``craft(updates, state, ctx) -> (byzantine_updates, new_state)``."""


def check_num_byzantine(name: str, num_byzantine: int | None,
                        byzantine_mask: Sequence[bool] | None) -> int:
  """Validates the construction-time arguments; returns ``f``.

  Either argument may be omitted when the other is given; when both are
  given, ``num_byzantine`` must equal the number of True entries of the mask.

  Raises:
    ValueError: if neither is given, ``f`` is not a non-negative int, the mask
      holds non-booleans, or the two disagree.
  """
  if byzantine_mask is not None:
    mask = tuple(byzantine_mask)
    if not all(isinstance(b, (bool, np.bool_)) for b in mask):
      raise ValueError(
          f"{name}: byzantine_mask must hold booleans; got {mask!r}")
    count = sum(bool(b) for b in mask)
    if num_byzantine is None:
      num_byzantine = count
    elif num_byzantine != count:
      raise ValueError(
          f"{name}: num_byzantine={num_byzantine} disagrees with "
          f"byzantine_mask, which marks {count} workers")
  if num_byzantine is None:
    raise ValueError(f"{name} needs num_byzantine or byzantine_mask")
  if (isinstance(num_byzantine, bool)
      or not isinstance(num_byzantine, (int, np.integer))
      or num_byzantine < 0):
    raise ValueError(
        f"{name} needs an integer 0 <= f < n; got f={num_byzantine!r}")
  return int(num_byzantine)


def byzantine_rows(name: str, num_workers: int, num_byzantine: int,
                   byzantine_mask: Sequence[bool] | None) -> np.ndarray:
  """Static bool array ``[n]`` marking the Byzantine workers.

  Raises:
    ValueError: if ``f >= n`` or the mask's length is not ``n``.
  """
  if not 0 <= num_byzantine < num_workers:
    raise ValueError(
        f"{name} needs 0 <= f < n; got n={num_workers}, f={num_byzantine}")
  if byzantine_mask is None:
    return np.arange(num_workers) < num_byzantine
  if len(byzantine_mask) != num_workers:
    raise ValueError(
        f"{name}: byzantine_mask has length {len(byzantine_mask)} but there "
        f"are n={num_workers} workers")
  return np.asarray(byzantine_mask, dtype=bool)


def gather_honest(updates: optax.Updates, ctx: AttackContext) -> optax.Updates:
  """Stack ``[n - f, ...]`` of the honest workers' updates, in index order.

  Every worker gets the same stack. The Byzantine rows are dropped by a
  static index (a slice when they are the first ``f``), so whatever the
  Byzantine workers' own updates hold never enters the statistics.
  """
  stacked = collectives.all_gather(updates, ctx.axis_name)
  honest = ctx.honest_indices
  if np.array_equal(honest, np.arange(ctx.num_byzantine, ctx.num_workers)):
    return jax.tree.map(lambda s: s[ctx.num_byzantine:], stacked)
  return jax.tree.map(lambda s: s[honest], stacked)


def honest_mean(honest: optax.Updates) -> optax.Updates:
  """Coordinate-wise mean of an honest stack (a mat-vec, see aggregators)."""
  return jax.tree.map(aggregator_base.mean_over_workers, honest)


def honest_std(honest: optax.Updates, mean: optax.Updates) -> optax.Updates:
  """Coordinate-wise population std (``ddof=0``) of an honest stack.

  Two passes (centre, then square) for accuracy; ``ddof=0`` is finite even
  with one honest worker.
  """
  return jax.tree.map(
      lambda h, m: jnp.sqrt(aggregator_base.mean_over_workers(
          jnp.square(h - m))), honest, mean)


def make_attack(
    name: str,
    num_byzantine: int | None,
    craft: CraftFn,
    *,
    byzantine_mask: Sequence[bool] | None = None,
    axis_name: str = collectives.WORKERS,
    init_state: Callable[[optax.Params], Any] = lambda params: (
        optax.EmptyState()),
    check: Callable[[int, np.ndarray], None] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Builds an attack transform from a crafting function.

  Args:
    name: the attack's name, used in error messages.
    num_byzantine: ``f``; may be ``None`` when ``byzantine_mask`` is given.
    craft: ``craft(updates, state, ctx) -> (byzantine_updates, new_state)``,
      run on every worker (the result is kept on Byzantine workers only).
      It may use collectives over ``ctx.axis_name``.
    byzantine_mask: optional explicit Byzantine workers, a tuple of bools of
      length ``num_workers``; default: the first ``f`` indices.
    axis_name: the logical worker axis.
    init_state: ``init_state(params)`` builds the (replicated) state.
    check: ``check(num_workers, byzantine)`` raises ``ValueError`` for
      attack-specific preconditions; called at ``init`` and at every trace
      of ``update``, only when ``f > 0``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. ``init`` and ``update`` must
    run under a binding of ``axis_name`` (a runtime, ``vmap`` or
    ``shard_map``). With ``f = 0`` the update is the identity and no
    collective runs.
  """
  f = check_num_byzantine(name, num_byzantine, byzantine_mask)
  mask = None if byzantine_mask is None else tuple(
      bool(b) for b in byzantine_mask)

  def rows(num_workers: int) -> np.ndarray:
    byzantine = byzantine_rows(name, num_workers, f, mask)
    if f and check is not None:
      check(num_workers, byzantine)
    return byzantine

  def init_fn(params: optax.Params):
    rows(collectives.num_workers(axis_name))
    return init_state(params)

  def update_fn(
      updates: optax.Updates,
      state: Any,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, Any]:
    del params, extra_args
    n = collectives.num_workers(axis_name)
    byzantine = rows(n)
    if not byzantine.any():
      return updates, state
    index = collectives.worker_index(axis_name)
    ctx = AttackContext(n, byzantine, index, axis_name)
    crafted, state = craft(updates, state, ctx)
    is_byzantine = jnp.asarray(byzantine)[index]
    out = jax.tree.map(
        lambda c, u: jnp.where(is_byzantine, c.astype(u.dtype), u),
        crafted, updates)
    return out, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
