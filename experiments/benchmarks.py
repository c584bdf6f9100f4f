"""Benchmarks whose figures are ratios measured side by side in one run."""

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.experiments import models


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall time of ``repeats`` calls of ``fn`` (results awaited)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def step_overhead(*, num_workers: int = 8, batch_size: int = 32,
                  hidden: tuple[int, ...] = (128,), learning_rate: float = 0.1,
                  repeats: int = 100, rounds: int = 11,
                  seed: int = 0) -> dict[str, Any]:
  """Times one distributed step against a plain single-device SGD step.

  Both train the same MLP (784 inputs, 10 classes) on the same total batch:
  the distributed step is ``simulate(data_parallel(loss, chain(aggregate(
  mean()), sgd), replicated_params=True))`` with ``num_workers`` workers of
  ``batch_size`` examples each (the model held once, per-worker gradients,
  an all-reduce, the mean);
  the baseline is ``jax.grad`` + ``optax.sgd`` over ``num_workers *
  batch_size`` examples. Both are jitted with the state donated. The two are
  timed in alternating rounds (median step time of each round); the ratio
  is the median over rounds of each round's ratio, so that machine noise
  hits both sides of a ratio alike. The gradients
  alone are timed the same way (per-worker gradients on stacked parameter
  copies against one gradient over the whole batch): their ratio is the part
  of the overhead that comes from computing gradients worker by worker.

  Returns:
    A dict with both times in seconds and their ratio.
  """
  model = models.make_model("mlp", num_outputs=10, hidden=hidden)
  rng = np.random.default_rng(seed)
  x = rng.random((num_workers, batch_size, 784), dtype=np.float32)
  y = rng.integers(0, 10, (num_workers, batch_size)).astype(np.int32)
  params = model.init(jax.random.key(seed), x[0, :1])

  def loss_fn(p, batch):
    return models.softmax_cross_entropy_loss(model.apply(p, batch[0]),
                                             batch[1])

  tx = optax.chain(dist.aggregate(alg.aggregators.mean()),
                   optax.sgd(learning_rate))
  runtime = dist.simulate(
      dist.data_parallel(loss_fn, tx, replicated_params=True), num_workers)
  dist_state = runtime.init(params)
  dist_batch = (jnp.asarray(x), jnp.asarray(y))

  plain_tx = optax.sgd(learning_rate)

  def plain_step(state, batch):
    p, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(p, batch)
    updates, opt_state = plain_tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), loss

  plain_step = jax.jit(plain_step, donate_argnums=0)
  plain_state = (jax.tree.map(jnp.copy, params), plain_tx.init(params))
  plain_batch = (jnp.asarray(x.reshape(-1, 784)), jnp.asarray(y.reshape(-1)))

  # The floor of the ratio: per-worker gradients alone against one gradient
  # over the whole batch.
  per_worker_grads = jax.jit(jax.vmap(jax.grad(loss_fn), in_axes=(None, 0)))
  plain_grad = jax.jit(jax.grad(loss_fn))

  holder = {"dist": dist_state, "plain": plain_state}

  def run_dist():
    holder["dist"], metrics = runtime.step(holder["dist"], dist_batch)
    return metrics["loss"]

  def run_plain():
    holder["plain"], loss = plain_step(holder["plain"], plain_batch)
    return loss

  def run_per_worker_grads():
    return per_worker_grads(params, dist_batch)

  def run_plain_grad():
    return plain_grad(params, plain_batch)

  fns = (run_dist, run_plain, run_per_worker_grads, run_plain_grad)
  for fn in fns:  # Compile and warm up.
    median_seconds(fn, 10)
  times = [[] for _ in fns]
  for _ in range(rounds):
    for fn, record in zip(fns, times):
      record.append(median_seconds(fn, repeats))
  dist_s, plain_s, grads_s, plain_grad_s = (float(np.median(t))
                                            for t in times)
  # Each round's ratio pairs two timings taken back to back, so a burst of
  # machine noise that spans a round hits both sides of its ratio.
  round_ratios = np.array(times[0]) / np.array(times[1])
  grads_round_ratios = np.array(times[2]) / np.array(times[3])
  return {
      "benchmark": "step",
      "device": str(jax.devices()[0].device_kind),
      "num_workers": num_workers,
      "batch_per_worker": batch_size,
      "hidden": list(hidden),
      "distributed_step_s": dist_s,
      "plain_sgd_step_s": plain_s,
      "ratio": float(np.median(round_ratios)),
      "round_ratios": [float(r) for r in round_ratios],
      "per_worker_grads_s": grads_s,
      "plain_grad_s": plain_grad_s,
      "grads_only_ratio": float(np.median(grads_round_ratios)),
  }


