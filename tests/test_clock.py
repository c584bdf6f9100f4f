"""Tests for the clock, the topologies as objects, and the schedules.

Closed forms are checked against formulas written out here and, for the
tree and ring-scatter algorithms, against small simulations in the Hockney
model the topologies declare (a message of ``m`` bytes occupies its sender
for ``α + m / β`` seconds; a node sends one message at a time).
"""

import io
import json

import numpy as np
import pytest

from distoptax.distributed import clock as clock_lib
from distoptax.distributed import schedules
from distoptax.distributed import stragglers
from distoptax.distributed import topologies as topo

BW = 1.0e8  # bytes / s
LAT = 2.0e-5  # s
Round = clock_lib.Round


def _ring(n, **kw):
  return topo.RingTopology(n, bandwidth=BW, latency=LAT, **kw)


def _clock(n=8, compute=0.1, *, topology=None, **kw):
  drop = kw.pop("drop_probability", 0.0)
  return clock_lib.Clock(stragglers.ComputeModel(n, compute, **kw),
                         topology or _ring(n), drop_probability=drop)


def _state(clock, time):
  return clock.restore({**clock.init()._asdict(),
                        "time": np.asarray(time, np.float64)})


# --------------------------------------------------------------------------
# Local steps: max of sums, not H times the max.
# --------------------------------------------------------------------------


def test_period_of_local_steps_costs_max_of_sums_plus_communication():
  n, h, num_bytes = 8, 5, 4 * 250_000
  clock = _clock(n, 0.1, imbalance=(1, 1, 1, 1, 1.5, 1, 1, 1),
                 straggler=stragglers.ExponentialDelay(0.2), seed=7)
  c = np.stack([clock.compute.times(k) for k in range(h)])  # c[k, i]
  t_comm = topo.ring_all_reduce_seconds(num_bytes, n, bandwidth=BW,
                                        latency=LAT)
  expected = c.sum(axis=0).max() + t_comm
  # The draws are such that the alternatives really differ.
  assert expected < c.max(axis=1).sum() + t_comm - 0.05
  assert expected < h * c.max() + t_comm - 0.05

  state = clock.sync_step(clock.init(), [Round("all_reduce", num_bytes)],
                          num_steps=h)
  np.testing.assert_allclose(state.time, expected, rtol=1e-12)
  np.testing.assert_array_equal(state.steps, h)
  # Before the round, each clock is its own sum.
  computed = clock.compute_steps(clock.init(), h)
  np.testing.assert_allclose(computed.time, c.sum(axis=0), rtol=1e-12)


def test_compute_draws_follow_each_workers_own_step_count():
  clock = _clock(4, 0.1, straggler=stragglers.ExponentialDelay(0.1), seed=2)
  first = np.array([True, False, True, False])
  state = clock.compute_steps(clock.init(), 2, workers=first)
  state = clock.compute_steps(state, 1)
  np.testing.assert_array_equal(state.steps, [3, 1, 3, 1])
  c = np.stack([clock.compute.times(k) for k in range(3)])
  np.testing.assert_allclose(state.time, [c[:, 0].sum(), c[0, 1],
                                          c[:, 2].sum(), c[0, 3]],
                             rtol=1e-12)


# --------------------------------------------------------------------------
# Rounds: latency per round, barriers over participants only.
# --------------------------------------------------------------------------


def test_each_round_pays_its_latency():
  clock = _clock(8)
  state = clock.communicate(clock.init(), [Round("all_reduce", 0)] * 3)
  np.testing.assert_allclose(state.time, 3 * 2 * 7 * LAT, rtol=1e-12)


