r"""FedAsync and FedBuff: a server that applies client models as they arrive.

**How it runs on the worker axis.** One runtime step is one arrival at the
server, taken from the declared system model
(``schedules.async_schedule``: which client finishes next and how stale the
model it trained from is). The arrival reaches every worker as data: the
batch carries the arriving worker's index and its staleness in every row
(:class:`ArrivalBatch`, built by :func:`arrival_batches`), and each worker
turns the index into its own 0/1 ``arrival`` flag. Every worker runs the
same program: it reads the model it started from out of the replicated ring
buffer of the last ``max_staleness + 1`` server models, trains ``H`` local
steps on its own data, and hands its delta to one all-reduce weighted by its
flag, so only the arriving worker's delta reaches the server (a masked
contribution to a collective that always runs; the others' work is
discarded). The server model, the ring buffer, FedBuff's buffer and the
counters are replicated state; the server update is a function of the
all-reduce's result alone, so ``simulate`` and ``on_mesh`` agree and no
collective sits under a per-worker condition.

**Staleness.** ``staleness=`` (an optax extra argument) counts arrivals at
the server since the worker read its model, the convention of
``clock.Clock`` (every arrival is one event). FedAsync updates the server at
every arrival, so it is also the number of server versions; FedBuff updates
every ``K`` arrivals and converts it to versions (the worker read the model
right after its previous arrival). A staleness beyond the cap
``max_staleness`` (or beyond the versions that exist) is read as the oldest
stored model (FedAsync's scheduler limits staleness) and counted in
``FedAsyncState.num_capped``.

Conventions and sources: ``third_party_notes/async.md``.
"""

from typing import Any, Callable, Mapping, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.algorithms import local as local_math
from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.distributed import runtime
from distoptax.distributed import schedules
from distoptax.worker_axis import collectives
from distoptax.worker_axis import replication

StalenessFn = Callable[[jax.Array], jax.Array]


def _constant(u, params):
  del params
  return jnp.ones_like(u, jnp.float32)


def _polynomial(u, params):
  return (u.astype(jnp.float32) + 1.0) ** (-params["a"])


def _hinge(u, params):
  u = u.astype(jnp.float32)
  late = 1.0 / (params["a"] * (u - params["b"]) + 1.0)
  return jnp.where(u <= params["b"], 1.0, late)


class _StalenessKind(NamedTuple):
  fn: Callable[[jax.Array, Mapping[str, float]], jax.Array]
  defaults: Mapping[str, float]


STALENESS_FUNCTIONS: Mapping[str, _StalenessKind] = {
    "constant": _StalenessKind(_constant, {}),
    "polynomial": _StalenessKind(_polynomial, {"a": 0.5}),
    "hinge": _StalenessKind(_hinge, {"a": 10.0, "b": 4.0}),
}
r"""The staleness functions :math:`s(u)` of FedAsync (Xie et al., §5):
constant :math:`1`; polynomial :math:`(u + 1)^{-a}`, ``a >= 0``; hinge
:math:`1` for :math:`u \le b`, else :math:`1 / (a (u - b) + 1)`, ``a >= 0``,
``b >= 0``. Defaults: ``a = 0.5`` (polynomial; FedBuff's
:math:`1/\sqrt{1 + u}`), ``a = 10, b = 4`` (hinge)."""


