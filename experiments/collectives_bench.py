"""Sparse all-reduce of top-k messages against all-gather-then-decode and dense.

For each number of workers ``n`` the same integer-valued top-k messages
(``k = density * d`` pairs per worker) are summed three ways, each one
jitted ``vmap`` over the worker axis (the ``simulate`` runtime, on this
machine's CPU), timed in alternating rounds so that machine noise hits all
alike:

* ``sparse``: SparCML's split all-gather
  (:func:`distoptax.distributed.sparse_allreduce.sparse_all_reduce`);
* ``all_gather``: today's path for top-k, an all-gather of the messages,
  a decode of every row into an ``[n, d]`` stack and its sum;
* ``dense``: each worker decodes its own message and the dense vectors are
  all-reduced.

The three sums must agree exactly (integer-valued data). Bytes are read
from the rounds each path recorded: ``handed`` is what one worker hands
to its collectives (the ``CommStats`` convention), ``link`` what one link
carries under the ring formulas (``RingTopology`` with ``β = 1``, ``α = 0``:
an all-gather of ``B`` carries ``(n-1) B``), and ``sim ms`` the simulated
seconds of those rounds on a ring of ``ALPHA``/``BETA``.

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
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from distoptax.algorithms import compressors
from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.distributed import sparse_allreduce as sar
from distoptax.distributed import topologies
from distoptax.experiments import benchmarks
from distoptax.worker_axis import collectives

ALPHA = 5e-6
"""Link latency of the simulated ring, seconds per message."""

BETA = 12.5e9
"""Link bandwidth of the simulated ring, bytes per second (100 Gb/s)."""

PATHS = ("sparse", "all_gather", "dense")


class Row(NamedTuple):
  """One path at one number of workers."""

  num_workers: int
  path: str
  seconds: float
  handed_bytes: int
  link_bytes: float
  simulated_seconds: float
  fill: int
  dense: bool


def messages(num_workers: int, dim: int, density: float, shared: float,
             seed: int = 0):
  """Integer-valued vectors and their top-k messages (``[n, ...]``)."""
  key_s, key_e = jax.random.split(jax.random.key(seed))
  s = jax.random.normal(key_s, (dim,))
  e = jax.random.normal(key_e, (num_workers, dim))
  x = jnp.round(100.0 * (shared * s + (1.0 - shared) * e))
  compressor = compressors.top_k(fraction=density)
  encoded = jax.jit(jax.vmap(compressor.encode, in_axes=(None, 0)))(
      jax.random.key(0), x)
  return compressor, encoded


def _paths(compressor, dim: int, capacity: int = 5):
  """The three per-worker reductions, each ``message -> (sum, stats, ...)``."""

  def sparse(message):
    rounds = communication.Rounds(comm_stats.init_comm_stats(capacity))
    out = sar.sparse_all_reduce(
        rounds, sar.SparseVector(message.arrays["indices"],
                                 message.arrays["values"]), dim)
    return out.total, rounds.finish(), out.dense

  def all_gather(message):
    rounds = communication.Rounds(comm_stats.init_comm_stats(capacity))
    stack = jax.vmap(compressor.decode)(rounds.all_gather(message))
    return (collectives.sum_over_workers(stack), rounds.finish(),
            jnp.asarray(True))

  def dense(message):
    rounds = communication.Rounds(comm_stats.init_comm_stats(capacity))
    total = rounds.all_reduce(compressor.decode(message))
    return total, rounds.finish(), jnp.asarray(True)

  fns = {"sparse": sparse, "all_gather": all_gather, "dense": dense}
  return {name: jax.jit(jax.vmap(fn, axis_name=collectives.WORKERS))
          for name, fn in fns.items()}


def _priced(stats, num_workers: int, bandwidth: float,
            latency: float) -> float:
  ring = topologies.RingTopology(num_workers, bandwidth=bandwidth,
                                 latency=latency)
  return sum(ring.cost(r.kind, r.bytes, r.participants)
             for r in comm_stats.clock_rounds(stats))


def run(*, workers: Sequence[int] = (8, 32), dim: int = 10**6,
        density: float = 0.01, shared: float = 0.5, rounds: int = 3,
        repeats: int = 3, seed: int = 0) -> list[Row]:
  """Times and prices the three paths for each number of workers.

  Raises:
    ValueError: on a density outside ``(0, 1]``, ``shared`` outside
      ``[0, 1]``, or if the three sums disagree.
  """
  if not 0 < density <= 1:
    raise ValueError(f"density must lie in (0, 1]; got {density}")
  if not 0 <= shared <= 1:
    raise ValueError(f"shared must lie in [0, 1]; got {shared}")
  rows = []
  for n in workers:
    compressor, encoded = messages(n, dim, density, shared, seed)
    fns = _paths(compressor, dim)
    outs = {name: jax.block_until_ready(fn(encoded))
            for name, fn in fns.items()}
    reference = np.asarray(outs["dense"][0][0])
    for name, (total, _, _) in outs.items():
      if not np.array_equal(np.asarray(total[0]), reference):
        raise ValueError(f"n={n}: the {name} sum differs from the dense sum")
    times = {name: [] for name in fns}
    for _ in range(rounds):
      for name, fn in fns.items():
        times[name].append(
            benchmarks.median_seconds(lambda f=fn: f(encoded), repeats))
    for name in PATHS:
      total, stats, dense = outs[name]
      handed = sum(r.bytes for r in comm_stats.clock_rounds(stats))
      rows.append(Row(
          n, name, float(np.median(times[name])), handed,
          _priced(stats, n, 1.0, 0.0), _priced(stats, n, BETA, ALPHA),
          int(np.count_nonzero(np.asarray(total[0]))), bool(dense[0])))
  return rows


def format_table(rows: list[Row]) -> str:
  lines = [f"{'n':>3} {'path':<11} {'ms':>9} {'handed B':>10} "
           f"{'link B':>11} {'sim ms':>8} {'fill':>8} dense"]
  for r in rows:
    lines.append(
        f"{r.num_workers:>3} {r.path:<11} {1e3 * r.seconds:9.2f} "
        f"{r.handed_bytes:>10} {r.link_bytes:>11.0f} "
        f"{1e3 * r.simulated_seconds:8.3f} {r.fill:>8} {r.dense}")
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
          f"link bytes {o.link_bytes / s.link_bytes:.2f}x  "
          f"simulated {o.simulated_seconds / s.simulated_seconds:.2f}x")
  return out


def check(rows: list[Row], num_workers: int = 32) -> list[str]:
  """PASS/MISS: sparse beats all-gather-then-decode in time and bytes."""
  by = {r.path: r for r in rows if r.num_workers == num_workers}
  if not by:
    return []
  s, a = by["sparse"], by["all_gather"]
  return [
      f"{'PASS' if s.seconds < a.seconds else 'MISS'}  n={num_workers} "
      f"sparse time < all_gather time: {1e3 * s.seconds:.2f} ms vs "
      f"{1e3 * a.seconds:.2f} ms",
      f"{'PASS' if s.link_bytes < a.link_bytes else 'MISS'}  "
      f"n={num_workers} sparse link bytes < all_gather link bytes: "
      f"{s.link_bytes:.0f} vs {a.link_bytes:.0f}",
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
  args = parser.parse_args(argv)
  dim = args.dim or (2**14 if args.quick else 10**6)
  rows = run(workers=args.workers, dim=dim, density=args.density,
             shared=args.shared, rounds=1 if args.quick else 3,
             repeats=2 if args.quick else 3)
  print(f"device: {jax.devices()[0].device_kind} (simulate: vmap over "
        f"workers), d={dim}, density={args.density}, shared={args.shared}")
  print(format_table(rows))
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