def test_round_with_three_of_eight_waits_only_for_those_three():
  clock = _clock(8)
  before = np.array([0.0, 5.0, 1.0, 9.0, 2.0, 7.0, 3.0, 4.0])
  who = np.zeros(8, dtype=bool)
  who[[0, 2, 6]] = True
  state = clock.communicate(_state(clock, before),
                            [Round("all_reduce", 30_000, participants=who)])
  cost = topo.ring_all_reduce_seconds(30_000, 3, bandwidth=BW, latency=LAT)
  expected = before.copy()
  expected[who] = 3.0 + cost  # The latest of the three, not 9.
  np.testing.assert_allclose(state.time, expected, rtol=1e-12)
  assert cost < topo.ring_all_reduce_seconds(30_000, 8, bandwidth=BW,
                                             latency=LAT)
  # 0/1 masks are accepted.
  again = clock.communicate(
      _state(clock, before),
      [Round("all_reduce", 30_000, participants=who.astype(int))])
  np.testing.assert_array_equal(again.time, state.time)


def test_parameter_server_round_over_participants():
  ps = topo.ParameterServerTopology(8, bandwidth=BW, latency=LAT,
                                    num_servers=2)
  clock = _clock(8, topology=ps)
  who = np.arange(8) < 3
  state = clock.communicate(clock.init(), [
      Round("all_gather", 1000, participants=who)])
  expected = topo.parameter_server_seconds(1000, 3000, 3, bandwidth=BW,
                                           latency=LAT, num_servers=2)
  np.testing.assert_allclose(state.time[who], expected, rtol=1e-12)
  np.testing.assert_array_equal(state.time[~who], 0.0)


# --------------------------------------------------------------------------
# Topologies.
# --------------------------------------------------------------------------


def _hierarchical(n=12, g=4, **kw):
  links = dict(local_bandwidth=4 * BW, local_latency=LAT / 10,
               host_bandwidth=BW, host_latency=LAT)
  links.update(kw)
  return topo.HierarchicalTopology(n, workers_per_host=g, **links)


def test_two_tier_all_reduce_equals_its_formula():
  top = _hierarchical()
  b1, a1, b2, a2 = 4 * BW, LAT / 10, BW, LAT
  g, h, num_bytes = 4, 3, 1_000_003
  formula = (2 * (g - 1) * a1 + 2 * (g - 1) / g * num_bytes / b1
             + 2 * (h - 1) * a2 + 2 * (h - 1) / h * num_bytes / (g * b2))
  phases = (
      topo.ring_reduce_scatter_seconds(num_bytes, g, bandwidth=b1,
                                       latency=a1)
      + topo.ring_all_reduce_seconds(num_bytes / g, h, bandwidth=b2,
                                     latency=a2)
      + topo.ring_all_gather_seconds(num_bytes / g, g, bandwidth=b1,
                                     latency=a1))
  assert phases == pytest.approx(formula, rel=1e-12)
  assert top.all_reduce(num_bytes) == pytest.approx(formula, rel=1e-12)
  clock = _clock(12, topology=top)
  state = clock.communicate(clock.init(), [Round("all_reduce", num_bytes)])
  np.testing.assert_allclose(state.time, formula, rtol=1e-12)
  # Faster than a flat ring over the slow inter-host links.
  assert formula < topo.ring_all_reduce_seconds(num_bytes, 12, bandwidth=b2,
                                                latency=a2)


def test_two_tier_other_collectives_equal_their_formulas():
  top = _hierarchical()
  b1, a1, b2, a2 = 4 * BW, LAT / 10, BW, LAT
  g, h, num_bytes = 4, 3, 40_000
  assert top.reduce_scatter(num_bytes) == pytest.approx(
      (g - 1) * a1 + (g - 1) / g * num_bytes / b1
      + (h - 1) * a2 + (h - 1) / h * num_bytes / (g * b2), rel=1e-12)
  assert top.all_gather(num_bytes) == pytest.approx(
      (h - 1) * a2 + (h - 1) * num_bytes / b2
      + (g - 1) * a1 + (g - 1) * h * num_bytes / b1, rel=1e-12)
  assert top.broadcast(num_bytes) == pytest.approx(
      2 * (h - 1) * a2 + 2 * (h - 1) / h * num_bytes / b2
      + 2 * (g - 1) * a1 + 2 * (g - 1) / g * num_bytes / b1, rel=1e-12)