def staleness_function(name: str, **params: float) -> StalenessFn:
  r"""The staleness function ``name`` of :data:`STALENESS_FUNCTIONS`.

  Args:
    name: ``"constant"``, ``"polynomial"`` or ``"hinge"``.
    **params: its parameters (``a``; ``b`` for the hinge); missing ones take
      the defaults of :data:`STALENESS_FUNCTIONS`.

  Returns:
    ``s(u) -> float32`` weights in ``(0, 1]`` for integer staleness ``u``.

  Raises:
    ValueError: for an unknown name, an unknown parameter, or a parameter
      that is negative or not finite.

  Example:
    >>> import jax.numpy as jnp
    >>> s = staleness_function("hinge", a=1.0, b=2)
    >>> s(jnp.arange(5))
    Array([1.        , 1.        , 1.        , 0.5       , 0.33333334],      dtype=float32)
  """
  if name not in STALENESS_FUNCTIONS:
    raise ValueError(f"unknown staleness function {name!r}; known: "
                     f"{sorted(STALENESS_FUNCTIONS)}")
  kind = STALENESS_FUNCTIONS[name]
  unknown = sorted(set(params) - set(kind.defaults))
  if unknown:
    raise ValueError(f"staleness function {name!r} takes parameters "
                     f"{sorted(kind.defaults)}; got unknown {unknown}")
  values = {**kind.defaults, **params}
  for key, value in values.items():
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.number)) or not np.isfinite(value) or (
            value < 0):
      raise ValueError(f"staleness function {name!r}: {key} must be a "
                       f"finite number >= 0; got {value!r}")
  values = {key: float(value) for key, value in values.items()}
  return lambda u: kind.fn(jnp.asarray(u), values)


def _resolve_staleness_fn(staleness_fn: Any) -> StalenessFn:
  if isinstance(staleness_fn, str):
    return staleness_function(staleness_fn)
  if callable(staleness_fn):
    return staleness_fn
  raise TypeError(f"staleness_fn must be a name of STALENESS_FUNCTIONS or "
                  f"a callable s(u); got {staleness_fn!r}")


def _check_count(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, np.integer)):
    raise TypeError(f"{name} must be an int >= {minimum}; got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}; got {value}")
  return int(value)


def _check_rate(name: str, value: Any, upper: float | None) -> None:
  if isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, float, np.number, np.ndarray, jax.Array)):
    raise TypeError(f"{name} must be a real number; got {value!r}")
  x = float(np.asarray(value))
  if not np.isfinite(x) or x <= 0 or (upper is not None and x > upper):
    bound = f"(0, {upper:g}]" if upper is not None else "(0, inf)"
    raise ValueError(f"{name} must lie in {bound}; got {value!r}")


@replication.replicated_fields("count", "version", "models", "buffer",
                               "num_buffered", "num_capped")
class FedAsyncState(NamedTuple):
  """State of :func:`fedasync` and :func:`fedbuff`.

  Attributes:
    count: arrivals so far (int32); replicated.
    version: server updates so far (int32); replicated. The server model is
      ``models[version % (max_staleness + 1)]``.
    models: the ring buffer, every leaf ``[max_staleness + 1, *shape]``:
      slot ``v % (max_staleness + 1)`` holds server version ``v`` for the
      last ``max_staleness + 1`` versions (all slots hold the initial model
      at ``init``); replicated. It is the only copy of the server model.
    buffer: FedBuff's sum of the weighted client deltas since the last
      server update (model-shaped), or ``()`` for FedAsync; replicated.
    num_buffered: arrivals in ``buffer`` (int32); replicated.
    num_capped: arrivals whose staleness exceeded the cap or the versions
      that exist, read as the oldest stored model (int32); replicated.
    comm: this worker's bytes handed to the server (the all-reduce of its
      delta, weighted by its arrival flag).
  """

  count: jax.Array
  version: jax.Array
  models: optax.Params
  buffer: optax.Params
  num_buffered: jax.Array
  num_capped: jax.Array
  comm: comm_stats.CommStats


def _read_versions(state: FedAsyncState, staleness: Any, buffer_size: int,
                   max_staleness: int) -> tuple[jax.Array, jax.Array]:
  """(staleness in server versions after the cap, whether it was capped)."""
  arrivals = jnp.maximum(jnp.asarray(staleness, jnp.int32), 0)
  read_count = jnp.maximum(state.count - arrivals, 0)
  versions = state.version - read_count // buffer_size
  limit = jnp.minimum(max_staleness, state.version)
  capped = (versions > limit) | (arrivals > state.count)
  return jnp.minimum(versions, limit), capped


