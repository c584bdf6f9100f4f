r"""FedProx's proximal term against a detached anchor (the last synced model).

FedProx (Li et al., MLSys 2020, arXiv:1812.06127) adds
:math:`\frac{\mu}{2}\lVert w - w^{t}\rVert^2` to each worker's local loss,
:math:`w^{t}` the model of the last synchronisation. Two bugs shipped by
peers are ruled out here by construction (``third_party_notes/local_sgd.md``):

* the square: the term is :math:`\frac{\mu}{2}\lVert\cdot\rVert^2`, whose
  gradient :math:`\mu (w - w^t)` is linear in the distance (Flower PR #2210
  fixed a ``norm`` without the square);
* the anchor: :math:`w^t` is held apart from the parameters being trained
  and wrapped in ``stop_gradient`` (Flower PR #1654 fixed an anchor that was
  the live model, which made the term identically zero).
"""

import math
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax


def check_proximal_mu(mu: Any) -> Any:
  """Returns ``mu``; raises unless it is a finite number ``>= 0``.

  A traced ``mu`` (under ``optax.inject_hyperparams``) is accepted as is.

  Raises:
    TypeError: for a value that is not a real scalar (a bool, a string).
    ValueError: for a negative or non-finite ``mu``.
  """
  if isinstance(mu, jax.core.Tracer):
    return mu
  if isinstance(mu, (bool, np.bool_)) or not isinstance(
      mu, (int, float, np.number, np.ndarray, jax.Array)):
    raise TypeError(f"mu must be a real number >= 0; got {mu!r}")
  value = np.asarray(mu)
  if value.shape or not np.issubdtype(value.dtype, np.number):
    raise TypeError(f"mu must be a real scalar >= 0; got {mu!r}")
  if not (math.isfinite(float(value)) and float(value) >= 0):
    raise ValueError(f"mu must be a finite number >= 0; got {mu!r}")
  return mu


def proximal_term(params: optax.Params, anchor: optax.Params,
                  mu: Any) -> jax.Array:
  r"""The proximal penalty :math:`\frac{\mu}{2}\lVert w - w^t\rVert_2^2`.

  .. math::
    P(w) = \frac{\mu}{2} \sum_k (w_k - \mathrm{sg}(w^t_k))^2

  with :math:`\mathrm{sg}` the stop-gradient: differentiating :math:`P`
  gives :math:`\mu (w - w^t)` for the parameters and zero for the anchor.

  Args:
    params: the worker's current model :math:`w`.
    anchor: the model of the last synchronisation :math:`w^t`, same
      structure.
    mu: :math:`\mu \ge 0`.

  Returns:
    A float32 (or wider) scalar.

  Raises:
    ValueError: for a negative ``mu``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms import local
    >>> w, w_sync = jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0])
    >>> local.proximal_term(w, w_sync, 0.5)   # 0.25 * (1 + 4)
    Array(1.25, dtype=float32)
    >>> jax.grad(local.proximal_term)(w, w_sync, 0.5)   # mu (w - w_sync)
    Array([0.5, 1. ], dtype=float32)

  References:
    Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in
    Heterogeneous Networks", MLSys 2020, arXiv:1812.06127.
  """
  check_proximal_mu(mu)
  squares = jax.tree.map(
      lambda w, a: jnp.sum(jnp.square(
          (w - lax.stop_gradient(a)).astype(
              jnp.promote_types(w.dtype, jnp.float32)))),
      params, anchor)
  return 0.5 * mu * sum(jax.tree.leaves(squares))


def proximal_gradient(grads: optax.Updates, params: optax.Params,
                      anchor: optax.Params, mu: Any) -> optax.Updates:
  r"""The local gradient plus that of the proximal term.

  .. math:: g + \mu\,(w - w^t)

  the gradient of :math:`F_i(w) + \frac{\mu}{2}\lVert w - w^t\rVert^2`
  given :math:`g = \nabla F_i(w)`, in the dtype of ``grads``; it equals
  ``grads + jax.grad(proximal_term)(params, anchor, mu)``.

  Args:
    grads: :math:`g`, the gradient of the worker's own loss.
    params: the worker's current model :math:`w`.
    anchor: the model of the last synchronisation :math:`w^t`.
    mu: :math:`\mu \ge 0`.

  Returns:
    Updates shaped like ``grads``.

  Raises:
    ValueError: for a negative ``mu``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms import local
    >>> local.proximal_gradient(jnp.array([1.0, 1.0]), jnp.array([1.0, 3.0]),
    ...                         jnp.array([0.0, 1.0]), 0.5)
    Array([1.5, 2. ], dtype=float32)
  """
  check_proximal_mu(mu)
  return jax.tree.map(
      lambda g, w, a: (g + mu * (w - lax.stop_gradient(a))).astype(
          jnp.result_type(g)),
      grads, params, anchor)
