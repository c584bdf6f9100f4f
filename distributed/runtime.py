"""Per-worker training step and the runtimes that map it over workers.

A :class:`WorkerStep` is written for one worker; it communicates only through
``distoptax.worker_axis`` collectives on its logical worker axis. A runtime
holds the state of all workers and runs the step on each:

* :func:`simulate`: ``jax.vmap`` over the worker axis on one device;
* :func:`on_mesh`: ``jax.shard_map`` over a 1-D device mesh whose axis is the
  worker axis, ``num_workers / num_devices`` workers per device (a ``vmap``
  inside each shard). Works unchanged on a global mesh of several processes
  after ``jax.distributed.initialize``.

Both give the same numbers for the same inputs (up to the order of floating
point additions inside an all-reduce).

**State layout.** Per-worker leaves carry a leading ``[num_workers]`` axis
(sharded over the devices by ``on_mesh``). Leaves a state declares
replicated (``worker_axis.replicated_fields``; e.g. ``TrainState.step``, an
aggregation rule's state, shared keys) are held **once**: without the worker
axis under ``simulate`` (``vmap`` with ``in_axes=None``) and once per device
under ``on_mesh`` (``PartitionSpec()``). A condition on them is the same for
every worker, so ``lax.cond`` on it stays a conditional and a collective in
the branch not taken does not run. If a step makes a replicated leaf depend
on per-worker data, both runtimes raise a ``ValueError`` naming the leaf
when they trace the step.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from distoptax.distributed import comm_stats
from distoptax.distributed.aggregate import find_selected
from distoptax.distributed.participation import find_participants
from distoptax.worker_axis import collectives
from distoptax.worker_axis import replication

Batch = Any
Metrics = dict[str, jax.Array]


@replication.replicated_fields("step")
class TrainState(NamedTuple):
  """One worker's training state.

  Attributes:
    step: number of updates applied (int32 scalar); replicated.
    params: the worker's copy of the model parameters.
    opt_state: the worker's optimizer state (including communication stats).
  """

  step: jax.Array
  params: optax.Params
  opt_state: optax.OptState


@replication.replicated_fields("step", "params")
class SyncTrainState(TrainState):
  """A :class:`TrainState` whose parameters are replicated (held once).

  What :func:`data_parallel` builds with ``replicated_params=True``: every
  worker applies the same aggregated update, so the model is stored once,
  and rules that read ``params`` (Zeno, Byzantine SGD) see one model.
  """


class WorkerStep(NamedTuple):
  """A per-worker step and how to initialise its state.

  Attributes:
    init: ``init(params) -> TrainState`` for one worker; runs under the
      worker axis (like ``update``), so it may ask ``num_workers``.
    update: ``update(state, batch, **inputs) -> (state, metrics)`` for one
      worker; its collectives run over ``axis_name``. ``inputs`` are the
      runtime's replicated host inputs (``Runtime.step(..., inputs=)``),
      passed only when the caller gives some.
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
    gradient_at: Callable[[TrainState], optax.Params] | None = None,
    replicated_params: bool = False,
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
      values on every worker when a rule relies on that. The runtime's
      host inputs (``Runtime.step(state, batch, inputs={...})``, e.g. the
      simulated seconds of the clock) are passed to ``tx.update`` as extra
      arguments too.
    gradient_at: ``gradient_at(state) -> params`` at which the loss and its
      gradient are taken; ``None`` takes them at ``state.params``. For
      methods whose gradient is evaluated at another model than the one
      updated: a stale snapshot or a server model held in ``tx``'s state
      (asynchronous SGD, FedAsync), a look-ahead point.
    replicated_params: hold the parameters once (a :class:`SyncTrainState`)
      instead of once per worker. Right for synchronous data parallelism,
      where ``tx`` ends with updates that are the same on every worker
      (after ``aggregate``), and needed by rules whose state depends on
      ``params`` (Zeno, Byzantine SGD); the runtime refuses it when the
      updates differ across workers (local SGD keeps per-worker models).

  Returns:
    A :class:`WorkerStep`. Its metrics are this worker's ``loss``, the bytes
    it handed to all-reduce and all-gather collectives this step
    (``all_reduce_bytes``, ``all_gather_bytes``, summed over every
    ``CommStats`` in ``tx``'s state), ``selected`` when the aggregation rule
    records which rows it kept (see ``find_selected``), ``participation``
    (a ``[num_workers]`` mask, the same on every worker) when a partial
    aggregate chose the step's participants (see ``find_participants``;
    the trainer's clock charges compute to them only), plus ``aux``.

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
  state_type = SyncTrainState if replicated_params else TrainState

  def init(params: optax.Params) -> TrainState:
    return state_type(jnp.zeros((), jnp.int32), params, tx.init(params))

  def update(state: TrainState, batch: Batch,
             **inputs: Any) -> tuple[TrainState, Metrics]:
    at = state.params if gradient_at is None else gradient_at(state)
    value, grads = grad_fn(at, batch)
    loss, aux = value if has_aux else (value, {})
    more = {} if extra_args is None else extra_args(state)
    clash = sorted(set(more) & set(inputs))
    if clash:
      raise ValueError(
          f"host inputs {clash} are also given by extra_args; each extra "
          "argument of tx.update must come from one place")
    more = {**more, **inputs}
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
    participants = find_participants(opt_state)
    if participants is not None:
      metrics["participation"] = participants
    return state_type(state.step + 1, params, opt_state), metrics

  return WorkerStep(init, update, axis_name)


class Runtime(NamedTuple):
  """A worker step mapped over all workers.

  Attributes:
    init: ``init(params) -> TrainState`` with a leading worker axis on every
      per-worker leaf and none on replicated leaves (see the module
      docstring); ``params`` has no worker axis and is copied to every
      worker.
    step: ``step(state, batch, inputs=None) -> (state, metrics)``, jitted;
      every leaf of ``batch`` has a leading ``[num_workers]`` axis (worker
      ``i`` reads row ``i``) and every metric comes back per worker.
      ``inputs``, a dict of arrays (or ``None``), are **host inputs**: the
      same for every worker (held once, like replicated state), passed to
      ``WorkerStep.update`` as keyword arguments (``data_parallel`` hands
      them to ``tx.update`` as extra arguments), e.g. the clock's simulated
      seconds. ``state`` is donated: its buffers are reused for the new
      state, so keep only the returned one (copy a leaf with
      ``np.asarray`` first to keep it).
    num_workers: the number of workers.
    lower: ``lower(state, batch, inputs=None) -> jax.stages.Lowered``, the
      program that ``step`` runs, for inspecting its collectives and costs.
  """

  init: Callable[[optax.Params], TrainState]
  step: Callable[..., tuple[TrainState, Metrics]]
  num_workers: int
  lower: Callable[..., jax.stages.Lowered]


def _check_num_workers(num_workers: int) -> None:
  if not isinstance(num_workers, int) or isinstance(num_workers, bool):
    raise TypeError(f"num_workers must be an int; got {num_workers!r}")
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1; got {num_workers}")


def _check_batch(batch: Batch, num_workers: int) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
    shape = jnp.shape(leaf)
    if not shape or shape[0] != num_workers:
      raise ValueError(
          f"every batch leaf needs a leading axis of num_workers="
          f"{num_workers} (worker i reads row i); batch"
          f"{jax.tree_util.keystr(path)} has shape {shape}")


def _check_inputs(inputs: Any) -> dict[str, Any]:
  """``inputs`` as a dict of arrays; ``{}`` for ``None``."""
  if inputs is None:
    return {}
  if not isinstance(inputs, dict) or not all(
      isinstance(k, str) for k in inputs):
    raise TypeError(
        f"inputs must be a dict of named arrays (host inputs, the same for "
        f"every worker) or None; got {inputs!r}")
  return inputs


def _check_params(params: optax.Params) -> None:
  if not jax.tree.leaves(params):
    raise ValueError(f"params has no arrays to train; got {params!r}")


_REPLICATION_HINT = (
    "Replicated state (worker_axis.replicated_fields) must be computed from "
    "values that are the same on every worker (collective results, other "
    "replicated state, constants); keep per-worker values in fields that are "
    "not declared replicated")


def _broke_replication(error: Exception) -> bool:
  text = str(error)
  return "got axis spec None" in text or "out_axes is None" in text


def _vmap_workers(fn, args, in_axes, out_axes, what: str, **vmap_kwargs):
  """``jax.vmap(fn)(*args)``; names the leaves that broke replication.

  ``vmap`` refuses an output whose ``out_axes`` is ``None`` (a replicated
  leaf) when it depends on the mapped inputs, without always saying which
  one; on that error each replicated output is traced alone to name it.
  """
  try:
    return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes,
                    **vmap_kwargs)(*args)
  except ValueError as e:
    if not _broke_replication(e):
      raise
    flat = jax.tree_util.tree_flatten_with_path(
        out_axes, is_leaf=lambda a: a is None)[0]
    offending = []
    for i, (path, axis) in enumerate(flat):
      if axis is not None:
        continue
      def one(*a, i=i):
        return jax.tree.leaves(fn(*a))[i]
      try:
        jax.eval_shape(jax.vmap(one, in_axes=in_axes, out_axes=None,
                                **vmap_kwargs), *args)
      except ValueError:
        offending.append(jax.tree_util.keystr(path))
    raise ValueError(
        f"{what}: state declared replicated depends on per-worker data: "
        f"{', '.join(offending)}. {_REPLICATION_HINT}") from None