def test_two_tier_degenerate_shapes_are_flat_rings():
  num_bytes = 12_345
  one_per_host = _hierarchical(6, 1)
  one_host = _hierarchical(6, 6)
  for kind in topo.COLLECTIVES:
    assert one_per_host.cost(kind, num_bytes) == pytest.approx(
        _ring(6).cost(kind, num_bytes), rel=1e-12)
    assert one_host.cost(kind, num_bytes) == pytest.approx(
        topo.RingTopology(6, bandwidth=4 * BW, latency=LAT / 10).cost(
            kind, num_bytes), rel=1e-12)


def test_two_tier_unequal_hosts_cost_the_busiest_host():
  top = _hierarchical()
  who = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
  num_bytes = 8000
  intra = dict(bandwidth=4 * BW, latency=LAT / 10)
  inter = dict(bandwidth=BW, latency=LAT)
  assert top.all_reduce(num_bytes, who) == pytest.approx(
      topo.ring_reduce_scatter_seconds(num_bytes, 4, **intra)
      + topo.ring_all_reduce_seconds(num_bytes / 2, 2, **inter)
      + topo.ring_all_gather_seconds(num_bytes / 4, 4, **intra), rel=1e-12)


def test_tier_rounds_synchronise_each_group_on_its_own():
  top = _hierarchical()
  clock = _clock(12, topology=top)
  before = np.repeat([0.0, 5.0, 1.0], 4)
  local = clock.communicate(_state(clock, before),
                            [Round("all_reduce", 4000, tier="local")])
  t_local = topo.ring_all_reduce_seconds(4000, 4, bandwidth=4 * BW,
                                         latency=LAT / 10)
  np.testing.assert_allclose(local.time, before + t_local, rtol=1e-12)
  hosts = clock.communicate(_state(clock, np.arange(12.0)),
                            [Round("all_gather", 4000, tier="hosts")])
  t_hosts = topo.ring_all_gather_seconds(4000, 3, bandwidth=BW, latency=LAT)
  # Local rank r's ring holds workers r, r + 4, r + 8; it waits for r + 8.
  np.testing.assert_allclose(hosts.time, np.tile(8 + np.arange(4.0), 3)
                             + t_hosts, rtol=1e-12)


def test_flat_formulas_of_new_kinds():
  n, num_bytes = 8, 80_000
  assert topo.ring_reduce_scatter_seconds(
      num_bytes, n, bandwidth=BW, latency=LAT) == pytest.approx(
          7 * LAT + 7 / 8 * num_bytes / BW, rel=1e-12)
  assert topo.ring_broadcast_seconds(
      num_bytes, n, bandwidth=BW, latency=LAT) == pytest.approx(
          14 * LAT + 14 / 8 * num_bytes / BW, rel=1e-12)
  ps = topo.ParameterServerTopology(n, bandwidth=BW, latency=LAT,
                                    num_servers=2)
  assert ps.reduce_scatter(num_bytes) == pytest.approx(
      topo.parameter_server_seconds(num_bytes, num_bytes / n, n,
                                    bandwidth=BW, latency=LAT,
                                    num_servers=2), rel=1e-12)
  assert ps.broadcast(num_bytes) == pytest.approx(
      2 * LAT + num_bytes / BW + 4 * num_bytes / BW, rel=1e-12)


def test_sendrecv_is_one_message_each_way():
  num_bytes = 80_000
  one = LAT + num_bytes / BW
  ps = topo.ParameterServerTopology(8, bandwidth=BW, latency=LAT,
                                    num_servers=2)
  for top in (_ring(8), topo.TreeTopology(8, bandwidth=BW, latency=LAT), ps):
    assert top.sendrecv(num_bytes) == pytest.approx(one, rel=1e-12)
    # Unlike the all-gather, it does not grow with the participants.
    assert top.cost("sendrecv", num_bytes, np.arange(8) < 2) == (
        pytest.approx(one, rel=1e-12))
    assert top.all_gather(num_bytes) > 2 * one
  assert topo.sendrecv_seconds(num_bytes, 1, bandwidth=BW,
                               latency=LAT) == 0.0
  assert ps.sendrecv(num_bytes, np.arange(8) == 3) == 0.0
  top = _hierarchical()          # 3 hosts of 4: intra (4 BW, LAT / 10).
  intra = LAT / 10 + num_bytes / (4 * BW)
  assert top.sendrecv(num_bytes, np.arange(12) < 4) == pytest.approx(
      intra, rel=1e-12)          # One host: the intra-host link.
  assert top.sendrecv(num_bytes, np.arange(12) % 4 == 0) == pytest.approx(
      one, rel=1e-12)            # One per host: the inter-host link.
  assert top.sendrecv(num_bytes) == pytest.approx(one, rel=1e-12)
  assert top.sendrecv(num_bytes, tier="local") == pytest.approx(
      intra, rel=1e-12)


