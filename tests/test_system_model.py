"""Tests for the system model: collective costs, stragglers, SystemModel.

The closed-form collective costs are checked against discrete-event
simulations written here independently: messages occupy a sender's outgoing
link and a receiver's incoming link for ``bytes / bandwidth`` seconds, arrive
``latency`` seconds after they leave, and a worker can only forward data it
has received. The ring simulations also carry real numbers, so they check
that the schedule actually reduces/gathers.
"""

import itertools
import json
import math

import numpy as np
import pytest

from distoptax.distributed import clock
from distoptax.distributed import stragglers as st
from distoptax.distributed import system_model as sm
from distoptax.distributed import topologies as topo

BW = 1.0e8  # bytes / s
LAT = 2.0e-5  # s


# --------------------------------------------------------------------------
# Independent discrete-event simulations.
# --------------------------------------------------------------------------


def _simulate_ring_all_reduce(num_bytes, n, bandwidth, latency, seed=0):
  """Ring reduce-scatter then all-gather; returns (seconds, final buffers)."""
  rng = np.random.default_rng(seed)
  data = rng.normal(size=(n, n))  # worker i's buffer, n chunks of B/n bytes
  buf = data.copy()
  ready = np.zeros((n, n))  # when worker i holds its current chunk c
  link_free = np.zeros(n)  # worker i's outgoing link to worker i + 1
  chunk = num_bytes / n

  def run_round(chunk_of, combine):
    sends = []
    for i in range(n):
      c = chunk_of(i)
      start = max(ready[i, c], link_free[i])
      link_free[i] = start + chunk / bandwidth
      sends.append((i, c, buf[i, c], link_free[i] + latency))
    for i, c, value, arrive in sends:  # all sends of a round read old values
      j = (i + 1) % n
      buf[j, c] = combine(buf[j, c], value)
      ready[j, c] = arrive

  for r in range(n - 1):  # reduce-scatter
    run_round(lambda i, r=r: (i - r) % n, lambda old, new: old + new)
  for r in range(n - 1):  # all-gather of the reduced chunk (i + 1) % n
    run_round(lambda i, r=r: (i + 1 - r) % n, lambda old, new: new)
  return float(ready.max()), buf, data.sum(axis=0)


def _simulate_ring_all_gather(block_bytes, n, bandwidth, latency):
  """Ring all-gather of one block per worker; returns (seconds, have)."""
  have = np.full((n, n), np.inf)  # time worker i holds block b
  have[np.arange(n), np.arange(n)] = 0.0
  link_free = np.zeros(n)
  for r in range(n - 1):
    sends = []
    for i in range(n):
      b = (i - r) % n
      assert np.isfinite(have[i, b]), "forwarding a block not yet received"
      start = max(have[i, b], link_free[i])
      link_free[i] = start + block_bytes / bandwidth
      sends.append(((i + 1) % n, b, link_free[i] + latency))
    for j, b, arrive in sends:
      have[j, b] = min(have[j, b], arrive)
  return float(have.max()), have


def _simulate_parameter_server(push, pull, n, s, bandwidth, latency):
  """Sharded PS: link-contended pushes, then pulls of each shard.

  Every (worker, server) pair exchanges one message per phase. Messages are
  list-scheduled greedily in the order of a proper edge colouring of the
  complete bipartite graph, each starting when both of its links are free.
  """
  m = max(n, s)
  pairs = sorted(itertools.product(range(n), range(s)),
                 key=lambda ws: (ws[0] + ws[1]) % m)
  # Push phase.
  worker_out = np.zeros(n)
  server_in = np.zeros(s)
  shard_ready = np.zeros(s)  # all pushes of the shard have arrived
  for w, j in pairs:
    start = max(worker_out[w], server_in[j])
    end = start + (push / s) / bandwidth
    worker_out[w] = server_in[j] = end
    shard_ready[j] = max(shard_ready[j], end + latency)
  # Pull phase.
  server_out = shard_ready.copy()
  worker_in = np.zeros(n)
  done = np.zeros(n)
  for w, j in pairs:
    start = max(server_out[j], worker_in[w])
    end = start + (pull / s) / bandwidth
    server_out[j] = worker_in[w] = end
    done[w] = max(done[w], end + latency)
  return float(done.max())


