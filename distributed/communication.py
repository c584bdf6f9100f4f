r"""The communication core: keys, error feedback, rounds and their bytes.

Every communicating transform runs the same pipeline per worker: derive its
keys, compensate its update with its error memory, ``encode``, hand the
message to a collective, ``decode``, apply the aggregation rule, and record
what it sent. This module holds that pipeline once, so that multi-round
protocols (PowerSGD's two all-reduces; local-SGD syncs, CSER, SparCML's
stages and hierarchical reduce-scatter / all-gather next) are math on top
of it:

* **Keys.** ``worker_axis.transform_key`` gives each transform its own
  stream, ``fold_in(key(seed), salt)`` with a salt fixed by the transform's
  name, so two transforms built with the same seed (an attack and
  ``aggregate``, say) never draw from the same keys. :func:`step_keys`
  splits the stream once per step and :func:`worker_key` folds in the
  worker index.
* **Error feedback.** :func:`init_memory`, :func:`compensate`,
  :func:`residual`: :math:`p_i = u_i + e_i`, :math:`e_i \leftarrow p_i -
  \hat p_i`, memories in float32 or wider.
* **Rounds.** :class:`Rounds` wraps the collectives of
  ``distoptax.worker_axis``: each call is one round, recorded in the
  transform's :class:`~distoptax.distributed.comm_stats.CommStats` as
  (kind, bytes handed to the collective, whether this worker took part).
  Every round takes a per-worker weight or mask (a masked collective that
  always runs) and a replicated ``run`` predicate: under ``run=False`` the
  collective sits in the branch of a ``lax.cond`` that is not taken, so it
  does not execute, and the round records nothing (no bytes, no latency).
* **One exchange.** :func:`exchange` is ``aggregate``'s round: encode, one
  all-reduce (a mean rule with a summable compressor) or all-gather, decode,
  rule; or, with ``transport="sparse_allreduce"`` (:data:`TRANSPORTS`), a
  mean of sparse (index, value) messages summed by SparCML's sparse
  all-reduce, without the ``[n, d]`` stack.

The bytes recorded are those of the arrays the algorithm hands to the
collective, in their own dtype: a bfloat16 message counts 2 bytes per
entry even where XLA's CPU backend widens the compiled all-reduce or
all-gather to float32 (``third_party_notes/runtime.md``).
"""

import math
import types
from typing import Any, Callable, Mapping, NamedTuple

import chex
import jax
from jax import lax
import jax.numpy as jnp
import optax

from distoptax.algorithms import aggregators
from distoptax.algorithms import compressors
from distoptax.distributed import comm_stats
from distoptax.distributed import sparse_allreduce
from distoptax.worker_axis import collectives

NORMALIZERS = ("participants", "workers")
"""Values of ``exchange(normalizer=...)``: the mean of a masked exchange
divides by the number of workers that took part, or by all workers."""


def step_keys(key_data: jax.Array) -> tuple[chex.PRNGKey, jax.Array]:
  """Splits a replicated stream: ``(this step's key, next key data)``."""
  key, next_key = jax.random.split(jax.random.wrap_key_data(key_data))
  return key, jax.random.key_data(next_key)


def worker_key(step_key: chex.PRNGKey,
               axis_name: str = collectives.WORKERS) -> chex.PRNGKey:
  """This worker's key of the step: ``fold_in(step_key, worker_index)``."""
  return jax.random.fold_in(step_key, collectives.worker_index(axis_name))


def init_memory(tree: Any) -> Any:
  """Zero error memories shaped like ``tree``, in float32 or wider.

  Args:
    tree: arrays or ``jax.ShapeDtypeStruct`` leaves; ``optax.MaskedNode``
      marks leaves that keep no memory.

  Returns:
    A tree of zeros of the same shapes, dtype ``promote(dtype, float32)``.
  """
  return jax.tree.map(
      lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)),
      tree)


def compensate(updates: Any, memory: Any) -> Any:
  r""":math:`p_i = u_i + e_i`, in the memory's dtype."""
  return jax.tree.map(lambda u, e: e + u, updates, memory)