def _periodic_sync_step(loss_fn, learning_rate: float,
                        period: int) -> dist.WorkerStep:
  """Local SGD steps; every ``period`` steps the models are averaged.

  The average is a ``pmean`` under ``lax.cond`` on the replicated step
  counter, so on the other steps it does not run.
  """
  base = dist.data_parallel(loss_fn, optax.sgd(learning_rate))

  def update(state, batch):
    state, metrics = base.update(state, batch)
    params = jax.lax.cond(state.step % period == 0, dist.pmean,
                          lambda p: p, state.params)
    return state._replace(params=params), metrics

  return dist.WorkerStep(base.init, update, base.axis_name)


def mean_step_seconds(step: Callable[[], Any], num_steps: int) -> float:
  """Wall time of ``num_steps`` consecutive calls of ``step``, per call."""
  t0 = time.perf_counter()
  out = None
  for _ in range(num_steps):
    out = step()
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / num_steps


def skipped_sync_cost(*, period: int = 4, num_workers: int = 8,
                      batch_size: int = 2, hidden: tuple[int, ...] = (5120,),
                      learning_rate: float = 0.01, runtimes: tuple[str, ...] = (
                          "simulate", "on_mesh"),
                      blocks: int = 3, rounds: int = 7,
                      seed: int = 0) -> dict[str, Any]:
  """Average step time with a sync every ``period`` steps vs every step.

  The same local-SGD step (an MLP of ``784 -> hidden -> 10``, at least 4M
  parameters with the default width, ``batch_size`` examples per worker, a
  model per worker) with its all-reduce of the parameters guarded by
  ``step % p == 0`` for ``p = 1`` (every step), ``p = period`` and
  ``p = 2**30`` (never, within the run): all three are compiled from the
  same code. Each round times ``blocks * period`` consecutive steps of each
  variant back to back; the figures are medians over rounds. If a skipped
  round costs nothing, the periodic step costs
  ``((period - 1) * never + every) / period``; ``ratio`` is periodic /
  every-step (communication-dominated configurations bring it towards
  ``1 / period``).

  Args:
    period: the sync period under test.
    num_workers: workers (``on_mesh`` needs a multiple of the device count).
    batch_size: examples per worker and step.
    hidden: MLP hidden widths.
    learning_rate: the local SGD rate.
    runtimes: any of ``"simulate"`` and ``"on_mesh"`` (all local devices).
    blocks: periods per timed block.
    rounds: interleaved timing rounds.
    seed: data and initialisation seed.

  Returns:
    A dict with, per runtime, the three step times, the ratio and the
    prediction from the no-sync and every-step times.
  """
  model = models.make_model("mlp", num_outputs=10, hidden=hidden)
  rng = np.random.default_rng(seed)
  x = rng.random((num_workers, batch_size, 784), dtype=np.float32)
  y = rng.integers(0, 10, (num_workers, batch_size)).astype(np.int32)
  params = model.init(jax.random.key(seed), x[0, :1])
  num_params = sum(p.size for p in jax.tree.leaves(params))

  def loss_fn(p, batch):
    return models.softmax_cross_entropy_loss(model.apply(p, batch[0]),
                                             batch[1])

  def build(runtime_name: str, p: int) -> dist.Runtime:
    step = _periodic_sync_step(loss_fn, learning_rate, p)
    if runtime_name == "simulate":
      return dist.simulate(step, num_workers)
    mesh = jax.make_mesh((jax.device_count(),), (dist.WORKERS,))
    return dist.on_mesh(step, mesh, num_workers)

  batch = (jnp.asarray(x), jnp.asarray(y))
  variants = {"every": 1, "periodic": period, "never": 2**30}
  result = {"benchmark": "step --period", "period": period,
            "device": str(jax.devices()[0].device_kind),
            "num_devices": jax.device_count(), "num_workers": num_workers,
            "batch_per_worker": batch_size, "num_params": int(num_params)}
  for runtime_name in runtimes:
    runs = {}
    for name, p in variants.items():
      rt = build(runtime_name, p)
      holder = {"state": rt.init(params)}

      def run(rt=rt, holder=holder):
        holder["state"], metrics = rt.step(holder["state"], batch)
        return metrics["loss"]

      runs[name] = run
      mean_step_seconds(run, 2 * period)  # Compile and warm up.
    times = {name: [] for name in variants}
    for _ in range(rounds):
      for name, run in runs.items():
        times[name].append(mean_step_seconds(run, blocks * period))
    every, periodic, never = (float(np.median(times[n]))
                              for n in ("every", "periodic", "never"))
    result[runtime_name] = {
        "every_step_s": every, "periodic_step_s": periodic,
        "no_sync_step_s": never,
        "ratio": float(np.median(np.array(times["periodic"])
                                 / np.array(times["every"]))),
        "predicted_ratio_if_skips_are_free": (
            ((period - 1) * never + every) / period / every),
    }
  return result


