"""The communicating transformation: move updates over the worker axis."""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from distoptax.algorithms import aggregators
from distoptax.algorithms import compressors
from distoptax.worker_axis import collectives
from distoptax.distributed import comm_stats
from distoptax.worker_axis import replication


@replication.replicated_fields('rule_state', 'key')
class AggregateState(NamedTuple):
  """State of :func:`aggregate`.

  Attributes:
    rule_state: the aggregation rule's own state (replicated on all workers).
    key: the shared PRNG key, split every step; each worker's compression
      key is ``fold_in(step_key, worker_index)`` (or ``step_key`` itself for
      a compressor with ``shared_key``).
    comm: bytes this worker handed to collectives (see ``CommStats``).
    error: this worker's error-feedback memory (like the updates, float32
      or wider), or ``()`` without error feedback. It differs across
      workers.
  """

  rule_state: optax.OptState
  key: chex.PRNGKey
  comm: comm_stats.CommStats
  error: optax.Updates = ()


def aggregate(
    rule: aggregators.AggregationRule,
    *,
    compressor: compressors.Compressor | None = None,
    error_feedback: bool = False,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Communicates each worker's update and applies an aggregation rule.

  Per worker :math:`i` with update :math:`u_i` and key :math:`k_i`:

  .. math::
    m_i = \mathrm{encode}(k_i, u_i), \qquad
    \hat u = \mathrm{rule}\big([\mathrm{decode}(m_1), \dots,
      \mathrm{decode}(m_n)]\big)

  When the rule is the mean and the compressor is summable, the messages are
  summed by one all-reduce and decoded once:
  :math:`\hat u = \mathrm{decode}(\sum_i m_i) / n`. Otherwise the messages are
  all-gathered, decoded worker by worker and the rule sees the stack
  ``[n, ...]``. Every worker ends with the same :math:`\hat u`.

  With ``error_feedback=True`` each worker keeps a memory :math:`e_i`
  (zero at ``init``) of what its messages failed to carry:

  .. math::
    p_i = u_i + e_i, \qquad m_i = \mathrm{encode}(k_i, p_i), \qquad
    e_i \leftarrow p_i - \mathrm{decode}(m_i)

  Conventions: the error is taken against the worker's *own*
  reconstruction (GRACE, BytePS, DeepSpeed's worker error; not PyTorch
  PowerSGD's error against the aggregate), with weights 1 and 1 (no
  damping). The memory lives in the units of what ``aggregate`` receives:
  first in the chain (before ``optax.sgd``) it holds gradients and the
  learning rate stays outside (GRACE ``ResidualMemory``, PyTorch
  PowerSGD); after a ``scale_by_learning_rate`` it holds updates, the
  learning rate folded in (EF-SGD, Karimireddy et al. 2019, arXiv:1901.09847;
  Stich et al. 2018, arXiv:1809.07599).

  Both ``init`` and ``update`` must run under a runtime (``simulate`` /
  ``on_mesh``) or any ``vmap`` / ``shard_map`` that binds ``axis_name``:
  ``init`` sizes the rule's state for the number of workers.

  Args:
    rule: the aggregation rule (e.g. ``aggregators.mean()``); any object with
      optax ``Aggregator``-style ``init``/``update`` and an ``is_mean`` flag.
    compressor: how updates travel; ``None`` sends them uncompressed.
    error_feedback: keep a per-worker error memory (see above) so that a
      biased compressor (top-k, sign) still converges.
    axis_name: the logical worker axis.
    seed: seed of the shared key from which per-worker compression keys are
      derived.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`AggregateState`. Extra arguments are passed to the rule, which
    ignores those it does not use.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from distoptax import algorithms as alg, distributed as dist
    >>> tx = optax.chain(dist.aggregate(alg.aggregators.mean()),
    ...                  optax.sgd(0.1))
    >>> def step(g):
    ...   state = tx.init(g)  # Under the worker axis, like update.
    ...   return tx.update(g, state)[0]
    >>> jax.vmap(step, axis_name=dist.WORKERS)(jnp.array([[1.0], [3.0]]))
    Array([[-0.2],
           [-0.2]], dtype=float32)
  """
  compressor = compressors.identity() if compressor is None else compressor
  use_all_reduce = rule.is_mean and compressor.summable

  def init_fn(params: optax.Params) -> AggregateState:
    error = ()
    if error_feedback:
      error = jax.tree.map(
          lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype,
                                                         jnp.float32)),
          params)
    return AggregateState(
        rule_state=rule.init(params, collectives.num_workers(axis_name)),
        key=jax.random.key_data(jax.random.key(seed)),
        comm=comm_stats.init_comm_stats(),
        error=error)

  def update_fn(
      updates: optax.Updates,
      state: AggregateState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, AggregateState]:
    key, next_key = jax.random.split(jax.random.wrap_key_data(state.key))
    if compressor.shared_key:
      worker_key = key
    else:
      worker_key = jax.random.fold_in(key,
                                      collectives.worker_index(axis_name))
    error = state.error
    if error_feedback:
      compensated = jax.tree.map(lambda u, e: e + u, updates, error)
      message = compressor.encode(worker_key, compensated)
      error = jax.tree.map(lambda p, d: p - d.astype(p.dtype), compensated,
                           compressor.decode(message))
    else:
      message = compressor.encode(worker_key, updates)
    message_bytes = comm_stats.tree_bytes(message)
    coded_bytes = None
    if compressor.coded_bits is not None:
      coded_bytes = (compressor.coded_bits(message) + 7) // 8
    if use_all_reduce:
      total = compressor.decode(collectives.psum(message, axis_name))
      n = collectives.num_workers(axis_name)
      aggregated = jax.tree.map(lambda s: s / n, total)
      rule_state = state.rule_state
      comm = comm_stats.record(state.comm, all_reduce_bytes=message_bytes,
                               coded_bytes=coded_bytes)
    else:
      stacked = jax.vmap(compressor.decode)(
          collectives.all_gather(message, axis_name))
      aggregated, rule_state = rule.update(
          stacked, state.rule_state, params, **extra_args)
      comm = comm_stats.record(state.comm, all_gather_bytes=message_bytes,
                               coded_bytes=coded_bytes)
    aggregated = jax.tree.map(
        lambda a, u: a.astype(u.dtype), aggregated, updates)
    return aggregated, AggregateState(
        rule_state, jax.random.key_data(next_key), comm, error)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _selected_in(state: Any) -> jax.Array | None:
  if hasattr(state, "_fields"):
    if "selected" in state._fields:
      return state.selected
    children = tuple(state)
  elif isinstance(state, (tuple, list)):
    children = state
  else:
    return None
  for child in children:
    found = _selected_in(child)
    if found is not None:
      return found
  return None


def find_selected(opt_state: optax.OptState) -> jax.Array | None:
  """The selection mask of the first aggregation rule that keeps one.

  Rules that select or filter workers (Krum, Multi-Krum, Bulyan, MDA, Zeno,
  Byzantine SGD) record a float32 ``[num_rows]`` mask ``selected`` in their
  state: 1.0 for the rows that entered the last aggregate. Behind a
  pre-aggregation the rows are the pre-aggregated ones (NNM keeps one row
  per worker; bucketing has one row per bucket).

  Args:
    opt_state: an optimizer state holding an :class:`AggregateState`.

  Returns:
    The mask of the first :class:`AggregateState` (depth-first) whose rule
    state has a ``selected`` field, or ``None``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from distoptax import algorithms as alg, distributed as dist
    >>> tx = optax.chain(dist.aggregate(alg.aggregators.krum(1)),
    ...                  optax.sgd(0.1))
    >>> def step(g):
    ...   state = tx.init(g)
    ...   return dist.find_selected(tx.update(g, state)[1])
    >>> g = jnp.array([[0.0], [0.1], [0.2], [0.3], [9.0]])
    >>> jax.vmap(step, axis_name=dist.WORKERS)(g)[0]
    Array([0., 1., 0., 0., 0.], dtype=float32)
  """
  for node in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, AggregateState)):
    if isinstance(node, AggregateState):
      found = _selected_in(node.rule_state)
      if found is not None:
        return found
  return None