def residual(compensated: Any, sent: Any) -> Any:
  r""":math:`e_i = p_i - \hat p_i`, what the message failed to carry."""
  return jax.tree.map(lambda p, d: p - d.astype(p.dtype), compensated, sent)


def encode(
    compressor: compressors.Compressor,
    key: chex.PRNGKey,
    updates: optax.Updates,
    memory: optax.Updates | None = None,
) -> tuple[Any, optax.Updates | None, jax.Array | None]:
  """Encodes (with error feedback when a memory is given).

  Args:
    compressor: the compressor.
    key: this worker's key (or the step key for a ``shared_key`` one).
    updates: this worker's update.
    memory: its error memory, or ``None`` without error feedback.

  Returns:
    ``(message, new_memory, coded_bytes)``: ``new_memory`` is ``None``
    without error feedback; ``coded_bytes`` is ``ceil(coded_bits / 8)``
    (traced ``int32``), or ``None`` if the compressor defines no code.
  """
  if memory is None:
    message = compressor.encode(key, updates)
  else:
    compensated = compensate(updates, memory)
    message = compressor.encode(key, compensated)
    memory = residual(compensated, compressor.decode(message))
  coded = None
  if compressor.coded_bits is not None:
    coded = (compressor.coded_bits(message) + 7) // 8
  return message, memory, coded