# --------------------------------------------------------------------------
# Closed forms against the simulations.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 7, 16])
@pytest.mark.parametrize("num_bytes", [0, 1, 1000, 4 * 1_000_003])
def test_ring_all_reduce_matches_simulation(n, num_bytes):
  simulated, buf, total = _simulate_ring_all_reduce(num_bytes, n, BW, LAT)
  np.testing.assert_allclose(buf, np.broadcast_to(total, (n, n)), rtol=1e-12)
  got = topo.ring_all_reduce_seconds(num_bytes, n, bandwidth=BW, latency=LAT)
  assert got == pytest.approx(simulated, rel=1e-12)
  assert got == pytest.approx(
      2 * (n - 1) * LAT + 2 * (n - 1) / n * num_bytes / BW, rel=1e-12)


@pytest.mark.parametrize("n", [2, 3, 5, 8, 16])
@pytest.mark.parametrize("num_bytes", [0, 7, 1000, 3 * 1_000_003])
def test_ring_all_gather_matches_simulation(n, num_bytes):
  simulated, have = _simulate_ring_all_gather(num_bytes, n, BW, LAT)
  assert np.all(np.isfinite(have))  # every worker has every block
  got = topo.ring_all_gather_seconds(num_bytes, n, bandwidth=BW, latency=LAT)
  assert got == pytest.approx(simulated, rel=1e-12)


@pytest.mark.parametrize("n,s", [(1, 1), (2, 1), (5, 1), (8, 2), (16, 4),
                                 (6, 4), (3, 3), (2, 4), (3, 8)])
@pytest.mark.parametrize("push,pull", [(1000, 1000), (4096, 8 * 4096),
                                       (0, 500), (1_000_003, 0)])
def test_parameter_server_matches_simulation(n, s, push, pull):
  simulated = _simulate_parameter_server(push, pull, n, s, BW, LAT)
  got = topo.parameter_server_seconds(
      push, pull, n, bandwidth=BW, latency=LAT, num_servers=s)
  assert got == pytest.approx(simulated, rel=1e-12)
  if s <= n:  # The servers' links are the bottleneck.
    assert got == pytest.approx(
        2 * LAT + n * push / (s * BW) + n * pull / (s * BW), rel=1e-12)


def test_single_worker_costs_nothing():
  assert topo.ring_all_reduce_seconds(10**6, 1, bandwidth=BW, latency=LAT) == 0
  assert topo.ring_all_gather_seconds(10**6, 1, bandwidth=BW, latency=LAT) == 0
  for topology in ("ring", "tree", "parameter_server"):
    model = sm.SystemModel(1, 0.1, bandwidth=BW, latency=LAT,
                           topology=topology)
    assert model.communication_seconds(
        all_reduce_bytes=10**6, all_gather_bytes=10**6) == 0
    assert model.step_seconds(0, all_reduce_bytes=10**6).total == (
        pytest.approx(0.1))


# --------------------------------------------------------------------------
# SystemModel.
# --------------------------------------------------------------------------


