r"""FedAsync's memory and step time against a synchronous round, in one run.

  python -m distoptax.experiments.async_bench [--quick] [--workers=8]
      [--local_steps=4] [--batch_size=32] [--max_staleness 4 16]
      [--rounds=7] [--repeats=20]

Two targets of the asynchronous server (``distributed.fedasync``):

* **Memory.** The ring buffer of FedAsync's state holds the last ``K + 1``
  server models, ``(K + 1) x`` the model's bytes, and the server's state
  (:class:`~distoptax.distributed.fedasync.FedAsyncState`) holds no other
  model-sized leaf. Read off the state that ``simulate(...).init`` builds:
  every sub-tree of the state shaped like the model (the model's tree, each
  leaf's trailing shape and dtype those of the model's leaf, any leading
  axes) is one or more model copies; every other leaf is counted in
  ``other_bytes``. The runtime state also holds the server model in
  ``SyncTrainState.params`` (one more copy, read off the buffer after
  every step): it is reported, outside the target, so the whole state is
  ``(K + 2) x`` the model plus ``other_bytes``. The compiled step's
  temporary bytes (XLA's ``memory_analysis``) are reported beside the
  synchronous round's, without a target.
* **Time.** One FedAsync server step (one arrival: every worker reads its
  model from the ring buffer, trains ``H`` local SGD steps, one all-reduce
  of the deltas weighted by the arrival flag, the server's mix and the
  buffer write) costs at most ``1.3 x`` the **synchronous round**: every
  worker trains ``H`` local SGD steps from the replicated model (the same
  ``lax.scan`` as ``fedasync.clients``), then one all-reduce (``pmean``)
  of the deltas and the model steps to the mean (FedAvg with every worker,
  the same compute and communication as one arrival under this design, in
  one jitted program). Also timed, for context only: ``local_sgd(sgd,
  period=H)`` under ``data_parallel``, ``H`` runtime steps (``H``
  dispatches, one of them syncs), the library's own synchronous form.

All run the same MLP (784 -> 128 -> 10), the same workers, the same
``batch_size`` examples per worker and local step, under ``dist.simulate``
on this machine's first device. The variants are timed in alternating
rounds (median of ``repeats`` calls each); a ratio is the median over
rounds of the ratios of timings taken back to back. The arrivals come from
``async_schedule`` on a clock whose workers compute at speeds
``1, 1 + 1/n, ...`` (staleness grows past ``K``; capped reads cost the
same).
"""

import argparse
from typing import Any, Callable, Mapping, Sequence

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import distributed as dist
from distoptax.distributed.fedasync import ArrivalBatch
from distoptax.distributed.fedasync import arrival_batches
from distoptax.distributed.fedasync import find_state
from distoptax.experiments import benchmarks
from distoptax.experiments import models

MEMORY_TARGET = "ring buffer = (K + 1) x model, no other model copy"
TIME_TARGET = 1.3
"""Most FedAsync step time over the synchronous round's."""

QUICK = {"max_staleness": (4,), "local_steps": 2, "batch_size": 8,
         "rounds": 2, "repeats": 3}
"""``run`` arguments of ``--quick`` (a few seconds)."""

FULL = {"max_staleness": (4, 16), "local_steps": 4, "batch_size": 32,
        "rounds": 7, "repeats": 20}
"""``run`` arguments by default."""


def sync_round_step(loss_fn: Callable[[optax.Params, Any], jax.Array],
                    client: optax.GradientTransformation,
                    axis_name: str = dist.WORKERS) -> dist.WorkerStep:
  """A synchronous round: ``H`` local steps per worker, one model all-reduce.

  Every worker trains ``H`` steps of ``client`` from the replicated model
  (its state initialised for the round, as ``fedasync.clients`` does),
  then the model steps by the mean of the deltas (one ``pmean``): FedAvg
  with every worker taking part.

  Args:
    loss_fn: ``loss_fn(params, minibatch) -> loss``.
    client: the local optimizer, e.g. ``optax.sgd(0.1)``.
    axis_name: the logical worker axis.

  Returns:
    A ``WorkerStep`` over a ``SyncTrainState`` (the model held once) whose
    batch leaves are ``[H, ...]`` per worker; metrics: the mean local
    ``loss``.
  """
  grad_fn = jax.value_and_grad(loss_fn)

  def init(params):
    return dist.SyncTrainState(jnp.zeros((), jnp.int32), params, ())

  def update(state, batch):
    start = state.params

    def body(carry, minibatch):
      w, opt_state = carry
      loss, grads = grad_fn(w, minibatch)
      u, opt_state = client.update(grads, opt_state, w)
      return (optax.apply_updates(w, u), opt_state), loss

    (trained, _), losses = lax.scan(body, (start, client.init(start)), batch)
    delta = dist.pmean(jax.tree.map(lambda s, w: s - w, start, trained),
                       axis_name)
    params = jax.tree.map(lambda s, d: s - d, start, delta)
    return (dist.SyncTrainState(state.step + 1, params, state.opt_state),
            {"loss": jnp.mean(losses)})

  return dist.WorkerStep(init, update, axis_name)


