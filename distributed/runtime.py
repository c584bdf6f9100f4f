"""Per-worker training step and the runtimes that map it over workers.

A :class:`WorkerStep` is written for one worker; it communicates only through
``distoptax.distributed.collectives`` on its logical worker axis. A runtime
holds the state of all workers with a leading ``[num_workers]`` axis and runs
the step on each:

* :func:`simulate`: ``jax.vmap`` over the worker axis on one device;
* :func:`on_mesh`: ``jax.shard_map`` over a 1-D device mesh whose axis is the
  worker axis, ``num_workers / num_devices`` workers per device (a ``vmap``
  inside each shard). Works unchanged on a global mesh of several processes
  after ``jax.distributed.initialize``.

Both give the same numbers for the same inputs (up to the order of floating
point additions inside an all-reduce).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from distoptax.distributed.aggregate import find_selected
from distoptax.distributed import collectives
from distoptax.distributed import comm_stats

Batch = Any
Metrics = dict[str, jax.Array]


class TrainState(NamedTuple):
  """One worker's training state.

  Attributes:
    step: number of updates applied (int32 scalar).
    params: the worker's copy of the model parameters.
    opt_state: the worker's optimizer state (including communication stats).
  """

  step: jax.Array
  params: optax.Params
  opt_state: optax.OptState


class WorkerStep(NamedTuple):
  """A per-worker step and how to initialise its state.

  Attributes:
    init: ``init(params) -> TrainState`` for one worker; runs under the
      worker axis (like ``update``), so it may ask ``num_workers``.
    update: ``update(state, batch) -> (state, metrics)`` for one worker; its
      collectives run over ``axis_name``.
    axis_name: the logical worker axis the step communicates over.
  """

  init: Callable[[optax.Params], TrainState]
  update: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
  axis_name: str


def data_parallel(
    loss_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    axis_name: str = collectives.WORKERS,
    extra_args: Callable[[TrainState], dict[str, Any]] | None = None,
) -> WorkerStep:
  """Builds the per-worker data-parallel train step.

  Each worker computes the loss and gradient on its own batch, calls
  ``tx.update(grads, opt_state, params, value=loss)`` (communication happens
  inside ``tx``, e.g. in ``distributed.aggregate``) and applies the updates to
  its own copy of the parameters.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)`` with
      ``has_aux=True``, ``aux`` a dict of scalars added to the metrics).
    tx: the optimizer, typically ``optax.chain(aggregate(...), optax.sgd(...))``.
    has_aux: whether ``loss_fn`` returns auxiliary metrics.
    axis_name: the logical worker axis that ``tx`` communicates over.
    extra_args: ``extra_args(state) -> dict`` of further optax extra
      arguments for ``tx.update`` (e.g. Zeno's ``value_fn``, a loss oracle on
      a validation batch chosen from ``state.step``); it must give the same
      values on every worker when a rule relies on that.

  Returns:
    A :class:`WorkerStep`. Its metrics are this worker's ``loss``, the bytes
    it handed to all-reduce and all-gather collectives this step
    (``all_reduce_bytes``, ``all_gather_bytes``, summed over every
    ``CommStats`` in ``tx``'s state), ``selected`` when the aggregation rule
    records which rows it kept (see ``find_selected``), plus ``aux``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from distoptax import algorithms as alg, distributed as dist
    >>> loss_fn = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
    >>> tx = optax.chain(dist.aggregate(alg.aggregators.mean()),
    ...                  optax.sgd(0.1))
    >>> run = dist.simulate(dist.data_parallel(loss_fn, tx), num_workers=4)
    >>> state = run.init(jnp.zeros(3))
    >>> batch = (jnp.ones((4, 8, 3)), jnp.ones((4, 8)))
    >>> state, metrics = run.step(state, batch)
    >>> metrics["loss"].shape
    (4,)
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)

  def init(params: optax.Params) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

  def update(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    value, grads = grad_fn(state.params, batch)
    loss, aux = value if has_aux else (value, {})
    more = {} if extra_args is None else extra_args(state)
    updates, opt_state = tx.update(
        grads, state.opt_state, state.params, value=loss, **more)
    params = optax.apply_updates(state.params, updates)
    stats = comm_stats.find_comm_stats(opt_state)
    metrics = {
        "loss": loss,
        "all_reduce_bytes": sum(s.all_reduce_bytes for s in stats),
        "all_gather_bytes": sum(s.all_gather_bytes for s in stats),
        **aux,
    }
    selected = find_selected(opt_state)
    if selected is not None:
      metrics["selected"] = selected
    return TrainState(state.step + 1, params, opt_state), metrics

  return WorkerStep(init, update, axis_name)


class Runtime(NamedTuple):
  """A worker step mapped over all workers.

  Attributes:
    init: ``init(params) -> TrainState`` with a leading worker axis on every
      leaf; ``params`` has no worker axis and is copied to every worker.
    step: ``step(state, batch) -> (state, metrics)``, jitted; every leaf of
      ``batch`` has a leading ``[num_workers]`` axis (worker ``i`` reads
      row ``i``) and every metric comes back per worker. ``state`` is donated.
    num_workers: the number of workers.
    lower: ``lower(state, batch) -> jax.stages.Lowered``, the program that
      ``step`` runs, for inspecting its collectives and costs.
  """

  init: Callable[[optax.Params], TrainState]
  step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
  num_workers: int
  lower: Callable[[TrainState, Batch], jax.stages.Lowered]


def _check_num_workers(num_workers: int) -> None:
  if not isinstance(num_workers, int) or isinstance(num_workers, bool):
    raise TypeError(f"num_workers must be an int; got {num_workers!r}")
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1; got {num_workers}")


def _replicated_init(step: WorkerStep, num_workers: int):
  def init(params: optax.Params) -> TrainState:
    stacked = jax.tree.map(
        lambda p: jnp.broadcast_to(p, (num_workers,) + jnp.shape(p)), params)
    # Under the worker axis, so that transforms may size per-worker state.
    return jax.jit(jax.vmap(step.init, axis_name=step.axis_name))(stacked)
  return init


def simulate(step: WorkerStep, num_workers: int) -> Runtime:
  """Runs a per-worker step for ``num_workers`` workers on one device.

  The worker axis is a ``jax.vmap`` with ``axis_name=step.axis_name``;
  collectives become array operations along it.

  Args:
    step: from :func:`data_parallel` (or any :class:`WorkerStep`).
    num_workers: number of simulated workers (any positive int).

  Returns:
    A :class:`Runtime`.
  """
  _check_num_workers(num_workers)
  mapped = jax.vmap(step.update, axis_name=step.axis_name)
  jitted = jax.jit(mapped, donate_argnums=0)
  return Runtime(
      init=_replicated_init(step, num_workers),
      step=jitted,
      num_workers=num_workers,
      lower=jitted.lower)


def on_mesh(step: WorkerStep, mesh: jax.sharding.Mesh,
            num_workers: int) -> Runtime:
  """Runs a per-worker step with ``jax.shard_map`` over a device mesh.

  The mesh must be 1-D with its axis named ``step.axis_name``. Each device
  holds ``k = num_workers / mesh.size`` consecutive workers (device ``d``
  holds workers ``d*k ... d*k + k - 1``) and runs them with a ``vmap`` over
  the axis ``collectives.local_axis_name(step.axis_name)``; the collectives of
  ``distoptax.distributed.collectives`` span both axes.

  Args:
    step: from :func:`data_parallel` (or any :class:`WorkerStep`).
    mesh: e.g. ``jax.make_mesh((jax.device_count(),), ("workers",))``.
    num_workers: a positive multiple of ``mesh.size``.

  Returns:
    A :class:`Runtime` whose state and batches are sharded over the mesh
    along the leading worker axis.

  Raises:
    ValueError: if the mesh is not 1-D over ``step.axis_name`` or
      ``num_workers`` is not a multiple of the number of devices.
  """
  _check_num_workers(num_workers)
  axis = step.axis_name
  if tuple(mesh.axis_names) != (axis,):
    raise ValueError(
        f"on_mesh needs a 1-D mesh whose axis is the worker axis {axis!r}; "
        f"got mesh axes {tuple(mesh.axis_names)}")
  num_devices = mesh.size
  if num_workers % num_devices:
    raise ValueError(
        f"num_workers={num_workers} is not a multiple of the number of "
        f"devices in the mesh ({num_devices})")
  # Outputs on an Explicit-axes mesh carry their sharding in their type, so
  # that ``state.params[0]`` would need an explicit out_sharding; the same
  # devices under Auto axes give ordinary sharded arrays.
  mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                           axis_types=(jax.sharding.AxisType.Auto,))
  spec = jax.sharding.PartitionSpec(axis)
  sharding = jax.sharding.NamedSharding(mesh, spec)
  local = jax.vmap(step.update, axis_name=collectives.local_axis_name(axis))
  # check_vma=False: collectives over the inner vmap axis are not tracked by
  # the varying-manual-axes type system (an internal assertion fails).
  mapped = jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec,
                         check_vma=False)
  jitted = jax.jit(mapped, donate_argnums=0)
  replicated_init = _replicated_init(step, num_workers)

  def init(params: optax.Params) -> TrainState:
    return jax.device_put(replicated_init(params), sharding)

  def run_step(state: TrainState, batch: Batch):
    # Placing the batch (a no-op when it already lies on the mesh) is what an
    # Explicit-axes mesh requires before shard_map.
    return jitted(state, jax.device_put(batch, sharding))

  def lower(state: TrainState, batch: Batch) -> jax.stages.Lowered:
    return jitted.lower(state, jax.device_put(batch, sharding))

  return Runtime(init=init, step=run_step, num_workers=num_workers,
                 lower=lower)


def worker_slice(tree, index: int = 0):
  """The state of one worker from a stacked tree (e.g. for evaluation)."""
  return jax.tree.map(lambda x: x[index], tree)