def _init_fn(step: WorkerStep, num_workers: int):
  """``params -> state`` for all workers, and the state's worker axes."""
  kwargs = dict(axis_name=step.axis_name, axis_size=num_workers)

  def axes_of(params):
    structure = jax.eval_shape(
        jax.vmap(step.init, in_axes=None, **kwargs), params)
    return replication.worker_axes_tree(structure)

  def init(params):
    return _vmap_workers(step.init, (params,), None, axes_of(params),
                         "init", **kwargs)

  return init, axes_of


def _mapped_update(step: WorkerStep, axis_name: str):
  """``step.update`` mapped over ``axis_name``, replicated leaves unmapped."""

  def update(state, batch, inputs):
    return step.update(state, batch, **inputs)

  def mapped(state, batch, inputs):
    axes = replication.worker_axes_tree(state)
    return _vmap_workers(update, (state, batch, inputs), (axes, 0, None),
                         (axes, 0), "step", axis_name=axis_name)

  return mapped


def simulate(step: WorkerStep, num_workers: int) -> Runtime:
  """Runs a per-worker step for ``num_workers`` workers on one device.

  The worker axis is a ``jax.vmap`` with ``axis_name=step.axis_name``;
  collectives become array operations along it. Replicated state is held
  once (``in_axes=None``), so ``lax.cond`` on it skips a collective for
  real.

  Args:
    step: from :func:`data_parallel` (or any :class:`WorkerStep`).
    num_workers: number of simulated workers (any positive int).

  Returns:
    A :class:`Runtime`.
  """
  _check_num_workers(num_workers)
  init_all, _ = _init_fn(step, num_workers)
  mapped = _mapped_update(step, step.axis_name)
  jitted = jax.jit(mapped, donate_argnums=0)

  def init(params: optax.Params) -> TrainState:
    _check_params(params)
    return jax.jit(init_all)(params)

  def run_step(state: TrainState, batch: Batch, inputs: Any = None):
    _check_batch(batch, num_workers)
    return jitted(state, batch, _check_inputs(inputs))

  def lower(state: TrainState, batch: Batch,
            inputs: Any = None) -> jax.stages.Lowered:
    _check_batch(batch, num_workers)
    return jitted.lower(state, batch, _check_inputs(inputs))

  return Runtime(init=init, step=run_step, num_workers=num_workers,
                 lower=lower)


