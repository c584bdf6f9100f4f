"""Sparse all-reduce of top-k messages against all-gather-then-decode and dense.

For each number of workers ``n`` the same integer-valued updates are
averaged three ways, each through the library's own exchange
(:func:`distoptax.distributed.communication.exchange`, mean rule, run by a
runtime: ``simulate``, one jitted ``vmap`` over the workers on this
machine's CPU, or ``on_mesh`` over this machine's devices), timed in
alternating rounds so that machine noise hits all alike:

* ``sparse``: top-k (``density * d`` pairs per worker) with
  ``transport="sparse_allreduce"``, SparCML's split all-gather
  (:mod:`distoptax.distributed.sparse_allreduce`);
* ``all_gather``: top-k with the default transport, today's path: an
  all-gather of the messages, a decode of every row into the ``[n, d]``
  stack, the mean rule over it;
* ``dense``: each worker's top-k vector decoded and sent uncompressed (the
  identity compressor: one dense all-reduce).

Every path includes the same top-k encode (timed alone as ``encode``, its
message the only output) and returns every worker's ``[d]`` mean; the
``-encode`` column is the median over rounds of a path's time minus the
encode's time in the same round (what the transport adds). The
three means must agree exactly (integer-valued data, ``n`` a power of two).
Bytes are read from the rounds each path recorded: ``handed`` is what one
worker hands to its collectives (the ``CommStats`` convention), ``link``
what one link carries under the ring formulas (``RingTopology`` with
``β = 1``, ``α = 0``: an all-gather of ``B`` carries ``(n-1) B``), and
``sim ms`` the simulated seconds of those rounds on a ring of
``ALPHA``/``BETA``.

What the CPU time means: under ``simulate`` it is the work of all ``n``
workers done on one machine (the collectives are array operations), under
``on_mesh`` with fake CPU devices the collectives are memory copies
between threads of one machine; neither is a network. The network's time
is the ``sim ms`` column (the α-β model).

Gradients of data-parallel workers share most of their large coordinates;
``shared`` sets how much: worker ``i``'s vector is
``round(100 (shared * s + (1 - shared) * e_i))`` for one common normal
``s`` and its own ``e_i``. ``shared=0`` gives independent supports, the
worst case for the sparse sum's fill.

:func:`plot_density` draws the α-β model's time against density for the
sparse algorithms, the all-gather and the dense ring all-reduce, with the
crossovers marked.
"""

import argparse
import types
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from distoptax import distributed as dist
from distoptax.algorithms import aggregators
from distoptax.algorithms import compressors
from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.distributed import sparse_allreduce as sar
from distoptax.distributed import topologies
from distoptax.experiments import benchmarks

ALPHA = 5e-6
"""Link latency of the simulated ring, seconds per message."""

BETA = 12.5e9
"""Link bandwidth of the simulated ring, bytes per second (100 Gb/s)."""

PATHS = ("sparse", "all_gather", "dense")

ROUNDS_CAPACITY = 4
"""Round slots of each path's ``CommStats`` (the split all-gather's most)."""


class Row(NamedTuple):
  """One path at one number of workers."""

  num_workers: int
  path: str
  seconds: float
  beyond_encode: float
  handed_bytes: int
  link_bytes: float
  simulated_seconds: float
  fill: int


def updates(num_workers: int, dim: int, shared: float,
            seed: int = 0) -> jax.Array:
  """Integer-valued per-worker vectors, ``[n, d]`` float32."""
  key_s, key_e = jax.random.split(jax.random.key(seed))
  s = jax.random.normal(key_s, (dim,))
  e = jax.random.normal(key_e, (num_workers, dim))
  return jnp.round(100.0 * (shared * s + (1.0 - shared) * e))