def _slot(version: jax.Array, max_staleness: int) -> jax.Array:
  return version % (max_staleness + 1)


def _take(models: optax.Params, slot: jax.Array) -> optax.Params:
  return jax.tree.map(
      lambda m: lax.dynamic_index_in_dim(m, slot, 0, keepdims=False), models)


def server_model(state: FedAsyncState) -> optax.Params:
  """The current server model, ``models[version % (max_staleness + 1)]``."""
  size = jax.tree.leaves(state.models)[0].shape[0]
  return _take(state.models, state.version % size)


def stale_model(state: FedAsyncState, staleness: Any,
                buffer_size: int = 1) -> optax.Params:
  """The model a client read ``staleness`` arrivals ago (after the cap).

  Args:
    state: the server's state.
    staleness: arrivals since the client read its model (int, per worker).
    buffer_size: ``K`` of FedBuff (1 for FedAsync).

  Returns:
    The stored server model the client trained from.
  """
  size = jax.tree.leaves(state.models)[0].shape[0]
  versions, _ = _read_versions(state, staleness, buffer_size, size - 1)
  return _take(state.models, (state.version - versions) % size)


def _server(alpha: Any, staleness_fn: Any, max_staleness: int,
            buffer_size: int, axis_name: str, mixing: bool
            ) -> optax.GradientTransformationExtraArgs:
  s_fn = _resolve_staleness_fn(staleness_fn)
  size = max_staleness + 1

  def init_fn(params: optax.Params) -> FedAsyncState:
    zero = jnp.zeros((), jnp.int32)
    models = jax.tree.map(
        lambda p: jnp.broadcast_to(p, (size,) + jnp.shape(p)), params)
    return FedAsyncState(
        count=zero, version=zero, models=models,
        buffer=() if mixing else jax.tree.map(jnp.zeros_like, params),
        num_buffered=zero, num_capped=zero,
        comm=comm_stats.init_comm_stats(capacity=1))

  def update_fn(updates, state, params=None, *, staleness=None,
                arrival=None, **extra_args):
    del params, extra_args
    if staleness is None or arrival is None:
      raise ValueError(
          "fedasync/fedbuff update needs the extra arguments staleness= "
          "(arrivals since this worker read its model) and arrival= (this "
          "worker's 0/1 flag: it arrives now); fedasync.clients passes "
          "them")
    flag = jnp.asarray(arrival).astype(jnp.float32)
    versions, capped = _read_versions(state, staleness, buffer_size,
                                      max_staleness)
    current = _take(state.models, _slot(state.version, max_staleness))
    weight = s_fn(versions).astype(jnp.float32)
    if mixing:
      # x - a (x - x_new), x_new = x_read - p: the client's model mixed in.
      read = _take(state.models,
                   _slot(state.version - versions, max_staleness))
      contribution = jax.tree.map(
          lambda x, r, p: (alpha * weight * (x - r + p)).astype(x.dtype),
          current, read, updates)
    else:
      contribution = jax.tree.map(lambda p: (weight * p).astype(p.dtype),
                                  updates)
    rounds = communication.Rounds(state.comm, axis_name)
    total, arrived, num_capped = rounds.all_reduce(
        (contribution, flag, flag * capped.astype(jnp.float32)),
        weight=flag)
    arrived = jnp.round(arrived).astype(jnp.int32)
    if mixing:
      buffer, num_buffered = (), state.num_buffered
      step = arrived > 0
      delta = total
    else:
      buffer = jax.tree.map(lambda b, t: b + t, state.buffer, total)
      num_buffered = state.num_buffered + arrived
      step = num_buffered >= buffer_size
      delta = jax.tree.map(lambda b: alpha * b / buffer_size, buffer)
      buffer = jax.tree.map(
          lambda b: jnp.where(step, jnp.zeros_like(b), b), buffer)
      num_buffered = jnp.where(step, 0, num_buffered)
    new_version = state.version + step.astype(jnp.int32)
    new = jax.tree.map(
        lambda x, d: jnp.where(step, x - d.astype(x.dtype), x), current,
        delta)
    slot = _slot(new_version, max_staleness)
    models = jax.tree.map(
        lambda m, x: lax.dynamic_update_index_in_dim(m, x, slot, 0),
        state.models, new)
    out = jax.tree.map(lambda n, x: n - x, new, current)
    return out, FedAsyncState(
        count=state.count + arrived, version=new_version, models=models,
        buffer=buffer, num_buffered=num_buffered,
        num_capped=state.num_capped + jnp.round(num_capped).astype(
            jnp.int32),
        comm=rounds.finish())

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def fedasync(
    alpha: Any,
    staleness_fn: str | StalenessFn = "constant",
    *,
    max_staleness: int,
    axis_name: str = collectives.WORKERS,
) -> optax.GradientTransformationExtraArgs:
  r"""FedAsync's server: mix each arriving client model in at once.

  With the server at version :math:`t` and a client that trained
  :math:`x_{new}` from version :math:`\tau`:

  .. math::
    \alpha_t = \alpha\, s(t - \tau), \qquad
    x_{t+1} = (1 - \alpha_t)\, x_t + \alpha_t\, x_{new}

  The input ``updates`` is the client's delta :math:`p = x_\tau - x_{new}`
  (a gradient's sign, as ``local_sgd``'s pseudo-gradient); the server
  rebuilds :math:`x_{new}` from its ring buffer. Run it with
  :func:`clients` (see the module docstring).

  Args:
    alpha: the mixing weight :math:`\alpha \in (0, 1]` (the paper's runs:
      0.6 to 0.9; the authors' script 0.8).
    staleness_fn: a name of :data:`STALENESS_FUNCTIONS` (its default
      parameters) or a callable from :func:`staleness_function`.
    max_staleness: :math:`K \ge 0`; the ring buffer holds the last
      :math:`K + 1` server models (:math:`(K + 1)\times` the model's memory,
      and nothing else model-sized). 0: every client reads the current
      model and the buffer is inert.
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`FedAsyncState`; ``update(p, state, params, staleness=...,
    arrival=...)`` returns :math:`x_{t+1} - x_t` (the same on every
    worker).

  Raises:
    ValueError: for ``alpha`` outside :math:`(0, 1]`, a negative
      ``max_staleness`` or a bad staleness function.
    TypeError: for a non-int ``max_staleness``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from distoptax import distributed as dist
    >>> from distoptax.distributed.fedasync import (
    ...     arrival_batches, clients, fedasync)
    >>> loss_fn = lambda w, b: 0.5 * jnp.sum((w - b) ** 2)
    >>> server = fedasync(0.5, "polynomial", max_staleness=2)
    >>> step = clients(loss_fn, server, optax.sgd(1.0))
    >>> run = dist.simulate(step, num_workers=2)
    >>> state = run.init(jnp.zeros(1))
    >>> data = jnp.array([[[4.0]], [[8.0]]])   # One local step each.
    >>> for worker, stale in [(0, 0), (1, 1)]:
    ...   state, _ = run.step(state, arrival_batches(
    ...       data, worker, stale))
    >>> state.params   # 0 -> 2 (s(0) = 1); then 2 + 0.5 / sqrt(2) (8 - 2).
    Array([4.1213202], dtype=float32)

  References:
    Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", OPT 2020,
    arXiv:1903.03934.

  Guarantees:
    With ``alpha = 1``, the constant staleness function and zero staleness
    every arrival replaces the server model by the client's, so a run is
    sequential SGD over the arriving clients (tested); with
    ``max_staleness = 0`` the staleness argument has no effect (tested).
    The paper proves, for strongly convex (and a restricted class of
    non-convex) objectives with staleness at most :math:`K`, linear
    convergence to a neighbourhood of the optimum whose size grows with
    :math:`K`, the local steps and the learning rate.
  """
  _check_rate("alpha", alpha, 1.0)
  max_staleness = _check_count("max_staleness", max_staleness, 0)
  return _server(alpha, staleness_fn, max_staleness, 1, axis_name,
                 mixing=True)