def on_mesh(step: WorkerStep, mesh: jax.sharding.Mesh,
            num_workers: int) -> Runtime:
  """Runs a per-worker step with ``jax.shard_map`` over a device mesh.

  The mesh is either 1-D with its axis named ``step.axis_name``, or has
  several axes that are tiers of the worker axis (e.g.
  ``jax.make_mesh((2, 4), ("hosts", "local"))``: two hosts of four devices),
  bound as ``worker_axis.tier_axis_name(step.axis_name, tier)`` so that
  ``worker_axis.tier_psum`` / ``tier_all_gather`` address one tier. Each
  device holds ``k = num_workers / mesh.size`` consecutive workers (device
  ``d`` in row-major mesh order holds workers ``d*k ... d*k + k - 1``) and
  runs them with a ``vmap`` over the axis
  ``worker_axis.local_axis_name(step.axis_name)``; the collectives of
  ``distoptax.worker_axis`` span all these axes. Replicated state is held once
  per device (``PartitionSpec()``).

  JAX's own replication check (``check_vma``) is off: it cannot follow
  collectives over the inner ``vmap`` axis (``third_party_notes/runtime.md``).
  Instead the step is first traced as :func:`simulate` maps it (shapes
  only), which refuses a replicated leaf that depends on per-worker data.

  Args:
    step: from :func:`data_parallel` (or any :class:`WorkerStep`).
    mesh: e.g. ``jax.make_mesh((jax.device_count(),), ("workers",))``, or a
      mesh of tier axes.
    num_workers: a positive multiple of ``mesh.size``.

  Returns:
    A :class:`Runtime` whose per-worker state and batches are sharded over
    the mesh along the leading worker axis.

  Raises:
    ValueError: if a 1-D mesh's axis is not ``step.axis_name`` or
      ``num_workers`` is not a multiple of the number of devices.
  """
  _check_num_workers(num_workers)
  axis = step.axis_name
  names = tuple(mesh.axis_names)
  if len(names) == 1 and names != (axis,):
    raise ValueError(
        f"on_mesh needs a 1-D mesh whose axis is the worker axis {axis!r} "
        f"(or a mesh of several tier axes); got mesh axes {names}")
  num_devices = mesh.size
  if num_workers % num_devices:
    raise ValueError(
        f"num_workers={num_workers} is not a multiple of the number of "
        f"devices in the mesh ({num_devices})")
  # Several axes are tiers of the worker axis, bound under their own names
  # (``worker_axis.tier_axis_name``) so that collectives find them.
  if len(names) > 1:
    names = tuple(collectives.tier_axis_name(axis, t) for t in names)
  # Outputs on an Explicit-axes mesh carry their sharding in their type, so
  # that ``state.params[0]`` would need an explicit out_sharding; the same
  # devices under Auto axes give ordinary sharded arrays.
  mesh = jax.sharding.Mesh(
      mesh.devices, names,
      axis_types=(jax.sharding.AxisType.Auto,) * len(names))
  spec = jax.sharding.PartitionSpec(names if len(names) > 1 else axis)
  local = _mapped_update(step, collectives.local_axis_name(axis))
  check_replication = _mapped_update(step, axis)

  def mapped(state, batch, inputs):
    # The same step as ``simulate`` runs it, traced only: it refuses a
    # replicated leaf that depends on any worker's data, which the mesh
    # program (check_vma off) would not notice across devices.
    jax.eval_shape(check_replication, state, batch, inputs)
    specs = replication.worker_axes_tree(state, spec)
    held_once = jax.sharding.PartitionSpec()
    return jax.shard_map(local, mesh=mesh,
                         in_specs=(specs, spec, held_once),
                         out_specs=(specs, spec), check_vma=False)(
                             state, batch, inputs)

  jitted = jax.jit(mapped, donate_argnums=0)
  init_all, axes_of = _init_fn(step, num_workers)

  def init(params: optax.Params) -> TrainState:
    _check_params(params)
    shardings = jax.tree.map(
        lambda a: jax.sharding.NamedSharding(
            mesh, spec if a == 0 else jax.sharding.PartitionSpec()),
        axes_of(params), is_leaf=lambda a: a is None)
    return jax.jit(init_all, out_shardings=shardings)(params)

  def place(batch: Batch) -> Batch:
    # Placing the batch (a no-op when it already lies on the mesh) is what an
    # Explicit-axes mesh requires before shard_map.
    _check_batch(batch, num_workers)
    return jax.device_put(batch, jax.sharding.NamedSharding(mesh, spec))

  def run_step(state: TrainState, batch: Batch, inputs: Any = None):
    return jitted(state, place(batch), _check_inputs(inputs))

  def lower(state: TrainState, batch: Batch,
            inputs: Any = None) -> jax.stages.Lowered:
    return jitted.lower(state, place(batch), _check_inputs(inputs))

  return Runtime(init=init, step=run_step, num_workers=num_workers,
                 lower=lower)


def worker_slice(tree, index: int = 0):
  """One worker's view of a runtime's state (e.g. for evaluation).

  Per-worker leaves are indexed along their leading worker axis; leaves
  declared replicated (held once, without that axis) are returned as they
  are.

  Args:
    tree: a runtime's state, or any part of it (``state.params``).
    index: the worker.

  Returns:
    The tree of worker ``index``.
  """
  return jax.tree.map(lambda x, r: x if r else x[index], tree,
                      replication.replication_mask(tree))