def test_recursive_doubling_swaps_are_priced_as_sendrecv():
  # log2(8) = 3 swaps of B: 3 (alpha + B / beta), not 3 all-gathers.
  clock = _clock(8, compute=0.0)
  state = clock.communicate(_state(clock, np.zeros(8)),
                            [Round("sendrecv", 4000)] * 3)
  np.testing.assert_allclose(state.time, 3 * (LAT + 4000 / BW), rtol=1e-12)


def test_one_participant():
  alone = np.arange(8) == 3
  for top in (_ring(8), topo.TreeTopology(8, bandwidth=BW, latency=LAT),
              _hierarchical(8, 4)):
    for kind in topo.COLLECTIVES:
      assert top.cost(kind, 10_000, alone) == 0.0
  ps = topo.ParameterServerTopology(8, bandwidth=BW, latency=LAT)
  assert ps.all_reduce(10_000, alone) == pytest.approx(
      2 * LAT + 2 * 10_000 / BW, rel=1e-12)  # The server is another node.


def _binomial_children(rank, k):
  """Children of ``rank`` in a binomial tree rooted at 0, nearest first."""
  low = (rank & -rank).bit_length() - 1 if rank else (k - 1).bit_length()
  return [rank + 2**j for j in range(low) if rank + 2**j < k]


def _subtree(rank, k):
  return 1 + sum(_subtree(c, k) for c in _binomial_children(rank, k))


def _tree_down(k, chunk_bytes, per_subtree):
  """Broadcast (one chunk each) or scatter (a chunk per node of a subtree).

  Each node forwards to its children, farthest (largest subtree) first.
  """
  have = {0: 0.0}
  order = [0]
  for rank in order:
    free = have[rank]
    for child in reversed(_binomial_children(rank, k)):
      size = _subtree(child, k) if per_subtree else 1
      free += LAT + size * chunk_bytes / BW
      have[child] = free
      order.append(child)
  return max(have.values())


def _tree_up(k, chunk_bytes, per_subtree):
  """Reduce (one chunk each) or gather (a chunk per node of a subtree)."""
  def done(rank):
    free = 0.0
    for child in _binomial_children(rank, k):
      size = _subtree(child, k) if per_subtree else 1
      free = max(free, done(child)) + LAT + size * chunk_bytes / BW
    return free
  return done(0)


@pytest.mark.parametrize("k", range(1, 20))
def test_tree_formulas_match_binomial_simulations(k):
  num_bytes = 6000.0
  kw = dict(bandwidth=BW, latency=LAT)
  broadcast = _tree_down(k, num_bytes, per_subtree=False)
  scatter = _tree_down(k, num_bytes / k, per_subtree=True)
  reduce = _tree_up(k, num_bytes, per_subtree=False)
  gather = _tree_up(k, num_bytes, per_subtree=True)
  levels = (k - 1).bit_length()
  assert scatter == pytest.approx(
      levels * LAT + (k - 1) / k * num_bytes / BW, rel=1e-12, abs=1e-15)
  assert gather == pytest.approx(
      levels * LAT + (k - 1) * num_bytes / BW, rel=1e-12, abs=1e-15)
  assert topo.tree_broadcast_seconds(num_bytes, k, **kw) == pytest.approx(
      broadcast, rel=1e-12, abs=1e-15)
  assert topo.tree_all_reduce_seconds(num_bytes, k, **kw) == pytest.approx(
      reduce + broadcast, rel=1e-12, abs=1e-15)
  assert topo.tree_all_gather_seconds(num_bytes, k, **kw) == pytest.approx(
      gather + _tree_down(k, k * num_bytes, per_subtree=False),
      rel=1e-12, abs=1e-15)
  assert topo.tree_reduce_scatter_seconds(num_bytes, k, **kw) == (
      pytest.approx(reduce + scatter, rel=1e-12, abs=1e-15))


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_ring_broadcast_matches_scatter_then_all_gather_simulation(k):
  """The root sends chunks down the ring, farthest first; then all-gather."""
  num_bytes = 9000.0
  chunk = num_bytes / k
  link_free = np.zeros(k)
  arrive = np.zeros(k)
  for dest in range(k - 1, 0, -1):
    ready = 0.0
    for node in range(dest):
      start = max(ready, link_free[node])
      link_free[node] = ready = start + LAT + chunk / BW
    arrive[dest] = ready
  gather = topo.ring_all_gather_seconds(chunk, k, bandwidth=BW, latency=LAT)
  assert topo.ring_broadcast_seconds(
      num_bytes, k, bandwidth=BW, latency=LAT) == pytest.approx(
          arrive.max() + gather, rel=1e-12, abs=1e-15)


