r"""AdaComm: local SGD whose period follows the training loss.

:func:`adacomm` wraps :func:`~distoptax.distributed.local_sgd` and rewrites
its replicated ``LocalSGDState.period`` from the training loss that optax
passes as ``value=`` (``distributed.data_parallel`` passes ``value=loss``),
averaged over workers by an all-reduce of one float32. The rule and its
forms are ``algorithms.local.adacomm_period``; conventions and sources in
``third_party_notes/adacomm.md``.

The interval of the rule is counted in steps (``interval``) or, as in the
paper, in seconds of the simulated clock (``interval_seconds``): the caller
passes the clock's time as the extra argument ``simulated_seconds=`` (the
trainer gives ``Runtime.step`` its clock's time as a host input, which
``data_parallel`` hands to ``tx.update``).
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from distoptax.algorithms import aggregators
from distoptax.algorithms import compressors
from distoptax.algorithms import local as local_math
from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.distributed import local_sgd as local_sgd_lib
from distoptax.worker_axis import collectives
from distoptax.worker_axis import replication


@replication.replicated_fields("initial_loss", "loss", "since_update",
                               "initial_lr", "updated_at")
class AdaCommState(NamedTuple):
  """State of :func:`adacomm`.

  Attributes:
    local: the wrapped :class:`~distoptax.distributed.LocalSGDState`; its
      replicated ``period`` is the current :math:`\\tau`.
    initial_loss: :math:`F_0`, the worker-averaged loss of the first step
      (float32); replicated.
    loss: the worker-averaged loss of the last period update (float32);
      replicated.
    since_update: steps since the period was last recomputed (int32);
      replicated.
    initial_lr: :math:`\\eta_0` of ``learning_rate`` at step 0 (float32; 1
      without one); replicated.
    updated_at: the simulated seconds (``simulated_seconds=``) of the last
      recomputation (float32; 0 when the interval is in steps); replicated.
    comm: the bytes of the loss all-reduces (``CommStats``, per worker).
  """

  local: local_sgd_lib.LocalSGDState
  initial_loss: jax.Array
  loss: jax.Array
  since_update: jax.Array
  initial_lr: jax.Array
  comm: comm_stats.CommStats
  updated_at: jax.Array


def adacomm(
    inner: optax.GradientTransformation,
    tau_0: int,
    tau_max: int = 16,
    interval: int = 1,
    *,
    interval_seconds: float | None = None,
    form: str = "paper",
    learning_rate: Callable[[jax.Array], Any] | None = None,
    outer: optax.GradientTransformation | None = None,
    state_policy: str = "keep",
    rule: aggregators.AggregationRule | None = None,
    compressor: compressors.Compressor | None = None,
    error_feedback: bool = False,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaComm: local SGD with a period recomputed from the averaged loss.

  Local SGD (:func:`~distoptax.distributed.local_sgd`) starts with period
  :math:`\tau_0`. Step 0 averages the workers' losses into :math:`F_0`.
  Afterwards, at each sync that comes at least ``interval`` steps (or
  ``interval_seconds`` simulated seconds) after the last recomputation,
  the workers' losses of that step are averaged into :math:`F` and the
  period of the next syncs becomes

  .. math::
    \tau = \min\Big(\tau_{\max}, \max\big(1, \big\lceil
      \sqrt{(\eta_0/\eta)\,F/F_0}\;\tau_0 \big\rceil\big)\Big)
    \quad\text{(``form="paper"``)}

  or :math:`\lceil\sqrt{(\eta_0/\eta)(F/F_0)\,\tau_0}\rceil` clipped
  likewise (``form="paddle"``, PaddlePaddle Fleet), with
  :math:`\eta_0/\eta = 1` without a ``learning_rate`` schedule. ``interval
  = 1`` recomputes at every sync, as Paddle does.

  The loss average is a float32 all-reduce (4 bytes, recorded in
  ``state.comm``) under a ``lax.cond`` on replicated state: it runs only at
  step 0 and on the sync steps that recompute the period, and the period
  and the sync decision are the same on every worker, so the sync's
  collectives are really skipped between syncs.

  Args:
    inner: the workers' optimizer (as in ``local_sgd``).
    tau_0: the initial period :math:`\tau_0 \ge 1` (see
      ``algorithms.local.choose_initial_period``).
    tau_max: the largest period, :math:`\ge \tau_0` (Paddle: 16).
    interval: steps between recomputations, an int :math:`\ge 1`; the
      period changes at the first sync after that many steps.
    interval_seconds: instead of ``interval``, simulated seconds between
      recomputations (a finite float :math:`> 0`), as in the paper; the
      period changes at the first sync at which the extra argument
      ``simulated_seconds=`` (the clock's time, the same on every worker)
      is at least this much past the last recomputation. ``None``: count
      steps.
    form: a key of ``algorithms.local.PERIOD_FORMS``.
    learning_rate: the inner optimizer's schedule ``step -> rate``, for the
      ratio :math:`\eta_0/\eta`; ``None``: ratio 1.
    outer: the server optimizer (as in ``local_sgd``).
    state_policy: as in ``local_sgd``.
    rule: as in ``local_sgd``.
    compressor: as in ``local_sgd``.
    error_feedback: as in ``local_sgd``.
    axis_name: the logical worker axis.
    seed: as in ``local_sgd``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with an
    :class:`AdaCommState`. ``update`` needs ``params`` and ``value=`` (this
    worker's training loss), and ``simulated_seconds=`` with
    ``interval_seconds``; other extra arguments go to ``local_sgd``.

  Raises:
    TypeError: for non-int ``tau_0``, ``tau_max`` or ``interval``, a
      non-number ``interval_seconds``, a ``learning_rate`` that is not
      callable, or a bad ``local_sgd`` argument.
    ValueError: for ``tau_0 < 1``, ``tau_max < tau_0``, ``interval < 1``,
      ``interval_seconds`` not finite and > 0, both ``interval`` and
      ``interval_seconds`` given, an unknown ``form``, a bad ``local_sgd``
      argument, or (at the first ``update``) a missing ``value=`` or
      ``simulated_seconds=``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from distoptax import distributed as dist
    >>> loss_fn = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
    >>> tx = dist.adacomm(optax.sgd(0.01), tau_0=4, tau_max=8)
    >>> run = dist.simulate(dist.data_parallel(loss_fn, tx), num_workers=4)
    >>> state = run.init(jnp.zeros(3))
    >>> batch = (jnp.ones((4, 8, 3)), jnp.ones((4, 8)))
    >>> periods = []
    >>> for _ in range(12):
    ...   state, _ = run.step(state, batch)
    ...   periods.append(int(state.opt_state.local.period))
    >>> periods  # The loss falls: tau_0 = 4, then sqrt(F/F_0) * 4.
    [4, 4, 4, 4, 4, 4, 4, 3, 3, 3, 3, 3]

  References:
    Wang, Joshi, "Adaptive Communication Strategies to Achieve the Best
    Error-Runtime Trade-off in Local-Update SGD", MLSys 2019,
    arXiv:1810.08313.

  Guarantees:
    The period, :math:`F_0`, :math:`F` and the counters are bit-identical
    on every worker (they come from all-reduce results and replicated
    counters). The paper bounds the error of periodic averaging after a
    fixed wall-clock time by an optimisation term that falls and a drift
    term that grows with :math:`\tau`; the minimising :math:`\tau` scales
    as :math:`\sqrt{F - F_{\inf}}`, which this rule tracks with
    :math:`F_{\inf} \approx 0`. With a constant loss the period stays
    :math:`\tau_0` (``form="paper"``).
  """
  tau_0, tau_max = local_math.check_periods(tau_0, tau_max)
  interval = local_sgd_lib.check_period(interval, name="interval")
  if interval_seconds is not None:
    if isinstance(interval_seconds, bool) or not isinstance(
        interval_seconds, (int, float)):
      raise TypeError(f"interval_seconds must be a number or None; got "
                      f"{interval_seconds!r}")
    if not (math.isfinite(interval_seconds) and interval_seconds > 0):
      raise ValueError(f"interval_seconds must be a finite number > 0 or "
                       f"None; got {interval_seconds!r}")
    if interval != 1:
      raise ValueError(
          f"give the interval in steps (interval={interval}) or in "
          f"simulated seconds (interval_seconds={interval_seconds}), not "
          "both")
  form_name = local_math.check_form(form)
  if learning_rate is not None and not callable(learning_rate):
    raise TypeError(f"learning_rate must be a schedule (step -> rate) or "
                    f"None; got {learning_rate!r}")
  local = local_sgd_lib.local_sgd(
      inner, tau_0, outer=outer, state_policy=state_policy, rule=rule,
      compressor=compressor, error_feedback=error_feedback,
      axis_name=axis_name, seed=seed)

  def rate(step):
    if learning_rate is None:
      return jnp.ones((), jnp.float32)
    return jnp.asarray(learning_rate(step), jnp.float32)

  def init_fn(params: optax.Params) -> AdaCommState:
    zero = jnp.zeros((), jnp.float32)
    return AdaCommState(
        local=local.init(params),
        initial_loss=zero,
        loss=zero,
        since_update=jnp.zeros((), jnp.int32),
        initial_lr=rate(jnp.zeros((), jnp.int32)),
        comm=comm_stats.init_comm_stats(capacity=1),
        updated_at=zero)

  def update_fn(
      updates: optax.Updates,
      state: AdaCommState,
      params: optax.Params | None = None,
      value: Any = None,
      simulated_seconds: Any = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, AdaCommState]:
    if value is None:
      raise ValueError(
          "adacomm.update needs value=, this worker's training loss (a "
          "scalar; distributed.data_parallel passes value=loss)")
    if interval_seconds is not None and simulated_seconds is None:
      raise ValueError(
          f"adacomm(interval_seconds={interval_seconds}) needs "
          "simulated_seconds=, the clock's time (the same on every worker; "
          "give Runtime.step inputs={'simulated_seconds': ...})")
    before = state.local
    updates, after = local.update(updates, before, params, value=value,
                                  **extra_args)
    first = before.step == 0
    synced = after.num_syncs > before.num_syncs
    if interval_seconds is None:
      now = state.updated_at
      waited = state.since_update + 1 >= interval
    else:
      now = jnp.asarray(simulated_seconds, jnp.float32).reshape(())
      waited = now - state.updated_at >= interval_seconds
    due = first | (synced & waited)
    rounds = communication.Rounds(state.comm, axis_name)

    def recompute(loss):
      mean = rounds.mean(jnp.asarray(loss, jnp.float32).reshape(()))
      initial = jnp.where(first, mean, state.initial_loss)
      period = local_math.adacomm_period(
          mean, initial, tau_0, tau_max, form=form_name,
          lr_ratio=state.initial_lr / rate(before.step),
          previous=after.period)
      return mean, initial, jnp.where(first, after.period, period)

    def keep(loss):
      del loss
      return state.loss, state.initial_loss, after.period

    loss, initial, period = rounds.cond(due, recompute, keep, value)
    new_state = AdaCommState(
        local=after._replace(period=period),
        initial_loss=initial,
        loss=loss,
        since_update=jnp.where(due, 0, state.since_update + 1),
        initial_lr=state.initial_lr,
        comm=rounds.finish(),
        updated_at=jnp.where(due, now, state.updated_at))
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