def local_step_cost(*, num_workers: int = 8, batch_size: int = 32,
                    hidden: tuple[int, ...] = (128,),
                    learning_rate: float = 0.1, repeats: int = 50,
                    rounds: int = 11, seed: int = 0) -> dict[str, Any]:
  """Times local SGD's local and sync steps against their plain analogues.

  Four steps of the same MLP (784 inputs, 10 classes), ``num_workers``
  simulated workers of ``batch_size`` examples each, every worker holding
  its own model (``data_parallel`` without ``replicated_params``), the same
  inner optimizer (``optax.sgd(learning_rate)``):

  * ``plain``: each worker's SGD step on its own model, no communication;
  * ``local``: ``local_sgd(sgd, period=2**30)``, a step that never syncs
    (the sync sits in the untaken branch of its ``lax.cond``);
  * ``aggregate``: ``chain(aggregate(mean()), sgd)``, one all-reduce of
    the gradients and the step;
  * ``sync``: ``local_sgd(sgd, period=1)``, a step that syncs every time
    (one all-reduce of the pseudo-gradients, the outer step, the models
    set to the global model).

  They are timed in alternating rounds (median step time of ``repeats``
  steps per round); each ratio is the median over rounds of the ratio of
  two timings taken back to back. Targets: ``local / plain <= 1.05`` and
  ``sync / aggregate <= 1``.

  Returns:
    A dict with the four step times in seconds and the two ratios.
  """
  model = models.make_model("mlp", num_outputs=10, hidden=hidden)
  rng = np.random.default_rng(seed)
  x = rng.random((num_workers, batch_size, 784), dtype=np.float32)
  y = rng.integers(0, 10, (num_workers, batch_size)).astype(np.int32)
  params = model.init(jax.random.key(seed), x[0, :1])
  batch = (jnp.asarray(x), jnp.asarray(y))

  def loss_fn(p, b):
    return models.softmax_cross_entropy_loss(model.apply(p, b[0]), b[1])

  inner = optax.sgd(learning_rate)
  transforms = {
      "plain": inner,
      "local": dist.local_sgd(inner, period=2**30),
      "aggregate": optax.chain(dist.aggregate(alg.aggregators.mean()),
                               inner),
      "sync": dist.local_sgd(inner, period=1),
  }
  runs = {}
  for name, tx in transforms.items():
    runtime = dist.simulate(dist.data_parallel(loss_fn, tx), num_workers)
    holder = {"state": runtime.init(params)}

    def run(runtime=runtime, holder=holder):
      holder["state"], metrics = runtime.step(holder["state"], batch)
      return metrics["loss"]

    runs[name] = run
    median_seconds(run, 10)  # Compile and warm up.
  times = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      times[name].append(median_seconds(run, repeats))
  t = {name: np.array(v) for name, v in times.items()}
  return {
      "benchmark": "local",
      "device": str(jax.devices()[0].device_kind),
      "num_workers": num_workers,
      "batch_per_worker": batch_size,
      "hidden": list(hidden),
      **{f"{name}_step_s": float(np.median(v)) for name, v in t.items()},
      "local_over_plain": float(np.median(t["local"] / t["plain"])),
      "sync_over_aggregate": float(np.median(t["sync"] / t["aggregate"])),
  }
