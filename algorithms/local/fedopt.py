r"""FedOpt's adaptive server rules (FedAdagrad, FedAdam, FedYogi).

Reddi et al. (ICLR 2021, arXiv:2003.00295) run an adaptive optimizer on the
server, fed the round's averaged model difference. This module holds that
server rule as an optax transformation of the **pseudo-gradient**
:math:`p = x - \bar x` (global model minus the mean of the workers'
models: a gradient-like sign, as DiLoCo and FedJAX feed their server
optimizers; the paper's :math:`\Delta` is :math:`-p`). It runs inside
``distoptax.distributed.local_sgd`` as the outer optimizer.

Conventions (``third_party_notes/local_sgd.md``): the paper's update box
as the peers that implement it (Flower, FedLab, APPFL) read it, with no
bias correction and both moments starting at zero
(``initial_accumulator`` sets :math:`v_{-1}`); FedAdagrad keeps the
first-moment average with :math:`\beta_1` like the other two. The paper's
experiments instead ran Keras' ``Adam``/``Adagrad`` (bias-corrected Adam,
Adagrad without momentum): ``optax.adam(eta, eps=tau)`` and
``optax.adagrad(eta)`` as the outer optimizer give those.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

FEDOPT_KINDS = ("adagrad", "adam", "yogi")
"""Values of ``fedopt_server(kind=...)``."""


class FedOptServerState(NamedTuple):
  """State of :func:`fedopt_server`.

  Attributes:
    m: the first moment :math:`m_t` of the pseudo-gradients (float32 or
      wider).
    v: the second-moment accumulator :math:`v_t` (float32 or wider).
  """

  m: optax.Updates
  v: optax.Updates


def _check_scalar(name: str, value: Any, low: float, high: float,
                  low_open: bool, high_open: bool) -> None:
  """Raises unless a concrete ``value`` lies in the interval; traced: ok."""
  if isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, float, np.number, np.ndarray, jax.Array)):
    raise TypeError(f"{name} must be a real number; got {value!r}")
  x = float(np.asarray(value))
  below = x <= low if low_open else x < low
  above = x >= high if high_open else x > high
  if below or above or not math.isfinite(x):
    interval = (("(" if low_open else "[") + f"{low}, {high}"
                + (")" if high_open else "]"))
    raise ValueError(f"{name} must lie in {interval}; got {value!r}")


def fedopt_server(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.99,
    tau: Any = 1e-3,
    *,
    kind: str = "adam",
    initial_accumulator: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""FedAdagrad / FedAdam / FedYogi's server step on a pseudo-gradient.

  With :math:`p_t` the (aggregated) pseudo-gradient of round :math:`t`:

  .. math::
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, p_t \\
    v_t &= \begin{cases}
      v_{t-1} + p_t^2 & \text{FedAdagrad} \\
      \beta_2 v_{t-1} + (1 - \beta_2)\, p_t^2 & \text{FedAdam} \\
      v_{t-1} - (1 - \beta_2)\, p_t^2 \operatorname{sign}(v_{t-1} - p_t^2)
        & \text{FedYogi}
    \end{cases} \\
    u_t &= -\eta\, \frac{m_t}{\sqrt{v_t} + \tau}

  elementwise, :math:`m_{-1} = 0`, :math:`v_{-1}` =
  ``initial_accumulator``, no bias correction. Applied to the global model
  :math:`x` (``x + u``) it is the paper's
  :math:`x_{t+1} = x_t + \eta\, m_t / (\sqrt{v_t} + \tau)` written with
  :math:`\Delta_t = -p_t`.

  Args:
    learning_rate: the server rate :math:`\eta`.
    b1: :math:`\beta_1 \in [0, 1)`.
    b2: :math:`\beta_2 \in [0, 1)` (unused by FedAdagrad).
    tau: the adaptivity :math:`\tau > 0`.
    kind: one of :data:`FEDOPT_KINDS`.
    initial_accumulator: :math:`v_{-1} \ge 0`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`FedOptServerState`; it ignores ``params`` and extra arguments.

  Raises:
    ValueError: for an unknown ``kind`` or a hyperparameter out of range.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms import local
    >>> tx = local.fedopt_server(1.0, b1=0.0, b2=0.0, tau=1e-9)
    >>> p = jnp.array([2.0, -0.5])   # Global minus mean local model.
    >>> tx.update(p, tx.init(p))[0]   # -sign(p): towards the workers.
    Array([-1.,  1.], dtype=float32)

  References:
    Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan,
    "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295.
  """
  if kind not in FEDOPT_KINDS:
    raise ValueError(f"kind must be one of {FEDOPT_KINDS}; got {kind!r}")
  _check_scalar("b1", b1, 0.0, 1.0, False, True)
  _check_scalar("b2", b2, 0.0, 1.0, False, True)
  _check_scalar("tau", tau, 0.0, math.inf, True, True)
  _check_scalar("initial_accumulator", initial_accumulator, 0.0, math.inf,
                False, True)

  def wide(x):
    return jnp.promote_types(x.dtype, jnp.float32)

  def init_fn(params: optax.Params) -> FedOptServerState:
    m = jax.tree.map(lambda x: jnp.zeros(x.shape, wide(x)), params)
    v = jax.tree.map(
        lambda x: jnp.full(x.shape, initial_accumulator, wide(x)), params)
    return FedOptServerState(m, v)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args

    def second(v, p2):
      if kind == "adagrad":
        return v + p2
      if kind == "adam":
        return b2 * v + (1 - b2) * p2
      return v - (1 - b2) * p2 * jnp.sign(v - p2)

    m = jax.tree.map(lambda m, p: b1 * m + (1 - b1) * p.astype(m.dtype),
                     state.m, updates)
    v = jax.tree.map(lambda v, p: second(v, jnp.square(p.astype(v.dtype))),
                     state.v, updates)
    out = jax.tree.map(
        lambda m, v, p: (-learning_rate * m / (jnp.sqrt(v) + tau)).astype(
            p.dtype), m, v, updates)
    return out, FedOptServerState(m, v)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
