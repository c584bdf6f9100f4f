"""Attacks that need no knowledge of the other workers.

Sign flipping, Gaussian noise, zeros and non-finite values. Each Byzantine
worker crafts its message from its own update (or from nothing); honest
workers pass theirs through unchanged (see ``attacks.base``).
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from distoptax.algorithms.attacks import base
from distoptax.worker_axis import collectives
from distoptax.worker_axis import keys

NON_FINITE_VALUES = {"nan": float("nan"), "inf": float("inf"),
                     "-inf": float("-inf")}


def sign_flip(
    num_byzantine: int | None = None,
    *,
    scale: float = 1.0,
    byzantine_mask: Sequence[bool] | None = None,
    axis_name: str = collectives.WORKERS,
) -> optax.GradientTransformationExtraArgs:
  r"""Byzantine workers send their own update negated and scaled.

  .. math::
    \tilde g_i = -s \, g_i \quad (i \text{ Byzantine}), \qquad
    \tilde g_i = g_i \quad (i \text{ honest})

  ``scale = 1`` is the "bit flip" of epfml's ``BitFlippingWorker``;
  Garfield's ``reverse_attack`` is ``scale = 100``. (ByzFL's
  ``SignFlipping`` instead sends minus the *honest mean*: that is
  :func:`~distoptax.algorithms.attacks.inner_product_manipulation` with
  ``epsilon = 1``.)

  Args:
    num_byzantine: ``f``, the first ``f`` workers are Byzantine (may be
      omitted when ``byzantine_mask`` is given).
    scale: :math:`s`, the factor applied after negation.
    byzantine_mask: explicit Byzantine workers, ``n`` booleans.
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``optax.EmptyState``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> from distoptax.algorithms import attacks
    >>> tx = attacks.sign_flip(1, scale=2.0)
    >>> def step(g):
    ...   return tx.update(g, tx.init(g))[0]
    >>> jax.vmap(step, axis_name=dist.WORKERS)(jnp.array([[1.0], [3.0]]))
    Array([[-2.],
           [ 3.]], dtype=float32)
  """

  def craft(updates, state, ctx):
    del ctx
    return jax.tree.map(lambda u: -scale * u, updates), state

  return base.make_attack("sign_flip", num_byzantine, craft,
                          byzantine_mask=byzantine_mask, axis_name=axis_name)


def gaussian(
    num_byzantine: int | None = None,
    *,
    std: float = 200.0,
    mean: float = 0.0,
    seed: int = 0,
    byzantine_mask: Sequence[bool] | None = None,
    axis_name: str = collectives.WORKERS,
) -> optax.GradientTransformationExtraArgs:
  r"""Byzantine workers send i.i.d. Gaussian noise.

  .. math::
    \tilde g_i \sim \mathcal N(\mu, \sigma^2 I) \quad (i \text{ Byzantine})

  independently per coordinate, per worker and per step. The default
  :math:`\sigma = 200, \mu = 0` is the ``gaussian_attack`` of Xie et al.'s
  Zeno code (``xcgoner/icml2019_zeno/byzantine.py``:
  ``mx.nd.random.normal(0, 200)``, whose second argument is the scale, i.e.
  the standard deviation). ByzFL uses :math:`\mu = 0, \sigma = 1`, Blades
  :math:`\mu = 0.1, \sigma = 0.1`.

  Randomness: the state holds a key, identical on every worker and split
  once per step; worker ``i`` draws from ``fold_in(key, i)``, so Byzantine
  workers send different noise and runs are reproducible.

  Args:
    num_byzantine: ``f``, the first ``f`` workers are Byzantine.
    std: :math:`\sigma`, the standard deviation of each coordinate.
    mean: :math:`\mu`, the mean of each coordinate.
    seed: seed of the attack's key.
    byzantine_mask: explicit Byzantine workers, ``n`` booleans.
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`~distoptax.algorithms.attacks.AttackState`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> from distoptax.algorithms import attacks
    >>> tx = attacks.gaussian(1, std=1.0)
    >>> def step(g):
    ...   return tx.update(g, tx.init(g))[0]
    >>> out = jax.vmap(step, axis_name=dist.WORKERS)(jnp.ones((3, 10000)))
    >>> print(round(float(out[0].std()), 1), out[1:].min(), out[1:].max())
    1.0 1.0 1.0
  """

  def init_state(params):
    del params
    return base.AttackState(
        keys.transform_key(seed, "distoptax.algorithms.attacks.gaussian"))

  def craft(updates, state, ctx):
    key, next_key = jax.random.split(jax.random.wrap_key_data(state.key))
    worker_key = jax.random.fold_in(key, ctx.worker_index)
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(worker_key, len(leaves))
    noise = [
        mean + std * jax.random.normal(
            k, u.shape,
            u.dtype if jnp.issubdtype(u.dtype, jnp.floating) else jnp.float32)
        for k, u in zip(keys, leaves)]
    return (jax.tree.unflatten(treedef, noise),
            base.AttackState(jax.random.key_data(next_key)))

  return base.make_attack("gaussian", num_byzantine, craft,
                          byzantine_mask=byzantine_mask, axis_name=axis_name,
                          init_state=init_state)


def zero(
    num_byzantine: int | None = None,
    *,
    byzantine_mask: Sequence[bool] | None = None,
    axis_name: str = collectives.WORKERS,
) -> optax.GradientTransformationExtraArgs:
  r"""Byzantine workers send zeros (FedML's "zero" mode).

  .. math::
    \tilde g_i = 0 \quad (i \text{ Byzantine})

  Args:
    num_byzantine: ``f``, the first ``f`` workers are Byzantine.
    byzantine_mask: explicit Byzantine workers, ``n`` booleans.
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``optax.EmptyState``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> from distoptax.algorithms import attacks
    >>> tx = attacks.zero(byzantine_mask=(False, True))
    >>> def step(g):
    ...   return tx.update(g, tx.init(g))[0]
    >>> jax.vmap(step, axis_name=dist.WORKERS)(jnp.array([[1.0], [3.0]]))
    Array([[1.],
           [0.]], dtype=float32)
  """

  def craft(updates, state, ctx):
    del ctx
    return jax.tree.map(jnp.zeros_like, updates), state

  return base.make_attack("zero", num_byzantine, craft,
                          byzantine_mask=byzantine_mask, axis_name=axis_name)


def non_finite(
    num_byzantine: int | None = None,
    *,
    value: str = "nan",
    byzantine_mask: Sequence[bool] | None = None,
    axis_name: str = collectives.WORKERS,
) -> optax.GradientTransformationExtraArgs:
  r"""Byzantine workers send NaN or infinite values in every coordinate.

  ``value="inf"`` is ByzFL's ``Inf`` attack. It tests the robustness policy
  of the rules: non-finite inputs from at most ``f`` workers must never make
  a robust rule return NaN or Inf (the mean, of course, does).

  Args:
    num_byzantine: ``f``, the first ``f`` workers are Byzantine.
    value: ``"nan"``, ``"inf"`` or ``"-inf"``.
    byzantine_mask: explicit Byzantine workers, ``n`` booleans.
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``optax.EmptyState``.

  Raises:
    ValueError: if ``value`` is not one of the three names.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> from distoptax.algorithms import attacks
    >>> tx = attacks.non_finite(1, value="-inf")
    >>> def step(g):
    ...   return tx.update(g, tx.init(g))[0]
    >>> jax.vmap(step, axis_name=dist.WORKERS)(jnp.array([[1.0], [3.0]]))
    Array([[-inf],
           [  3.]], dtype=float32)
  """
  if value not in NON_FINITE_VALUES:
    raise ValueError(
        f"non_finite value must be one of {sorted(NON_FINITE_VALUES)}; "
        f"got {value!r}")
  fill = NON_FINITE_VALUES[value]

  def craft(updates, state, ctx):
    del ctx
    return jax.tree.map(lambda u: jnp.full(u.shape, fill, u.dtype),
                        updates), state

  return base.make_attack("non_finite", num_byzantine, craft,
                          byzantine_mask=byzantine_mask, axis_name=axis_name)
