r"""BlueConnect: the decomposed all-reduce against the flat ring, up to 192 workers.

Claim (Cho, Finkler, Kung, Hunter, "BlueConnect: Decomposing All-Reduce for
Deep Learning on Heterogeneous Network Hierarchy", MLSys 2019; no arXiv id):
decomposing one all-reduce into reduce-scatter and all-gather stages mapped
to the network tiers "reduces communication overhead by 87% on 192 GPUs for
ResNet-50 training over prior arts" (abstract; ``third_party_notes/
blueconnect.md`` says what that figure measures and why the model's figure
is a different quantity).

Model (``distributed.hierarchical``, latency-bandwidth per stage): ``n = h
g`` workers, ``g = 8`` per host, intra-host links :math:`(\alpha_1,
\beta_1)`, inter-host :math:`(\alpha_2, \beta_2)` per worker (declared
below; not the paper's testbed). BlueConnect's ``"inner_first"`` order
costs

.. math::

  T_\mathrm{bc} = 2(g-1)\alpha_1 + \tfrac{2(g-1)}{g}\tfrac{B}{\beta_1}
                + 2(h-1)\alpha_2 + \tfrac{2(h-1)}{h}\tfrac{B}{g\beta_2},

the flat ring :math:`T_\mathrm{ring} = 2(n-1)\max_e(\alpha_e +
B/(n\beta_e))`, and the predicted reduction is :math:`1 -
T_\mathrm{bc}/T_\mathrm{ring}`, which tends to :math:`1 - (h-1)/(n-1)`
(0.880 at ``h = 24``) when the intra-host links are free and the message is
bandwidth-bound.

Measured: for each worker count the decomposition really runs (``simulate``,
a small integer-valued probe message per worker) and its ``CommStats``
record is read back; the clock (``Clock`` on a ``HierarchicalTopology``)
prices the recorded rounds, and the stage plan of a ResNet-50-sized message
(25,557,032 float32 parameters, torchvision's count) built by the same code
(``stage_plan``) that the record was checked against. The flat ring is
priced by the clock on a ``RingTopology`` over its slowest edge.

Sub-claims (the check PASSes iff all hold):

(a) the decomposition equals ``psum`` exactly on integer-valued data at every
    probed worker count, in both orders;
(b) the recorded rounds (kind, bytes, tier) are the stage plan's;
(c) the clock's price of the recorded and planned rounds equals the
    per-stage model (relative error :math:`\le 10^{-9}`), and the clock's
    flat ring equals the flat-ring formula;
(d) at every worker count the simulated reduction lies within 0.05 of the
    bandwidth-bound limit :math:`1 - (h-1)/(n-1)`: with ``g`` fixed it
    shrinks as hosts are added, towards :math:`1 - 1/g` (a smaller
    reduction at more workers, not a larger one);
(e) at 192 workers (24 hosts of 8) the simulated reduction is within 0.05 of
    the paper's 87%;
(f) negative control, wrong order: ``"outer_first"`` (every byte crosses the
    slow tier first) misses the predicted reduction by more than 0.05;
(g) negative control, no hierarchy: pricing every stage at inter-host speed
    misses the predicted reduction by more than 0.05.

``measured`` is the number of sub-claims that hold (expected 7, tolerance
0). Quick mode probes 2, 8 and 24 hosts and assesses every sub-claim.
"""

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from distoptax.distributed import clock as clock_lib
from distoptax.distributed import comm_stats
from distoptax.distributed import hierarchical
from distoptax.distributed import stragglers
from distoptax.distributed import topologies
from distoptax.theory_checks import harness
from distoptax.worker_axis import collectives

NAME = "blueconnect_scaling"

PAPER_REDUCTION = 0.87
"""The abstract's figure: 87% less communication overhead on 192 GPUs."""

RESNET50_PARAMS = 25_557_032
"""torchvision ``resnet50`` (IMAGENET1K_V1) ``num_params``."""