def _exchange_step(compressor, transport, sparsify=None):
  """A worker step: one ``exchange`` of the batch, the mean as metric."""
  rule = aggregators.mean()

  def init(params):
    return dist.TrainState(jnp.zeros((), jnp.int32), params,
                           comm_stats.init_comm_stats(ROUNDS_CAPACITY))

  def update(state, x):
    if sparsify is not None:   # The dense path sends the top-k vector.
      x = sparsify.decode(sparsify.encode(jax.random.key(0), x))
    rounds = communication.Rounds(state.opt_state)
    out = communication.exchange(
        rounds, x, compressor=compressor, rule=rule,
        rule_state=rule.init(x, dist.num_workers()), key=jax.random.key(0),
        transport=transport)
    return (state._replace(step=state.step + 1, opt_state=rounds.finish()),
            out.aggregate)

  return dist.WorkerStep(init, update, dist.WORKERS)


def _encode_step(compressor):
  """The top-k encode alone (no communication), the message as metric."""

  def init(params):
    return dist.TrainState(jnp.zeros((), jnp.int32), params, ())

  def update(state, x):
    return state, compressor.encode(jax.random.key(0), x)

  return dist.WorkerStep(init, update, dist.WORKERS)


def _steps(density: float) -> dict[str, dist.WorkerStep]:
  top_k = compressors.top_k(fraction=density)
  return {
      "sparse": _exchange_step(top_k, "sparse_allreduce"),
      "all_gather": _exchange_step(top_k, "default"),
      "dense": _exchange_step(compressors.identity(), "default",
                              sparsify=top_k),
      "encode": _encode_step(top_k),
  }


def _make_runtime(name: str, step: dist.WorkerStep, num_workers: int):
  return RUNTIMES[name](step, num_workers)


def _on_mesh(step: dist.WorkerStep, num_workers: int):
  devices = jax.device_count()
  if num_workers % devices:
    raise ValueError(f"on_mesh: {num_workers} workers do not divide over "
                     f"{devices} devices")
  mesh = jax.make_mesh((devices,), (dist.WORKERS,))
  return dist.on_mesh(step, mesh, num_workers)


RUNTIMES = types.MappingProxyType({
    "simulate": dist.simulate,
    "on_mesh": _on_mesh,
})
"""How the paths run: one ``vmap`` on one device, or over every device."""


def _priced(rounds, num_workers: int, bandwidth: float,
            latency: float) -> float:
  ring = topologies.RingTopology(num_workers, bandwidth=bandwidth,
                                 latency=latency)
  return sum(ring.cost(r.kind, r.bytes, r.participants) for r in rounds)


def run(*, workers: Sequence[int] = (8, 32), dim: int = 10**6,
        density: float = 0.01, shared: float = 0.5, rounds: int = 3,
        repeats: int = 3, seed: int = 0,
        runtime: str = "simulate") -> tuple[list[Row], dict[int, float]]:
  """Times and prices the three paths for each number of workers.

  Returns:
    The rows, and per ``n`` the seconds of the top-k encode alone.

  Raises:
    ValueError: on a density outside ``(0, 1]``, ``shared`` outside
      ``[0, 1]``, an unknown runtime, or if the three means disagree.
  """
  if not 0 < density <= 1:
    raise ValueError(f"density must lie in (0, 1]; got {density}")
  if not 0 <= shared <= 1:
    raise ValueError(f"shared must lie in [0, 1]; got {shared}")
  if runtime not in RUNTIMES:
    raise ValueError(f"unknown runtime {runtime!r}; known: "
                     f"{sorted(RUNTIMES)}")
  rows, encode = [], {}
  for n in workers:
    x = updates(n, dim, shared, seed)
    runtimes = {name: _make_runtime(runtime, step, n)
                for name, step in _steps(density).items()}
    states = {name: rt.init(jnp.zeros((1,)))
              for name, rt in runtimes.items()}
    outs = {}

    def once(name, rts=runtimes, states=states, outs=outs, x=x):
      states[name], outs[name] = rts[name].step(states[name], x)
      return outs[name]

    for name in runtimes:
      jax.block_until_ready(once(name))
    reference = np.asarray(outs["dense"][0])
    for name in PATHS:
      if not np.array_equal(np.asarray(outs[name][0]), reference):
        raise ValueError(f"n={n}: the {name} mean differs from the dense "
                         f"mean")
    times = {name: [] for name in runtimes}
    for _ in range(rounds):
      for name in runtimes:
        times[name].append(
            benchmarks.median_seconds(lambda f=name: once(f), repeats))
    encode[n] = float(np.median(times["encode"]))
    for name in PATHS:
      # Paired per round: the same noise hits a path and the encode.
      beyond = float(np.median(np.subtract(times[name], times["encode"])))
      recorded = comm_stats.clock_rounds(states[name].opt_state)
      handed = sum(r.bytes for r in recorded)
      rows.append(Row(
          n, name, float(np.median(times[name])), beyond, handed,
          _priced(recorded, n, 1.0, 0.0), _priced(recorded, n, BETA, ALPHA),
          int(np.count_nonzero(np.asarray(outs[name][0])))))
  return rows, encode


