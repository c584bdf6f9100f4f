r"""FedAsync: adaptive staleness functions tolerate staleness better.

Claim (Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", OPT 2020,
arXiv:1903.03934): FedAsync converges for every bounded staleness, and
weighting each arrival by a decreasing function of its staleness
(:math:`\alpha_t = \alpha\, s(t - \tau)`, polynomial or hinge) makes it
more tolerant of large staleness than the constant weight. Measured:

* (a) as the maximum staleness :math:`K` grows from the smallest to the
  largest value swept (4 to 16), the polynomial and the hinge functions
  lose less than the constant one. The loss of a run is its mean
  :math:`\log(F(x_t) - F^*)` over the events (the area under the
  semilog curve: it grows with a slower linear phase and with a higher
  floor); :math:`\Delta_s` is its rise from :math:`K_{min}` to
  :math:`K_{max}` (seed means), and (a) holds if :math:`\Delta_s <
  \Delta_{constant}` for the polynomial and the hinge functions;
* (b) convergence at every staleness tested: for every function and every
  :math:`K` the floor (the seed-mean gap over the last ``tail`` of the
  events) is below ``converged_fraction`` of the initial gap.

Set-up (the authors' simulator, on a convex problem): 8 clients, each a
least-squares problem with its own optimum (mildly heterogeneous shards:
with a large spread the floor is set by the clients' drift, which stale
models average out, and the staleness shows only in the rate); every
event a client drawn uniformly trains ``local_steps`` full-batch SGD steps
with the proximal term :math:`\rho` from a server model whose staleness is
drawn uniformly from :math:`\{0..K\}` (the authors' reference simulator
picks a stored model uniformly at random), and the server mixes with
:math:`\alpha = 0.8` (their default). The arrivals come from a numpy
generator seeded by ``(seed, K)``: the same for every staleness function
(common random numbers). The run goes through the library:
``distributed.fedasync.clients`` over ``fedasync(alpha, s,
max_staleness=K)`` under ``dist.simulate``, in a ``lax.scan`` over events,
``vmap``-ed over seeds.

Negative control: ``ignore_staleness=True`` hands every arrival staleness
0, so every function weighs it by 1 and the three runs coincide; (a) must
FAIL.
"""

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import distributed as dist
from distoptax.distributed.fedasync import (
    arrival_batches,
    clients,
    fedasync,
    staleness_function)
from distoptax.theory_checks import harness

NAME = "fedasync_staleness"

SUB_CLAIM_KEYS = ("a", "b")
QUICK_ASSESSED = ("a", "b")

CLAIM = harness.Claim(
    name=NAME,
    statement=(
        "FedAsync converges at every bounded staleness K, and as K grows "
        "from 4 to 16 its error floor rises less with the polynomial and "
        "hinge staleness functions than with the constant one."),
    source=("Xie, Koyejo, Gupta, Asynchronous Federated Optimization, OPT "
            "2020, arXiv:1903.03934 (staleness functions, Sec. 5; "
            "convergence under bounded staleness)"),
    measured="number of sub-claims (a), (b) that hold",
    expected=2.0,
    tolerance=0.0,
)

FUNCTIONS = ("constant", "polynomial", "hinge")


@dataclasses.dataclass(frozen=True)
class Config:
  """Configuration of the sweep.

  Attributes:
    max_staleness: the swept staleness bounds K (first the smallest).
    num_seeds: seeds (arrival schedules).
    num_events: server updates per run.
    num_clients: clients (workers).
    samples: examples per client.
    dim: dimension.
    heterogeneity: spread of the clients' own optima.
    noise: label noise.
    alpha: FedAsync's mixing weight.
    local_steps: H, local full-batch steps per task.
    learning_rate: the clients' SGD rate.
    rho: the proximal weight.
    polynomial_a: ``a`` of the polynomial function.
    hinge_a: ``a`` of the hinge function.
    hinge_b: ``b`` of the hinge function.
    tail: fraction of the events over which the floor is averaged.
    converged_fraction: (b) floor below this fraction of the initial gap.
    ignore_staleness: negative control, every arrival has staleness 0.
  """

  max_staleness: tuple[int, ...] = (4, 8, 16)
  num_seeds: int = 8
  num_events: int = 600
  num_clients: int = 8
  samples: int = 40
  dim: int = 10
  heterogeneity: float = 0.05
  noise: float = 0.1
  alpha: float = 0.8
  local_steps: int = 5
  learning_rate: float = 0.1
  rho: float = 0.01
  polynomial_a: float = 0.5
  hinge_a: float = 10.0
  hinge_b: int = 4
  tail: float = 0.25
  converged_fraction: float = 0.01
  ignore_staleness: bool = False


QUICK = Config(max_staleness=(4, 16), num_seeds=4, num_events=300)
"""The CI-sized configuration (``--quick``)."""