CLAIM = harness.Claim(
    name=NAME,
    statement=(
        "BlueConnect's all-reduce (reduce-scatter within hosts, then between "
        "hosts, all-gather in reverse) equals psum and, priced per stage in "
        "the latency-bandwidth model on a two-tier network, cuts the flat "
        "ring's communication time by the model's reduction, within 0.05 of "
        "the paper's 87% at 192 workers (8 per host); a wrong order or "
        "slow intra-host links miss it."),
    source=("Cho, Finkler, Kung, Hunter 2019, BlueConnect: Decomposing "
            "All-Reduce for Deep Learning on Heterogeneous Network "
            "Hierarchy, MLSys 2019 (abstract: 87% on 192 GPUs, ResNet-50)"),
    measured="number of the sub-claims (a)-(g) that hold",
    expected=7.0,
    tolerance=0.0,
)


@dataclasses.dataclass(frozen=True)
class Config:
  """Configuration of the sweep.

  Attributes:
    hosts: numbers of hosts swept; the last is the paper's scale.
    workers_per_host: ``g``.
    num_params: float32 parameters of the priced message.
    probe_size: float32 entries per worker of the message really reduced.
    local_bandwidth: intra-host bytes/s per link (NVLink-class, declared).
    local_latency: intra-host seconds per message.
    host_bandwidth: inter-host bytes/s per worker (one 100 Gb/s NIC shared
      by the host's 8 workers, declared).
    host_latency: inter-host seconds per message.
    num_seeds: probe messages drawn per worker count.
    limit_tolerance: accepted distance of (d) from the limit.
    paper_tolerance: accepted distance of (e) from 0.87.
    control_margin: how far a negative control must miss the prediction.
  """

  hosts: tuple[int, ...] = (2, 3, 4, 6, 8, 12, 16, 24)
  workers_per_host: int = 8
  num_params: int = RESNET50_PARAMS
  probe_size: int = 100
  local_bandwidth: float = 50e9
  local_latency: float = 2e-6
  host_bandwidth: float = 12.5e9 / 8
  host_latency: float = 5e-6
  num_seeds: int = 2
  limit_tolerance: float = 0.05
  paper_tolerance: float = 0.05
  control_margin: float = 0.05


QUICK = Config(hosts=(2, 8, 24), num_seeds=1)
"""The CI-sized configuration (``--quick``)."""

SUB_CLAIM_KEYS = ("a", "b", "c", "d", "e", "f", "g")
"""The sub-claims' keys, in order."""

QUICK_ASSESSED = SUB_CLAIM_KEYS
"""The quick budget assesses every sub-claim (module docstring)."""

ORDERS = ("inner_first", "outer_first")


def _topology(config: Config, hosts: int, *, slow_local: bool = False
              ) -> topologies.HierarchicalTopology:
  local = ((config.host_bandwidth, config.host_latency) if slow_local
           else (config.local_bandwidth, config.local_latency))
  return topologies.HierarchicalTopology(
      hosts * config.workers_per_host,
      workers_per_host=config.workers_per_host, local_bandwidth=local[0],
      local_latency=local[1], host_bandwidth=config.host_bandwidth,
      host_latency=config.host_latency)


def probe(tiers: collectives.Tiers, order: str, x: np.ndarray):
  """Runs the decomposition on ``x [n, d]``; returns the sums and stats."""
  def one(row):
    return hierarchical.hierarchical_all_reduce(
        row, tiers, comm_stats.init_comm_stats(4), order=order)
  return jax.jit(jax.vmap(one, axis_name=collectives.WORKERS))(
      jnp.asarray(x))


def _plan_rounds(tiers, order, num_bytes):
  plan = hierarchical.stage_plan(
      jax.ShapeDtypeStruct((num_bytes,), jnp.uint8), tiers, order)
  topo_tier = dict(zip(tiers.names, ("hosts", "local")))
  return [clock_lib.Round(s.kind, s.bytes, tier=topo_tier[s.tier])
          for s in plan]


def _clock_seconds(topology, rounds) -> float:
  clock = clock_lib.Clock(stragglers.ComputeModel(topology.num_workers, 0.0),
                          topology)
  return float(clock.communicate(clock.init(), rounds).time.max())


