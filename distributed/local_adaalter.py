r"""Local AdaAlter: local SGD with AdaGrad denominators synced with the model.

A recipe over :func:`~distoptax.distributed.local_sgd`: the inner optimizer
is ``algorithms.local.local_adaalter_step`` (frozen denominator, growing
local accumulator) and the state policy at a sync is
``algorithms.local.sync_accumulators`` (the averaged accumulator becomes
the new denominator). Conventions and sources in
``third_party_notes/local_adaalter.md``.
"""

from typing import Any

import optax

from distoptax.algorithms import local as local_math
from distoptax.distributed import local_sgd as local_sgd_lib
from distoptax.worker_axis import collectives


def local_adaalter(
    learning_rate: Any,
    period: int,
    eps: Any = 1e-7,
    weight_decay: Any = 0.0,
    *,
    denominator: str = "constant",
    axis_name: str = collectives.WORKERS,
) -> optax.GradientTransformationExtraArgs:
  r"""Local AdaAlter: AdaGrad-preconditioned local SGD, synced every period.

  Worker :math:`i` holds its model :math:`w_i`, the denominator :math:`B`
  (the same on every worker) and its accumulator :math:`A_i`. With
  :math:`t'` the local steps since the last sync (this one included) and
  :math:`H` = ``period``:

  .. math::
    w_i &\leftarrow w_i - \eta\,\Big(\frac{g_i}{\sqrt{B + e}}
      + \lambda\,w_i\Big), \qquad A_i \leftarrow A_i + g_i^2, \qquad
      e = \epsilon \text{ or } t'\epsilon^2 \\
    \text{every } H \text{ steps:}\quad
      w_i &\leftarrow \frac{1}{n}\sum_j w_j, \qquad
      B, A_i \leftarrow \frac{1}{n}\sum_j A_j

  The denominator is computed from the accumulator **before** the current
  :math:`g^2` is added (AdaAlter's alternation) and weight decay is not
  preconditioned. A sync is two all-reduces of a model's size (the
  pseudo-gradient of ``local_sgd`` and the accumulators), under a
  ``lax.cond`` on replicated state: nothing travels between syncs.

  Args:
    learning_rate: :math:`\eta`.
    period: :math:`H \ge 1`, local steps per sync.
    eps: :math:`\epsilon > 0`; 1e-7 is the authors' default.
    weight_decay: :math:`\lambda \ge 0`.
    denominator: ``"constant"`` (:math:`e = \epsilon`, the authors' code)
      or ``"paper"`` (:math:`e = t'\epsilon^2`), see
      ``algorithms.local.DENOMINATORS``.
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`~distoptax.distributed.LocalSGDState` whose ``inner_state`` is
    an ``algorithms.local.LocalAdaAlterState``. ``update`` needs
    ``params``; unknown extra arguments are ignored.

  Raises:
    TypeError: for a non-int ``period`` or a hyperparameter that is not a
      number.
    ValueError: for ``period < 1``, ``eps <= 0``, ``weight_decay < 0`` or
      an unknown ``denominator``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> loss_fn = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
    >>> tx = dist.local_adaalter(0.5, period=2)
    >>> run = dist.simulate(dist.data_parallel(loss_fn, tx), num_workers=4)
    >>> state = run.init(jnp.zeros(3))
    >>> batch = (jnp.ones((4, 8, 3)), jnp.arange(32.0).reshape(4, 8))
    >>> for _ in range(4):
    ...   state, metrics = run.step(state, batch)
    ...   print(int(metrics["all_reduce_bytes"][0]), end=" ")
    0 24 0 24
    >>> b = state.opt_state.inner_state.denominator
    >>> bool(jnp.all(b == b[0]))  # The same denominator on every worker.
    True

  References:
    Xie, Zheng, Koyejo, Gupta, Li, Lin, "Local AdaAlter:
    Communication-Efficient Stochastic Gradient Descent with Adaptive
    Learning Rates", arXiv:1911.09030.

  Guarantees:
    After every sync the denominators are bit-identical on all workers
    (they are the all-reduce result; tested on 8 devices). With ``period=1``
    it is AdaAlter on the mean gradient whose accumulator adds the mean of
    the workers' squared gradients (on one worker, or identical gradients:
    AdaAlter itself; tested). The paper proves convergence for smooth
    non-convex objectives (abstract); its rate is not checked here.
  """
  inner = local_math.local_adaalter_step(learning_rate, eps, weight_decay,
                                         denominator=denominator)
  return local_sgd_lib.local_sgd(
      inner, period, state_policy=local_math.sync_accumulators,
      axis_name=axis_name)