def test_topology_registry_and_describe():
  assert set(topo.TOPOLOGIES) == {"ring", "tree", "parameter_server",
                                  "hierarchical"}
  built = topo.make_topology("hierarchical", 8, workers_per_host=2,
                             local_bandwidth=1e9, local_latency=0.0,
                             host_bandwidth=1e8, host_latency=1e-5)
  assert built == topo.HierarchicalTopology(
      8, workers_per_host=2, local_bandwidth=1e9, local_latency=0.0,
      host_bandwidth=1e8, host_latency=1e-5)
  assert built.num_hosts == 4
  desc = json.loads(json.dumps(built.describe()))
  assert desc["name"] == "hierarchical" and desc["workers_per_host"] == 2
  assert topo.make_topology("tree", 4, bandwidth=BW, latency=LAT) == (
      topo.TreeTopology(4, bandwidth=BW, latency=LAT))


# --------------------------------------------------------------------------
# Asynchronous events.
# --------------------------------------------------------------------------


def _async_clock(**kw):
  ps = topo.ParameterServerTopology(3, bandwidth=BW, latency=0.25)
  return _clock(3, 1.0, topology=ps, imbalance=(1, 2, 3), **kw)


EXPECTED_EVENTS = [  # (worker, time, staleness); each exchange costs 2α.
    (0, 1.0, 0), (1, 2.0, 1), (0, 2.5, 1), (2, 3.0, 3), (0, 4.0, 1),
    (1, 4.5, 3), (0, 5.5, 1)]


def test_event_order_and_staleness_by_hand():
  clock = _async_clock()
  state = clock.compute_steps(clock.init())
  assert clock.next_event(state) == (0, 1.0, 0)
  events = []
  for _ in EXPECTED_EVENTS:
    state, event = clock.complete_next(state, [Round("all_reduce", 0)])
    events.append(tuple(event))
  assert events == EXPECTED_EVENTS
  assert int(state.version) == len(EXPECTED_EVENTS)
  np.testing.assert_array_equal(state.read_version, [7, 6, 4])
  np.testing.assert_allclose(state.time, [7.0, 7.0, 6.5])


def test_ties_go_to_the_lowest_worker_index():
  clock = _clock(2, 1.0, topology=topo.ParameterServerTopology(
      2, bandwidth=BW, latency=0.0))
  _, plan = schedules.async_schedule(clock, clock.compute_steps(clock.init()),
                                     4)
  assert plan.worker.tolist() == [0, 1, 0, 1]
  assert plan.time.tolist() == [1.0, 1.0, 2.0, 2.0]
  assert plan.staleness.tolist() == [0, 1, 1, 1]