def _output_like(kind: str, x: Any, n: int) -> Any:
  """Zeros shaped like a collective's output on ``x`` (a skipped round)."""

  def leaf(a):
    a = jnp.asarray(a)
    if kind == "all_gather":
      return jnp.zeros((n,) + a.shape, a.dtype)
    if kind == "reduce_scatter":
      return jnp.zeros((a.shape[0] // n,) + a.shape[1:], a.dtype)
    return jnp.zeros_like(a)

  return jax.tree.map(leaf, x)


class Rounds:
  """The communication rounds of one update, recorded as they run.

  Create one at the start of a transform's ``update`` from its previous
  :class:`~distoptax.distributed.comm_stats.CommStats`, call its
  collectives, and store :meth:`finish`'s result in the new state. It is a
  trace-time object (it lives inside one call of ``update``), not state.

  Each collective call is one round. Its bytes default to those of the
  arrays handed to the collective (static); pass ``wire_bytes`` (and
  ``coded_bytes``) computed inside ``jit`` where fewer bytes travel than the
  buffer holds (a sparse message of data-dependent length). A ``weight`` or
  ``mask`` makes it a masked collective: every worker runs it, a worker
  with weight 0 contributes zero and is recorded as not taking part.

  ``run`` is a predicate that must be the same on every worker (computed
  from replicated state, e.g. ``step % period == 0``). The collective then
  runs under ``lax.cond``; a runtime holds replicated state once, so the
  condition stays a conditional and a skipped round executes no collective
  and records nothing. ``otherwise(x)`` gives the result of a skipped
  round (default: zeros shaped like the collective's output). Several
  rounds under one condition: :meth:`cond`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> from distoptax.distributed import comm_stats, communication
    >>> def step(x, stats, t):  # t: the replicated step counter.
    ...   rounds = communication.Rounds(stats)
    ...   total = rounds.all_reduce(x)                  # Every step.
    ...   rows = rounds.all_gather(x, run=t % 2 == 0)   # Even steps.
    ...   return total, rows, rounds.finish()
    >>> x = jnp.ones((4, 3))  # Four workers.
    >>> stats = jax.vmap(lambda _: comm_stats.init_comm_stats())(x)
    >>> f = jax.vmap(step, in_axes=(0, 0, None), axis_name=dist.WORKERS)
    >>> _, _, stats = f(x, stats, jnp.int32(1))
    >>> stats.rounds.kind[0], stats.rounds.bytes[0]  # Codes: dist.KINDS.
    (Array([ 0, -1], dtype=int32), Array([12,  0], dtype=int32))
    >>> _, _, stats = f(x, stats, jnp.int32(2))
    >>> stats.rounds.kind[0], stats.rounds.bytes[0]
    (Array([0, 1], dtype=int32), Array([12, 12], dtype=int32))
  """

  def __init__(self, stats: comm_stats.CommStats,
               axis_name: str = collectives.WORKERS):
    """Starts recording.

    Args:
      stats: the transform's previous stats, created by
        ``comm_stats.init_comm_stats(capacity)`` with a capacity of at least
        the rounds one update runs.
      axis_name: the logical worker axis.

    Raises:
      TypeError: if ``stats`` is not a ``CommStats`` with a round record.
    """
    if not isinstance(stats, comm_stats.CommStats):
      raise TypeError(f"Rounds needs the transform's CommStats; got "
                      f"{type(stats).__name__}")
    self._axis_name = axis_name
    self._tally = comm_stats.start_tally(stats)
    self._slot = 0
    self._static_bytes = 0   # None once a count is traced.
    self._finished = False

  @property
  def axis_name(self) -> str:
    """The logical worker axis the rounds run over."""
    return self._axis_name

  def _check_open(self) -> None:
    if self._finished:
      raise RuntimeError("Rounds.finish() was called; start a new Rounds")

  def _record(self, kind: str, wire_bytes: Any, coded_bytes: Any,
              participated: Any) -> None:
    count, ok = comm_stats.check_byte_count(f"{kind} wire_bytes", wire_bytes)
    if coded_bytes is None:
      coded, coded_ok = count, ok
    else:
      coded, coded_ok = comm_stats.check_byte_count(f"{kind} coded_bytes",
                                                    coded_bytes)
    if ok is True and self._static_bytes is not None:
      self._static_bytes += count
      if self._static_bytes >= 2**31:
        raise ValueError(
            f"one step's wire bytes must lie in [0, 2**31); got "
            f"{self._static_bytes}")
    else:
      self._static_bytes = None
    self._tally = comm_stats.tally_round(
        self._tally, self._slot, kind, count, ok, coded, coded_ok,
        participated)
    self._slot += 1

  def run_round(self, kind: str, collective: Callable[[Any], Any], x: Any,
                *, participation: Any = None, run: Any = None,
                otherwise: Callable[[Any], Any] | None = None,
                wire_bytes: Any = None, coded_bytes: Any = None,
                extra_bytes: int = 0) -> Any:
    """One round of any collective: runs ``collective(x)`` and records it.

    The building block of the named rounds (:meth:`all_reduce`,
    :meth:`all_gather`, ...), public for collectives the worker axis does
    not name, e.g. an all-to-all (recorded as ``"reduce_scatter"``) or a
    pairwise swap (``"sendrecv"``), as SparCML's sparse all-reduce runs.

    Args:
      kind: the record's kind, one of ``comm_stats.KINDS``; it decides how
        the clock prices the round.
      collective: ``collective(x)``, the collective itself (it may call
        several ``lax`` collectives that together are one round).
      x: this worker's pytree, handed to ``collective``.
      participation: this worker's weight or mask (0: not a participant);
        ``None``: everyone takes part. Recorded only: ``collective`` must
        apply it.
      run: see :meth:`all_reduce`.
      otherwise: see :meth:`all_reduce`; default: zeros shaped like the
        output of ``kind`` (``x``'s shapes for ``"sendrecv"``).
      wire_bytes: see :meth:`all_reduce`; default: the bytes of ``x`` plus
        ``extra_bytes``.
      coded_bytes: see :meth:`all_reduce`.
      extra_bytes: static bytes added to the default ``wire_bytes``.

    Returns:
      ``collective(x)``.

    Raises:
      ValueError: on an unknown ``kind``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax import lax
      >>> from distoptax import distributed as dist
      >>> from distoptax.distributed import comm_stats, communication
      >>> def step(x):
      ...   rounds = communication.Rounds(comm_stats.init_comm_stats())
      ...   other = rounds.run_round(
      ...       "sendrecv", lambda v: lax.ppermute(v, dist.WORKERS,
      ...                                          [(0, 1), (1, 0)]), x)
      ...   return other, rounds.finish()
      >>> other, stats = jax.vmap(step, axis_name=dist.WORKERS)(
      ...     jnp.array([[1.0, 2.0], [3.0, 4.0]]))
      >>> other[0], dist.clock_rounds(stats)[0].kind
      (Array([3., 4.], dtype=float32), 'sendrecv')
    """
    self._check_open()
    if kind not in comm_stats.KINDS:
      raise ValueError(f"run_round: unknown kind {kind!r}; known: "
                       f"{list(comm_stats.KINDS)}")
    if wire_bytes is None:
      wire_bytes = comm_stats.tree_bytes(x) + extra_bytes
    participated = (True if participation is None
                    else jnp.asarray(participation) != 0)

    def body(value):
      out = collective(value)
      self._record(kind, wire_bytes, coded_bytes, participated)
      return out

    def skip(value):
      if otherwise is not None:
        return otherwise(value)
      return _output_like(kind, value,
                          collectives.num_workers(self._axis_name))

    if run is None or run is True:
      return body(x)
    if run is False:
      return skip(x)
    return self.cond(run, body, skip, x)

  def all_reduce(self, x: Any, *, weight: Any = None, run: Any = None,
                 otherwise: Callable[[Any], Any] | None = None,
                 wire_bytes: Any = None, coded_bytes: Any = None) -> Any:
    r"""One all-reduce round: :math:`\sum_i w_i x_i` on every worker.

    Args:
      x: this worker's pytree.
      weight: this worker's scalar weight (0/1, bool or e.g. its example
        count); ``None`` means 1. Weight 0: contributes zero, not a
        participant.
      run: ``None`` (always), a static bool, or a replicated traced bool.
      otherwise: the result of a skipped round, ``otherwise(x)``.
      wire_bytes: the round's bytes (static or traced int); default: the
        bytes of ``x``.
      coded_bytes: its coded bytes; default: ``wire_bytes``.

    Returns:
      The sum, the same on every worker.
    """
    return self.run_round(
        "all_reduce",
        lambda v: collectives.psum(v, self._axis_name, weight=weight), x,
        participation=weight, run=run, otherwise=otherwise,
        wire_bytes=wire_bytes, coded_bytes=coded_bytes)

  def mean(self, x: Any, *, weight: Any = None,
           normalizer: str = "weights", run: Any = None,
           otherwise: Callable[[Any], Any] | None = None,
           wire_bytes: Any = None, coded_bytes: Any = None) -> Any:
    """One all-reduce round that averages (``worker_axis.pmean``).

    With a weight and a normaliser other than ``"workers"`` the normaliser
    travels too (a float32 scalar, 4 bytes more).

    Args:
      x: this worker's pytree.
      weight: see :meth:`all_reduce`.
      normalizer: ``"workers"``, ``"participants"`` or ``"weights"``
        (``worker_axis.NORMALIZERS``).
      run: see :meth:`all_reduce`.
      otherwise: see :meth:`all_reduce`.
      wire_bytes: see :meth:`all_reduce`.
      coded_bytes: see :meth:`all_reduce`.

    Returns:
      The mean, the same on every worker.
    """
    extra = 4 if weight is not None and normalizer != "workers" else 0
    return self.run_round(
        "all_reduce",
        lambda v: collectives.pmean(v, self._axis_name, weight=weight,
                                    normalizer=normalizer), x,
        participation=weight, run=run, otherwise=otherwise,
        wire_bytes=wire_bytes, coded_bytes=coded_bytes, extra_bytes=extra)

  def all_gather(self, x: Any, *, mask: Any = None, run: Any = None,
                 otherwise: Callable[[Any], Any] | None = None,
                 wire_bytes: Any = None, coded_bytes: Any = None) -> Any:
    """One all-gather round: every worker's ``x``, stacked in index order.

    Args:
      x: this worker's pytree.
      mask: this worker's participation; a non-participant's row is zeros.
      run: see :meth:`all_reduce`.
      otherwise: see :meth:`all_reduce`.
      wire_bytes: see :meth:`all_reduce`.
      coded_bytes: see :meth:`all_reduce`.

    Returns:
      The stack, leaves ``[num_workers, ...]``, the same on every worker.
    """
    return self.run_round(
        "all_gather",
        lambda v: collectives.all_gather(v, self._axis_name, mask=mask), x,
        participation=mask, run=run, otherwise=otherwise,
        wire_bytes=wire_bytes, coded_bytes=coded_bytes)

  def reduce_scatter(self, x: Any, *, weight: Any = None, run: Any = None,
                     otherwise: Callable[[Any], Any] | None = None,
                     wire_bytes: Any = None, coded_bytes: Any = None) -> Any:
    """One reduce-scatter round: this worker's block of the weighted sum.

    Args:
      x: this worker's pytree (leading axes multiples of the workers).
      weight: see :meth:`all_reduce`.
      run: see :meth:`all_reduce`.
      otherwise: see :meth:`all_reduce`.
      wire_bytes: see :meth:`all_reduce`; default: the bytes of ``x``
        (each worker hands its whole buffer).
      coded_bytes: see :meth:`all_reduce`.

    Returns:
      This worker's block (``worker_axis.reduce_scatter``).
    """
    return self.run_round(
        "reduce_scatter",
        lambda v: collectives.reduce_scatter(v, self._axis_name,
                                             weight=weight), x,
        participation=weight, run=run, otherwise=otherwise,
        wire_bytes=wire_bytes, coded_bytes=coded_bytes)

  def cond(self, pred: Any, true_fn: Callable[..., Any],
           false_fn: Callable[..., Any], *operands: Any) -> Any:
    """``lax.cond`` whose branches may run rounds of this recorder.

    The rounds of the branch taken are recorded, in order, from the next
    free slot; those of the other branch do not run and record nothing.

    Args:
      pred: a scalar bool, the same on every worker (replicated state).
      true_fn: ``true_fn(*operands)``; may call this object's collectives.
      false_fn: ``false_fn(*operands)``, with the same output structure.
      *operands: passed to the branch.

    Returns:
      The output of the branch taken.
    """
    self._check_open()
    start, start_static = self._slot, self._static_bytes
    ends = {}

    def branch(fn, name):
      def run(tally, ops):
        self._tally, self._slot = tally, start
        self._static_bytes = start_static
        out = fn(*ops)
        ends[name] = (self._slot, self._static_bytes)
        return out, self._tally
      return run

    out, self._tally = lax.cond(pred, branch(true_fn, "true"),
                                branch(false_fn, "false"), self._tally,
                                operands)
    self._slot = max(end for end, _ in ends.values())
    statics = [b for _, b in ends.values()]
    self._static_bytes = (None if None in statics else max(statics))
    return out

  def finish(self) -> comm_stats.CommStats:
    """The new :class:`~distoptax.distributed.comm_stats.CommStats`."""
    self._check_open()
    self._finished = True
    return comm_stats.finish_tally(self._tally)


class Exchanged(NamedTuple):
  """What :func:`exchange` returns.

  Attributes:
    aggregate: the aggregated update, the same on every worker, in the
      dtypes of the updates.
    rule_state: the rule's new state (unchanged on the all-reduce path).
    memory: the new error memory, or ``None`` without error feedback.
  """

  aggregate: optax.Updates
  rule_state: optax.OptState
  memory: optax.Updates | None


def exchange(
    rounds: Rounds,
    updates: optax.Updates,
    *,
    compressor: compressors.Compressor,
    rule: aggregators.AggregationRule,
    rule_state: optax.OptState,
    key: chex.PRNGKey,
    memory: optax.Updates | None = None,
    mask: Any = None,
    normalizer: str = "participants",
    params: optax.Params | None = None,
    transport: str = "default",
    transport_options: Mapping[str, Any] | None = None,
    **extra_args: Any,
) -> Exchanged:
  r"""One round: encode, all-reduce or all-gather, decode, aggregate.

  .. math::
    m_i = \mathrm{encode}(k_i, u_i + e_i), \quad
    \hat u = \begin{cases}
      \mathrm{decode}\big(\sum_i m_i\big) / n
        & \text{mean rule, summable compressor (all-reduce)} \\
      \mathrm{rule}\big([\mathrm{decode}(m_1), \dots,
        \mathrm{decode}(m_n)]\big) & \text{otherwise (all-gather)}
    \end{cases}

  (``transport="default"``); with ``transport="sparse_allreduce"`` the
  mean :math:`\hat u = \frac1n \sum_i \mathrm{decode}(m_i)` of (index,
  value) messages is summed by SparCML's sparse all-reduce, no ``[n, d]``
  stack built; and :math:`e_i \leftarrow u_i + e_i - \mathrm{decode}(m_i)` with error
  feedback. The key is this worker's (``fold_in(step_key, i)``) or, for a
  ``shared_key`` compressor, the step key itself.

  With a ``mask`` (this worker's participation, bool or 0/1) only a mean
  rule is allowed: the participants' messages (and their count, an
  ``int32``, or on the all-gather path each worker's ``uint8`` flag) travel
  in the same round, and :math:`\hat u` is the mean over the participants
  (``normalizer="participants"``; zero if there are none) or the sum over
  them divided by :math:`n` (``"workers"``).

  Guarantees: every worker ends with the same aggregate; the bytes of
  every round run are recorded in ``rounds``; for a mean rule the two
  transports give the same mean (bit-identical when the sums are exact,
  e.g. integer-valued updates; otherwise up to the order of the
  additions).

  Args:
    rounds: the update's :class:`Rounds`.
    updates: this worker's update.
    compressor: how it travels.
    rule: the aggregation rule.
    rule_state: the rule's state.
    key: the step key (replicated).
    memory: the error memory, or ``None`` without error feedback.
    mask: this worker's participation; ``None``: everyone.
    normalizer: one of :data:`NORMALIZERS` (with a mask).
    params: passed to the rule.
    transport: one of :data:`TRANSPORTS`. ``"sparse_allreduce"``: a mean
      rule, no mask, a compressor whose messages are (index, value) pairs;
      all leaves travel as one sparse vector (:func:`sparse_pairs`), summed
      by ``sparse_allreduce.sparse_all_reduce`` (its rounds recorded stage
      by stage; ``rounds`` needs a capacity of 4) and divided by ``n``.
    transport_options: keyword arguments of ``sparse_all_reduce``
      (``algorithm``, ``delta``, ``bucket_capacity``, ``block_capacity``)
      for ``"sparse_allreduce"``; none for ``"default"``.
    **extra_args: passed to the rule.

  Returns:
    An :class:`Exchanged`. The round runs over ``rounds.axis_name``.

  Raises:
    ValueError: for a mask with a rule that is not the mean, an unknown
      ``normalizer`` or ``transport``, or a ``"sparse_allreduce"``
      transport with a rule that is not the mean, a mask, or messages
      that are not (index, value) pairs.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import algorithms as alg, distributed as dist
    >>> from distoptax.distributed import comm_stats
    >>> def step(u, here):
    ...   rounds = dist.Rounds(comm_stats.init_comm_stats())
    ...   out = dist.exchange(
    ...       rounds, u, compressor=alg.compressors.identity(),
    ...       rule=alg.aggregators.mean(), rule_state=(),
    ...       key=jax.random.key(0), mask=here)
    ...   return out.aggregate, rounds.finish()
    >>> u = jnp.array([[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]])
    >>> here = jnp.array([True, True, False])  # Worker 2 is absent.
    >>> out, stats = jax.vmap(step, axis_name=dist.WORKERS)(u, here)
    >>> out[0]
    Array([2., 2.], dtype=float32)
    >>> dist.clock_rounds(stats)  # 8 bytes of update + the int32 count.
    [Round(kind='all_reduce', bytes=12,
           participants=array([ True,  True, False]), tier=None)]

  References:
    Karimireddy, Rebjock, Stich, Jaggi, "Error Feedback Fixes SignSGD and
    other Gradient Compression Schemes", ICML 2019, arXiv:1901.09847.
    Renggli, Ashkboos, Aghagolzadeh, Alistarh, Hoefler, "SparCML:
    High-Performance Sparse Communication for Machine Learning", SC 2019,
    arXiv:1802.08021.
    Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory", NeurIPS 2018,
    arXiv:1809.07599.
  """
  if normalizer not in NORMALIZERS:
    raise ValueError(f"exchange: normalizer must be one of {NORMALIZERS}; "
                     f"got {normalizer!r}")
  if transport not in TRANSPORTS:
    raise ValueError(f"exchange: unknown transport {transport!r}; known: "
                     f"{sorted(TRANSPORTS)}")
  if mask is not None and not rule.is_mean:
    raise ValueError(
        "exchange: a mask needs a mean rule (rule.is_mean): a rule over the "
        "stack of all workers' updates cannot leave absent workers out")
  axis_name = rounds.axis_name
  if not compressor.shared_key:
    key = worker_key(key, axis_name)
  message, memory, coded = encode(compressor, key, updates, memory)
  if mask is not None:
    mask = jnp.asarray(mask) != 0
  aggregated, rule_state_out = _EXCHANGES[transport](
      rounds, message, coded, compressor=compressor, rule=rule,
      rule_state=rule_state, mask=mask, normalizer=normalizer,
      params=params, options=dict(transport_options or {}),
      extra_args=extra_args)
  aggregated = jax.tree.map(lambda a, u: a.astype(u.dtype), aggregated,
                            updates)
  return Exchanged(aggregated, rule_state_out, memory)


def _exchange_default(rounds, message, coded, *, compressor, rule,
                      rule_state, mask, normalizer, params, options,
                      extra_args):
  """One all-reduce (mean rule, summable compressor) or all-gather."""
  if options:
    raise ValueError(f"exchange: transport 'default' takes no "
                     f"transport_options; got {sorted(options)}")
  n = collectives.num_workers(rounds.axis_name)
  if rule.is_mean and compressor.summable:
    if mask is None:
      total = compressor.decode(rounds.all_reduce(message,
                                                  coded_bytes=coded))
      return jax.tree.map(lambda s: s / n, total), rule_state
    if coded is not None:
      coded = coded + 4
    summed, count = rounds.all_reduce((message, jnp.ones((), jnp.int32)),
                                      weight=mask, coded_bytes=coded)
    divisor = n if normalizer == "workers" else count
    return _divide(compressor.decode(summed), divisor), rule_state
  if mask is None:
    stacked = jax.vmap(compressor.decode)(
        rounds.all_gather(message, coded_bytes=coded))
    return rule.update(stacked, rule_state, params, **extra_args)
  if coded is not None:
    coded = coded + 1
  rows, present = rounds.all_gather(
      (message, mask.astype(jnp.uint8)), mask=mask, coded_bytes=coded)
  stacked = jax.vmap(compressor.decode)(rows)
  present = present != 0
  summed = jax.tree.map(
      lambda s: collectives.sum_over_workers(
          jnp.where(present.reshape((-1,) + (1,) * (s.ndim - 1)), s, 0)),
      stacked)
  divisor = (n if normalizer == "workers"
             else jnp.sum(present, dtype=jnp.int32))
  return _divide(summed, divisor), rule_state


def _is_pairs(arrays: Any) -> bool:
  return isinstance(arrays, dict) and set(arrays) == {"indices", "values"}


def sparse_pairs(message: Any) -> tuple[jax.Array, jax.Array, int,
                                        Callable[[jax.Array], Any]]:
  """One sparse vector for a message of (index, value) pairs.

  A pytree of per-leaf messages (``top_k``, ``threshold``) becomes one
  vector over the concatenated leaves (leaf ``l``'s indices shifted by the
  sizes of the leaves before it; an unused slot, index ``>= size``, maps
  to ``D``); a whole-tree message (``global_top_k``) already is one.

  Args:
    message: a compressor's message whose arrays are ``indices`` (int32)
      and ``values``.

  Returns:
    ``(indices, values, D, unflatten)``: ``unflatten(total)`` turns a
    dense ``[D]`` vector back into the updates' tree, shapes and dtypes.

  Raises:
    ValueError: if a leaf's arrays are not exactly ``indices`` and
      ``values``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import algorithms as alg
    >>> c = alg.compressors.top_k(k=1)
    >>> m = c.encode(jax.random.key(0), {"a": jnp.array([0.0, 2.0]),
    ...                                  "b": jnp.array([5.0, 0.0, 1.0])})
    >>> idx, val, dim, unflatten = sparse_pairs(m)
    >>> idx, val, dim
    (Array([1, 2], dtype=int32), Array([2., 5.], dtype=float32), 5)
    >>> unflatten(jnp.arange(5.0))["b"]
    Array([2., 3., 4.], dtype=float32)
  """
  if isinstance(message, compressors.TreeMessage):
    if not _is_pairs(message.arrays):
      raise ValueError(
          f"exchange: transport 'sparse_allreduce' needs (indices, values) "
          f"messages (top_k, global_top_k, threshold); got arrays "
          f"{sorted(message.arrays)}")
    sizes = [math.prod(shape) for shape in message.shapes]
    arrays = message.arrays

    def unflatten_tree(total):
      leaves, offset = [], 0
      for size, shape, dtype in zip(sizes, message.shapes, message.dtypes):
        leaves.append(total[offset:offset + size].reshape(shape)
                      .astype(dtype))
        offset += size
      return jax.tree.unflatten(message.treedef, leaves)

    return arrays["indices"], arrays["values"], sum(sizes), unflatten_tree
  leaves, treedef = jax.tree.flatten(
      message, is_leaf=lambda x: isinstance(x, compressors.LeafMessage))
  for leaf in leaves:
    if not (isinstance(leaf, compressors.LeafMessage)
            and _is_pairs(leaf.arrays)):
      got = (sorted(leaf.arrays) if isinstance(leaf, compressors.LeafMessage)
             else type(leaf).__name__)
      raise ValueError(
          f"exchange: transport 'sparse_allreduce' needs (indices, values) "
          f"messages (top_k, global_top_k, threshold); got {got}")
  sizes = [math.prod(leaf.shape) for leaf in leaves]
  total_dim = sum(sizes)
  dtype = (jnp.result_type(*[leaf.arrays["values"] for leaf in leaves])
           if leaves else jnp.float32)
  indices, values, offset = [], [], 0
  for leaf, size in zip(leaves, sizes):
    idx = leaf.arrays["indices"]
    used = (idx >= 0) & (idx < size)
    indices.append(jnp.where(used, idx + offset, total_dim).astype(jnp.int32))
    values.append(leaf.arrays["values"].astype(dtype))
    offset += size

  def unflatten_leaves(total):
    out, start = [], 0
    for leaf, size in zip(leaves, sizes):
      out.append(total[start:start + size].reshape(leaf.shape)
                 .astype(leaf.dtype))
      start += size
    return jax.tree.unflatten(treedef, out)

  join = lambda parts, t: (jnp.concatenate(parts) if parts
                           else jnp.zeros((0,), t))
  return (join(indices, jnp.int32), join(values, dtype), total_dim,
          unflatten_leaves)


def _exchange_sparse(rounds, message, coded, *, compressor, rule,
                     rule_state, mask, normalizer, params, options,
                     extra_args):
  """The mean of (index, value) messages by SparCML's sparse all-reduce."""
  del coded, compressor, normalizer, params, extra_args
  if not rule.is_mean:
    raise ValueError(
        "exchange: transport 'sparse_allreduce' sums the messages, so it "
        "needs a mean rule (rule.is_mean); a rule over the stack of all "
        "workers' updates needs the default transport")
  if mask is not None:
    raise ValueError(
        "exchange: transport 'sparse_allreduce' takes no mask (every "
        "worker contributes); use the default transport for a masked mean")
  indices, values, dim, unflatten = sparse_pairs(message)
  n = collectives.num_workers(rounds.axis_name)
  out = sparse_allreduce.sparse_all_reduce(
      rounds, sparse_allreduce.SparseVector(indices, values), dim, **options)
  return unflatten(out.total / n), rule_state


TRANSPORTS = types.MappingProxyType({
    "default": "one all-reduce of summable messages under a mean rule, "
               "else an all-gather, a decode of every row and the rule",
    "sparse_allreduce": "a mean rule over (index, value) messages (top_k, "
                        "global_top_k, threshold): their sum by SparCML's "
                        "sparse all-reduce "
                        "(distributed.sparse_allreduce), divided by n",
})
"""Values of ``exchange(transport=...)``, with what each does."""

_EXCHANGES = types.MappingProxyType({
    "default": _exchange_default,
    "sparse_allreduce": _exchange_sparse,
})


def _divide(tree: Any, divisor: Any) -> Any:
  """``tree / divisor``; zero where the divisor is 0 (nobody took part)."""

  def leaf(s):
    d = jnp.asarray(divisor).astype(jnp.promote_types(s.dtype, jnp.float32))
    return jnp.where(d != 0, s / jnp.where(d != 0, d, 1), 0).astype(s.dtype)

  return jax.tree.map(leaf, tree)
