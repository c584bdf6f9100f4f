r"""Periodic averaging (local SGD) as an optax transformation.

Used inside ``distributed.data_parallel``, whose per-worker ``params`` are
the workers' **local models**: every step each worker applies an inner optax
optimizer to its own model; every ``period`` steps a **sync** aggregates the
pseudo-gradients (global model minus local model) through the communication
core (``communication.exchange``: any compressor, error feedback, any
aggregation rule), an outer optax optimizer updates the replicated global
model, and the returned update moves every worker's model onto it.

Whether a step syncs is decided by replicated state (a counter of steps
since the last sync against ``LocalSGDState.period``), so the sync's
collectives sit in the untaken branch of a ``lax.cond`` between syncs: they
do not run and record no bytes. The period is itself replicated state, so
an adaptive rule (AdaComm) can rewrite it between updates.

The named algorithms built on this transformation (FedAvg, FedProx,
FedAdam / FedAdagrad / FedYogi, DiLoCo, post-local SGD, SLSGD) are in
``distoptax.distributed.federated``; conventions and sources in
``third_party_notes/local_sgd.md``.
"""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.algorithms import aggregators
from distoptax.algorithms import compressors
from distoptax.algorithms import local as local_math
from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.worker_axis import collectives
from distoptax.worker_axis import keys
from distoptax.worker_axis import replication

STATE_POLICIES = ("keep", "average", "reset")
"""Values of ``local_sgd(state_policy=...)``: what happens to the inner
optimizer's state at a sync."""

KEY_NAME = "distoptax.distributed.local_sgd"
"""Salt of :func:`local_sgd`'s key stream (``worker_axis.transform_key``)."""


@replication.replicated_fields("step", "since_sync", "period", "num_syncs",
                               "global_params", "outer_state", "rule_state",
                               "key")
class LocalSGDState(NamedTuple):
  """State of :func:`local_sgd`.

  Attributes:
    step: updates so far (int32); replicated. Selects the synchronous
      warm-up (``warmup_steps``).
    since_sync: local steps since the last sync (int32); replicated. A step
      syncs when ``since_sync + 1 >= period``.
    period: the communication period (int32 ``>= 1``); replicated. Set
      from ``local_sgd(period=...)`` at ``init``; a transform wrapping this
      one (AdaComm) may replace it between updates with any replicated
      value, and the next step syncs as soon as ``since_sync + 1`` reaches
      it.
    num_syncs: pseudo-gradient syncs so far (int32); replicated.
    global_params: the global model of the last sync (the outer
      optimizer's parameters, FedProx's anchor); replicated.
    outer_state: the outer optimizer's state; replicated.
    rule_state: the aggregation rule's state; replicated.
    key: shared PRNG key data, split at every step that communicates (the
      compressor's keys; a local step leaves it); replicated. At ``init``: ``worker_axis.transform_key(seed,
      KEY_NAME)``.
    inner_state: this worker's inner optimizer state.
    worker_state: the state of ``worker_transform`` (``()`` without one).
    comm: the bytes this worker handed to collectives (``CommStats``; its
      round record holds the sync's exchange and, with
      ``state_policy="average"``, the state's all-reduce).
    error: this worker's error-feedback memory of the pseudo-gradient
      exchange, or ``()`` without error feedback.
    warmup_error: the same for the gradient exchange of the warm-up, or
      ``()``.
  """

  step: jax.Array
  since_sync: jax.Array
  period: jax.Array
  num_syncs: jax.Array
  global_params: optax.Params
  outer_state: optax.OptState
  rule_state: optax.OptState
  key: chex.PRNGKey
  inner_state: optax.OptState
  worker_state: optax.OptState
  comm: comm_stats.CommStats
  error: optax.Updates = ()
  warmup_error: optax.Updates = ()


class _Carry(NamedTuple):
  """What a branch of one update hands back."""

  updates: optax.Updates
  inner_state: optax.OptState
  worker_state: optax.OptState
  global_params: optax.Params
  outer_state: optax.OptState
  rule_state: optax.OptState
  error: optax.Updates
  warmup_error: optax.Updates
  since_sync: jax.Array
  num_syncs: jax.Array
  key: jax.Array