def _is_model_copy(node: Any, model: optax.Params) -> bool:
  """Whether ``node`` is shaped like ``model`` (any leading axes)."""
  if jax.tree.structure(node) != jax.tree.structure(model):
    return False
  for leaf, p in zip(jax.tree.leaves(node), jax.tree.leaves(model)):
    shape, p_shape = jnp.shape(leaf), jnp.shape(p)
    if (len(shape) < len(p_shape) or shape[len(shape) - len(p_shape):]
        != p_shape or jnp.result_type(leaf) != jnp.result_type(p)):
      return False
  return True


def _nbytes(tree: Any) -> int:
  """Bytes of every array leaf of ``tree``."""
  return int(sum(np.dtype(jnp.result_type(x)).itemsize * np.size(x)
                 for x in jax.tree.leaves(tree)))


def model_copies(state: Any, model: optax.Params) -> tuple[dict[str, float],
                                                             int]:
  """The model-shaped sub-trees of ``state`` and the bytes of the rest.

  Args:
    state: any pytree (e.g. a runtime's state).
    model: the model's parameters.

  Returns:
    ``({path: bytes / model bytes}, other bytes)``: each sub-tree shaped
    like ``model`` (see :func:`_is_model_copy`), by its ``keystr`` path,
    and the bytes of every leaf outside them.
  """
  model_bytes = _nbytes(model)
  copies, other = {}, 0
  flat = jax.tree_util.tree_flatten_with_path(
      state, is_leaf=lambda node: _is_model_copy(node, model))[0]
  for path, node in flat:
    if _is_model_copy(node, model):
      copies[jax.tree_util.keystr(path)] = _nbytes(node) / model_bytes
    else:
      other += _nbytes(node)
  return copies, other


def _memory(state: dist.SyncTrainState, model: optax.Params,
            max_staleness: int) -> dict[str, Any]:
  """The memory figures of one FedAsync runtime state."""
  server = find_state(state.opt_state)
  copies, other = model_copies(state, model)
  server_copies, _ = model_copies(server, model)
  return {
      "max_staleness": max_staleness,
      "model_bytes": _nbytes(model),
      "ring_buffer_bytes": _nbytes(server.models),
      "ring_buffer_copies": _nbytes(server.models) / _nbytes(model),
      "server_state_copies": server_copies,
      "runtime_state_copies": copies,
      "other_bytes": other,
      "state_bytes": _nbytes(state),
  }


def _temp_bytes(runtime: dist.Runtime, state: Any, batch: Any) -> int:
  """XLA's temporary bytes of the compiled step."""
  return int(runtime.lower(state, batch).compile().memory_analysis()
             .temp_size_in_bytes)


def _arrivals(data: Any, num_workers: int, local_steps: int,
              num_events: int) -> list[ArrivalBatch]:
  """``num_events`` arrival batches from a clock of uneven workers."""
  clock = dist.Clock(
      dist.ComputeModel(num_workers, 1.0, imbalance=tuple(
          1.0 + i / num_workers for i in range(num_workers))),
      dist.ParameterServerTopology(num_workers, bandwidth=1e9, latency=0.0))
  _, plan = dist.async_schedule(
      clock, clock.compute_steps(clock.init(), local_steps), num_events,
      local_steps=local_steps)
  return [arrival_batches(data, w, s)
          for w, s in zip(plan.worker, plan.staleness)]


def _cycling(runtime: dist.Runtime, state: Any,
             batches: Sequence[Any], calls: int) -> Callable[[], Any]:
  """``calls`` runtime steps per call, cycling through ``batches``."""
  holder = {"state": state, "next": 0}

  def run():
    metrics = None
    for _ in range(calls):
      batch = batches[holder["next"] % len(batches)]
      holder["next"] += 1
      holder["state"], metrics = runtime.step(holder["state"], batch)
    return metrics["loss"]

  return run