def format_table(rows: list[Row]) -> str:
  lines = [f"{'n':>3} {'path':<11} {'ms':>9} {'-encode':>9} "
           f"{'handed B':>10} {'link B':>11} {'sim ms':>8} {'fill':>8}"]
  for r in rows:
    lines.append(
        f"{r.num_workers:>3} {r.path:<11} {1e3 * r.seconds:9.2f} "
        f"{1e3 * r.beyond_encode:9.2f} "
        f"{r.handed_bytes:>10} {r.link_bytes:>11.0f} "
        f"{1e3 * r.simulated_seconds:8.3f} {r.fill:>8}")
  return "\n".join(lines)


def ratios(rows: list[Row]) -> list[str]:
  """Per ``n``: the others' time, link bytes and simulated time over sparse."""
  out = []
  for n in sorted({r.num_workers for r in rows}):
    by = {r.path: r for r in rows if r.num_workers == n}
    s = by["sparse"]
    for other in ("all_gather", "dense"):
      o = by[other]
      out.append(
          f"n={n}: {other}/sparse  time {o.seconds / s.seconds:.2f}x  "
          f"beyond encode {o.beyond_encode / s.beyond_encode:.2f}x  "
          f"link bytes {o.link_bytes / s.link_bytes:.2f}x  "
          f"simulated {o.simulated_seconds / s.simulated_seconds:.2f}x")
  return out


def check(rows: list[Row], num_workers: int = 32) -> list[str]:
  """PASS/MISS: sparse beats all-gather-then-decode in CPU time, link bytes
  and simulated (α-β) time."""
  by = {r.path: r for r in rows if r.num_workers == num_workers}
  if not by:
    return []
  s, a = by["sparse"], by["all_gather"]
  verdict = lambda ok: "PASS" if ok else "MISS"
  return [
      f"{verdict(s.seconds < a.seconds)}  n={num_workers} sparse CPU time < "
      f"all_gather CPU time: {1e3 * s.seconds:.2f} ms vs "
      f"{1e3 * a.seconds:.2f} ms",
      f"{verdict(s.link_bytes < a.link_bytes)}  n={num_workers} sparse link "
      f"bytes < all_gather link bytes: {s.link_bytes:.0f} vs "
      f"{a.link_bytes:.0f}",
      f"{verdict(s.simulated_seconds < a.simulated_seconds)}  "
      f"n={num_workers} sparse simulated time < all_gather simulated time "
      f"(ring, alpha={ALPHA:g} s, beta={BETA:g} B/s): "
      f"{1e3 * s.simulated_seconds:.3f} ms vs "
      f"{1e3 * a.simulated_seconds:.3f} ms",
  ]