_STATIC_HINT = ("under optax.inject_hyperparams list it in static_args "
                "(e.g. static_args=('period', 'seed'))")


def check_period(period: Any, name: str = "period") -> int:
  """Returns ``period`` as an int; raises unless it is an int ``>= 1``.

  Args:
    period: the value to check.
    name: how the error messages call it.

  Raises:
    TypeError: for a bool, a float, an array or a traced value (the period
      is replicated state, not an ``inject_hyperparams`` hyperparameter).
    ValueError: for an int below 1.
  """
  if isinstance(period, (bool, np.bool_)) or not isinstance(
      period, (int, np.integer)):
    raise TypeError(
        f"{name} must be a Python int >= 1; got {period!r}. It is "
        f"structural (the period is replicated state, "
        f"LocalSGDState.period), not a hyperparameter: {_STATIC_HINT}, and "
        f"let an adaptive rule rewrite state.period")
  if period < 1:
    raise ValueError(f"{name} must be an int >= 1; got {period}")
  return int(period)


def _check_count(name: str, value: Any) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, np.integer)):
    raise TypeError(f"{name} must be an int >= 0; got {value!r}; "
                    f"{_STATIC_HINT}")
  if value < 0:
    raise ValueError(f"{name} must be an int >= 0; got {value}")
  return int(value)


def _check_transform(name: str, tx: Any, optional: bool = False) -> None:
  if tx is None and optional:
    return
  if not isinstance(tx, optax.GradientTransformation):
    raise TypeError(
        f"{name} must be an optax GradientTransformation (e.g. "
        f"optax.sgd(0.1)); got {tx!r}")


def _check_communication(rule: Any, compressor: Any) -> None:
  if not (hasattr(rule, "init") and hasattr(rule, "update")
          and hasattr(rule, "is_mean")):
    raise TypeError(
        f"rule must be an AggregationRule (e.g. "
        f"alg.aggregators.trimmed_mean(1)); got {rule!r}")
  if not isinstance(compressor, compressors.Compressor):
    raise TypeError(
        f"compressor must be a Compressor (e.g. alg.compressors.qsgd(...)) "
        f"or None; got {compressor!r}")


def _cast_like(tree: Any, like: Any) -> Any:
  return jax.tree.map(lambda x, p: jnp.asarray(x).astype(p.dtype), tree, like)


