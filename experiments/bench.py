r"""Benchmarks that print ratios measured side by side in one run.

  python -m distoptax.experiments.bench step [--num_workers=8] [--batch_size=32]
      [--rounds=11] [--repeats=100]
  python -m distoptax.experiments.bench step --period=4 [--fake_devices=8]
      [--num_workers=8] [--batch_size=2] [--hidden=5120] [--rounds=7]
  python -m distoptax.experiments.bench local [--num_workers=8]
      [--batch_size=32] [--hidden=128] [--rounds=11] [--repeats=50]
  python -m distoptax.experiments.bench collectives [--num_workers=8,32]
      [--dims=1e6] [--runtime=simulate|on_mesh] [--rounds=3] [--repeats=3]
  python -m distoptax.experiments.bench async [--num_workers=8]
      [--local_steps=4] [--batch_size=32] [--max_staleness=4,16]
      [--rounds=7] [--repeats=20]
  python -m distoptax.experiments.bench aggregators [--num_workers=8,32,128]
      [--dims=10000,1000000] [--rules=median,krum,...] [--rounds=5]
      [--repeats=3] [--byzfl=auto|on|off]
  python -m distoptax.experiments.bench compressors [--dims=16777216]
      [--rules=qsgd,top_k,...] [--rounds=5] [--repeats=5]

``step``: one distributed step (``num_workers`` simulated workers, mean
aggregation) against a plain ``jax.grad`` + ``optax.sgd`` step over the same
total batch. Target on CPU: ratio at most 1.2.

``step --period=P``: a local-SGD step whose all-reduce of the parameters is
guarded by ``step % P == 0`` on the replicated step counter, timed with
``P = 1``, ``P`` and no sync at all, under ``simulate`` and ``on_mesh`` (on
CPU over ``--fake_devices`` host devices), with the ratio a free skip would
give (see ``benchmarks.skipped_sync_cost``).

``local``: local SGD's step that does not sync against each worker's
plain step of the same optimizer (target: at most 1.05x), and its step
that syncs against a synchronous ``aggregate(mean)`` step (target: at most
1x), timed side by side (see ``benchmarks.local_step_cost``).

``collectives``: the mean of top-k messages at 1% density (``d = 1e6``,
``n = 8, 32``) through ``communication.exchange`` three ways, run by a
runtime: SparCML's sparse all-reduce, the default all-gather-then-decode
and a dense all-reduce; CPU time, link bytes and the alpha-beta model's
time side by side (see ``experiments.collectives_bench``), with PASS/MISS
lines for the sparse path against all-gather at ``n = 32``.

``async``: FedAsync's ring buffer against the model's bytes ((K + 1) x,
read off the state) and one FedAsync step against a synchronous round (H
local SGD steps per worker, one model all-reduce), with
``local_sgd(period=H)`` for context (see ``experiments.async_bench``);
PASS/MISS per K (memory exact, time target 1.3x).

``aggregators``: every aggregation rule and pre-aggregation on one float32
stack ``[n, d]`` per size, against the plain mean (coordinate-wise rules),
the Gram product of the centred stack (distance rules) and, when ByzFL is
installed, ByzFL's rule on the same data (see
``distoptax.experiments.aggregator_bench``). Prints the table, then one
PASS/MISS line per target at ``n = 32, d = 1e6``.

``compressors``: every compressor's ``decode(encode(x))`` on one float32
vector of 16M elements against a jitted copy of it, timed side by side,
with the wire and coded ratios (see
``distoptax.experiments.compressor_bench``) and one PASS/MISS line per
target (casts 2x, QSGD, TernGrad, natural, ZipML 4x, top-k 5x).
"""

import json
import os
import sys
import types
from typing import Sequence

from absl import app
from absl import flags
import jax

from distoptax.experiments import aggregator_bench
from distoptax.experiments import async_bench
from distoptax.experiments import benchmarks
from distoptax.experiments import collectives_bench
from distoptax.experiments import compressor_bench
from distoptax.experiments import registries

NUM_WORKERS = flags.DEFINE_list(
    "num_workers", None,
    "Workers: one value for step (default 8), a list for aggregators "
    "(default 8,32,128).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Examples per worker.")
HIDDEN = flags.DEFINE_list("hidden", ["128"], "MLP hidden widths.")
REPEATS = flags.DEFINE_integer(
    "repeats", None,
    "step: steps timed per round (default 100); aggregators: most calls per "
    "function and round (default 3).")
