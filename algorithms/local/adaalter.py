r"""Local AdaAlter's worker step and its accumulator sync (pure math).

AdaAlter (Xie et al., arXiv:1911.09030) is an "alternating" AdaGrad: step
:math:`t` divides by the accumulator **before** adding :math:`g_t^2`, and
weight decay is not preconditioned. Its local version freezes that
denominator between syncs while a local accumulator grows; a sync averages
the accumulators over workers and the average becomes the new denominator.
:func:`local_adaalter_step` is the worker's step (no collective) and
:func:`sync_accumulators` the state update at a sync, given a mean over
workers; ``distributed.local_adaalter`` composes them with ``local_sgd``.
Conventions and sources: ``third_party_notes/local_adaalter.md``.
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

DENOMINATORS = ("constant", "paper")
r"""Values of ``denominator=``: :math:`\sqrt{B + \epsilon}` (``"constant"``,
the authors' code) or :math:`\sqrt{B + t'\epsilon^2}` (``"paper"``, with
:math:`t'` the local steps since the last sync, this one included)."""


class LocalAdaAlterState(NamedTuple):
  """State of :func:`local_adaalter_step` (per worker).

  Attributes:
    denominator: :math:`B`, the accumulator of the last sync; frozen
      between syncs and the same on every worker after one.
    accumulator: :math:`A`, :math:`B` plus this worker's squared gradients
      since the last sync.
    local_steps: :math:`t'`, local steps since the last sync (int32).
  """

  denominator: optax.Updates
  accumulator: optax.Updates
  local_steps: jax.Array


def _check_positive(name: str, value: Any, allow_zero: bool) -> None:
  if isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, float, np.number)):
    raise TypeError(f"{name} must be a real number; got {value!r}")
  ok = value >= 0 if allow_zero else value > 0
  if not (math.isfinite(float(value)) and ok):
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")


def check_denominator(denominator: Any) -> str:
  """Returns ``denominator``; raises ``ValueError`` unless known."""
  if denominator not in DENOMINATORS:
    raise ValueError(f"denominator must be one of {DENOMINATORS}; got "
                     f"{denominator!r}")
  return denominator


def local_adaalter_step(
    learning_rate: Any,
    eps: Any = 1e-7,
    weight_decay: Any = 0.0,
    *,
    denominator: str = "constant",
) -> optax.GradientTransformationExtraArgs:
  r"""Local AdaAlter's step between syncs: a frozen AdaGrad denominator.

  .. math::
    t' &\leftarrow t' + 1 \\
    u &= -\eta\,\Big(\frac{g}{\sqrt{B + e}} + \lambda\,w\Big), \qquad
      e = \epsilon \text{ (constant) or } t'\epsilon^2 \text{ (paper)} \\
    A &\leftarrow A + g^2

  :math:`B` stays as it is until :func:`sync_accumulators`. Used alone on
  one worker with a sync after every step (:math:`B \leftarrow A`) it is
  AdaAlter.

  Args:
    learning_rate: :math:`\eta`.
    eps: :math:`\epsilon > 0` (the authors' code: 1e-7 under the root).
    weight_decay: :math:`\lambda \ge 0`, added after the division.
    denominator: one of :data:`DENOMINATORS`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`LocalAdaAlterState`; ``update`` needs ``params`` when
    ``weight_decay`` is not 0; extra arguments are ignored.

  Raises:
    TypeError: for a hyperparameter that is not a real number.
    ValueError: for ``eps <= 0``, ``weight_decay < 0``, ``learning_rate <
      0`` or an unknown ``denominator``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms import local
    >>> tx = local.local_adaalter_step(0.1, eps=1.0)
    >>> state = tx.init(jnp.zeros(2))
    >>> u, state = tx.update(jnp.array([1.0, 2.0]), state)
    >>> u  # Divided by sqrt(0 + 1): the gradient is not in B yet.
    Array([-0.1, -0.2], dtype=float32)
    >>> state.accumulator, state.denominator
    (Array([1., 4.], dtype=float32), Array([0., 0.], dtype=float32))

  References:
    Xie, Zheng, Koyejo, Gupta, Li, Lin, "Local AdaAlter:
    Communication-Efficient Stochastic Gradient Descent with Adaptive
    Learning Rates", arXiv:1911.09030.
  """
  _check_positive("learning_rate", learning_rate, allow_zero=True)
  _check_positive("eps", eps, allow_zero=False)
  _check_positive("weight_decay", weight_decay, allow_zero=True)
  check_denominator(denominator)

  def init_fn(params: optax.Params) -> LocalAdaAlterState:
    zeros = jax.tree.map(jnp.zeros_like, params)
    return LocalAdaAlterState(zeros, zeros, jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None and not (isinstance(weight_decay, (int, float))
                               and weight_decay == 0):
      raise ValueError("local_adaalter_step.update needs params when "
                       "weight_decay is not 0")
    local_steps = state.local_steps + 1
    if denominator == "constant":
      extra = eps
    else:
      extra = local_steps.astype(jnp.float32) * jnp.square(eps)

    def step(g, b, w):
      u = g / jnp.sqrt(b + extra)
      if w is not None:
        u = u + weight_decay * w
      return (-learning_rate * u).astype(g.dtype)

    if params is None:
      out = jax.tree.map(lambda g, b: step(g, b, None), updates,
                         state.denominator)
    else:
      out = jax.tree.map(step, updates, state.denominator, params)
    accumulator = jax.tree.map(lambda a, g: a + jnp.square(g),
                               state.accumulator, updates)
    return out, LocalAdaAlterState(state.denominator, accumulator,
                                   local_steps)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sync_accumulators(
    state: LocalAdaAlterState,
    mean: Callable[[Any], Any],
) -> LocalAdaAlterState:
  r"""The sync of Local AdaAlter's state: :math:`B, A \leftarrow \bar A`.

  .. math::
    \bar A = \frac{1}{n}\sum_j A_j, \qquad B \leftarrow \bar A, \qquad
    A \leftarrow \bar A, \qquad t' \leftarrow 0

  Args:
    state: this worker's :class:`LocalAdaAlterState`.
    mean: a mean over workers of a pytree (one all-reduce), e.g.
      ``distributed.Rounds.mean``.

  Returns:
    The synced state; its denominator is the all-reduce result itself, so
    it is bit-identical on every worker.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> from distoptax.algorithms import local
    >>> def sync(a):
    ...   state = local.LocalAdaAlterState(jnp.zeros(2), a, jnp.int32(3))
    ...   return local.sync_accumulators(
    ...       state, lambda x: jax.lax.pmean(x, dist.WORKERS))
    >>> out = jax.vmap(sync, axis_name=dist.WORKERS)(
    ...     jnp.array([[1.0, 2.0], [3.0, 6.0]]))
    >>> out.denominator, out.local_steps
    (Array([[2., 4.],
           [2., 4.]], dtype=float32), Array([0, 0], dtype=int32))
  """
  averaged = mean(state.accumulator)
  averaged = jax.tree.map(lambda m, a: m.astype(a.dtype), averaged,
                          state.accumulator)
  return LocalAdaAlterState(averaged, averaged,
                            jnp.zeros_like(state.local_steps))