def test_async_schedule_matches_events_and_counts_updates_in_between():
  clock = _async_clock()
  _, plan = schedules.async_schedule(
      clock, clock.compute_steps(clock.init()), len(EXPECTED_EVENTS),
      rounds=[Round("all_reduce", 0)])
  assert plan.worker.dtype == np.int32 and plan.staleness.dtype == np.int32
  assert list(zip(plan.worker.tolist(), plan.time.tolist(),
                  plan.staleness.tolist())) == EXPECTED_EVENTS

  # With random delays: staleness = updates since the worker's last one.
  clock = _clock(5, 0.1, topology=topo.ParameterServerTopology(
      5, bandwidth=BW, latency=LAT), straggler=stragglers.ParetoDelay(
          0.1, 2.5), seed=11)
  _, plan = schedules.async_schedule(
      clock, clock.compute_steps(clock.init(), 2), 200,
      rounds=[Round("all_reduce", 4000)], local_steps=2)
  last = {}
  for index, (worker, stale) in enumerate(zip(plan.worker, plan.staleness)):
    assert stale == index - last.get(worker, -1) - 1
    last[worker] = index
  assert np.all(np.diff(plan.time) >= 0)
  assert len(set(plan.worker.tolist())) == 5


# --------------------------------------------------------------------------
# Reproducibility and resume.
# --------------------------------------------------------------------------


def _mixed_run(clock, state, first, last):
  """Synchronous periods, a partial round, then asynchronous events."""
  for t in range(first, last):
    who = clock.drops(t, (8,))  # Any seeded mask will do.
    who[t % 8] = True
    state = clock.sync_step(state, [Round("reduce_scatter", 8000),
                                    Round("all_gather", 1000,
                                          participants=who)], num_steps=3)
    state, _ = clock.complete_next(state, [Round("all_reduce", 500)])
  return state


def test_reproducible_from_seed():
  kw = dict(straggler=stragglers.LogNormalDelay(0.05, 0.8), seed=5,
            drop_probability=0.3)
  a = _mixed_run(_clock(**kw), _clock(**kw).init(), 0, 6)
  b = _mixed_run(_clock(**kw), _clock(**kw).init(), 0, 6)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  kw["seed"] = 6
  c = _mixed_run(_clock(**kw), _clock(**kw).init(), 0, 6)
  assert not np.array_equal(a.time, c.time)


@pytest.mark.parametrize("medium", ["npz", "json"])
def test_resume_from_serialised_state_continues_identically(medium):
  kw = dict(straggler=stragglers.ExponentialDelay(0.05), seed=9,
            drop_probability=0.3)
  whole = _mixed_run(_clock(**kw), _clock(**kw).init(), 0, 10)

  half = _mixed_run(_clock(**kw), _clock(**kw).init(), 0, 4)
  if medium == "npz":
    buffer = io.BytesIO()
    np.savez(buffer, **half._asdict())
    buffer.seek(0)
    saved = dict(np.load(buffer))
  else:
    saved = json.loads(json.dumps(
        {k: v.tolist() for k, v in half._asdict().items()}))
  fresh = _clock(**kw)  # A new process builds its clock again.
  resumed = _mixed_run(fresh, fresh.restore(saved), 4, 10)
  for name, x, y in zip(clock_lib.ClockState._fields, whole, resumed):
    assert x.dtype == y.dtype, name
    np.testing.assert_array_equal(x, y, err_msg=name)


def test_schedules_in_chunks_equal_schedules_at_once():
  clock = _clock(6, 1.0, straggler=stragglers.ExponentialDelay(0.5), seed=3,
                 drop_probability=0.2)
  rounds = [Round("all_reduce", 10_000)]
  end, whole = schedules.deadline_schedule(clock, clock.init(), 12,
                                           deadline=1.4, rounds=rounds)
  state, first = schedules.deadline_schedule(clock, clock.init(), 5,
                                             deadline=1.4, rounds=rounds)
  state = clock.restore(json.loads(json.dumps(
      {k: v.tolist() for k, v in state._asdict().items()})))
  state, second = schedules.deadline_schedule(clock, state, 7, deadline=1.4,
                                              rounds=rounds)
  for x, y, z in zip(whole, first, second):
    np.testing.assert_array_equal(x, np.concatenate([y, z]))
  np.testing.assert_array_equal(end.time, state.time)
  # Participation really varies with the draws.
  assert 0 < whole.participants.mean() < 1

  drops = schedules.drop_schedule(clock, 0, 12, (6,))
  np.testing.assert_array_equal(drops[5:], schedules.drop_schedule(
      clock, 5, 7, (6,)))
  assert drops.shape == (12, 6) and drops.dtype == bool
  assert schedules.drop_schedule(clock, 3, 0, (2, 6)).shape == (0, 2, 6)