def test_communication_seconds_per_topology():
  n, ar, ag = 8, 40_000, 1_234
  ring = sm.SystemModel(n, 0.0, bandwidth=BW, latency=LAT)
  ps = sm.SystemModel(n, 0.0, bandwidth=BW, latency=LAT,
                      topology="parameter_server", num_servers=2)
  t_ar = topo.ring_all_reduce_seconds(ar, n, bandwidth=BW, latency=LAT)
  t_ag = topo.ring_all_gather_seconds(ag, n, bandwidth=BW, latency=LAT)
  assert ring.communication_seconds(
      all_reduce_bytes=ar, all_gather_bytes=0) == pytest.approx(t_ar)
  assert ring.communication_seconds(
      all_reduce_bytes=0, all_gather_bytes=ag) == pytest.approx(t_ag)
  assert ring.communication_seconds(
      all_reduce_bytes=ar, all_gather_bytes=ag) == pytest.approx(t_ar + t_ag)
  assert ring.communication_seconds(
      all_reduce_bytes=0, all_gather_bytes=0) == 0
  # numpy / 0-d array byte counts are accepted.
  assert ring.communication_seconds(
      all_reduce_bytes=np.int32(ar),
      all_gather_bytes=np.asarray(0)) == pytest.approx(t_ar)

  ps_ar = 2 * LAT + 2 * n * ar / (2 * BW)  # push B, pull B
  ps_ag = 2 * LAT + n * ag / (2 * BW) + n * n * ag / (2 * BW)  # pull n·B
  assert ps.communication_seconds(
      all_reduce_bytes=ar, all_gather_bytes=0) == pytest.approx(ps_ar)
  assert ps.communication_seconds(
      all_reduce_bytes=0, all_gather_bytes=ag) == pytest.approx(ps_ag)
  assert ps.communication_seconds(
      all_reduce_bytes=ar, all_gather_bytes=ag) == pytest.approx(ps_ar + ps_ag)


def test_compute_times_deterministic_per_seed_and_step():
  kw = dict(bandwidth=BW, latency=LAT, straggler=st.ExponentialDelay(0.05))
  a = sm.SystemModel(16, 0.1, seed=3, **kw)
  b = sm.SystemModel(16, 0.1, seed=3, **kw)
  np.testing.assert_array_equal(a.compute_times(7), a.compute_times(7))
  np.testing.assert_array_equal(a.compute_times(7), b.compute_times(7))
  assert not np.array_equal(a.compute_times(7), a.compute_times(8))
  c = sm.SystemModel(16, 0.1, seed=4, **kw)
  assert not np.array_equal(a.compute_times(7), c.compute_times(7))
  # Order of queries does not matter (a resumed run sees the same times).
  later_first = [b.compute_times(t) for t in (9, 2, 5)]
  in_order = {t: a.compute_times(t) for t in range(10)}
  for t, times in zip((9, 2, 5), later_first):
    np.testing.assert_array_equal(times, in_order[t])
  assert a.compute_times(0).shape == (16,)
  assert np.all(a.compute_times(0) >= 0.1)


def test_compute_times_imbalance_without_stragglers():
  model = sm.SystemModel(3, 0.2, bandwidth=BW, latency=LAT,
                         imbalance=[1.0, 2.0, 0.5])
  assert model.imbalance == (1.0, 2.0, 0.5)
  np.testing.assert_allclose(model.compute_times(11), [0.2, 0.4, 0.1])


def test_step_seconds_max_over_participants_only():
  model = sm.SystemModel(4, 1.0, bandwidth=BW, latency=LAT,
                         imbalance=(10.0, 1.0, 2.0, 1.5))
  comm = model.communication_seconds(all_reduce_bytes=4000)
  full = model.step_seconds(0, all_reduce_bytes=4000)
  assert full.compute == pytest.approx(10.0)
  assert full.communication == pytest.approx(comm)
  assert full.total == pytest.approx(10.0 + comm)
  # The slow worker 0 does not participate: it no longer delays the step,
  # and the collective still runs over all workers (same cost).
  partial = model.step_seconds(
      0, all_reduce_bytes=4000,
      participation=np.array([False, True, True, True]))
  assert partial.compute == pytest.approx(2.0)
  assert partial.communication == pytest.approx(comm)
  assert partial.total == pytest.approx(2.0 + comm)
  assert model.step_seconds(
      0, participation=np.array([0, 1, 0, 1])).compute == pytest.approx(1.5)


def test_step_seconds_with_stragglers_is_max_of_compute_times():
  model = sm.SystemModel(8, 0.1, bandwidth=BW, latency=LAT,
                         straggler=st.InjectedDelay(0.3, 1.0), seed=1)
  for step in range(20):
    times = model.compute_times(step)
    mask = np.arange(8) % 2 == 0
    got = model.step_seconds(step, all_gather_bytes=100, participation=mask)
    assert got.compute == times[mask].max()


