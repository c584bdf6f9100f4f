"""The communicating transformation: move updates over the worker axis."""

from typing import Any, Mapping, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from distoptax.algorithms import aggregators
from distoptax.algorithms import compressors
from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.worker_axis import collectives
from distoptax.worker_axis import keys
from distoptax.worker_axis import replication

KEY_NAME = "distoptax.distributed.aggregate"
"""Salt of :func:`aggregate`'s key stream (``worker_axis.transform_key``)."""


@replication.replicated_fields('rule_state', 'key')
class AggregateState(NamedTuple):
  """State of :func:`aggregate`.

  Attributes:
    rule_state: the aggregation rule's own state (replicated on all workers).
    key: the shared PRNG key data, split every step; each worker's
      compression key is ``fold_in(step_key, worker_index)`` (or
      ``step_key`` itself for a compressor with ``shared_key``). At
      ``init``: ``worker_axis.transform_key(seed, KEY_NAME)``, a stream of
      its own (another transform with the same seed draws other keys).
    comm: bytes this worker handed to collectives (see ``CommStats``).
    error: this worker's error-feedback memory (like the updates, float32
      or wider), or ``()`` without error feedback. It differs across
      workers.
  """

  rule_state: optax.OptState
  key: chex.PRNGKey
  comm: comm_stats.CommStats
  error: optax.Updates = ()


def _check_like_params(updates: optax.Updates,
                       params: optax.Params | None) -> None:
  """Raises ``ValueError`` unless ``updates`` have the layout of ``params``."""
  if params is None:
    return
  describe = lambda x: f"{jnp.result_type(x)}{list(jnp.shape(x))}"
  expected = jax.tree.map(describe, params)
  got = jax.tree.map(describe, updates)
  if (jax.tree.structure(updates) != jax.tree.structure(params)
      or [e.split("[")[1] for e in jax.tree.leaves(expected)]
      != [g.split("[")[1] for g in jax.tree.leaves(got)]):
    raise ValueError(
        f"aggregate: the updates' structure or shapes differ from the "
        f"params'; params {expected}, updates {got}")


def aggregate(
    rule: aggregators.AggregationRule,
    *,
    compressor: compressors.Compressor | None = None,
    error_feedback: bool = False,
    transport: str = "default",
    transport_options: Mapping[str, Any] | None = None,
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
  ``[n, ...]``. Every worker ends with the same :math:`\hat u`. With
  ``transport="sparse_allreduce"`` a mean of sparse messages (top-k,
  threshold) is summed by SparCML's sparse all-reduce instead of the
  all-gather, never building the ``[n, ...]`` stack.

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
    transport: how the messages travel, a key of
      ``communication.TRANSPORTS``: ``"default"`` (above) or
      ``"sparse_allreduce"`` (the mean rule and (index, value) messages;
      its stages are recorded as rounds).
    transport_options: keyword arguments of
      ``sparse_allreduce.sparse_all_reduce`` (``algorithm``, ``delta``,
      capacities) for ``transport="sparse_allreduce"``.
    axis_name: the logical worker axis.
    seed: seed of the transform's key stream, from which the per-worker
      compression keys are derived; salted with :data:`KEY_NAME`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`AggregateState`. Extra arguments are passed to the rule, which
    ignores those it does not use.

  Raises:
    TypeError: if ``compressor`` is not a ``Compressor`` (``dist.powersgd``
      in particular goes in the chain, not here).
    ValueError: for an unknown ``transport``.

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
  if compressor is None:
    compressor = compressors.identity()
  elif not isinstance(compressor, compressors.Compressor):
    if isinstance(compressor, optax.GradientTransformation):
      raise TypeError(
          "aggregate(compressor=...) takes a Compressor (e.g. "
          "alg.compressors.qsgd(...)); got an optax GradientTransformation. "
          "dist.powersgd is not a compressor but a communicating "
          "transformation of its own: put it in the optax.chain instead of "
          "dist.aggregate(alg.aggregators.mean()), e.g. "
          "optax.chain(dist.powersgd(rank=1), optax.sgd(0.1))")
    raise TypeError(
        f"aggregate(compressor=...) takes a Compressor (e.g. "
        f"alg.compressors.qsgd(...)) or None; got {compressor!r}")

  if transport not in communication.TRANSPORTS:
    raise ValueError(f"aggregate: unknown transport {transport!r}; known: "
                     f"{sorted(communication.TRANSPORTS)}")

  def init_fn(params: optax.Params) -> AggregateState:
    error = communication.init_memory(params) if error_feedback else ()
    num_workers = collectives.num_workers(axis_name)
    # The sparse all-reduce runs up to four rounds (recursive doubling: one
    # per doubling stage).
    capacity = (1 if transport == "default"
                else max(4, (num_workers - 1).bit_length()))
    return AggregateState(
        rule_state=rule.init(params, num_workers),
        key=keys.transform_key(seed, KEY_NAME),
        comm=comm_stats.init_comm_stats(capacity=capacity),
        error=error)

  def update_fn(
      updates: optax.Updates,
      state: AggregateState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, AggregateState]:
    _check_like_params(updates, params)
    key, next_key = communication.step_keys(state.key)
    rounds = communication.Rounds(state.comm, axis_name)
    out = communication.exchange(
        rounds, updates, compressor=compressor, rule=rule,
        rule_state=state.rule_state, key=key,
        memory=state.error if error_feedback else None, params=params,
        transport=transport, transport_options=transport_options,
        **extra_args)
    error = out.memory if error_feedback else ()
    return out.aggregate, AggregateState(out.rule_state, next_key,
                                         rounds.finish(), error)

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