def fedbuff(
    server_learning_rate: Any,
    buffer_size: int,
    staleness_fn: str | StalenessFn = "polynomial",
    *,
    max_staleness: int,
    axis_name: str = collectives.WORKERS,
) -> optax.GradientTransformationExtraArgs:
  r"""FedBuff's server: buffer ``K`` weighted client deltas, then step.

  Each arrival adds :math:`s(u)\, p` to the buffer (:math:`p = x_\tau -
  x_{new}` the client's delta, :math:`u` its staleness in server versions);
  after :math:`K` arrivals

  .. math::
    x \leftarrow x - \eta_g \frac{1}{K} \sum_{k=1}^{K} s(u_k)\, p_k

  and the buffer empties. The same machinery as :func:`fedasync` (ring
  buffer of server models, one arrival per step, masked all-reduce).

  Args:
    server_learning_rate: :math:`\eta_g > 0`.
    buffer_size: :math:`K \ge 1` arrivals per server update.
    staleness_fn: as :func:`fedasync`; default ``"polynomial"`` with
      ``a = 0.5``, FedBuff's :math:`1/\sqrt{1 + u}`.
    max_staleness: the ring buffer holds the last ``max_staleness + 1``
      server versions (``>= 0``).
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`FedAsyncState` (``buffer`` holds the running sum).

  Raises:
    ValueError: for ``buffer_size < 1``, a non-positive rate, a negative
      ``max_staleness`` or a bad staleness function.
    TypeError: for a non-int ``buffer_size`` or ``max_staleness``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from distoptax import distributed as dist
    >>> from distoptax.distributed.fedasync import (
    ...     arrival_batches, clients, fedbuff)
    >>> loss_fn = lambda w, b: 0.5 * jnp.sum((w - b) ** 2)
    >>> server = fedbuff(1.0, 2, "constant", max_staleness=1)
    >>> run = dist.simulate(clients(loss_fn, server, optax.sgd(1.0)),
    ...                     num_workers=2)
    >>> state = run.init(jnp.zeros(1))
    >>> data = jnp.array([[[4.0]], [[8.0]]])
    >>> for worker in (0, 1):
    ...   state, _ = run.step(state, arrival_batches(data, worker, 0))
    ...   print(state.params)
    [0.]
    [6.]

  References:
    Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba, "Federated
    Learning with Buffered Asynchronous Aggregation", AISTATS 2022,
    arXiv:2106.06639.

  Guarantees:
    The server model changes only at every :math:`K`-th arrival; with
    :math:`K` arrivals of zero staleness from the same model it is one
    FedAvg round with server rate :math:`\eta_g` (tested). Nguyen et al.
    prove an :math:`O(1/\sqrt{T})`-type rate for smooth non-convex
    objectives under bounded staleness.
  """
  _check_rate("server_learning_rate", server_learning_rate, None)
  buffer_size = _check_count("buffer_size", buffer_size, 1)
  max_staleness = _check_count("max_staleness", max_staleness, 0)
  return _server(server_learning_rate, staleness_fn, max_staleness,
                 buffer_size, axis_name, mixing=False)