def test_describe_is_json_serialisable():
  model = sm.SystemModel(
      4, 0.1, bandwidth=BW, latency=LAT, imbalance=(1, 1, 1, 2),
      straggler=st.make_straggler("lognormal", mean=0.02, sigma=0.5),
      topology="parameter_server", num_servers=2, seed=5)
  desc = json.loads(json.dumps(model.describe()))
  assert desc["num_workers"] == 4
  assert desc["topology"] == "parameter_server"
  assert desc["imbalance"] == [1.0, 1.0, 1.0, 2.0]
  assert desc["straggler"]["name"] == "lognormal"
  assert desc["straggler"]["mean"] == pytest.approx(0.02)
  assert desc["straggler"]["sigma"] == pytest.approx(0.5)
  assert desc["network"] == {"name": "parameter_server", "num_workers": 4,
                             "bandwidth": BW, "latency": LAT,
                             "num_servers": 2}


def test_topology_object_and_mismatched_workers():
  ring = topo.RingTopology(4, bandwidth=BW, latency=LAT)
  by_object = sm.SystemModel(4, 0.1, topology=ring)
  by_name = sm.SystemModel(4, 0.1, bandwidth=BW, latency=LAT)
  assert by_object.communication_seconds(all_reduce_bytes=4000) == (
      by_name.communication_seconds(all_reduce_bytes=4000))
  with pytest.raises(ValueError, match="num_workers=8.*num_workers=4"):
    sm.SystemModel(8, 0.1, topology=ring)


def test_step_seconds_from_rounds():
  model = sm.SystemModel(4, 1.0, bandwidth=BW, latency=LAT,
                         imbalance=(1.0, 3.0, 1.0, 1.0))
  rounds = [clock.Round("reduce_scatter", 4000),
            clock.Round("all_gather", 1000)]
  got = model.step_seconds(0, rounds=rounds)
  comm = (topo.ring_reduce_scatter_seconds(4000, 4, bandwidth=BW,
                                           latency=LAT)
          + topo.ring_all_gather_seconds(1000, 4, bandwidth=BW, latency=LAT))
  assert got.compute == 3.0
  assert got.communication == pytest.approx(comm, rel=1e-9)
  with pytest.raises(ValueError, match="either rounds or byte counts"):
    model.step_seconds(0, rounds=rounds, all_reduce_bytes=8)


# --------------------------------------------------------------------------
# Straggler distributions.
# --------------------------------------------------------------------------

_NUM_SAMPLES = 400_000


def _assert_mean(samples, expected_mean, expected_std):
  """Mean within 5 standard errors; the tolerance is far below 50 %."""
  tol = 5 * expected_std / math.sqrt(samples.size)
  assert tol < 0.05 * expected_mean  # A factor-2 error could not pass.
  assert abs(samples.mean() - expected_mean) < tol, (
      samples.mean(), expected_mean, tol)


def test_exponential_delay_mean():
  mean = 0.25
  d = st.ExponentialDelay(mean).sample(np.random.default_rng(0), _NUM_SAMPLES)
  assert d.shape == (_NUM_SAMPLES,) and np.all(d >= 0)
  _assert_mean(d, mean, mean)  # std of Exp equals its mean


def test_lognormal_delay_mean_and_sigma():
  mean, sigma = 0.3, 0.8
  dist = st.LogNormalDelay(mean, sigma)
  d = dist.sample(np.random.default_rng(1), _NUM_SAMPLES)
  assert np.all(d > 0)
  std = mean * math.sqrt(math.exp(sigma**2) - 1)
  _assert_mean(d, mean, std)
  assert np.log(d).std() == pytest.approx(sigma, rel=0.01)
  # Median exp(mu) with mu = log(mean) - sigma^2 / 2.
  assert np.median(d) == pytest.approx(mean * math.exp(-sigma**2 / 2),
                                       rel=0.02)