def local_sgd(
    inner: optax.GradientTransformation,
    period: int,
    proximal_mu: Any = 0.0,
    *,
    outer: optax.GradientTransformation | None = None,
    state_policy: str = "keep",
    warmup_steps: int = 0,
    rule: aggregators.AggregationRule | None = None,
    compressor: compressors.Compressor | None = None,
    error_feedback: bool = False,
    worker_transform: optax.GradientTransformation | None = None,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Local SGD: local inner steps, a pseudo-gradient sync every ``period``.

  Worker :math:`i` holds its model :math:`w_i` (``params``); every worker
  holds the same global model :math:`x` (the model of the last sync). With
  gradient :math:`g_i` and :math:`H` = ``period``, one step is

  .. math::
    u_i &= \mathrm{inner}\big(g_i + \mu\,(w_i - x)\big) \\
    \text{no sync:}\quad w_i &\leftarrow w_i + u_i \\
    \text{sync:}\quad p_i &= x - (w_i + u_i), \qquad
      \hat p = \mathrm{rule}\big([\mathrm{decode}(\mathrm{encode}(p_j))]_j
      \big), \\
    x &\leftarrow x + \mathrm{outer}(\hat p), \qquad w_i \leftarrow x

  where a step syncs when it is the :math:`H`-th local step since the last
  sync. :math:`p_i` has a gradient's sign (DiLoCo, FedJAX): with the mean
  rule and ``outer = optax.sgd(1.0)`` (the default), :math:`x` becomes the
  average of the workers' models (FedAvg). The exchange is
  ``communication.exchange``, the round of ``distributed.aggregate``: the
  mean rule with a summable compressor is one all-reduce, any other rule
  an all-gather of the encoded pseudo-gradients. Its bytes are recorded in
  ``state.comm`` on sync steps only; between syncs the exchange sits in the
  untaken branch of a ``lax.cond`` on replicated state and does not run.

  What happens to the inner optimizer's state at a sync
  (``state_policy``): ``"keep"`` leaves each worker's own (torch post-local
  SGD, DiLoCo); ``"average"`` replaces its floating leaves by their mean
  over workers, one more all-reduce whose bytes are recorded (integer
  leaves, e.g. step counts, stay as they are); ``"reset"`` re-initialises
  it at the new global model (FedJAX, TFF, Flower).

  With ``warmup_steps > 0`` the first steps are synchronous data-parallel
  SGD (post-local SGD, Lin et al.): the gradients are exchanged every step
  (same rule and compressor, a memory of their own with error feedback)
  and the inner optimizer steps on the aggregate, so models and inner
  states stay identical; the last warm-up step also averages the models
  into :math:`x` (one model all-reduce). The outer optimizer and the
  proximal term act only after the warm-up.

  Under ``optax.inject_hyperparams`` list the structural integers
  (``period``, ``seed``, ``warmup_steps``; ``num_trimmed`` of ``slsgd``) in
  ``static_args``. Hyperparameters used on the workers alone
  (``proximal_mu``, an inner learning rate of the recipes) can then be
  scheduled; those that shape the replicated global model (an outer rate,
  SLSGD's ``alpha``) cannot, since the wrapper's state is per worker: the
  runtimes refuse it, naming ``global_params``. Schedule them inside
  ``outer``, whose state is replicated.

  Args:
    inner: the workers' optimizer, e.g. ``optax.sgd(0.1)``; it receives the
      worker's ``params`` and the extra arguments (``value=``).
    period: :math:`H \ge 1`, local steps per sync (the initial
      ``state.period``).
    proximal_mu: FedProx's :math:`\mu \ge 0`
      (``algorithms.local.proximal_gradient``; the anchor is :math:`x`,
      detached); 0 disables it.
    outer: the server optimizer on :math:`\hat p`, held once (replicated);
      default ``optax.sgd(1.0)``. It receives :math:`x` as ``params`` and no
      extra arguments.
    state_policy: one of :data:`STATE_POLICIES`, or a callable
      ``policy(inner_state, mean) -> inner_state`` run at each sync, where
      ``mean(tree)`` is an all-reduce mean over workers whose bytes are
      recorded (Local AdaAlter's accumulator sync).
    warmup_steps: synchronous steps before local SGD starts.
    rule: the aggregation rule over the pseudo-gradients; default the mean.
    compressor: how pseudo-gradients (and warm-up gradients) travel;
      default uncompressed.
    error_feedback: keep per-worker error memories for the compressor.
    worker_transform: applied by each worker to its pseudo-gradient before
      it travels (e.g. an attack of ``algorithms.attacks``); its state
      advances on sync steps only.
    axis_name: the logical worker axis.
    seed: seed of the key stream (salted with :data:`KEY_NAME`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`LocalSGDState`. ``update`` needs ``params`` (the worker's
    model); extra arguments reach the inner optimizer, the worker transform
    and the rule, which ignore those they do not use.

  Raises:
    TypeError: for a non-int ``period`` or ``warmup_steps``, an ``inner``
      or ``outer`` that is not an optax transformation, or a bad rule or
      compressor.
    ValueError: for ``period < 1``, ``warmup_steps < 0``, ``proximal_mu <
      0`` or an unknown ``state_policy``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from distoptax import distributed as dist
    >>> loss_fn = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
    >>> tx = dist.local_sgd(optax.sgd(0.1), period=2)
    >>> run = dist.simulate(dist.data_parallel(loss_fn, tx), num_workers=4)
    >>> state = run.init(jnp.zeros(3))
    >>> batch = (jnp.ones((4, 8, 3)), jnp.arange(32.0).reshape(4, 8))
    >>> for _ in range(4):
    ...   state, metrics = run.step(state, batch)
    ...   print(int(metrics["all_reduce_bytes"][0]), end=" ")
    0 12 0 12
    >>> bool(jnp.all(state.params == state.params[0]))  # Synced.
    True

  References:
    Stich, "Local SGD Converges Fast and Communicates Little", ICLR 2019,
    arXiv:1805.09767. McMahan et al., "Communication-Efficient Learning of
    Deep Networks from Decentralized Data", AISTATS 2017, arXiv:1602.05629.
    Lin, Stich, Patel, Jaggi, "Don't Use Large Mini-Batches, Use Local
    SGD", ICLR 2020, arXiv:1808.07217. Reddi et al., "Adaptive Federated
    Optimization", ICLR 2021, arXiv:2003.00295. Douillard et al., "DiLoCo",
    arXiv:2311.08105.

  Guarantees:
    Every worker leaves a sync with the same model (up to one rounding of
    :math:`x - w_i` added to :math:`w_i`) and ``global_params``,
    ``outer_state``, ``rule_state`` and the counters stay bit-identical on
    all workers. With ``period=1``, the mean rule, an uncompressed exchange,
    ``outer = optax.sgd(1.0)`` and an inner optimizer linear in the
    gradient (SGD with or without momentum), ``"keep"`` and ``"average"``
    give synchronous data-parallel SGD with that optimizer, ``"reset"`` the
    same without its state (tested). Stich proves, for convex objectives,
    the rate of mini-batch SGD in evaluated gradients (linear speed-up in
    the workers) with up to :math:`\sqrt{T}` times fewer syncs.
  """
  _check_transform("inner", inner)
  _check_transform("outer", outer, optional=True)
  _check_transform("worker_transform", worker_transform, optional=True)
  period = check_period(period)
  warmup_steps = _check_count("warmup_steps", warmup_steps)
  if isinstance(seed, (bool, np.bool_)) or not isinstance(
      seed, (int, np.integer)):
    raise TypeError(f"seed must be an int; got {seed!r}; {_STATIC_HINT}")
  local_math.check_proximal_mu(proximal_mu)
  if not callable(state_policy) and state_policy not in STATE_POLICIES:
    raise ValueError(f"state_policy must be one of {STATE_POLICIES}; got "
                     f"{state_policy!r} (or a callable policy(inner_state, "
                     f"mean))")
  if rule is None:
    rule = aggregators.mean()
  if compressor is None:
    compressor = compressors.identity()
  _check_communication(rule, compressor)
  inner = optax.with_extra_args_support(inner)
  outer = optax.with_extra_args_support(
      optax.sgd(1.0) if outer is None else outer)
  if worker_transform is not None:
    worker_transform = optax.with_extra_args_support(worker_transform)
  proximal = not (isinstance(proximal_mu, (int, float))
                  and proximal_mu == 0)

  def init_fn(params: optax.Params) -> LocalSGDState:
    num_workers = collectives.num_workers(axis_name)
    memory = communication.init_memory(params) if error_feedback else ()
    zero = jnp.zeros((), jnp.int32)
    return LocalSGDState(
        step=zero,
        since_sync=zero,
        period=jnp.asarray(period, jnp.int32),
        num_syncs=zero,
        global_params=params,
        outer_state=outer.init(params),
        rule_state=rule.init(params, num_workers),
        key=keys.transform_key(seed, KEY_NAME),
        inner_state=inner.init(params),
        worker_state=(() if worker_transform is None
                      else worker_transform.init(params)),
        comm=comm_stats.init_comm_stats(capacity=2),
        error=memory,
        warmup_error=memory if warmup_steps else ())

  def update_fn(
      updates: optax.Updates,
      state: LocalSGDState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, LocalSGDState]:
    if params is None:
      raise ValueError(
          "local_sgd.update needs params, the worker's local model "
          "(distributed.data_parallel passes them)")
    rounds = communication.Rounds(state.comm, axis_name)
    x = state.global_params

    def apply_policy(inner_state, new_global):
      if callable(state_policy):
        return state_policy(inner_state, rounds.mean)
      if state_policy == "keep":
        return inner_state
      if state_policy == "reset":
        return _cast_like(inner.init(new_global), inner_state)
      leaves, treedef = jax.tree.flatten(inner_state)
      floating = [i for i, leaf in enumerate(leaves)
                  if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)]
      if not floating:
        return inner_state
      means = rounds.mean([leaves[i] for i in floating])
      for i, mean in zip(floating, means):
        leaves[i] = mean.astype(jnp.asarray(leaves[i]).dtype)
      return treedef.unflatten(leaves)

    def local_phase(grads):
      if proximal:
        grads = local_math.proximal_gradient(grads, params, x, proximal_mu)

      def inner_step(grads):
        u, inner_state = inner.update(grads, state.inner_state, params,
                                      **extra_args)
        return _cast_like(u, params), inner_state

      u, inner_state = inner_step(grads)
      # Only what a sync changes goes through the conditional. The sync
      # branch recomputes the inner step from the gradients rather than
      # receiving it, and the per-worker updates (and the inner state under
      # "keep") are chosen after it: a local step then writes the updates
      # in the pass that applies them, as a plain optimizer step does, and
      # copies no model-sized buffer through the branch that keeps them.
      routes_inner = state_policy != "keep"

      def synced(grads, inner_state):
        del inner_state
        u, inner_state = inner_step(grads)
        key, next_key = communication.step_keys(state.key)
        pseudo = jax.tree.map(lambda g, w, d: (g - (w + d)).astype(w.dtype),
                              x, params, u)
        worker_state = state.worker_state
        if worker_transform is not None:
          pseudo, worker_state = worker_transform.update(
              pseudo, worker_state, x, **extra_args)
        out = communication.exchange(
            rounds, pseudo, compressor=compressor, rule=rule,
            rule_state=state.rule_state, key=key,
            memory=state.error if error_feedback else None, params=x,
            **extra_args)
        outer_updates, outer_state = outer.update(out.aggregate,
                                                  state.outer_state, x)
        new_global = _cast_like(optax.apply_updates(x, outer_updates), x)
        inner_state = (apply_policy(inner_state, new_global) if routes_inner
                       else ())
        return _Carry((), inner_state, worker_state, new_global,
                      outer_state, out.rule_state,
                      out.memory if error_feedback else (),
                      state.warmup_error, jnp.zeros((), jnp.int32),
                      state.num_syncs + 1, next_key)

      def stay(grads, inner_state):
        del grads
        return _Carry((), inner_state, state.worker_state, x,
                      state.outer_state, state.rule_state, state.error,
                      state.warmup_error, state.since_sync + 1,
                      state.num_syncs, state.key)

      sync_now = state.since_sync + 1 >= state.period
      carry = rounds.cond(sync_now, synced, stay, grads,
                          inner_state if routes_inner else ())
      updates = jax.tree.map(
          lambda g, w, d: jnp.where(sync_now, (g - w).astype(w.dtype), d),
          carry.global_params, params, u)
      return carry._replace(
          updates=updates,
          inner_state=carry.inner_state if routes_inner else inner_state)

    def warmup_phase(grads):
      key, next_key = communication.step_keys(state.key)
      out = communication.exchange(
          rounds, grads, compressor=compressor, rule=rule,
          rule_state=state.rule_state, key=key,
          memory=state.warmup_error if error_feedback else None, params=x,
          **extra_args)
      u, inner_state = inner.update(out.aggregate, state.inner_state,
                                    params, **extra_args)
      u = _cast_like(u, params)
      # The models agree; the last warm-up step makes them the global one.
      new_global = rounds.cond(
          state.step + 1 == warmup_steps,
          lambda u: _cast_like(rounds.mean(optax.apply_updates(params, u)),
                               x),
          lambda u: x, u)
      return _Carry(u, inner_state, state.worker_state, new_global,
                    state.outer_state, out.rule_state, state.error,
                    out.memory if error_feedback else (),
                    jnp.zeros((), jnp.int32), state.num_syncs, next_key)

    if warmup_steps:
      carry = rounds.cond(state.step < warmup_steps, warmup_phase,
                          local_phase, updates)
    else:
      carry = local_phase(updates)
    new_state = LocalSGDState(
        step=state.step + 1,
        since_sync=carry.since_sync,
        period=state.period,
        num_syncs=carry.num_syncs,
        global_params=carry.global_params,
        outer_state=carry.outer_state,
        rule_state=carry.rule_state,
        key=carry.key,
        inner_state=carry.inner_state,
        worker_state=carry.worker_state,
        comm=rounds.finish(),
        error=carry.error,
        warmup_error=carry.warmup_error)
    return carry.updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