class ArrivalBatch(NamedTuple):
  """One arrival's batch for :func:`clients`; every leaf ``[n, ...]``.

  Attributes:
    data: each worker's ``H`` local minibatches, leaves ``[n, H, ...]``.
    worker: ``int32[n]``, the arriving worker's index in every row.
    staleness: ``int32[n]``, its staleness (arrivals) in every row.
  """

  data: Any
  worker: jax.Array
  staleness: jax.Array


def arrival_batches(data: Any, worker: Any, staleness: Any) -> ArrivalBatch:
  """Puts one arrival (or a scheduled sequence of them) beside the data.

  Args:
    data: leaves ``[n, H, ...]`` (or ``[E, n, H, ...]`` for ``E`` steps).
    worker: the arriving worker (int, or ``int[E]`` from
      ``AsyncSchedule.worker``).
    staleness: its staleness (int, or ``int[E]`` from
      ``AsyncSchedule.staleness``).

  Returns:
    An :class:`ArrivalBatch` whose ``worker`` and ``staleness`` repeat the
    value in every worker's row (``[n]`` or ``[E, n]``).
  """
  leaf = jax.tree.leaves(data)[0]
  worker = jnp.asarray(worker, jnp.int32)
  n = leaf.shape[worker.ndim]
  shape = worker.shape + (n,)
  return ArrivalBatch(
      data, jnp.broadcast_to(worker[..., None], shape),
      jnp.broadcast_to(jnp.asarray(staleness, jnp.int32)[..., None], shape))


