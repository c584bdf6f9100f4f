r"""Named local-update algorithms as thin recipes over ``local_sgd``.

Each factory below is :func:`~distoptax.distributed.local_sgd.local_sgd`
with an inner optimizer, an outer optimizer, an inner-state policy and,
where the algorithm has one, a rule or proximal term fixed to what its paper
or reference code uses:

=================  ==================  ==================  ==============
algorithm          inner (workers)     outer (replicated)  inner state
=================  ==================  ==================  ==============
FedAvg             SGD                 SGD, rate 1         reset
FedProx            SGD + proximal      SGD, rate 1         reset
FedAdam/Yogi/      SGD                 ``fedopt_server``   reset
Adagrad
DiLoCo             AdamW               SGD, Nesterov       keep
post-local SGD     SGD (momentum)      SGD, rate 1         keep
SLSGD              SGD                 SGD, rate alpha     reset
                                       (trimmed mean)
=================  ==================  ==================  ==============

Everything else (compression, error feedback, another rule, a worker-side
attack) is passed through to ``local_sgd``. Conventions and what was checked
against which source: ``third_party_notes/local_sgd.md``.
"""

import math
from typing import Any

import jax
import numpy as np
import optax

from distoptax.algorithms import aggregators
from distoptax.algorithms import compressors
from distoptax.algorithms import local as local_math
from distoptax.distributed import local_sgd as local_sgd_lib
from distoptax.worker_axis import collectives

_local_sgd = local_sgd_lib.local_sgd


