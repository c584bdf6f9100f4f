r"""CSER: communication-efficient SGD with error reset, an optax transformation.

Used inside ``distributed.data_parallel``, whose per-worker ``params`` are
the workers' **local models** :math:`x_i = \hat x + e_i`: a point common to
all workers plus a residual of their own (bifurcated local models). Every
step each worker takes an inner optimizer step (Nesterov SGD by default,
as in the authors' code); compressors move part of the update or of the
residual through an all-reduce (partial synchronisation), and the
residuals are **reset** periodically. Which compressor acts where is the
variant (:data:`VARIANTS`):

* ``"cser"``, the paper's Algorithm 1: C1 compresses the update every step
  (its mean is applied everywhere, its remainder locally, into
  :math:`e_i`); C2 resets the residuals every ``period`` steps.
* ``"cser_reference"``, the authors' ``ERSGD2Trainer``: the update is
  applied locally, C1 resets the residuals every step, and C2 (a bigger
  block) replaces it every ``period``-th step.
* ``"csea"``, the authors' ``ERSGDTrainer``: one reset with C1 every step.
* ``"cser_pl"``, partial local SGD: a reset with C2 every ``period`` steps
  and nothing in between.

Whether a step is a period step is decided by the replicated step counter,
so C2's collective sits in a branch of a ``lax.cond`` that is not taken on
the other steps (an HLO ``conditional`` on a mesh) and records bytes only
when it runs. Conventions and sources: ``third_party_notes/cser.md``.
"""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.algorithms import compressors
from distoptax.algorithms.local import error_reset
from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.worker_axis import collectives
from distoptax.worker_axis import keys
from distoptax.worker_axis import replication

KEY_NAME = "distoptax.distributed.cser"
"""Salt of :func:`cser`'s key stream (``worker_axis.transform_key``)."""


class Schedule(NamedTuple):
  """Where a variant uses its compressors (``"c1"``, ``"c2"`` or ``None``).

  Attributes:
    gradient: compresses the inner update every step (the paper's partial
      synchronisation of gradients).
    every_step: resets the residuals on the steps that are not period
      steps (every step if ``every_period`` is ``None``).
    every_period: resets the residuals every ``period``-th step.
  """

  gradient: str | None
  every_step: str | None
  every_period: str | None


VARIANTS = {
    "cser": Schedule(gradient="c1", every_step=None, every_period="c2"),
    "cser_reference": Schedule(gradient=None, every_step="c1",
                               every_period="c2"),
    "csea": Schedule(gradient=None, every_step="c1", every_period=None),
    "cser_pl": Schedule(gradient=None, every_step=None, every_period="c2"),
}
"""``cser(variant=...)``: each variant's :class:`Schedule`."""

FORMS = ("residual", "direct")
"""``cser(form=...)``: reset the compressed residual :math:`C(e_i)` (kept
in the state) or average the compressed model :math:`C(x_i)` (no residual
state; needs summable reset compressors)."""


@replication.replicated_fields("step", "num_resets", "key")
class CSERState(NamedTuple):
  """State of :func:`cser`.

  Attributes:
    step: updates so far (int32); replicated. Step ``t`` (from 0) is a
      period step when ``(t + 1) % period == 0``.
    num_resets: period resets so far (int32); replicated.
    key: shared PRNG key data, split every step; replicated. At ``init``:
      ``worker_axis.transform_key(seed, KEY_NAME)``. Compressors with
      ``shared_key`` (the block sparsifier) get the step's key itself,
      others ``fold_in(key, worker_index)``.
    inner_state: this worker's inner optimizer state (its momentum).
    error: this worker's residual :math:`e_i = x_i - \\hat x` in float32 or
      wider (``form="residual"``), or ``()`` (``form="direct"``).
    comm: the bytes this worker handed to collectives (``CommStats``; up to
      two rounds a step: the update's and the reset's).
  """

  step: jax.Array
  num_resets: jax.Array
  key: chex.PRNGKey
  inner_state: optax.OptState
  error: optax.Updates
  comm: comm_stats.CommStats


def _check_int(name: str, value: Any, low: int) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, np.integer)):
    raise TypeError(
        f"{name} must be a Python int >= {low}; got {value!r} (under "
        f"optax.inject_hyperparams list it in static_args)")
  if value < low:
    raise ValueError(f"{name} must be an int >= {low}; got {value}")
  return int(value)