def schedule_batches(data: Any, schedule: schedules.AsyncSchedule
                     ) -> ArrivalBatch:
  """:func:`arrival_batches` for every event of an ``AsyncSchedule``."""
  return arrival_batches(data, schedule.worker, schedule.staleness)


def find_state(opt_state: Any) -> FedAsyncState:
  """The :class:`FedAsyncState` inside an optimizer state (e.g. a chain)."""
  found = [node for node in jax.tree.leaves(
      opt_state, is_leaf=lambda n: isinstance(n, FedAsyncState))
           if isinstance(node, FedAsyncState)]
  if len(found) != 1:
    raise ValueError(f"expected one FedAsyncState in the optimizer state "
                     f"(fedasync or fedbuff); found {len(found)}")
  return found[0]


def clients(
    loss_fn: Callable[[optax.Params, Any], jax.Array],
    server: optax.GradientTransformation,
    client: optax.GradientTransformation,
    *,
    proximal_rho: Any = 0.0,
    buffer_size: int = 1,
    axis_name: str = collectives.WORKERS,
) -> runtime.WorkerStep:
  r"""The per-worker step of an asynchronous federated run: one arrival.

  Every worker reads the server model it trained from (``staleness``
  arrivals old, from the ring buffer), runs ``H`` local steps of ``client``
  (its state re-initialised for every task, as the authors' simulator
  does) on

  .. math:: f_i(w) + \frac{\rho}{2} \lVert w - x_\tau \rVert^2

  (FedProx's term with a detached anchor,
  ``algorithms.local.proximal_gradient``), and hands its delta
  :math:`x_\tau - w` to ``server`` with ``staleness=`` and its
  ``arrival=`` flag. ``H`` is the length of the second axis of the batch's
  data.

  Args:
    loss_fn: ``loss_fn(params, minibatch) -> loss``.
    server: :func:`fedasync` or :func:`fedbuff` (or a chain holding one).
    client: the local optimizer, e.g. ``optax.sgd(0.1)``.
    proximal_rho: :math:`\rho \ge 0` (the paper's; the authors' script
      takes :math:`\gamma \rho`).
    buffer_size: FedBuff's :math:`K` when ``server`` is :func:`fedbuff`
      (converts arrivals to versions for the read); 1 for FedAsync.
    axis_name: the logical worker axis.

  Returns:
    A :class:`~distoptax.distributed.runtime.WorkerStep` over a
    ``SyncTrainState`` (the server model, replicated) taking an
    :class:`ArrivalBatch`; metrics: this worker's mean local ``loss``, its
    ``arrival`` flag, the ``staleness`` and ``all_reduce_bytes``.

  Raises:
    ValueError: for a negative ``proximal_rho`` or ``buffer_size < 1``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from distoptax import distributed as dist
    >>> from distoptax.distributed import stragglers, topologies
    >>> from distoptax.distributed.fedasync import (
    ...     clients, fedasync, schedule_batches)
    >>> clock = dist.Clock(   # Worker 1 computes 3x slower than worker 0.
    ...     stragglers.ComputeModel(2, 1.0, imbalance=(1, 3)),
    ...     topologies.ParameterServerTopology(2, bandwidth=1e9, latency=0.0))
    >>> _, plan = dist.async_schedule(clock, clock.compute_steps(clock.init()),
    ...                               4)
    >>> plan.worker, plan.staleness
    (array([0, 0, 0, 1], dtype=int32), array([0, 0, 0, 3], dtype=int32))
    >>> loss_fn = lambda w, b: 0.5 * jnp.sum((w - b) ** 2)
    >>> server = fedasync(0.5, "polynomial", max_staleness=4)
    >>> run = dist.simulate(clients(loss_fn, server, optax.sgd(0.5)),
    ...                     num_workers=2)
    >>> state = run.init(jnp.zeros(1))
    >>> data = jnp.broadcast_to(jnp.array([[[1.0]], [[-1.0]]]), (4, 2, 1, 1))
    >>> batches = schedule_batches(data, plan)
    >>> for t in range(4):
    ...   state, metrics = run.step(state, jax.tree.map(lambda a: a[t],
    ...                                                 batches))
    >>> metrics["arrival"], metrics["staleness"]
    (Array([False,  True], dtype=bool), Array([3, 3], dtype=int32))
    >>> int(state.opt_state.version), state.params  # 0.578125 after worker
    ... # 0's three; worker 1 trained x_0 = 0 to -0.5, mixed at 0.5 / sqrt(4).
    (4, Array([0.30859375], dtype=float32))
  """
  local_math.check_proximal_mu(proximal_rho)
  buffer_size = _check_count("buffer_size", buffer_size, 1)
  client = optax.with_extra_args_support(client)
  grad_fn = jax.value_and_grad(loss_fn)

  def init(params):
    return runtime.SyncTrainState(jnp.zeros((), jnp.int32), params,
                                  server.init(params))

  def local_training(start, data):
    def body(carry, minibatch):
      w, opt_state = carry
      loss, grads = grad_fn(w, minibatch)
      grads = local_math.proximal_gradient(grads, w, start, proximal_rho)
      u, opt_state = client.update(grads, opt_state, w)
      return (optax.apply_updates(w, u), opt_state), loss
    (w, _), losses = lax.scan(body, (start, client.init(start)), data)
    return w, jnp.mean(losses)

  def update(state, batch):
    if not isinstance(batch, ArrivalBatch):
      raise TypeError(f"fedasync.clients takes an ArrivalBatch (see "
                      f"arrival_batches); got {type(batch).__name__}")
    arrival = collectives.worker_index(axis_name) == batch.worker
    start = stale_model(find_state(state.opt_state), batch.staleness,
                        buffer_size)
    trained, loss = local_training(start, batch.data)
    delta = jax.tree.map(lambda s, w: s - w, start, trained)
    updates, opt_state = server.update(
        delta, state.opt_state, state.params, staleness=batch.staleness,
        arrival=arrival)
    stats = comm_stats.find_comm_stats(opt_state)
    metrics = {
        "loss": loss,
        "arrival": arrival,
        "staleness": batch.staleness,
        "all_reduce_bytes": sum(s.all_reduce_bytes for s in stats),
    }
    del updates  # The server model is read off the ring buffer, exactly.
    params = server_model(find_state(opt_state))
    return runtime.SyncTrainState(state.step + 1, params, opt_state), metrics

  return runtime.WorkerStep(init, update, axis_name)