def _flat_clock_seconds(config: Config, n: int, num_bytes: int) -> float:
  """The flat ring on the clock: a ring over the slowest edge's link."""
  edges = [(config.local_latency, config.local_bandwidth)]
  if n > config.workers_per_host:
    edges.append((config.host_latency, config.host_bandwidth))
  step = lambda e: e[0] + num_bytes / (n * e[1])
  latency, bandwidth = max(edges, key=step)
  ring = topologies.RingTopology(n, bandwidth=bandwidth, latency=latency)
  return _clock_seconds(ring, [clock_lib.Round("all_reduce", num_bytes)])


def sweep(config: Config, meter: harness.Progress | None = None) -> dict:
  """Probes, records and prices every worker count.

  Returns:
    ``{"exact", "recorded", "clock_matches"}`` flags per (seed, hosts,
    order) and the seconds and reductions per hosts (``"bc"``, ``"outer"``,
    ``"slow"``, ``"ring"``, ``"model"``, ``"reduction"``, ...).
  """
  g = config.workers_per_host
  num_bytes = 4 * config.num_params
  out = {k: [] for k in ("exact", "recorded", "clock_matches")}
  per_hosts = {k: [] for k in ("n", "bc", "outer", "slow", "ring",
                               "model_bc", "model_outer", "model_slow",
                               "model_ring", "padded_bytes")}
  for hosts in config.hosts:
    n = hosts * g
    if meter is not None:
      meter.point(f"{hosts} hosts x {g} = {n} workers")
    tiers = collectives.Tiers(("hosts", "local"), (hosts, g))
    topo = _topology(config, hosts)
    _, links = hierarchical.topology_links(topo)
    for seed in range(config.num_seeds):
      rng = np.random.default_rng([seed, n])
      x = rng.integers(-100, 100, size=(n, config.probe_size)).astype(
          np.float32)
      for order in ORDERS:
        total, stats = probe(tiers, order, x)
        out["exact"].append(bool(np.array_equal(
            np.asarray(total), np.tile(x.sum(0), (n, 1)))))
        plan = hierarchical.stage_plan(x[0], tiers, order)
        try:
          rounds = hierarchical.clock_rounds(stats, tiers, order)
        except ValueError:
          rounds = []
        topo_tier = dict(zip(tiers.names, ("hosts", "local")))
        out["recorded"].append(
            [(r.kind, r.bytes, r.tier) for r in rounds]
            == [(s.kind, s.bytes, topo_tier[s.tier]) for s in plan])
        model = hierarchical.hierarchical_seconds(plan[0].bytes, tiers,
                                                  links, order)
        out["clock_matches"].append(
            bool(rounds) and math.isclose(_clock_seconds(topo, rounds),
                                          model, rel_tol=1e-9))
    padded = hierarchical.stage_plan(
        jax.ShapeDtypeStruct((config.num_params,), jnp.float32), tiers)[0]
    b = padded.bytes
    slow_topo = _topology(config, hosts, slow_local=True)
    _, slow_links = hierarchical.topology_links(slow_topo)
    figures = {
        "bc": _clock_seconds(topo, _plan_rounds(tiers, "inner_first", b)),
        "outer": _clock_seconds(topo, _plan_rounds(tiers, "outer_first", b)),
        "slow": _clock_seconds(slow_topo,
                               _plan_rounds(tiers, "inner_first", b)),
        "ring": _flat_clock_seconds(config, n, num_bytes),
        "model_bc": hierarchical.hierarchical_seconds(b, tiers, links),
        "model_outer": hierarchical.hierarchical_seconds(
            b, tiers, links, "outer_first"),
        "model_slow": hierarchical.hierarchical_seconds(b, tiers,
                                                        slow_links),
        "model_ring": hierarchical.flat_ring_seconds(num_bytes, tiers, links),
        "padded_bytes": b, "n": n,
    }
    for key, value in figures.items():
      per_hosts[key].append(value)
  result = {k: np.asarray(v) for k, v in per_hosts.items()}
  for name in ("bc", "outer", "slow"):
    result[f"reduction_{name}"] = 1 - result[name] / result["ring"]
    result[f"predicted_{name}"] = (1 - result[f"model_{name}"]
                                   / result["model_ring"])
  hosts = np.asarray(config.hosts)
  result["limit"] = 1 - (hosts - 1) / (result["n"] - 1)
  result.update({k: np.asarray(v) for k, v in out.items()})
  return result