def _check_compressor(name: str, compressor: Any) -> None:
  if compressor is not None and not isinstance(compressor,
                                               compressors.Compressor):
    raise TypeError(
        f"{name} must be a Compressor (e.g. alg.compressors.random_k(0.1) or "
        f"alg.local.block_sparsifier(64)) or None; got {compressor!r}")


def _average(rounds: communication.Rounds, compressor: compressors.Compressor,
             key: chex.PRNGKey, x: Any) -> tuple[Any, Any]:
  """One round: ``(C(x_i), mean_j C(x_j))`` in the dtypes of ``x``.

  All-reduce of the messages for a summable compressor, otherwise an
  all-gather of them, each decoded, then averaged.
  """
  if not compressor.shared_key:
    key = communication.worker_key(key, rounds.axis_name)
  message, _, coded = communication.encode(compressor, key, x)
  own = compressor.decode(message)
  n = collectives.num_workers(rounds.axis_name)
  if compressor.summable:
    total = compressor.decode(rounds.all_reduce(message, coded_bytes=coded))
    mean = jax.tree.map(lambda s: s / n, total)
  else:
    stacked = jax.vmap(compressor.decode)(
        rounds.all_gather(message, coded_bytes=coded))
    mean = jax.tree.map(lambda s: collectives.sum_over_workers(s) / n,
                        stacked)
  cast = lambda tree: jax.tree.map(lambda a, b: a.astype(b.dtype), tree, x)
  return cast(own), cast(mean)