def fedavg(
    learning_rate: Any,
    period: int,
    *,
    rule: aggregators.AggregationRule | None = None,
    compressor: compressors.Compressor | None = None,
    error_feedback: bool = False,
    worker_transform: optax.GradientTransformation | None = None,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""FedAvg: ``period`` local SGD steps, then the average model.

  .. math::
    w_i \leftarrow w_i - \eta\, g_i \ (\text{local}), \qquad
    x \leftarrow x - \tfrac1n \textstyle\sum_i (x - w_i)
      = \tfrac1n \sum_i w_i \ (\text{sync})

  ``local_sgd(optax.sgd(learning_rate), period, outer=optax.sgd(1.0),
  state_policy="reset")``. Every worker takes part in every round and the
  average is unweighted (equal shards).

  Args:
    learning_rate: the workers' rate :math:`\eta`.
    period: local steps per round (``>= 1``); 1 gives FedSGD.
    rule: see ``local_sgd`` (default: the mean).
    compressor: see ``local_sgd``.
    error_feedback: see ``local_sgd``.
    worker_transform: see ``local_sgd``.
    axis_name: the logical worker axis.
    seed: seed of the key stream.

  Returns:
    A ``local_sgd`` transformation.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> loss_fn = lambda w, b: 0.5 * jnp.sum((w - b) ** 2)
    >>> run = dist.simulate(dist.data_parallel(loss_fn, dist.fedavg(0.5, 2)),
    ...                     num_workers=2)
    >>> state = run.init(jnp.zeros(1))
    >>> targets = jnp.array([[4.0], [8.0]])
    >>> for _ in range(2):
    ...   state, _ = run.step(state, targets)
    >>> state.params   # Local: 2 -> 3 and 4 -> 6; averaged: 4.5.
    Array([[4.5],
           [4.5]], dtype=float32)

  References:
    McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient
    Learning of Deep Networks from Decentralized Data", AISTATS 2017,
    arXiv:1602.05629.
  """
  return _local_sgd(
      optax.sgd(learning_rate), period, outer=optax.sgd(1.0),
      state_policy="reset", rule=rule, compressor=compressor,
      error_feedback=error_feedback, worker_transform=worker_transform,
      axis_name=axis_name, seed=seed)


def fedprox(
    learning_rate: Any,
    period: int,
    mu: Any,
    *,
    rule: aggregators.AggregationRule | None = None,
    compressor: compressors.Compressor | None = None,
    error_feedback: bool = False,
    worker_transform: optax.GradientTransformation | None = None,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""FedProx: FedAvg plus a proximal term towards the last synced model.

  .. math::
    w_i \leftarrow w_i - \eta\,\big(g_i + \mu (w_i - x)\big)

  with :math:`x` the model of the last sync (detached: no gradient flows
  into it, and it is not the live model). ``local_sgd(optax.sgd(lr), period,
  mu, outer=optax.sgd(1.0), state_policy="reset")``. The paper's variable
  amounts of local work per device are not modelled here: every worker
  takes ``period`` steps.

  Args:
    learning_rate: the workers' rate :math:`\eta`.
    period: local steps per round (``>= 1``).
    mu: :math:`\mu \ge 0` (the paper tries 0.001 to 1); 0 gives FedAvg.
    rule: see ``local_sgd``.
    compressor: see ``local_sgd``.
    error_feedback: see ``local_sgd``.
    worker_transform: see ``local_sgd``.
    axis_name: the logical worker axis.
    seed: seed of the key stream.

  Returns:
    A ``local_sgd`` transformation.

  Raises:
    ValueError: for ``mu < 0``.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> loss_fn = lambda w, b: jnp.sum(b * w)   # Gradient b, constant.
    >>> tx = dist.fedprox(0.5, period=3, mu=1.0)
    >>> run = dist.simulate(dist.data_parallel(loss_fn, tx), num_workers=1)
    >>> state = run.init(jnp.zeros(1))
    >>> for _ in range(2):
    ...   state, _ = run.step(state, jnp.ones((1, 1)))
    >>> state.params   # -0.5, then -0.5 - 0.5 (1 + 1 (-0.5 - 0)).
    Array([[-0.75]], dtype=float32)

  References:
    Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in
    Heterogeneous Networks", MLSys 2020, arXiv:1812.06127.
  """
  local_math.check_proximal_mu(mu)
  return _local_sgd(
      optax.sgd(learning_rate), period, mu, outer=optax.sgd(1.0),
      state_policy="reset", rule=rule, compressor=compressor,
      error_feedback=error_feedback, worker_transform=worker_transform,
      axis_name=axis_name, seed=seed)


def _fedopt(kind: str, learning_rate, period, server_learning_rate, b1, b2,
            tau, initial_accumulator, **kwargs):
  server = local_math.fedopt_server(
      server_learning_rate, b1, b2, tau, kind=kind,
      initial_accumulator=initial_accumulator)
  return _local_sgd(optax.sgd(learning_rate), period, outer=server,
                    state_policy="reset", **kwargs)


def fedadam(
    learning_rate: Any,
    period: int,
    server_learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.99,
    tau: Any = 1e-3,
    *,
    initial_accumulator: float = 0.0,
    rule: aggregators.AggregationRule | None = None,
    compressor: compressors.Compressor | None = None,
    error_feedback: bool = False,
    worker_transform: optax.GradientTransformation | None = None,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""FedAdam: local SGD rounds, Adam (no bias correction) on the server.

  With :math:`\hat p = x - \frac1n\sum_i w_i` at a sync:

  .. math::
    m \leftarrow \beta_1 m + (1-\beta_1)\hat p, \quad
    v \leftarrow \beta_2 v + (1-\beta_2)\hat p^2, \quad
    x \leftarrow x - \eta_s\, \frac{m}{\sqrt v + \tau}

  ``local_sgd(optax.sgd(lr), period, outer=algorithms.local.fedopt_server(
  server_learning_rate, b1, b2, tau, kind="adam"))``, workers' state reset
  each round. For the paper's experiments' Keras Adam (bias-corrected) pass
  ``outer=optax.adam(server_learning_rate, b1, b2, eps=tau)`` to
  ``local_sgd`` instead.

  Args:
    learning_rate: the workers' rate.
    period: local steps per round (``>= 1``).
    server_learning_rate: :math:`\eta_s`.
    b1: :math:`\beta_1 \in [0, 1)`.
    b2: :math:`\beta_2 \in [0, 1)`.
    tau: :math:`\tau > 0`, the adaptivity.
    initial_accumulator: :math:`v` at ``init`` (``>= 0``).
    rule: see ``local_sgd``.
    compressor: see ``local_sgd``.
    error_feedback: see ``local_sgd``.
    worker_transform: see ``local_sgd``.
    axis_name: the logical worker axis.
    seed: seed of the key stream.

  Returns:
    A ``local_sgd`` transformation.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> loss_fn = lambda w, b: jnp.sum(b * w)
    >>> tx = dist.fedadam(0.1, 1, server_learning_rate=0.01, b1=0.0, b2=0.0)
    >>> run = dist.simulate(dist.data_parallel(loss_fn, tx), num_workers=2)
    >>> state, _ = run.step(run.init(jnp.zeros(1)),
    ...                     jnp.array([[1.0], [3.0]]))
    >>> state.params   # The clients moved by -0.2 on average: one step of
    ... # -0.01 * sign, the size of which Adam normalises away.
    Array([[-0.00995025],
           [-0.00995025]], dtype=float32)

  References:
    Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan,
    "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295.
  """
  return _fedopt("adam", learning_rate, period, server_learning_rate, b1, b2,
                 tau, initial_accumulator, rule=rule, compressor=compressor,
                 error_feedback=error_feedback,
                 worker_transform=worker_transform, axis_name=axis_name,
                 seed=seed)


def fedyogi(
    learning_rate: Any,
    period: int,
    server_learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.99,
    tau: Any = 1e-3,
    *,
    initial_accumulator: float = 0.0,
    rule: aggregators.AggregationRule | None = None,
    compressor: compressors.Compressor | None = None,
    error_feedback: bool = False,
    worker_transform: optax.GradientTransformation | None = None,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""FedYogi: local SGD rounds, Yogi on the server.

  As :func:`fedadam` with the second moment

  .. math::
    v \leftarrow v - (1 - \beta_2)\, \hat p^2 \operatorname{sign}(v - \hat p^2)

  which grows or shrinks :math:`v` by a bounded amount instead of
  averaging it (``algorithms.local.fedopt_server(kind="yogi")``).

  Args:
    learning_rate: the workers' rate.
    period: local steps per round (``>= 1``).
    server_learning_rate: :math:`\eta_s`.
    b1: :math:`\beta_1 \in [0, 1)`.
    b2: :math:`\beta_2 \in [0, 1)`.
    tau: :math:`\tau > 0`.
    initial_accumulator: :math:`v` at ``init`` (``>= 0``).
    rule: see ``local_sgd``.
    compressor: see ``local_sgd``.
    error_feedback: see ``local_sgd``.
    worker_transform: see ``local_sgd``.
    axis_name: the logical worker axis.
    seed: seed of the key stream.

  Returns:
    A ``local_sgd`` transformation.

  Example:
    >>> from distoptax import distributed as dist
    >>> tx = dist.fedyogi(0.0316, period=10, server_learning_rate=0.01)

  References:
    Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
    arXiv:2003.00295. Zaheer, Reddi, Sachan, Kale, Kumar, "Adaptive Methods
    for Nonconvex Optimization", NeurIPS 2018.
  """
  return _fedopt("yogi", learning_rate, period, server_learning_rate, b1, b2,
                 tau, initial_accumulator, rule=rule, compressor=compressor,
                 error_feedback=error_feedback,
                 worker_transform=worker_transform, axis_name=axis_name,
                 seed=seed)


def fedadagrad(
    learning_rate: Any,
    period: int,
    server_learning_rate: Any,
    b1: Any = 0.9,
    tau: Any = 1e-3,
    *,
    initial_accumulator: float = 0.0,
    rule: aggregators.AggregationRule | None = None,
    compressor: compressors.Compressor | None = None,
    error_feedback: bool = False,
    worker_transform: optax.GradientTransformation | None = None,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""FedAdagrad: local SGD rounds, Adagrad (with momentum) on the server.

  As :func:`fedadam` with :math:`v \leftarrow v + \hat p^2`
  (``algorithms.local.fedopt_server(kind="adagrad")``). ``b1=0`` drops the
  momentum (Flower's ``FedAdagrad``).

  Args:
    learning_rate: the workers' rate.
    period: local steps per round (``>= 1``).
    server_learning_rate: :math:`\eta_s`.
    b1: :math:`\beta_1 \in [0, 1)`.
    tau: :math:`\tau > 0`.
    initial_accumulator: :math:`v` at ``init`` (``>= 0``).
    rule: see ``local_sgd``.
    compressor: see ``local_sgd``.
    error_feedback: see ``local_sgd``.
    worker_transform: see ``local_sgd``.
    axis_name: the logical worker axis.
    seed: seed of the key stream.

  Returns:
    A ``local_sgd`` transformation.

  Example:
    >>> from distoptax import distributed as dist
    >>> tx = dist.fedadagrad(0.1, period=10, server_learning_rate=0.1)

  References:
    Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
    arXiv:2003.00295.
  """
  return _fedopt("adagrad", learning_rate, period, server_learning_rate, b1,
                 0.0, tau, initial_accumulator, rule=rule,
                 compressor=compressor, error_feedback=error_feedback,
                 worker_transform=worker_transform, axis_name=axis_name,
                 seed=seed)


def diloco(
    learning_rate: Any,
    period: int,
    outer_learning_rate: Any = 0.7,
    outer_momentum: Any = 0.9,
    weight_decay: Any = 0.1,
    b1: Any = 0.9,
    b2: Any = 0.95,
    *,
    rule: aggregators.AggregationRule | None = None,
    compressor: compressors.Compressor | None = None,
    error_feedback: bool = False,
    worker_transform: optax.GradientTransformation | None = None,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""DiLoCo: AdamW inner steps, Nesterov SGD on the averaged pseudo-gradient.

  .. math::
    \hat p = x - \tfrac1n \textstyle\sum_i w_i, \qquad
    b \leftarrow \beta b + \hat p, \qquad
    x \leftarrow x - \eta_o (\hat p + \beta b)

  ``local_sgd(optax.adamw(lr, b1, b2, weight_decay=...), period,
  outer=optax.sgd(outer_learning_rate, outer_momentum, nesterov=True),
  state_policy="keep")``: each worker's AdamW state persists across rounds
  and is never averaged. Defaults are OpenDiLoCo's (outer 0.7, Nesterov
  momentum 0.9; inner betas (0.9, 0.95), weight decay 0.1); the paper and
  OpenDiLoCo sync every 500 inner steps.

  Args:
    learning_rate: the inner AdamW rate (OpenDiLoCo: 4e-4).
    period: inner steps per round, :math:`H \ge 1`.
    outer_learning_rate: :math:`\eta_o`.
    outer_momentum: :math:`\beta`, Nesterov.
    weight_decay: AdamW's decoupled weight decay.
    b1: AdamW's :math:`\beta_1`.
    b2: AdamW's :math:`\beta_2`.
    rule: see ``local_sgd``.
    compressor: see ``local_sgd`` (OpenDiLoCo all-reduces in FP16:
      ``alg.compressors.float16()``).
    error_feedback: see ``local_sgd``.
    worker_transform: see ``local_sgd``.
    axis_name: the logical worker axis.
    seed: seed of the key stream.

  Returns:
    A ``local_sgd`` transformation.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> tx = dist.diloco(4e-4, period=500)
    >>> state = jax.vmap(tx.init, axis_size=2, axis_name=dist.WORKERS)(
    ...     jnp.zeros((2, 3)))
    >>> type(state.inner_state[0]).__name__, int(state.period[0])
    ('ScaleByAdamState', 500)

  References:
    Douillard, Feng, Rusu, Chhaparia, Donchev, Kuncoro, Ranzato, Szlam,
    Shen, "DiLoCo: Distributed Low-Communication Training of Language
    Models", arXiv:2311.08105. Jaghouar, Ong, Hagemann, "OpenDiLoCo",
    arXiv:2407.07852.
  """
  return _local_sgd(
      optax.adamw(learning_rate, b1, b2, weight_decay=weight_decay), period,
      outer=optax.sgd(outer_learning_rate, outer_momentum, nesterov=True),
      state_policy="keep", rule=rule, compressor=compressor,
      error_feedback=error_feedback, worker_transform=worker_transform,
      axis_name=axis_name, seed=seed)


def post_local_sgd(
    learning_rate: Any,
    period: int,
    warmup_steps: int,
    momentum: Any = None,
    *,
    nesterov: bool = False,
    rule: aggregators.AggregationRule | None = None,
    compressor: compressors.Compressor | None = None,
    error_feedback: bool = False,
    worker_transform: optax.GradientTransformation | None = None,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Post-local SGD: synchronous SGD for a warm-up, then local SGD.

  For the first ``warmup_steps`` steps the gradients are averaged every step
  and every worker applies the same SGD (momentum) step; afterwards each
  worker steps on its own and the models are averaged every ``period``
  steps, the momentum buffers staying local (torch's
  ``PostLocalSGDOptimizer`` with ``PeriodicModelAverager``).
  ``local_sgd(optax.sgd(lr, momentum, nesterov), period,
  outer=optax.sgd(1.0), state_policy="keep", warmup_steps=warmup_steps)``.
  Lin et al. switch at the first learning-rate decay.

  Args:
    learning_rate: the SGD rate.
    period: local steps per sync after the warm-up (``>= 1``).
    warmup_steps: synchronous steps first (``>= 0``; torch's
      ``start_localSGD_iter``).
    momentum: SGD momentum, or ``None``.
    nesterov: Nesterov momentum.
    rule: see ``local_sgd``.
    compressor: see ``local_sgd``.
    error_feedback: see ``local_sgd``.
    worker_transform: see ``local_sgd``.
    axis_name: the logical worker axis.
    seed: seed of the key stream.

  Returns:
    A ``local_sgd`` transformation.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> loss_fn = lambda w, b: 0.5 * jnp.sum((w - b) ** 2)
    >>> tx = dist.post_local_sgd(0.5, period=2, warmup_steps=1)
    >>> run = dist.simulate(dist.data_parallel(loss_fn, tx), num_workers=2)
    >>> state = run.init(jnp.zeros(1))
    >>> for _ in range(3):
    ...   state, metrics = run.step(state, jnp.array([[4.0], [8.0]]))
    ...   print(int(metrics["all_reduce_bytes"][0]), end=" ")
    8 0 4

  References:
    Lin, Stich, Patel, Jaggi, "Don't Use Large Mini-Batches, Use Local
    SGD", ICLR 2020, arXiv:1808.07217.
  """
  return _local_sgd(
      optax.sgd(learning_rate, momentum, nesterov), period,
      outer=optax.sgd(1.0), state_policy="keep", warmup_steps=warmup_steps,
      rule=rule, compressor=compressor, error_feedback=error_feedback,
      worker_transform=worker_transform, axis_name=axis_name, seed=seed)


def _check_alpha(alpha: Any) -> None:
  if isinstance(alpha, jax.core.Tracer):
    return
  if isinstance(alpha, (bool, np.bool_)) or not isinstance(
      alpha, (int, float, np.number, np.ndarray, jax.Array)):
    raise TypeError(f"alpha must be a number in (0, 1]; got {alpha!r}")
  value = float(np.asarray(alpha))
  if not (math.isfinite(value) and 0 < value <= 1):
    raise ValueError(f"alpha must lie in (0, 1]; got {alpha!r}")


def slsgd(
    learning_rate: Any,
    period: int,
    alpha: Any,
    *,
    num_trimmed: int = 0,
    compressor: compressors.Compressor | None = None,
    error_feedback: bool = False,
    worker_transform: optax.GradientTransformation | None = None,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""SLSGD: local SGD whose sync mixes a trimmed mean of the models in.

  .. math::
    x \leftarrow (1 - \alpha)\, x + \alpha\,
      \mathrm{TrMean}_b(w_1, \dots, w_n)

  with :math:`\mathrm{TrMean}_b` the coordinate-wise mean after dropping
  the :math:`b` largest and :math:`b` smallest values. The trimmed mean
  commutes with :math:`w \mapsto x - w`, so this is
  ``local_sgd(optax.sgd(lr), period, rule=trimmed_mean(b),
  outer=optax.sgd(alpha), state_policy="reset")``: the pseudo-gradients
  travel (all-gathered) and the outer step is :math:`x - \alpha\,
  \mathrm{TrMean}_b(x - w_i)`. With ``num_trimmed=0`` and ``alpha=1`` it is
  FedAvg.

  Args:
    learning_rate: the workers' SGD rate.
    period: local steps per round (``>= 1``).
    alpha: the mixing weight :math:`\alpha \in (0, 1]`.
    num_trimmed: :math:`b`, values dropped at each end of every
      coordinate; needs :math:`n > 2b` workers.
    compressor: see ``local_sgd``.
    error_feedback: see ``local_sgd``.
    worker_transform: see ``local_sgd``; e.g. an attack of
      ``algorithms.attacks`` for Byzantine workers that send arbitrary
      models.
    axis_name: the logical worker axis.
    seed: seed of the key stream.

  Returns:
    A ``local_sgd`` transformation.

  Raises:
    ValueError: for ``alpha`` outside :math:`(0, 1]` or a negative
      ``num_trimmed`` (and, at ``init``, :math:`n \le 2b`).

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> loss_fn = lambda w, b: 0.5 * jnp.sum((w - b) ** 2)
    >>> tx = dist.slsgd(1.0, period=1, alpha=0.5, num_trimmed=1)
    >>> run = dist.simulate(dist.data_parallel(loss_fn, tx), num_workers=3)
    >>> state, _ = run.step(run.init(jnp.zeros(1)),
    ...                     jnp.array([[1.0], [2.0], [900.0]]))
    >>> state.params[0]   # 0.5 * 0 + 0.5 * median(1, 2, 900).
    Array([1.], dtype=float32)

  References:
    Xie, Koyejo, Gupta, "SLSGD: Secure and Efficient Distributed On-device
    Machine Learning", ECML PKDD 2019, arXiv:1903.06996.

  Guarantees:
    If at most :math:`b` workers are Byzantine, every coordinate of the
    trimmed mean lies within the range of the honest workers' models, so a
    sync moves :math:`x` at most :math:`\alpha` of the way to that range.
  """
  _check_alpha(alpha)
  return _local_sgd(
      optax.sgd(learning_rate), period, outer=optax.sgd(alpha),
      state_policy="reset", rule=aggregators.trimmed_mean(num_trimmed),
      compressor=compressor, error_feedback=error_feedback,
      worker_transform=worker_transform, axis_name=axis_name, seed=seed)
