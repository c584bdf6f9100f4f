r"""AdaComm's period rule: the communication period from the loss ratio.

Wang & Joshi (MLSys 2019, arXiv:1810.08313) pick the period of local SGD
from the training loss: large while the loss is high (cheap rounds), small
as it falls (a lower error floor). Two forms of the rule are registered in
:data:`PERIOD_FORMS` (``third_party_notes/adacomm.md``):

* ``"paper"``: :math:`\tau = \lceil \sqrt{r\,F/F_0}\;\tau_0 \rceil`, the
  paper's rule (with a learning-rate ratio :math:`r = \eta_0/\eta` under
  the root; :math:`r = 1` without a schedule);
* ``"paddle"``: :math:`\tau = \lceil \sqrt{r\,(F/F_0)\,\tau_0} \rceil`,
  PaddlePaddle Fleet's ``AdaptiveLocalSGDOptimizer``, the only public
  implementation, which puts :math:`\tau_0` inside the root.

Both are clipped to :math:`[1, \tau_{\max}]`. :func:`choose_initial_period`
is the short search for :math:`\tau_0` the paper runs before training.
"""

import math
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

PeriodForm = Callable[[jax.Array, jax.Array, int], jax.Array]


def _paper(loss_ratio: jax.Array, lr_ratio: jax.Array,
           tau_0: int) -> jax.Array:
  return jnp.sqrt(loss_ratio * lr_ratio) * tau_0


def _paddle(loss_ratio: jax.Array, lr_ratio: jax.Array,
            tau_0: int) -> jax.Array:
  return jnp.sqrt(loss_ratio * lr_ratio * tau_0)


PERIOD_FORMS: Mapping[str, PeriodForm] = {
    "paddle": _paddle,
    "paper": _paper,
}
"""Registry of AdaComm's period forms: ``name -> form(loss_ratio,
lr_ratio, tau_0)``, the real-valued period before rounding up and
clipping."""


def check_form(form: Any) -> str:
  """Returns ``form``; raises ``ValueError`` unless it is registered."""
  if not isinstance(form, str) or form not in PERIOD_FORMS:
    raise ValueError(f"form must be one of {tuple(sorted(PERIOD_FORMS))}; "
                     f"got {form!r}")
  return form


def _check_int(name: str, value: Any, low: int) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, np.integer)):
    raise TypeError(f"{name} must be a Python int >= {low}; got {value!r}")
  if value < low:
    raise ValueError(f"{name} must be an int >= {low}; got {value}")
  return int(value)


def check_periods(tau_0: Any, tau_max: Any) -> tuple[int, int]:
  """Returns ``(tau_0, tau_max)`` as ints; raises on bad values.

  Raises:
    TypeError: for a value that is not an int.
    ValueError: for ``tau_0 < 1`` or ``tau_max < tau_0``.
  """
  tau_0 = _check_int("tau_0", tau_0, 1)
  tau_max = _check_int("tau_max", tau_max, 1)
  if tau_max < tau_0:
    raise ValueError(f"tau_max must be >= tau_0; got tau_max={tau_max} < "
                     f"tau_0={tau_0}")
  return tau_0, tau_max


def adacomm_period(
    loss: Any,
    initial_loss: Any,
    tau_0: int,
    tau_max: int,
    *,
    form: str = "paper",
    lr_ratio: Any = 1.0,
    previous: Any = None,
) -> jax.Array:
  r"""AdaComm's next communication period from the loss ratio.

  .. math::
    \tau = \min\Big(\tau_{\max}, \max\big(1, \lceil
      \mathrm{form}(F/F_0,\ \eta_0/\eta,\ \tau_0) \rceil\big)\Big)

  with the forms of :data:`PERIOD_FORMS`. A non-finite or negative value
  under the root (a NaN loss, a non-positive :math:`F_0`) leaves the period
  at ``previous`` (:math:`\tau_0` if not given).

  Args:
    loss: :math:`F`, the current training loss (averaged over workers).
    initial_loss: :math:`F_0`, the loss at the start of training.
    tau_0: the initial period :math:`\tau_0 \ge 1`.
    tau_max: the largest period, :math:`\tau_{\max} \ge \tau_0`.
    form: a key of :data:`PERIOD_FORMS`.
    lr_ratio: :math:`\eta_0 / \eta`, initial over current learning rate.
    previous: the period kept when the rule is undefined.

  Returns:
    The period, an int32 scalar in :math:`[1, \tau_{\max}]`.

  Raises:
    ValueError: for an unknown ``form`` or ``tau_max < tau_0``.
    TypeError: for a non-int ``tau_0`` or ``tau_max``.

  Example:
    >>> from distoptax.algorithms import local
    >>> int(local.adacomm_period(0.5, 1.0, tau_0=8, tau_max=16))
    6
    >>> int(local.adacomm_period(0.5, 1.0, 8, 16, form="paddle"))
    2
  """
  tau_0, tau_max = check_periods(tau_0, tau_max)
  form_fn = PERIOD_FORMS[check_form(form)]
  loss = jnp.asarray(loss, jnp.float32)
  initial_loss = jnp.asarray(initial_loss, jnp.float32)
  ratio = loss / initial_loss
  raw = jnp.ceil(form_fn(ratio, jnp.asarray(lr_ratio, jnp.float32), tau_0))
  previous = jnp.asarray(tau_0 if previous is None else previous, jnp.int32)
  defined = jnp.isfinite(raw) & (ratio >= 0)
  clipped = jnp.clip(jnp.where(defined, raw, 1.0), 1, tau_max)
  return jnp.where(defined, clipped.astype(jnp.int32), previous)


def choose_initial_period(
    measure_loss: Callable[[int], Any],
    candidates: Iterable[int] = (1, 2, 4, 8, 16),
) -> int:
  r"""Picks :math:`\tau_0` by a short search, as AdaComm's paper does.

  .. math::
    \tau_0 = \arg\min_{\tau \in C} \mathrm{measure\_loss}(\tau)

  ``measure_loss(tau)`` runs a short stretch of training with the fixed
  period ``tau`` (the same budget of simulated seconds for every candidate)
  and returns the training loss it reaches. Ties go to the larger period
  (fewer syncs); candidates whose loss is not finite are skipped.

  Args:
    measure_loss: ``tau -> loss`` (a Python or JAX scalar).
    candidates: the periods to try, ints ``>= 1``.

  Returns:
    The chosen period, a Python int.

  Raises:
    TypeError: for a candidate that is not an int.
    ValueError: for no candidates or a candidate below 1, or when no
      candidate gives a finite loss.

  Example:
    >>> from distoptax.algorithms import local
    >>> local.choose_initial_period(lambda tau: (tau - 4) ** 2 + 1.0)
    4
  """
  candidates = [_check_int("candidate period", c, 1) for c in candidates]
  if not candidates:
    raise ValueError("choose_initial_period needs at least one candidate "
                     "period; got none")
  best, best_loss = None, math.inf
  for tau in candidates:
    loss = float(np.asarray(measure_loss(tau)))
    if not math.isfinite(loss):
      continue
    if loss < best_loss or (loss == best_loss and tau > best):
      best, best_loss = tau, loss
  if best is None:
    raise ValueError(f"choose_initial_period: no candidate in {candidates} "
                     f"gave a finite loss")
  return best