# --------------------------------------------------------------------------
# Deadlines and drops.
# --------------------------------------------------------------------------


def test_deadline_schedule_by_hand():
  clock = _clock(4, 1.0, topology=_ring(4), imbalance=(1, 2, 3, 4))
  t_ar = topo.ring_all_reduce_seconds(4000, 4, bandwidth=BW, latency=LAT)
  rounds = [Round("all_reduce", 4000)]
  _, plan = schedules.deadline_schedule(clock, clock.init(), 2, deadline=2.5,
                                        rounds=rounds)
  np.testing.assert_array_equal(plan.participants, [[1, 1, 0, 0]] * 2)
  np.testing.assert_allclose(plan.start, [0.0, 2.5 + t_ar])
  np.testing.assert_allclose(plan.end, [2.5 + t_ar, 5.0 + 2 * t_ar])
  np.testing.assert_allclose(plan.finish[0], [1, 2, 3, 4])
  # Everyone on time: the round starts when the last one is done.
  _, plan = schedules.deadline_schedule(clock, clock.init(), 1, deadline=9.0,
                                        rounds=rounds)
  assert plan.participants.all() and plan.end[0] == pytest.approx(4 + t_ar)
  # Nobody on time: the first to finish alone, and no wait for the deadline.
  _, plan = schedules.deadline_schedule(clock, clock.init(), 1, deadline=0.5,
                                        rounds=rounds, local_steps=2)
  np.testing.assert_array_equal(plan.participants, [[1, 0, 0, 0]])
  assert plan.end[0] == pytest.approx(2 + t_ar)


def test_drops_have_the_declared_probability():
  p = 0.1
  clock = _clock(8, drop_probability=p, seed=4)
  drops = schedules.drop_schedule(clock, 0, 500, (2, 8, 8))
  rate = drops.mean()
  assert abs(rate - p) < 5 * np.sqrt(p * (1 - p) / drops.size)
  assert not _clock(8, drop_probability=0.0).drops(3, (8,)).any()
  # Independent of the compute draws of the same step and seed.
  assert not np.array_equal(_clock(8, drop_probability=0.5, seed=4).drops(
      0, 8), np.random.default_rng([4, 0]).random(8) < 0.5)


# --------------------------------------------------------------------------
# Bad inputs.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("make,error,pattern", [
    (lambda: topo.RingTopology(4, bandwidth=-5.0, latency=LAT), ValueError,
     "bandwidth.*-5"),
    (lambda: topo.TreeTopology(4, bandwidth=BW, latency=float("nan")),
     ValueError, "latency.*nan"),
    (lambda: _hierarchical(host_bandwidth=-2.0), ValueError,
     "host_bandwidth.*-2"),
    (lambda: _hierarchical(local_latency=-1.0), ValueError,
     "local_latency.*-1"),
    (lambda: _hierarchical(10, 4), ValueError,
     "multiple of workers_per_host.*10.*4"),
    (lambda: topo.ParameterServerTopology(4, bandwidth=BW, latency=LAT,
                                          num_servers=0), ValueError,
     "num_servers.*0"),
    (lambda: topo.make_topology("torus", 4), ValueError,
     "torus.*hierarchical.*parameter_server.*ring.*tree"),
    (lambda: topo.make_topology("ring", 4, bandwidth=BW, latency=LAT,
                                servers=2), ValueError,
     r"'ring'.*\['bandwidth', 'latency'\].*servers"),
    (lambda: stragglers.make_straggler("gamma"), ValueError,
     "gamma.*exponential"),
    (lambda: stragglers.ComputeModel(3, 0.1, imbalance=(1.0, float("nan"),
                                                         1.0)),
     ValueError, "imbalance.*nan"),
    (lambda: stragglers.ComputeModel(3, float("nan")), ValueError,
     "compute_seconds.*nan"),
    (lambda: _clock(4, topology=_ring(8)), ValueError,
     "num_workers=4.*num_workers=8"),
    (lambda: _clock(4, drop_probability=1.5), ValueError,
     "drop_probability.*1.5"),
    (lambda: clock_lib.Clock(stragglers.ComputeModel(4, 0.1), "ring"),
     TypeError, "topology.*ring"),
])
def test_construction_errors(make, error, pattern):
  with pytest.raises(error, match=pattern):
    make()