def model_curves(*, dim: int, num_workers: int, bandwidth: float = BETA,
                 latency: float = ALPHA, value_bytes: int = 4,
                 densities: np.ndarray | None = None) -> dict[str, Any]:
  """Seconds of each transport against density (independent supports)."""
  if densities is None:
    densities = np.logspace(-5, 0, 201)
  kw = dict(bandwidth=bandwidth, latency=latency, value_bytes=value_bytes)
  curves = {"density": densities}
  ks = [max(1.0, float(p) * dim) for p in densities]
  curves["split_allgather"] = np.array(
      [sar.split_allgather_seconds(k, dim, num_workers, **kw) for k in ks])
  curves["recursive_double"] = np.array(
      [sar.recursive_double_seconds(k, dim, num_workers, **kw) for k in ks])
  curves["all_gather"] = np.array(
      [sar.all_gather_seconds(k, num_workers, **kw) for k in ks])
  curves["dense"] = np.full(len(ks), sar.dense_all_reduce_seconds(
      dim, num_workers, **kw))
  return curves


def crossover(densities: np.ndarray, a: np.ndarray,
              b: np.ndarray) -> float | None:
  """The first density at which ``a`` stops being cheaper than ``b``."""
  worse = np.nonzero(a >= b)[0]
  return None if not len(worse) else float(densities[worse[0]])


def plot_density(path: str, *, dim: int = 10**6,
                 workers: Sequence[int] = (8, 32)) -> dict[str, Any]:
  """Writes the α-β model's time against density to a PNG at ``path``.

  Returns:
    ``{n: {"all_gather_vs_dense": p, "split_vs_dense": p,
    "split_vs_all_gather": p}}``, the crossover densities marked.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(1, len(workers), figsize=(6 * len(workers), 4.5),
                           squeeze=False)
  found = {}
  for ax, n in zip(axes[0], workers):
    c = model_curves(dim=dim, num_workers=n)
    p = c["density"]
    for name in ("split_allgather", "recursive_double", "all_gather",
                 "dense"):
      ax.loglog(p, 1e3 * c[name], label=name)
    marks = {
        "all_gather_vs_dense": crossover(p, c["all_gather"], c["dense"]),
        "split_vs_dense": crossover(p, c["split_allgather"], c["dense"]),
        "split_vs_all_gather": crossover(p, c["all_gather"],
                                         c["split_allgather"]),
    }
    for name, x in marks.items():
      if x is not None:
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.annotate(name, (x, ax.get_ylim()[0]), rotation=90, fontsize=7,
                    va="bottom")
    found[n] = marks
    ax.set_title(f"n={n}, d={dim:g}, α={ALPHA:g}s, β={BETA:g}B/s")
    ax.set_xlabel("density k/d per worker")
    ax.set_ylabel("simulated ms")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return found


def main(argv: Sequence[str] | None = None) -> None:
  """``python -m distoptax.experiments.collectives_bench [--quick]``."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="d = 2**14, one timing round")
  parser.add_argument("--dim", type=int, default=None)
  parser.add_argument("--workers", type=int, nargs="+", default=[8, 32])
  parser.add_argument("--density", type=float, default=0.01)
  parser.add_argument("--shared", type=float, default=0.5)
  parser.add_argument("--plot", default=None, help="PNG path for the model")
  parser.add_argument("--runtime", default="simulate",
                      choices=sorted(RUNTIMES),
                      help="on_mesh: over every device (fake CPU devices: "
                      "XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  args = parser.parse_args(argv)
  dim = args.dim or (2**14 if args.quick else 10**6)
  rows, encode = run(workers=args.workers, dim=dim, density=args.density,
                     shared=args.shared, rounds=1 if args.quick else 3,
                     repeats=2 if args.quick else 3, runtime=args.runtime)
  print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, "
        f"runtime {args.runtime}, d={dim}, density={args.density}, "
        f"shared={args.shared}")
  print(format_table(rows))
  print("top-k encode alone (in every path): " + ", ".join(
      f"n={n} {1e3 * t:.2f} ms" for n, t in encode.items()))
  print()
  for line in ratios(rows) + check(rows, max(args.workers)):
    print(line)
  if args.plot:
    for n, marks in plot_density(args.plot, dim=dim,
                                 workers=args.workers).items():
      print(f"model crossovers n={n}: " + ", ".join(
          f"{k} at {v:.3g}" if v is not None else f"{k}: none"
          for k, v in marks.items()))
    print(f"wrote {args.plot}")


if __name__ == "__main__":
  main()