def _check_args(num_workers: int, local_steps: int, batch_size: int,
                max_staleness: Sequence[int], rounds: int,
                repeats: int) -> None:
  """Raises a ValueError naming the first bad argument of :func:`run`."""
  for name, value in (("num_workers", num_workers),
                      ("local_steps", local_steps),
                      ("batch_size", batch_size), ("rounds", rounds),
                      ("repeats", repeats)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an int >= 1; got {value!r}")
  if not max_staleness:
    raise ValueError("max_staleness needs at least one K; got "
                     f"{max_staleness!r}")
  for k in max_staleness:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
      raise ValueError(f"max_staleness must hold ints >= 0; got {k!r}")


def run(*, num_workers: int = 8, local_steps: int = FULL["local_steps"],
        batch_size: int = FULL["batch_size"],
        max_staleness: Sequence[int] = FULL["max_staleness"],
        hidden: tuple[int, ...] = (128,), learning_rate: float = 0.1,
        alpha: float = 0.6, rounds: int = FULL["rounds"],
        repeats: int = FULL["repeats"], seed: int = 0) -> dict[str, Any]:
  """Measures FedAsync's state memory and its step time (see the module).

  Args:
    num_workers: simulated workers ``n``.
    local_steps: ``H``, local SGD steps per arrival and per round.
    batch_size: examples per worker and local step.
    max_staleness: the ``K`` values (one FedAsync server each).
    hidden: MLP hidden widths.
    learning_rate: the local SGD rate.
    alpha: FedAsync's mixing weight (polynomial staleness function).
    rounds: interleaved timing rounds.
    repeats: calls per variant and round (median).
    seed: data and initialisation seed.

  Returns:
    A dict: ``memory`` (one entry per ``K``), ``times_s`` (median seconds of
    each variant per FedAsync step or synchronous round), ``ratios``
    (``fedasync_K{K}_over_sync_round`` and ``..._over_local_sgd``, medians
    of per-round ratios), ``round_ratios`` and the step temporary bytes.

  Raises:
    ValueError: for a non-positive count or a negative ``K``.
  """
  _check_args(num_workers, local_steps, batch_size, max_staleness, rounds,
              repeats)
  model = models.make_model("mlp", num_outputs=10, hidden=hidden)
  rng = np.random.default_rng(seed)
  x = rng.random((num_workers, local_steps, batch_size, 784),
                 dtype=np.float32)
  y = rng.integers(0, 10, (num_workers, local_steps, batch_size)).astype(
      np.int32)
  params = model.init(jax.random.key(seed), x[0, 0, :1])
  data = (jnp.asarray(x), jnp.asarray(y))

  def loss_fn(p, b):
    return models.softmax_cross_entropy_loss(model.apply(p, b[0]), b[1])

  client = optax.sgd(learning_rate)
  arrivals = _arrivals(data, num_workers, local_steps, 64)
  runs, memory, temp = {}, [], {}
  for k in max_staleness:
    server = dist.fedasync(alpha, "polynomial", max_staleness=k)
    runtime = dist.simulate(dist.fedasync_clients(loss_fn, server, client),
                            num_workers)
    state = runtime.init(params)
    memory.append(_memory(state, params, k))
    temp[f"fedasync_K{k}"] = _temp_bytes(runtime, state, arrivals[0])
    runs[f"fedasync_K{k}"] = _cycling(runtime, state, arrivals, 1)
  sync = dist.simulate(sync_round_step(loss_fn, client), num_workers)
  sync_state = sync.init(params)
  temp["sync_round"] = _temp_bytes(sync, sync_state, data)
  runs["sync_round"] = _cycling(sync, sync_state, [data], 1)
  local = dist.simulate(dist.data_parallel(
      loss_fn, dist.local_sgd(client, period=local_steps)), num_workers)
  runs["local_sgd"] = _cycling(
      local, local.init(params),
      [jax.tree.map(lambda a, h=h: a[:, h], data)
       for h in range(local_steps)], local_steps)
  for fn in runs.values():  # Compile and warm up.
    benchmarks.median_seconds(fn, 2)
  times = {name: [] for name in runs}
  for _ in range(rounds):
    for name, fn in runs.items():
      times[name].append(benchmarks.median_seconds(fn, repeats))
  t = {name: np.array(v) for name, v in times.items()}
  round_ratios = {
      f"fedasync_K{k}_over_{base}": t[f"fedasync_K{k}"] / t[base]
      for k in max_staleness for base in ("sync_round", "local_sgd")}
  return {
      "benchmark": "async",
      "device": str(jax.devices()[0].device_kind),
      "num_workers": num_workers, "local_steps": local_steps,
      "batch_per_worker": batch_size, "hidden": list(hidden),
      "rounds": rounds, "repeats": repeats,
      "memory": memory,
      "times_s": {name: float(np.median(v)) for name, v in t.items()},
      "ratios": {name: float(np.median(r))
                 for name, r in round_ratios.items()},
      "round_ratios": {name: [float(v) for v in r]
                       for name, r in round_ratios.items()},
      "step_temp_bytes": temp,
  }


def _memory_ok(entry: Mapping[str, Any]) -> bool:
  """Ring buffer exactly ``(K + 1) x`` the model, no other server copy."""
  k = entry["max_staleness"]
  return (entry["ring_buffer_bytes"] == (k + 1) * entry["model_bytes"]
          and entry["server_state_copies"] == {".models": float(k + 1)})


def format_table(result: Mapping[str, Any]) -> str:
  """The memory and timing figures of :func:`run` as text.

  Args:
    result: what :func:`run` returned.

  Returns:
    One line per ``K`` (bytes and model copies by path), then one per timed
    variant (milliseconds, temporary bytes).
  """
  lines = [f"device {result['device']}, n={result['num_workers']}, "
           f"H={result['local_steps']}, batch {result['batch_per_worker']} "
           f"per worker and local step, MLP 784-"
           f"{'-'.join(map(str, result['hidden']))}-10, "
           f"{result['rounds']} rounds x {result['repeats']} calls"]
  for m in result["memory"]:
    copies = ", ".join(f"{path} {c:g}x"
                       for path, c in m["runtime_state_copies"].items())
    lines.append(
        f"K={m['max_staleness']:<3d} model {m['model_bytes']} B, ring buffer "
        f"{m['ring_buffer_bytes']} B = {m['ring_buffer_copies']:g}x; "
        f"runtime state: {copies}, other {m['other_bytes']} B")
  for name, seconds in result["times_s"].items():
    temp = result["step_temp_bytes"].get(name)
    lines.append(f"{name:<14s} {1e3 * seconds:8.3f} ms"
                 + (f"   temp {temp} B" if temp is not None else ""))
  for name, ratio in result["ratios"].items():
    lines.append(f"{name}: {ratio:.3f}")
  return "\n".join(lines)


def check(result: Mapping[str, Any]) -> list[str]:
  """PASS/MISS lines of the memory target and the time target, per ``K``.

  Args:
    result: what :func:`run` returned.

  Returns:
    One memory line and one time line per ``K``.
  """
  verdict = lambda ok: "PASS" if ok else "MISS"
  lines = []
  for m in result["memory"]:
    k = m["max_staleness"]
    lines.append(
        f"{verdict(_memory_ok(m))} K={k} memory: ring buffer "
        f"{m['ring_buffer_copies']:g}x model, server state copies "
        f"{m['server_state_copies']} (target: {MEMORY_TARGET})")
  for m in result["memory"]:
    k = m["max_staleness"]
    ratio = result["ratios"][f"fedasync_K{k}_over_sync_round"]
    lines.append(f"{verdict(ratio <= TIME_TARGET)} K={k} time: FedAsync "
                 f"step / synchronous round {ratio:.3f} (target <= "
                 f"{TIME_TARGET})")
  return lines


def main(argv: Sequence[str] | None = None) -> None:
  """``python -m distoptax.experiments.async_bench [--quick]``."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help=f"a few seconds: {QUICK}")
  parser.add_argument("--workers", type=int, default=8)
  parser.add_argument("--local_steps", type=int, default=None)
  parser.add_argument("--batch_size", type=int, default=None)
  parser.add_argument("--max_staleness", type=int, nargs="+", default=None)
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=None)
  args = parser.parse_args(argv)
  base = QUICK if args.quick else FULL
  given = {"local_steps": args.local_steps, "batch_size": args.batch_size,
           "max_staleness": args.max_staleness, "rounds": args.rounds,
           "repeats": args.repeats}
  kwargs = {name: base[name] if value is None else value
            for name, value in given.items()}
  try:
    result = run(num_workers=args.workers, **kwargs)
  except ValueError as e:
    parser.error(str(e))
  print(format_table(result))
  print()
  for line in check(result):
    print(line)


if __name__ == "__main__":
  main()