def make_problem(config: Config) -> dict[str, np.ndarray]:
  """Heterogeneous least squares: client data, the joint optimum and F*."""
  rng = np.random.default_rng(1234)
  n, m, d = config.num_clients, config.samples, config.dim
  x = rng.normal(size=(n, m, d))
  centre = rng.normal(size=d)
  optima = centre + config.heterogeneity * rng.normal(size=(n, d))
  y = np.einsum("nmd,nd->nm", x, optima) + config.noise * rng.normal(
      size=(n, m))
  x32, y32 = x.astype(np.float32), y.astype(np.float32)
  flat_x = x32.reshape(n * m, d).astype(np.float64)
  flat_y = y32.reshape(n * m).astype(np.float64)
  w_star = np.linalg.lstsq(flat_x, flat_y, rcond=None)[0]
  f_star = 0.5 * float(np.mean((flat_x @ w_star - flat_y) ** 2))
  return {"x": x32, "y": y32, "w_star": w_star, "f_star": f_star}


def _staleness_fn(config: Config, name: str):
  params = {"polynomial": {"a": config.polynomial_a},
            "hinge": {"a": config.hinge_a, "b": config.hinge_b}}
  return staleness_function(name, **params.get(name, {}))


def arrivals(config: Config, k: int, seed: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """Arriving clients and their staleness (uniform on {0..K}) per event."""
  rng = np.random.default_rng([seed, k])
  workers = rng.integers(0, config.num_clients, config.num_events)
  staleness = rng.integers(0, k + 1, config.num_events)
  if config.ignore_staleness:
    staleness = np.zeros_like(staleness)
  return workers.astype(np.int32), staleness.astype(np.int32)


def gap_curves(config: Config, problem: dict[str, np.ndarray], name: str,
               k: int) -> np.ndarray:
  """``[num_seeds, num_events]`` gaps F(x_t) - F* of one (function, K)."""
  xs, ys = jnp.asarray(problem["x"]), jnp.asarray(problem["y"])
  n, h = config.num_clients, config.local_steps

  def loss_fn(w, client):
    return 0.5 * jnp.mean((xs[client] @ w - ys[client]) ** 2)

  def objective(w):
    return 0.5 * jnp.mean((jnp.einsum("nmd,d->nm", xs, w) - ys) ** 2)

  server = fedasync(config.alpha, _staleness_fn(config, name),
                    max_staleness=k)
  runtime = dist.simulate(clients(
      loss_fn, server, optax.sgd(config.learning_rate),
      proximal_rho=config.rho), n)
  state = runtime.init(jnp.zeros(config.dim, jnp.float32))
  data = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, h))
  f_star = problem["f_star"]

  def one_seed(workers, staleness):
    def body(s, event):
      s, _ = runtime.step(s, arrival_batches(data, *event))
      return s, objective(s.params) - f_star
    return jax.lax.scan(body, state, (workers, staleness))[1]

  plans = [arrivals(config, k, seed) for seed in range(config.num_seeds)]
  workers = np.stack([w for w, _ in plans])
  staleness = np.stack([s for _, s in plans])
  return np.asarray(jax.jit(jax.vmap(one_seed))(workers, staleness),
                    np.float64)


def judge(config: Config, areas: dict[str, np.ndarray],
          floors: dict[str, np.ndarray], gap0: float) -> tuple[bool, bool]:
  """(a) and (b) from seed-mean log-gap areas and floors, ``[num_K]`` each.
  """
  rise = {name: row[-1] - row[0] for name, row in areas.items()}
  tolerant = all(rise[name] < rise["constant"]
                 for name in floors if name != "constant")
  converged = all(np.all(row < config.converged_fraction * gap0)
                  for row in floors.values())
  return bool(tolerant), bool(converged)