DIMS = flags.DEFINE_list(
    "dims", ["10000", "1000000"],
    "aggregators: dimensions d (scientific notation such as 1e6 accepted); "
    "compressors: one vector size (default 2**24).")
ROUNDS = flags.DEFINE_integer(
    "rounds", None,
    "Interleaved timing rounds (default: 11 for step, 5 for aggregators and "
    "compressors).")
RULES = flags.DEFINE_list(
    "rules", None,
    "aggregators: only these rows (e.g. median,krum,pre:bucketing); "
    "compressors: only these compressors; default all.")
NUM_BYZANTINE = flags.DEFINE_integer(
    "num_byzantine", None, "aggregators: f for every size (default (n-3)//4).")
BYZFL = flags.DEFINE_enum(
    "byzfl", "auto", ["auto", "on", "off"],
    "aggregators: compare with ByzFL when it loads (auto), require it (on), "
    "or skip it (off).")
SEED = flags.DEFINE_integer("seed", 0, "aggregators: seed of the data.")
PERIOD = flags.DEFINE_integer(
    "period", None, "step: time a sync every PERIOD steps against every step.",
    lower_bound=2)
RUNTIME = flags.DEFINE_enum(
    "runtime", "simulate", ["simulate", "on_mesh"],
    "collectives: the runtime that runs the paths (on_mesh on CPU over "
    "--fake_devices host devices).")
FAKE_DEVICES = flags.DEFINE_integer(
    "fake_devices", 8,
    "step --period and collectives --runtime=on_mesh on CPU: host devices "
    "for on_mesh (sets XLA_FLAGS before "
    "JAX starts; ignored when XLA_FLAGS already sets a count).", lower_bound=1)


def _ints(values: Sequence[str], name: str) -> list[int]:
  out = []
  for value in values:
    try:
      number = float(value)
    except ValueError as e:
      raise app.UsageError(f"--{name} needs numbers; got {value!r}") from e
    if number != int(number) or number < 1:
      raise app.UsageError(f"--{name} needs positive integers; got {value!r}")
    out.append(int(number))
  return out


def _step() -> None:
  workers = _ints(NUM_WORKERS.value or ["8"], "num_workers")
  if len(workers) != 1:
    raise app.UsageError(f"step takes one --num_workers; got {workers}")
  if PERIOD.value is not None:
    _period_step(workers[0])
    return
  result = benchmarks.step_overhead(
      num_workers=workers[0], batch_size=BATCH_SIZE.value,
      hidden=tuple(int(h) for h in HIDDEN.value),
      repeats=100 if REPEATS.value is None else REPEATS.value,
      rounds=11 if ROUNDS.value is None else ROUNDS.value)
  print(json.dumps(result, indent=2))
  print(f"{result['benchmark']}: ratio {result['ratio']:.3f}"
        + (f" (gradients alone: {result['grads_only_ratio']:.3f})"
           if "grads_only_ratio" in result else ""))


LOCAL_STEPS = flags.DEFINE_integer(
    "local_steps", 4, "async: local SGD steps H per arrival and per round.",
    lower_bound=1)
MAX_STALENESS = flags.DEFINE_list(
    "max_staleness", ["4", "16"],
    "async: ring-buffer caps K, one FedAsync server each.")


def _fake_devices() -> None:
  """Asks for ``--fake_devices`` host devices unless XLA_FLAGS sets a count
  (before JAX starts its backend)."""
  if "xla_force_host_platform_device_count" not in os.environ.get(
      "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""),
         f"--xla_force_host_platform_device_count={FAKE_DEVICES.value}"])


def _period_step(num_workers: int) -> None:
  _fake_devices()
  batch = 2 if BATCH_SIZE.value == BATCH_SIZE.default else BATCH_SIZE.value
  hidden = ([5120] if HIDDEN.value == HIDDEN.default
            else [int(h) for h in HIDDEN.value])
  result = benchmarks.skipped_sync_cost(
      period=PERIOD.value, num_workers=num_workers, batch_size=batch,
      hidden=tuple(hidden), rounds=7 if ROUNDS.value is None else ROUNDS.value)
  print(json.dumps(result, indent=2))
  for runtime in ("simulate", "on_mesh"):
    r = result[runtime]
    print(f"{runtime}: period {PERIOD.value} / every step = {r['ratio']:.3f} "
          f"(free skips would give "
          f"{r['predicted_ratio_if_skips_are_free']:.3f}; no-sync step "
          f"{r['no_sync_step_s'] * 1e3:.1f} ms, every step "
          f"{r['every_step_s'] * 1e3:.1f} ms)")