def _judge(config: Config, fig: dict) -> list[bool]:
  clock_ok = bool(np.all(fig["clock_matches"])) and all(
      math.isclose(a, b, rel_tol=1e-9) for key in ("bc", "outer", "slow",
                                                   "ring")
      for a, b in zip(fig[key], fig[f"model_{key}"]))
  predicted = fig["predicted_bc"][-1]
  return [
      bool(np.all(fig["exact"])),
      bool(np.all(fig["recorded"])),
      clock_ok,
      bool(np.all(np.abs(fig["reduction_bc"] - fig["limit"])
                  <= config.limit_tolerance)),
      abs(fig["reduction_bc"][-1] - PAPER_REDUCTION)
      <= config.paper_tolerance,
      abs(fig["reduction_outer"][-1] - predicted) > config.control_margin,
      abs(fig["reduction_slow"][-1] - predicted) > config.control_margin,
  ]


def run(*, quick: bool = False, seeds: int | None = None,
        progress: bool = True, **overrides) -> harness.CheckResult:
  """Runs the sweep and counts the sub-claims that hold.

  Args:
    quick: use :data:`QUICK` instead of ``Config()``.
    seeds: probe messages per worker count, overriding the configuration.
    progress: print a line per worker count to stderr.
    **overrides: further :class:`Config` fields (e.g. a negative control:
      ``local_bandwidth=12.5e9 / 8``).

  Returns:
    The :class:`harness.CheckResult`; ``x`` is the number of workers, ``y``
    the simulated reduction against the flat ring (one row),
    ``extras["sweep"]`` every time and reduction.
  """
  config = harness.resolve_config(Config(), QUICK, quick=quick, seeds=seeds,
                                  overrides=overrides)
  assessed = harness.quick_assessment(SUB_CLAIM_KEYS, QUICK_ASSESSED,
                                      quick=quick)
  start = time.perf_counter()
  meter = harness.Progress(NAME, len(config.hosts), enabled=progress)
  fig = sweep(config, meter)
  meter.done()
  elapsed = time.perf_counter() - start
  holds = _judge(config, fig)
  n_max = int(fig["n"][-1])
  rows = [
      dict(name="(a) the decomposition equals psum exactly (both orders)",
           value=float(np.mean(fig["exact"])), expected="1 (every probe)"),
      dict(name="(b) recorded rounds are the stage plan (kind, bytes, tier)",
           value=float(np.mean(fig["recorded"])), expected="1"),
      dict(name="(c) clock price of the rounds equals the per-stage model",
           value=float(np.max(np.abs(fig["bc"] / fig["model_bc"] - 1))),
           expected="<= 1e-9", measured="max relative error"),
      dict(name="(d) reduction near the limit 1 - (h-1)/(n-1) at every n",
           value=float(np.max(np.abs(fig["reduction_bc"] - fig["limit"]))),
           expected=f"<= {config.limit_tolerance:g}",
           measured="largest |reduction - limit|"),
      dict(name=f"(e) reduction at {n_max} workers vs the paper's 87%",
           value=float(fig["reduction_bc"][-1]),
           expected=PAPER_REDUCTION, tolerance=config.paper_tolerance,
           note=(f"model prediction {fig['predicted_bc'][-1]:.4f}; "
                 f"bandwidth-bound limit 1 - (h-1)/(n-1) = "
                 f"{1 - (config.hosts[-1] - 1) / (n_max - 1):.4f}")),
      dict(name="(f) negative control: outer_first order misses it",
           value=float(fig["reduction_outer"][-1]),
           expected=f"|. - {fig['predicted_bc'][-1]:.3f}| > "
           f"{config.control_margin:g}"),
      dict(name="(g) negative control: every stage at inter-host speed",
           value=float(fig["reduction_slow"][-1]),
           expected=f"|. - {fig['predicted_bc'][-1]:.3f}| > "
           f"{config.control_margin:g}"),
  ]
  sub_claims = tuple(
      harness.SubClaim(key=key, holds=bool(h), assessed=a, **row)
      for key, row, h, a in zip(SUB_CLAIM_KEYS, rows, holds, assessed))
  sweep_json = {k: v for k, v in fig.items()}
  return harness.CheckResult(
      claim=CLAIM, measured=harness.count_assessed(holds, assessed),
      ci=(harness.count_assessed(holds, assessed),) * 2,
      x=fig["n"].astype(np.float64), y=fig["reduction_bc"][None],
      config=dataclasses.asdict(config) | {"quick": quick},
      elapsed_s=elapsed, x_label="workers n (8 per host)",
      y_label="1 - T_blueconnect / T_flat_ring (simulated)",
      extras={"sweep": sweep_json}, sub_claims=sub_claims,
      details=table(fig), plot_fn=figure)