def test_pareto_delay_mean_and_tail():
  scale, shape = 0.2, 3.5
  dist = st.ParetoDelay(scale, shape)
  assert dist.mean == pytest.approx(scale / (shape - 1))
  d = dist.sample(np.random.default_rng(2), _NUM_SAMPLES)
  assert np.all(d >= 0)
  var = scale**2 * shape / ((shape - 1) ** 2 * (shape - 2))
  _assert_mean(d, scale / (shape - 1), math.sqrt(var))
  # Survival function (1 + t / scale)^-shape at t = scale.
  assert np.mean(d > scale) == pytest.approx(2.0**-shape, rel=0.03)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_injected_delay_fraction(p):
  delay = 0.7
  dist = st.InjectedDelay(p, delay)
  assert dist.mean == pytest.approx(p * delay)
  d = dist.sample(np.random.default_rng(3), _NUM_SAMPLES)
  assert set(np.unique(d)) <= {0.0, delay}
  frac = np.mean(d == delay)
  assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / _NUM_SAMPLES)


def test_injected_delay_extremes_and_no_stragglers():
  rng = np.random.default_rng(0)
  assert np.all(st.InjectedDelay(0.0, 1.0).sample(rng, 100) == 0)
  assert np.all(st.InjectedDelay(1.0, 1.0).sample(rng, 100) == 1.0)
  np.testing.assert_array_equal(st.NoStragglers().sample(rng, 5), np.zeros(5))
  assert st.NoStragglers().mean == 0
  assert np.all(st.ExponentialDelay(0.0).sample(rng, 5) == 0)
  assert np.all(st.LogNormalDelay(0.0, 1.0).sample(rng, 5) == 0)


def test_straggler_mean_property_agrees_with_samples():
  rng = np.random.default_rng(4)
  for dist in (st.ExponentialDelay(0.1), st.LogNormalDelay(0.1, 0.5),
               st.InjectedDelay(0.2, 0.5), st.ParetoDelay(0.3, 4.0)):
    assert dist.sample(rng, 200_000).mean() == pytest.approx(
        dist.mean, rel=0.03), dist


def test_registry():
  assert set(st.STRAGGLERS) == {
      "none", "exponential", "lognormal", "injected", "pareto"}
  assert st.make_straggler("exponential", mean=0.1) == st.ExponentialDelay(0.1)
  assert st.make_straggler("none") == st.NoStragglers()
  with pytest.raises(ValueError, match="gamma.*exponential"):
    st.make_straggler("gamma", mean=1.0)
  assert set(topo.TOPOLOGIES) == {
      "ring", "tree", "parameter_server", "hierarchical"}


# --------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [topo.ring_all_reduce_seconds,
                                topo.ring_all_gather_seconds])
def test_ring_formulas_validate(fn):
  with pytest.raises(ValueError, match="num_workers.*0"):
    fn(10, 0, bandwidth=BW, latency=LAT)
  with pytest.raises(ValueError, match="num_workers.*2.5"):
    fn(10, 2.5, bandwidth=BW, latency=LAT)
  with pytest.raises(ValueError, match="bytes.*-1"):
    fn(-1, 4, bandwidth=BW, latency=LAT)
  with pytest.raises(ValueError, match="bandwidth.*0"):
    fn(10, 4, bandwidth=0, latency=LAT)
  with pytest.raises(ValueError, match="bandwidth.*-5"):
    fn(10, 4, bandwidth=-5, latency=LAT)
  with pytest.raises(ValueError, match="latency.*-0.1"):
    fn(10, 4, bandwidth=BW, latency=-0.1)
  with pytest.raises(ValueError, match="bytes.*nan"):
    fn(float("nan"), 4, bandwidth=BW, latency=LAT)