def _local() -> None:
  workers = _ints(NUM_WORKERS.value or ["8"], "num_workers")
  if len(workers) != 1:
    raise app.UsageError(f"local takes one --num_workers; got {workers}")
  result = benchmarks.local_step_cost(
      num_workers=workers[0], batch_size=BATCH_SIZE.value,
      hidden=tuple(int(h) for h in HIDDEN.value),
      repeats=50 if REPEATS.value is None else REPEATS.value,
      rounds=11 if ROUNDS.value is None else ROUNDS.value)
  print(json.dumps(result, indent=2))
  for name, target in (("local_over_plain", 1.05),
                       ("sync_over_aggregate", 1.0)):
    verdict = "PASS" if result[name] <= target else "MISS"
    print(f"{verdict} {name} {result[name]:.3f} (target <= {target})")


def _collectives() -> None:
  if RUNTIME.value == "on_mesh":
    _fake_devices()
  dims = _ints(DIMS.value, "dims") if DIMS.value != DIMS.default else [10**6]
  if len(dims) != 1:
    raise app.UsageError(f"collectives takes one --dims; got {dims}")
  workers = _ints(NUM_WORKERS.value or ["8", "32"], "num_workers")
  try:
    rows, encode = collectives_bench.run(
        workers=workers, dim=dims[0],
        rounds=3 if ROUNDS.value is None else ROUNDS.value,
        repeats=3 if REPEATS.value is None else REPEATS.value,
        seed=SEED.value, runtime=RUNTIME.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, "
        f"runtime {RUNTIME.value}, d={dims[0]}")
  print(collectives_bench.format_table(rows))
  print("top-k encode alone (in every path): " + ", ".join(
      f"n={n} {1e3 * t:.2f} ms" for n, t in encode.items()))
  print()
  for line in (collectives_bench.ratios(rows)
               + collectives_bench.check(rows, max(workers))):
    print(line)


def _async() -> None:
  workers = _ints(NUM_WORKERS.value or ["8"], "num_workers")
  if len(workers) != 1:
    raise app.UsageError(f"async takes one --num_workers; got {workers}")
  try:
    result = async_bench.run(
        num_workers=workers[0], local_steps=LOCAL_STEPS.value,
        batch_size=BATCH_SIZE.value,
        max_staleness=[int(k) for k in MAX_STALENESS.value],
        hidden=tuple(int(h) for h in HIDDEN.value),
        rounds=7 if ROUNDS.value is None else ROUNDS.value,
        repeats=20 if REPEATS.value is None else REPEATS.value,
        seed=SEED.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(async_bench.format_table(result))
  print()
  for line in async_bench.check(result):
    print(line)


def _aggregators() -> None:
  try:
    rows, status = aggregator_bench.run(
        num_workers=_ints(NUM_WORKERS.value or ["8", "32", "128"],
                          "num_workers"),
        dims=_ints(DIMS.value, "dims"), num_byzantine=NUM_BYZANTINE.value,
        rules=RULES.value,
        rounds=5 if ROUNDS.value is None else ROUNDS.value,
        repeats=3 if REPEATS.value is None else REPEATS.value,
        byzfl=BYZFL.value, seed=SEED.value,
        progress=lambda line: print(line, file=sys.stderr, flush=True))
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(status)
  print(aggregator_bench.format_table(rows))
  print()
  for check in aggregator_bench.check_targets(rows):
    print(check.line)


def _compressors() -> None:
  dims = _ints(DIMS.value, "dims") if DIMS.value != DIMS.default else [2**24]
  if len(dims) != 1:
    raise app.UsageError(f"compressors takes one --dims; got {dims}")
  try:
    rows = compressor_bench.run(
        size=dims[0], names=RULES.value or None,
        rounds=5 if ROUNDS.value is None else ROUNDS.value,
        repeats=5 if REPEATS.value is None else REPEATS.value,
        seed=SEED.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(f"device: {jax.devices()[0].device_kind}, size {dims[0]}")
  print(compressor_bench.format_table(rows))
  print()
  for line in compressor_bench.check_targets(rows):
    print(line)


BENCHMARKS = types.MappingProxyType({
    "aggregators": _aggregators,
    "async": _async,
    "collectives": _collectives,
    "compressors": _compressors,
    "local": _local,
    "step": _step,
})


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError(
        f"usage: bench NAME; known benchmarks: {', '.join(BENCHMARKS)}")
  try:
    run = registries.lookup(BENCHMARKS, argv[1], "benchmark")
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  run()


if __name__ == "__main__":
  app.run(main)