@pytest.mark.parametrize("rounds,error,pattern", [
    ([Round("all_reduce", 8, participants=np.ones(7, bool))], ValueError,
     r"rounds\[0\]\.participants.*shape \(8,\).*\(7,\)"),
    ([Round("all_reduce", 8), Round("all_gather", float("nan"))], ValueError,
     r"rounds\[1\]\.bytes.*nan"),
    ([Round("all_reduce", -8)], ValueError, r"rounds\[0\]\.bytes.*-8"),
    ([Round("all_reduce", 1.5)], ValueError, r"rounds\[0\]\.bytes.*1.5"),
    ([Round("all_to_all", 8)], ValueError,
     r"all_to_all.*'all_reduce', 'all_gather'"),
    ([Round("all_reduce", 8, participants=np.zeros(8, bool))], ValueError,
     r"rounds\[0\]\.participants.*at least one"),
    ([Round("all_reduce", 8, participants=np.full(8, 0.5))], ValueError,
     r"rounds\[0\]\.participants.*boolean"),
    ([Round("all_reduce", 8, tier="local")], ValueError,
     "tier 'local'.*RingTopology"),
    (Round("all_reduce", 8), TypeError, "sequence of Round"),
    ([("all_reduce", 8)], TypeError, r"rounds\[0\].*Round"),
])
def test_bad_rounds(rounds, error, pattern):
  clock = _clock(8)
  with pytest.raises(error, match=pattern):
    clock.communicate(clock.init(), rounds)


def test_bad_tier_state_and_schedule_arguments():
  clock = _clock(12, topology=_hierarchical())
  with pytest.raises(ValueError, match="tier 'racks'.*'local', 'hosts'"):
    clock.communicate(clock.init(), [Round("all_reduce", 8, tier="racks")])
  state = clock.init()
  with pytest.raises(ValueError, match=r"time must have shape \(12,\)"):
    clock.restore({**state._asdict(), "time": np.zeros(11)})
  with pytest.raises(ValueError, match="time must be finite.*nan"):
    clock.restore({**state._asdict(),
                   "time": np.full(12, float("nan"))})
  with pytest.raises(ValueError, match="steps must be non-negative.*-1"):
    clock.restore({**state._asdict(), "steps": np.full(12, -1)})
  with pytest.raises(ValueError, match="read_version.*exceeds.*version"):
    clock.restore({**state._asdict(), "read_version": np.ones(12, int)})
  with pytest.raises(ValueError, match="fields.*time.*steps"):
    clock.restore({"time": np.zeros(12)})
  with pytest.raises(ValueError, match="num_steps.*0"):
    clock.compute_steps(state, 0)
  with pytest.raises(ValueError, match=r"workers must have shape \(12,\)"):
    clock.compute_steps(state, workers=np.ones(3, bool))
  with pytest.raises(ValueError, match="participants must be None.*async"):
    clock.complete_next(state, [Round("all_reduce", 8,
                                      participants=np.ones(12, bool))])
  with pytest.raises(ValueError, match="deadline.*nan"):
    schedules.deadline_schedule(clock, state, 2, deadline=float("nan"))
  with pytest.raises(ValueError, match="deadline.*-1"):
    schedules.deadline_schedule(clock, state, 2, deadline=-1.0)
  with pytest.raises(ValueError, match="num_events.*-1"):
    schedules.async_schedule(clock, state, -1)
  with pytest.raises(ValueError, match="step.*-2"):
    clock.drops(-2, (3,))
  with pytest.raises(ValueError, match="num_bytes.*nan"):
    clock.topology.all_reduce(float("nan"))