def test_parameter_server_validates():
  with pytest.raises(ValueError, match="push_bytes.*-3"):
    topo.parameter_server_seconds(-3, 1, 2, bandwidth=BW, latency=LAT)
  with pytest.raises(ValueError, match="pull_bytes.*-4"):
    topo.parameter_server_seconds(1, -4, 2, bandwidth=BW, latency=LAT)
  with pytest.raises(ValueError, match="num_servers.*0"):
    topo.parameter_server_seconds(1, 1, 2, bandwidth=BW, latency=LAT,
                                num_servers=0)
  with pytest.raises(ValueError, match="num_workers.*0"):
    topo.parameter_server_seconds(1, 1, 0, bandwidth=BW, latency=LAT)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(num_workers=0), "num_workers.*0"),
    (dict(num_workers=True), "num_workers.*True"),
    (dict(compute_seconds=-1.0), "compute_seconds.*-1"),
    (dict(bandwidth=0.0), "bandwidth.*0"),
    (dict(latency=-1e-6), "latency.*-1e-06"),
    (dict(imbalance=(1.0, 2.0)), r"imbalance.*\(1.0, 2.0\)"),
    (dict(imbalance=(1.0, 0.0, 1.0, 1.0)), "imbalance.*0.0"),
    (dict(straggler="exponential"), "straggler.*exponential"),
    (dict(topology="torus"), "torus.*parameter_server.*ring"),
    (dict(topology="parameter_server", num_servers=0), "num_servers.*0"),
    (dict(num_servers=2), r"'ring'.*\['bandwidth', 'latency'\].*num_servers"),
    (dict(bandwidth=None), "bandwidth and latency.*None"),
    (dict(topology=topo.RingTopology(4, bandwidth=BW, latency=LAT)),
     "Topology object.*bandwidth"),
    (dict(topology=3), "topology.*3"),
    (dict(drop_probability=1.5), "drop_probability.*1.5"),
    (dict(seed=-1), "seed.*-1"),
])
def test_system_model_validates(kwargs, pattern):
  args = dict(num_workers=4, compute_seconds=0.1, bandwidth=BW, latency=LAT)
  args.update(kwargs)
  with pytest.raises(ValueError, match=pattern):
    sm.SystemModel(**args)


@pytest.mark.parametrize("make,pattern", [
    (lambda: st.ExponentialDelay(-1.0), "mean.*-1"),
    (lambda: st.LogNormalDelay(0.1, -0.5), "sigma.*-0.5"),
    (lambda: st.InjectedDelay(1.5, 1.0), "probability.*1.5"),
    (lambda: st.InjectedDelay(0.5, -2.0), "delay.*-2"),
    (lambda: st.ParetoDelay(1.0, 1.0), "shape.*1.0"),
    (lambda: st.ParetoDelay(-1.0, 3.0), "scale.*-1"),
])
def test_straggler_validation(make, pattern):
  with pytest.raises(ValueError, match=pattern):
    make()


def test_step_and_mask_validation():
  model = sm.SystemModel(4, 0.1, bandwidth=BW, latency=LAT)
  with pytest.raises(ValueError, match="participate"):
    model.step_seconds(0, participation=np.zeros(4, dtype=bool))
  with pytest.raises(ValueError, match=r"shape \(4,\).*\(3,\)"):
    model.step_seconds(0, participation=np.ones(3, dtype=bool))
  with pytest.raises(ValueError, match="participation.*boolean"):
    model.step_seconds(0, participation=np.array([0.5, 1, 1, 1]))
  with pytest.raises(ValueError, match="step.*-1"):
    model.compute_times(-1)
  with pytest.raises(ValueError, match="all_reduce_bytes.*-8"):
    model.communication_seconds(all_reduce_bytes=-8, all_gather_bytes=0)
  with pytest.raises(ValueError, match="all_gather_bytes.*-8"):
    model.step_seconds(0, all_gather_bytes=-8)
  with pytest.raises(ValueError, match="num_workers.*0"):
    st.NoStragglers().sample(np.random.default_rng(0), 0)


def test_bad_straggler_output_is_rejected():
  class Negative:
    mean = -1.0

    def sample(self, rng, num_workers):
      del rng
      return -np.ones(num_workers)

  model = sm.SystemModel(2, 0.1, bandwidth=BW, latency=LAT,
                         straggler=Negative())
  with pytest.raises(ValueError, match="non-negative"):
    model.compute_times(0)