def cser(
    inner: optax.GradientTransformation,
    period: int,
    c1: compressors.Compressor | None,
    c2: compressors.Compressor | None,
    *,
    variant: str = "cser",
    form: str = "residual",
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""CSER: partial synchronisation with compressors C1, C2 and error reset.

  Worker :math:`i` holds :math:`x_i` (``params``) and, in the residual
  form, :math:`e_i` with :math:`x_i - e_i = \hat x` the same on every
  worker. With :math:`u_i = \mathrm{inner}(g_i)` (an update, already
  scaled by the learning rate) one step of the paper's variant is

  .. math::
    r_i &= C_1(u_i), \quad
    x_i \leftarrow x_i + \tfrac1n \textstyle\sum_j r_j + (u_i - r_i),
    \quad e_i \leftarrow e_i + (u_i - r_i) \\
    \text{every } H \text{ steps:}\quad s_i &= C_2(e_i), \quad
    x_i \leftarrow x_i - s_i + \tfrac1n \textstyle\sum_j s_j, \quad
    e_i \leftarrow e_i - s_i

  (``algorithms.local.reset_residual``). The other variants of
  :data:`VARIANTS` apply :math:`u_i` locally (:math:`x_i, e_i
  \leftarrow x_i + u_i, e_i + u_i`) and reset with C1 every step and C2
  every ``period`` steps (``"cser_reference"``), with C1 every step
  (``"csea"``) or with C2 every ``period`` steps (``"cser_pl"``). In the
  direct form a reset compresses the model instead, :math:`x_i \leftarrow
  x_i - C(x_i) + \frac1n \sum_j C(x_j)` (``reset_direct``; for the block
  sparsifier: average the chosen block of the models), and no residual is
  kept.

  Every compressor of ``distoptax.algorithms.compressors`` plugs in as C1
  or C2: a summable one travels by all-reduce, any other by all-gather of
  the encoded messages (each decoded, then averaged). The bytes of every
  round are recorded in ``state.comm``; C2's round runs, and records, only
  on period steps.

  Args:
    inner: the workers' optimizer, e.g. ``optax.sgd(0.1, 0.9,
      nesterov=True)`` (:func:`block_cser`'s default); it receives the
      worker's ``params`` and the extra arguments.
    period: :math:`H \ge 1`, steps between resets with C2.
    c1: the cheap compressor (every step), or ``None`` where the variant
      does not use it.
    c2: the reset compressor (every ``period`` steps), or ``None`` where
      the variant does not use it.
    variant: a key of :data:`VARIANTS`.
    form: one of :data:`FORMS`.
    axis_name: the logical worker axis.
    seed: seed of the key stream (salted with :data:`KEY_NAME`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a :class:`CSERState`.
    ``update`` needs ``params`` (the worker's model) and returns the move
    of the worker's model.

  Raises:
    TypeError: for a non-int ``period`` or ``seed``, an ``inner`` that is
      not an optax transformation, or a compressor that is not a
      ``Compressor``.
    ValueError: for ``period < 1``, an unknown variant or form, a
      compressor the variant needs but is not given (or is given but not
      used), ``period > 1`` for a variant without period resets, or the
      direct form with a reset compressor that is not summable.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from distoptax import distributed as dist
    >>> from distoptax.algorithms.local import error_reset
    >>> from distoptax.distributed.cser import cser
    >>> loss_fn = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
    >>> tx = cser(optax.sgd(0.1), 2, error_reset.block_sparsifier(4),
    ...           error_reset.block_sparsifier(1))
    >>> run = dist.simulate(dist.data_parallel(loss_fn, tx), num_workers=4)
    >>> state = run.init(jnp.zeros(8))
    >>> batch = (jnp.ones((4, 8, 8)), jnp.arange(32.0).reshape(4, 8))
    >>> for _ in range(4):  # C1: 2 of 8 entries + 8 bytes; C2: 8 + 8.
    ...   state, metrics = run.step(state, batch)
    ...   print(int(metrics["all_reduce_bytes"][0]), end=" ")
    16 56 16 56
    >>> float(jnp.abs(state.opt_state.error).max())  # Reset: C2 = id.
    0.0
    >>> bool(jnp.allclose(state.params, state.params[0]))
    True

  References:
    Xie, Zheng, Koyejo, Gupta, Li, Lin, "CSER: Communication-efficient SGD
    with Error Reset", NeurIPS 2020, arXiv:2007.13221 (Algorithm 1; the
    variants from xcgoner/NeurIPS2020_CSER). Basu, Data, Karakus, Diggavi,
    "Qsparse-local-SGD", NeurIPS 2019, arXiv:1906.02367.

  Guarantees:
    In the residual form :math:`x_i - e_i` is the same on every worker
    after every step (up to float rounding), and the replicated fields stay
    bit-identical. A reset with C2 = identity (or a block of ratio 1) makes
    every residual zero and all models equal. With ``period=1``, an inner
    optimizer linear in the gradient (SGD, heavy-ball or Nesterov
    momentum) and C2 = identity, ``"cser"``, ``"cser_reference"`` and
    ``"cser_pl"`` are synchronous data-parallel SGD with that optimizer;
    ``"cser"`` with C1 = identity is too, for any C2 and period (tested).
    The residual and direct forms give the same models for any linear
    compressor with shared randomness (the block sparsifier, unscaled
    shared-seed random-k; tested). The paper proves, for smooth non-convex
    objectives, the rate of SGD up to terms in the compressors' variance
    bounds.
  """
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(f"inner must be an optax GradientTransformation (e.g. "
                    f"optax.sgd(0.1, 0.9, nesterov=True)); got {inner!r}")
  period = _check_int("period", period, 1)
  if isinstance(seed, (bool, np.bool_)) or not isinstance(
      seed, (int, np.integer)):
    raise TypeError(f"seed must be an int; got {seed!r}")
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {sorted(VARIANTS)}; got "
                     f"{variant!r}")
  if form not in FORMS:
    raise ValueError(f"form must be one of {FORMS}; got {form!r}")
  _check_compressor("c1", c1)
  _check_compressor("c2", c2)
  schedule = VARIANTS[variant]
  given = {"c1": c1, "c2": c2}
  used = {role for role in schedule if role is not None}
  for role, compressor in given.items():
    if role in used and compressor is None:
      raise ValueError(f"variant {variant!r} uses {role}; got {role}=None")
    if role not in used and compressor is not None:
      raise ValueError(f"variant {variant!r} does not use {role}; pass "
                       f"{role}=None (got {compressor!r})")
  if schedule.every_period is None and period != 1:
    raise ValueError(f"variant {variant!r} resets every step and has no "
                     f"period; period must be 1, got {period}")
  if form == "direct":
    for role in (schedule.every_step, schedule.every_period):
      if role is not None and not given[role].summable:
        raise ValueError(
            f"form='direct' averages C({role})(x_i) with an all-reduce and "
            f"needs a summable {role} (block sparsifier, random_k, "
            f"identity, casts); use form='residual' for it")
  inner = optax.with_extra_args_support(inner)
  residual = form == "residual"

  def init_fn(params: optax.Params) -> CSERState:
    zero = jnp.zeros((), jnp.int32)
    return CSERState(
        step=zero, num_resets=zero, key=keys.transform_key(seed, KEY_NAME),
        inner_state=inner.init(params),
        error=communication.init_memory(params) if residual else (),
        comm=comm_stats.init_comm_stats(capacity=2))

  def update_fn(
      updates: optax.Updates,
      state: CSERState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, CSERState]:
    if params is None:
      raise ValueError("cser.update needs params, the worker's local model "
                       "(distributed.data_parallel passes them)")
    key, next_key = communication.step_keys(state.key)
    gradient_key, reset_key = jax.random.split(key)
    rounds = communication.Rounds(state.comm, axis_name)
    u, inner_state = inner.update(updates, state.inner_state, params,
                                  **extra_args)
    u = jax.tree.map(lambda d, p: d.astype(p.dtype), u, params)
    if schedule.gradient is None:
      move, kept = u, u
    else:
      own, mean = _average(rounds, given[schedule.gradient], gradient_key, u)
      kept = jax.tree.map(lambda d, r: d - r, u, own)
      move = jax.tree.map(lambda m, k: m + k, mean, kept)
    error = (jax.tree.map(lambda e, k: e + k.astype(e.dtype), state.error,
                          kept) if residual else ())
    moved = optax.apply_updates(params, move)

    def reset(role):
      def run(move, error):
        if residual:
          own, mean = _average(rounds, given[role], reset_key, error)
          delta, error = error_reset.reset_residual(params, error, own, mean)
        else:
          own, mean = _average(rounds, given[role], reset_key, moved)
          delta = error_reset.reset_direct(params, own, mean)
        return jax.tree.map(lambda a, b: a + b, move, delta), error
      return run

    def no_reset(move, error):
      return move, error

    on_step = (no_reset if schedule.every_step is None
               else reset(schedule.every_step))
    num_resets = state.num_resets
    if schedule.every_period is None:
      move, error = on_step(move, error)
    else:
      is_period = (state.step + 1) % period == 0
      move, error = rounds.cond(is_period, reset(schedule.every_period),
                                on_step, move, error)
      num_resets = num_resets + is_period.astype(jnp.int32)
    new_state = CSERState(
        step=state.step + 1, num_resets=num_resets, key=next_key,
        inner_state=inner_state, error=error, comm=rounds.finish())
    return move, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def block_cser(
    learning_rate: Any,
    ratio1: float,
    ratio2: float,
    period: int | None = None,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    variant: str = "cser_reference",
    form: str = "residual",
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""CSER as the authors run it: block sparsifiers and Nesterov SGD.

  :func:`cser` with ``inner = optax.sgd(learning_rate, momentum,
  nesterov=nesterov)``, C1 = ``block_sparsifier(ratio1)`` and C2 =
  ``block_sparsifier(ratio2)`` (the authors' CIFAR scripts: ``R1 in {4, 8,
  16, 32}``, ``R2 in {2, 4}``, ``H = R1 / R2``). The overall compression
  ratio is ``algorithms.local.overall_ratio(ratio1, ratio2, period,
  replace=variant == "cser_reference")``.

  Args:
    learning_rate: the inner SGD rate (a scalar or an optax schedule).
    ratio1: :math:`R_1`, C1's compression ratio.
    ratio2: :math:`R_2 \le R_1`, C2's.
    period: :math:`H`; default ``R1 / R2`` (which must then be an int).
    momentum: the workers' momentum (0 for none).
    nesterov: Nesterov momentum (the authors' NAG) or heavy ball.
    variant: ``"cser_reference"`` (default) or ``"cser"``
      (:data:`VARIANTS` with both compressors).
    form: one of :data:`FORMS`.
    axis_name: the logical worker axis.
    seed: seed of the key stream.

  Returns:
    The transformation of :func:`cser`.

  Raises:
    ValueError: for ``ratio2 > ratio1``, a ratio below 1, a default period
      that is not an int, or what :func:`cser` refuses.

  Example:
    >>> tx = block_cser(0.1, 8, 2)   # H = 4.
    >>> block_cser(0.1, 2, 8)
    Traceback (most recent call last):
    ...
    ValueError: ratio2=8 exceeds ratio1=2: C2 (every H steps) must send ...
  """
  r1, r2 = error_reset.check_ratios(ratio1, ratio2)
  if period is None:
    if r1 / r2 != int(r1 / r2):
      raise ValueError(f"period defaults to ratio1 / ratio2 = {r1 / r2:g}, "
                       f"not an int; pass period")
    period = int(r1 / r2)
  if variant not in ("cser", "cser_reference"):
    raise ValueError(f"block_cser uses both compressors: variant must be "
                     f"'cser' or 'cser_reference'; got {variant!r}")
  inner = optax.sgd(learning_rate, momentum=momentum or None,
                    nesterov=nesterov)
  return cser(inner, period, error_reset.block_sparsifier(r1),
              error_reset.block_sparsifier(r2), variant=variant, form=form,
              axis_name=axis_name, seed=seed)