def run(*, quick: bool = False, seeds: int | None = None,
        progress: bool = True, **overrides) -> harness.CheckResult:
  """Runs every (staleness function, K) and judges (a) and (b).

  Args:
    quick: use :data:`QUICK`.
    seeds: number of seeds, overriding the configuration's.
    progress: print a line per staleness function to stderr.
    **overrides: further :class:`Config` fields (``ignore_staleness=True``).

  Returns:
    The :class:`harness.CheckResult`; ``y`` holds the per-seed mean log
    gaps of every (function, K) pair, ``extras`` the seed means, floors
    and rises.
  """
  config = harness.resolve_config(Config(), QUICK, quick=quick, seeds=seeds,
                                  overrides=overrides)
  start = time.perf_counter()
  problem = make_problem(config)
  # F(0) - F*: the runs start at x_0 = 0.
  gap0 = 0.5 * float(np.mean(problem["y"].astype(np.float64) ** 2)) - (
      problem["f_star"])
  meter = harness.Progress(NAME, len(FUNCTIONS), enabled=progress)
  per_seed, floor_seed, curves = {}, {}, {}
  tail = max(1, int(config.tail * config.num_events))
  for name in FUNCTIONS:
    meter.point(f"s = {name}: K in {config.max_staleness}, "
                f"{config.num_seeds} seeds x {config.num_events} events")
    gaps = [np.maximum(gap_curves(config, problem, name, k), 1e-30)
            for k in config.max_staleness]
    per_seed[name] = np.stack([np.log(g).mean(axis=1) for g in gaps], 1)
    floor_seed[name] = np.stack([g[:, -tail:].mean(axis=1) for g in gaps],
                                1)
    curves[name] = [g.mean(axis=0) for g in gaps]
  meter.done()
  areas = {name: per_seed[name].mean(axis=0) for name in FUNCTIONS}
  floors = {name: floor_seed[name].mean(axis=0) for name in FUNCTIONS}
  holds = judge(config, areas, floors, gap0)
  assessed = harness.quick_assessment(SUB_CLAIM_KEYS, QUICK_ASSESSED,
                                      quick=quick)
  rise = {name: float(row[-1] - row[0]) for name, row in areas.items()}
  names = (f"(a) rise of the mean log gap from K = {config.max_staleness[0]}"
           f" to {config.max_staleness[-1]}: polynomial and hinge below "
           f"constant",
           f"(b) every floor below {config.converged_fraction:g} x the "
           f"initial gap")
  values = (min(rise["constant"] - rise[n] for n in FUNCTIONS[1:]),
            max(float(np.max(r)) for r in floors.values()) / gap0)
  expected = ("> 0 (constant's rise minus the larger other rise)",
              f"< {config.converged_fraction:g} (worst floor / gap0)")
  sub_claims = tuple(
      harness.SubClaim(key=key, name=n, holds=h, assessed=a, value=v,
                       expected=e)
      for key, n, h, a, v, e in zip(SUB_CLAIM_KEYS, names, holds, assessed,
                                    values, expected))
  measured = harness.count_assessed(holds, assessed)
  ci = harness.bootstrap_count_ci(
      lambda rows: harness.count_assessed(judge(
          config, {n: per_seed[n][rows].mean(axis=0) for n in FUNCTIONS},
          {n: floor_seed[n][rows].mean(axis=0) for n in FUNCTIONS}, gap0),
          assessed), config.num_seeds)
  table = "\n".join(
      [f"mean log(F(x_t) - F*) over the run, and floors (seed means; "
       f"initial gap {gap0:.4g}), K = {list(config.max_staleness)}:"]
      + [f"  {n:<11} {np.round(areas[n], 3).tolist()}  rise {rise[n]:.3f}"
         f"  floors {np.format_float_scientific(floors[n][0], 2)} .. "
         f"{np.format_float_scientific(floors[n][-1], 2)}"
         for n in FUNCTIONS])
  return harness.CheckResult(
      claim=CLAIM, measured=measured, ci=ci,
      x=np.array(config.max_staleness, np.float64),
      y=np.concatenate([per_seed[n] for n in FUNCTIONS], axis=1),
      config=dataclasses.asdict(config) | {"quick": quick},
      elapsed_s=time.perf_counter() - start,
      x_label="maximum staleness K", y_label="mean log(F(x_t) - F*)",
      extras={"functions": list(FUNCTIONS), "areas": areas,
              "floors": floors, "rise": rise, "gap0": gap0,
              "curves": curves},
      sub_claims=sub_claims, details=table, plot_fn=plot_floors)


def plot_floors(result: harness.CheckResult) -> Any:
  """Left: mean log gap against K per function; right: the gap curves."""
  fig = harness.new_figure(11.0, 4.2)
  left, right = fig.subplots(1, 2)
  ks = result.x
  for i, name in enumerate(result.extras["functions"]):
    left.plot(ks, result.extras["areas"][name], "o-", label=name,
              color=f"C{i}")
    for j, k in enumerate(ks):
      curve = result.extras["curves"][name][j]
      right.semilogy(curve, color=f"C{i}", alpha=0.4 + 0.6 * j / len(ks),
                     linewidth=0.8, label=f"{name}, K = {k:g}")
  left.set_xlabel(result.x_label)
  left.set_ylabel(result.y_label + " (seed mean)")
  left.set_title(f"{result.claim.name}: {result.verdict}", fontsize=10)
  left.legend(fontsize=8)
  left.grid(True, which="both", alpha=0.3)
  right.set_xlabel("server updates")
  right.set_ylabel("F(x) - F* (seed mean)")
  right.legend(fontsize=6, ncol=2)
  right.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  return fig


def main(argv=None):
  """``python -m distoptax.theory_checks.fedasync_staleness [--quick]``."""
  harness.run_check_main(run, argv)


if __name__ == "__main__":
  main()
