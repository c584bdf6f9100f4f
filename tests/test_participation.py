"""Partial participation: sampling, deadlines, normalisers, robust rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.distributed import participation as part
from tests import helpers

N = 8
RULES = {
    "mean": alg.aggregators.mean,
    "median": alg.aggregators.median,
    "trimmed_mean": lambda: alg.aggregators.trimmed_mean(1),
    "geometric_median": alg.aggregators.geometric_median,
    "krum": lambda: alg.aggregators.krum(1),
    "multi_krum": lambda: alg.aggregators.multi_krum(1),
}


def _stack(seed=0, n=N):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(n, 6)), jnp.float32)


def _run(tx, u):
  def step(x):
    state = tx.init(x)
    out, state = tx.update(x, state)
    return out, state
  return jax.jit(jax.vmap(step, axis_name=dist.WORKERS))(u)


@pytest.mark.parametrize("name", sorted(RULES))
def test_everyone_in_equals_the_full_aggregate(name):
  u = _stack()
  full, _ = _run(dist.aggregate(RULES[name]()), u)
  got, _ = _run(part.partial_aggregate(RULES[name](), part.everyone()), u)
  np.testing.assert_allclose(got, full, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(RULES))
def test_robust_rules_aggregate_only_the_rows_present(name):
  u = _stack(1)
  mask = np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)
  poisoned = u.at[~mask].set(jnp.nan)   # Absent rows never reach the output.
  got, state = _run(part.partial_aggregate(
      RULES[name](), part.scheduled(mask[None])), poisoned)
  rule = RULES[name]()
  ref, _ = rule.update(u[mask], rule.init(None, int(mask.sum())))
  np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(state.participants[0], mask)


def test_sampling_draws_k_of_n_replicated_and_varying():
  tx = part.partial_aggregate(alg.aggregators.mean(), part.client_sampling(3))
  u = _stack(2)

  def two_steps(x):
    s = tx.init(x)
    _, s = tx.update(x, s)
    first = s.participants
    out, s = tx.update(x, s)
    return out, first, s.participants

  out, first, second = jax.vmap(two_steps, axis_name=dist.WORKERS)(u)
  for m in (first, second):
    assert np.all(np.asarray(m) == np.asarray(m)[:1])   # Replicated.
    assert m[0].sum() == 3
  assert not np.array_equal(first[0], second[0])
  np.testing.assert_allclose(out[0], u[np.asarray(second[0]) == 1].mean(0),
                             rtol=1e-6)


def test_weighted_sampling_follows_the_weights():
  sampler = part.client_sampling(1, weights=[1, 1, 1, 97])
  hits = sum(int(sampler.mask(jax.random.key(t), t, 4)[3]) for t in range(60))
  assert hits >= 50


@pytest.mark.parametrize("normalizer,expected", [
    ("participants", lambda u, m, c: u[m].mean(0)),
    ("workers", lambda u, m, c: u[m].sum(0) / N),
    ("examples", lambda u, m, c: (c[m, None] * u[m]).sum(0) / c[m].sum()),
])
@pytest.mark.parametrize("summable", [True, False])
def test_normalisers(normalizer, expected, summable):
  u = _stack(3)
  mask = np.array([1, 0, 1, 1, 0, 1, 1, 1], bool)
  counts = np.arange(1.0, N + 1)
  c = alg.compressors.identity()
  if not summable:
    c = c._replace(summable=False)
  got, _ = _run(part.partial_aggregate(
      alg.aggregators.mean(), part.scheduled(mask[None]),
      normalizer=normalizer, examples=counts, compressor=c), u)
  np.testing.assert_allclose(got[0], expected(np.asarray(u), mask, counts),
                             rtol=1e-5)


def test_deadline_participation_from_the_clock():
  clock = dist.Clock(dist.ComputeModel(N, 1.0, imbalance=(1,) * 6 + (3, 3)),
                     dist.RingTopology(N, bandwidth=1e9, latency=0.0))
  who, plan = part.deadline(clock, 4, deadline_seconds=2.0)
  np.testing.assert_array_equal(plan.participants,
                                np.tile([True] * 6 + [False] * 2, (4, 1)))
  u = _stack(4)
  got, _ = _run(part.partial_aggregate(alg.aggregators.mean(), who), u)
  np.testing.assert_allclose(got[0], u[:6].mean(0), rtol=1e-6)


def test_clear_errors():
  u = _stack()
  with pytest.raises(ValueError, match="sample size num_sampled=9 exceeds"):
    _run(part.partial_aggregate(alg.aggregators.mean(),
                                part.client_sampling(9)), u)
  with pytest.raises(ValueError, match=r"shape \(T, 8\).*got shape \(1, 5\)"):
    _run(part.partial_aggregate(alg.aggregators.mean(),
                                part.scheduled([[1] * 5])), u)
  with pytest.raises(ValueError, match=r"shape \(8,\).*got shape \(7,\)"):
    alg.aggregators.median().update(u, alg.aggregators.median().init(None, 8),
                                    present=jnp.ones(7, bool))
  with pytest.raises(ValueError, match=r"as few as 4 participants.*krum "
                     r"needs n > 2f \+ 2; got n=4, f=1"):
    _run(part.partial_aggregate(alg.aggregators.krum(1),
                                part.client_sampling(4)), u)
  with pytest.raises(ValueError, match="does not aggregate under a "
                     "participation mask"):
    part.partial_aggregate(alg.aggregators.phocas(1), part.everyone())
  with pytest.raises(ValueError, match="phocas does not aggregate"):
    rule = alg.aggregators.phocas(1)
    rule.update(u, rule.init(None, 8), present=jnp.ones(8, bool))
  with pytest.raises(ValueError, match="needs the workers' example counts"):
    part.partial_aggregate(alg.aggregators.mean(), part.everyone(),
                           normalizer="examples")
  with pytest.raises(ValueError, match="normalizer must be one of"):
    part.partial_aggregate(alg.aggregators.mean(), part.everyone(),
                           normalizer="clients")
  with pytest.raises(ValueError, match="is for the mean rule"):
    part.partial_aggregate(alg.aggregators.median(), part.everyone(),
                           normalizer="workers")
  with pytest.raises(ValueError, match=r"participants\[1\]: at least one"):
    part.scheduled([[1, 0], [0, 0]])
  assert sorted(part.PARTICIPATION) == ["client_sampling", "everyone",
                                        "scheduled"]


@pytest.mark.parametrize("rule,field", [("mean", "all_reduce"),
                                        ("krum", "all_gather")])
def test_simulate_equals_on_mesh_and_bytes_match_the_program(rule, field):
  tx = optax.chain(part.partial_aggregate(RULES[rule](),
                                          part.client_sampling(6)),
                   optax.sgd(0.1))
  step = dist.data_parallel(helpers.mlp_loss, tx, replicated_params=True)
  s1, s2, hlo = helpers.simulate_matches_mesh(step, N, 3)
  (stats,) = dist.find_comm_stats(s2.opt_state)
  recorded = int(np.asarray(getattr(stats, field + "_bytes"))[0])
  assert recorded == helpers.collective_operand_bytes(hlo, field) > 0
  (round_,) = dist.clock_rounds(s1)
  assert round_.participants.sum() == 6
  np.testing.assert_array_equal(part.find_participants(s1.opt_state),
                                round_.participants)
  np.testing.assert_array_equal(part.find_participants(s2.opt_state),
                                round_.participants)
  assert part.find_participants(optax.EmptyState()) is None