def table(fig: dict) -> str:
  """Simulated seconds and reductions per worker count, as text."""
  lines = [f"{'n':>5} {'ring s':>9} {'bc s':>9} {'outer s':>9} "
           f"{'slow s':>9} {'red bc':>7} {'pred':>7} {'red outer':>9} "
           f"{'red slow':>8}"]
  for i, n in enumerate(fig["n"]):
    lines.append(
        f"{n:>5} {fig['ring'][i]:>9.4f} {fig['bc'][i]:>9.4f} "
        f"{fig['outer'][i]:>9.4f} {fig['slow'][i]:>9.4f} "
        f"{fig['reduction_bc'][i]:>7.4f} {fig['predicted_bc'][i]:>7.4f} "
        f"{fig['reduction_outer'][i]:>9.4f} {fig['reduction_slow'][i]:>8.4f}")
  return "\n".join(lines)


def figure(result: harness.CheckResult):
  """Simulated seconds against n (left) and the reduction (right)."""
  fig_data = result.extras["sweep"]
  fig = harness.new_figure(10, 4)
  left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  n = np.asarray(fig_data["n"])
  colors = {"ring": "C3", "bc": "C0", "outer": "C1", "slow": "C2"}
  for key, label in (("ring", "flat ring"), ("bc", "BlueConnect"),
                     ("outer", "outer_first (control)"),
                     ("slow", "inter-host speed everywhere (control)")):
    left.plot(n, fig_data[key], "o-", color=colors[key], label=label)
  left.set_xlabel(result.x_label)
  left.set_ylabel("simulated all-reduce seconds")
  left.set_yscale("log")
  left.legend(fontsize=7)
  for key, label in (("bc", "BlueConnect"), ("outer", "outer_first"),
                     ("slow", "inter-host everywhere")):
    right.plot(n, fig_data[f"reduction_{key}"], "o-", color=colors[key],
               label=label)
  right.plot(n, fig_data["predicted_bc"], "k:", label="model prediction")
  right.plot(n, fig_data["limit"], "--", color="grey", lw=0.8,
             label="limit 1 - (h-1)/(n-1)")
  right.axhline(PAPER_REDUCTION, color="grey", lw=0.8,
                label="paper: 87% (192 GPUs)")
  right.set_xlabel(result.x_label)
  right.set_ylabel("reduction vs flat ring")
  right.legend(fontsize=7)
  left.set_title(f"{result.claim.name}: {result.verdict}", fontsize=10)
  right.set_title("reduction against the flat ring", fontsize=10)
  fig.tight_layout()
  return fig


def main(argv=None):
  """``python -m distoptax.theory_checks.blueconnect_scaling [--quick]``."""
  harness.run_check_main(run, argv)


if __name__ == "__main__":
  main()
