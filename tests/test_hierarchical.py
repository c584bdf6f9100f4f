"""BlueConnect's hierarchical all-reduce: equals psum, records its stages."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax import worker_axis
from distoptax.distributed import comm_stats
from distoptax.distributed import hierarchical
from distoptax.distributed import stragglers
from distoptax.distributed import topologies
from tests import helpers

FACTORISATIONS = [
    (("all",), (8,)),
    (("hosts", "local"), (2, 4)),
    (("hosts", "local"), (4, 2)),
    (("hosts", "local"), (1, 8)),
    (("racks", "hosts", "local"), (2, 2, 2)),
]


def _orders(names):
  return ["inner_first", "outer_first"] + [
      p for p in itertools.permutations(names)
      if p not in (names, tuple(reversed(names)))]


def _tree(rng, n):
  """A pytree per worker: integer-valued and float leaves of odd sizes
  (padding), a scalar and an int32 leaf."""
  return {"exact": rng.integers(-50, 50, size=(n, 3, 5)).astype(np.float32),
          "float": rng.normal(size=(n, 7)).astype(np.float32),
          "s": rng.normal(size=(n,)).astype(np.float32),
          "k": rng.integers(-9, 9, size=(n, 6)).astype(np.int32)}


def _check_sum(out, x):
  """Integer-valued data sums exactly; float data to rounding."""
  for key, leaf in x.items():
    expected = np.broadcast_to(leaf.sum(0), leaf.shape)
    assert out[key].dtype == leaf.dtype
    if key in ("exact", "k"):
      np.testing.assert_array_equal(out[key], expected)
    else:
      np.testing.assert_allclose(out[key], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("names,sizes", FACTORISATIONS)
def test_equals_psum_for_every_factorisation_and_order(names, sizes):
  tiers = worker_axis.Tiers(names, sizes)
  x = _tree(np.random.default_rng(0), 8)
  orders = _orders(names)

  @jax.jit
  def every_order(x):
    return [jax.vmap(lambda t, order=order: hierarchical.hierarchical_psum(
        t, tiers, order=order), axis_name=dist.WORKERS)(x) for order in orders]

  for out in every_order(x):
    _check_sum(out, x)


def test_records_every_stage_as_the_plan_says():
  tiers = worker_axis.Tiers(("racks", "hosts", "local"), (2, 2, 2))
  x = _tree(np.random.default_rng(1), 8)
  one = jax.tree.map(lambda a: a[0], x)
  for order in ("inner_first", "outer_first", ("hosts", "racks", "local")):
    plan = hierarchical.stage_plan(one, tiers, order)
    _, stats = jax.vmap(lambda t, order=order:
                        hierarchical.hierarchical_all_reduce(
                            t, tiers, comm_stats.init_comm_stats(6),
                            order=order), axis_name=dist.WORKERS)(x)
    rounds = dist.clock_rounds(stats)
    assert [(r.kind, r.bytes) for r in rounds] == [
        (s.kind, s.bytes) for s in plan]
    rs = hierarchical.reduce_scatter_order(tiers, order)
    assert [s.tier for s in plan] == list(rs) + list(reversed(rs))
  # Padding travels: 15 + 7 + 1 floats and 6 ints, each padded to 8s.
  assert plan[0].bytes == (16 + 8 + 8 + 8) * 4
  assert plan[-1].bytes == plan[0].bytes // 2
  np.testing.assert_array_equal(stats.all_reduce_bytes, 0)
  np.testing.assert_array_equal(
      stats.all_gather_bytes, sum(s.bytes for s in plan[3:]))


def _on_both(per_worker, batch, mesh_shape, num_workers):
  step = dist.WorkerStep(init=lambda p: p,
                         update=lambda s, b: (s, per_worker(b)),
                         axis_name=dist.WORKERS)
  _, sim = dist.simulate(step, num_workers).step(jnp.zeros(num_workers),
                                                 batch)
  rt = dist.on_mesh(step, jax.make_mesh(mesh_shape, ("hosts", "local")),
                    num_workers)
  hlo = rt.lower(jnp.zeros(num_workers), batch).as_text()
  _, shm = rt.step(jnp.zeros(num_workers), batch)
  return sim, shm, hlo


_OP = re.compile(r'"stablehlo\.(reduce_scatter|all_gather)"')
_GROUPS = re.compile(r"replica_groups = dense<(\[\[.*?\]\])>")
_TENSOR = re.compile(r"tensor<((?:\d+x)*)([a-z]+\d+)>")


def _collectives(hlo):
  """``[(op, operand bytes, replica groups)]`` of every RS / AG, in order.

  A reduce-scatter's signature follows its reduction body; an
  all-gather's is on its own line.
  """
  lines = hlo.splitlines()
  found = []
  for i, line in enumerate(lines):
    match = _OP.search(line)
    if not match:
      continue
    signature = line
    if match.group(1) == "reduce_scatter":
      signature = next(l for l in lines[i:] if l.lstrip().startswith("}) :"))
    operand = signature.split(") -> ")[0].split(" : (")[-1]
    (dims, dtype), = _TENSOR.findall(operand)
    size = int(np.prod([int(d) for d in dims.split("x") if d]))
    groups = eval(_GROUPS.search(line).group(1))  # pylint: disable=eval-used
    found.append((match.group(1), size * int(dtype[1:]) // 8,
                  sorted(map(sorted, groups))))
  return found


def _tier_groups(mesh_shape, tier):
  devices = np.arange(8).reshape(mesh_shape)
  groups = devices if tier == "local" else devices.T
  return sorted(map(sorted, groups.tolist()))


@pytest.mark.parametrize("mesh_shape", [(2, 4), (4, 2)])
@pytest.mark.parametrize("order", ["inner_first", "outer_first"])
def test_on_a_two_tier_mesh_equals_simulate_and_the_lowered_program(
    mesh_shape, order):
  n = 8
  tiers = worker_axis.Tiers(("hosts", "local"), mesh_shape)
  x = np.random.default_rng(2).integers(-9, 9, size=(n, 37)).astype(
      np.float32)

  def per_worker(b):
    total, stats = hierarchical.hierarchical_all_reduce(
        b, tiers, comm_stats.init_comm_stats(4), order=order)
    return {"total": total, "bytes": stats.rounds.bytes,
            "kind": stats.rounds.kind}

  sim, shm, hlo = _on_both(per_worker, x, mesh_shape, n)
  plan = hierarchical.stage_plan(x[0], tiers, order)
  for out in (sim, shm):
    np.testing.assert_array_equal(out["total"], np.tile(x.sum(0), (n, 1)))
    np.testing.assert_array_equal(out["bytes"],
                                  np.tile([s.bytes for s in plan], (n, 1)))
  np.testing.assert_array_equal(sim["kind"], shm["kind"])
  # One worker per device: the device's operand is the worker's message.
  assert _collectives(hlo) == [
      (s.kind, s.bytes, _tier_groups(mesh_shape, s.tier)) for s in plan]
  assert "stablehlo.all_reduce" not in hlo


def test_more_workers_than_devices_equal_simulate():
  n, mesh_shape = 16, (2, 4)
  tiers = worker_axis.Tiers(("hosts", "local"), (2, 8))
  x = np.random.default_rng(3).normal(size=(n, 3, 11)).astype(np.float32)
  for order in ("inner_first", "outer_first"):
    sim, shm, _ = _on_both(
        lambda b, order=order: {"t": hierarchical.hierarchical_psum(
            b, tiers, order=order)}, x, mesh_shape, n)
    np.testing.assert_allclose(sim["t"], shm["t"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sim["t"][5], x.sum(0), rtol=1e-5, atol=1e-5)


def test_hierarchical_mean_trains_like_the_mean_aggregate():
  tiers = worker_axis.Tiers(("hosts", "local"), (2, 4))
  finals = []
  for first in (hierarchical.hierarchical_mean(tiers),
                dist.aggregate(alg.aggregators.mean())):
    tx = optax.chain(first, optax.sgd(0.1))
    rt = dist.simulate(dist.data_parallel(helpers.mlp_loss, tx), 8)
    state = rt.init(helpers.mlp_params(jax.random.key(0)))
    for t in range(2):
      state, _ = rt.step(state, helpers.worker_batches(t, 8, 4))
    finals.append(state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-6), *finals)
  helpers.assert_replicated(finals[0])


def _topology(hosts, per_host, local_bandwidth=1e11, host_bandwidth=1e9):
  return topologies.HierarchicalTopology(
      hosts * per_host, workers_per_host=per_host,
      local_bandwidth=local_bandwidth, local_latency=2e-6,
      host_bandwidth=host_bandwidth, host_latency=1e-5)


@pytest.mark.parametrize("order", ["inner_first", "outer_first"])
def test_clock_prices_the_recorded_stages_as_the_model(order):
  topo = _topology(2, 4)
  tiers, links = hierarchical.topology_links(topo)
  x = jnp.ones((8, 1000), jnp.float32)
  _, stats = jax.vmap(lambda t: hierarchical.hierarchical_all_reduce(
      t, tiers, comm_stats.init_comm_stats(4), order=order),
                      axis_name=dist.WORKERS)(x)
  rounds = hierarchical.clock_rounds(stats, tiers, order)
  assert [r.tier for r in rounds] == (
      ["local", "hosts", "hosts", "local"] if order == "inner_first"
      else ["hosts", "local", "local", "hosts"])
  clock = dist.Clock(stragglers.ComputeModel(8, 0.0), topo)
  seconds = clock.communicate(clock.init(), rounds).time
  model = hierarchical.hierarchical_seconds(4000, tiers, links, order)
  np.testing.assert_allclose(seconds, model, rtol=1e-12)
  if order == "inner_first":  # HierarchicalTopology's own all-reduce.
    np.testing.assert_allclose(model, topo.all_reduce(4000), rtol=1e-12)
  with pytest.raises(ValueError, match="not those of a decomposition"):
    hierarchical.clock_rounds(stats, tiers,
                              ("hosts", "local") if order == "inner_first"
                              else ("local", "hosts"))


def test_flat_ring_and_the_predicted_reduction():
  topo = _topology(24, 8)
  tiers, links = hierarchical.topology_links(topo)
  b = 4 * 25_557_032
  ring = topologies.RingTopology(192, bandwidth=1e9, latency=1e-5)
  np.testing.assert_allclose(hierarchical.flat_ring_seconds(b, tiers, links),
                             ring.all_reduce(b), rtol=1e-12)
  # Bandwidth-bound with free local links: 1 - (h - 1) / (n - 1).
  free = {"hosts": {"bandwidth": 1e9, "latency": 0.0},
          "local": {"bandwidth": 1e18, "latency": 0.0}}
  np.testing.assert_allclose(
      hierarchical.predicted_reduction(b, tiers, free), 1 - 23 / 191,
      rtol=1e-6)
  inner = hierarchical.predicted_reduction(b, tiers, links)
  outer = hierarchical.predicted_reduction(b, tiers, links, "outer_first")
  slow = {"hosts": links["hosts"], "local": links["hosts"]}
  assert inner > 0.8
  assert outer < 0.1   # Sends all of B between hosts: no better than a ring.
  assert hierarchical.predicted_reduction(b, tiers, slow) < 0.1


@pytest.mark.parametrize("call,error,match", [
    (lambda x: hierarchical.hierarchical_psum(
        x, worker_axis.Tiers(("hosts", "local"), (3, 3))), ValueError,
     r"do not factorise num_workers=8: the sizes multiply to 9"),
    (lambda x: hierarchical.hierarchical_psum(
        x, worker_axis.Tiers(("hosts", "local"), (2, 4)), order="sideways"),
     ValueError, r"unknown order 'sideways'; known: \['inner_first'"),
    (lambda x: hierarchical.hierarchical_psum(
        x, worker_axis.Tiers(("hosts", "local"), (2, 4)),
        order=("hosts", "hosts")), ValueError,
     r"\('hosts', 'hosts'\) is not a permutation"),
    (lambda x: hierarchical.hierarchical_psum(x, ((2, 4),)), TypeError,
     r"must be a worker_axis.Tiers; got \(\(2, 4\),\)"),
    (lambda x: hierarchical.hierarchical_psum(
        x, worker_axis.Tiers(("hosts", "local"), (8, 0))), ValueError,
     r"tier 'local' .* has size 0"),
    (lambda x: hierarchical.hierarchical_all_reduce(
        x, worker_axis.Tiers(("a", "b", "c"), (2, 2, 2)),
        comm_stats.init_comm_stats(4)), ValueError,
     r"capacity=4\); create its stats with init_comm_stats\(capacity=5\)"),
])
def test_bad_arguments_are_refused(call, error, match):
  with pytest.raises(error, match=match):
    jax.vmap(call, axis_name=dist.WORKERS)(jnp.ones((8, 4)))


def test_bad_links_are_refused():
  tiers = worker_axis.Tiers(("hosts", "local"), (2, 4))
  good = {"bandwidth": 1e9, "latency": 0.0}
  for bandwidth in (0.0, -1e9, float("nan")):
    links = {"hosts": {"bandwidth": bandwidth, "latency": 0.0},
             "local": good}
    for fn in (hierarchical.hierarchical_seconds,
               hierarchical.flat_ring_seconds):
      with pytest.raises(ValueError,
                         match=rf"tier 'hosts' bandwidth .*{bandwidth}"):
        fn(1e6, tiers, links)
  with pytest.raises(ValueError, match=r"every tier \('hosts', 'local'\)"):
    hierarchical.hierarchical_seconds(1e6, tiers, {"hosts": good})
  with pytest.raises(ValueError, match="nothing to reduce"):
    hierarchical.predicted_reduction(
        1e6, worker_axis.Tiers(("one",), (1,)), {"one": good})


def test_tiers_that_disagree_with_the_mesh_are_refused():
  wrong = worker_axis.Tiers(("hosts", "local"), (4, 2))
  with pytest.raises(ValueError, match="do not match the mesh"):
    _on_both(lambda b: {"t": hierarchical.hierarchical_psum(b, wrong)},
             jnp.ones((8, 2)), (2, 4), 8)
