"""Byzantine SGD (Alistarh, Allen-Zhu, Li 2018): reference, filter, errors."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax import distributed as dist
from distoptax.algorithms import aggregators
# From the module itself: the package re-exports a function of this name.
from distoptax.algorithms.aggregators.byzantine_sgd import byzantine_sgd
from distoptax.algorithms.aggregators.byzantine_sgd import paper_thresholds
from tests import references


def _ball(rng, shape, radius):
  """Uniform samples in the ball of the given radius (bounded noise)."""
  d = shape[-1]
  g = rng.normal(size=shape)
  g /= np.linalg.norm(g, axis=-1, keepdims=True)
  return g * radius * rng.uniform(size=shape[:-1] + (1,)) ** (1 / d)


def _split(x):
  """[..., 6] -> {"w": [..., 2, 2], "c": [..., 2]}."""
  x = jnp.asarray(x, jnp.float32)
  return {"w": x[..., :4].reshape(x.shape[:-1] + (2, 2)), "c": x[..., 4:]}


def _join(tree):
  lead = tree["c"].shape[:-1]
  return np.concatenate([np.asarray(tree["w"]).reshape(lead + (4,)),
                         np.asarray(tree["c"])], axis=-1)


@pytest.mark.parametrize("n,scale,by_m", [(5, 2.0, False), (8, 2.0, False),
                                          (8, 1.0, True), (6, 2.0, False)])
def test_matches_numpy_reference_over_many_steps(n, scale, by_m):
  rng = np.random.default_rng(n + int(scale) + by_m)
  d, steps, v, t_a, t_b = 6, 16, 1.0, 6.0, 4.0
  x1 = rng.normal(size=d)
  rule = byzantine_sgd(v, threshold_a=t_a, threshold_b=t_b,
                       filter_scale=scale, divide_by_num_workers=by_m)
  ref = references.ByzantineSGDReference(n, x1, v, t_a, t_b, scale, by_m)
  update = jax.jit(rule.update)
  state = rule.init(_split(x1), n)
  u = rng.normal(size=d)
  u /= np.linalg.norm(u)
  removed_at = {}
  for k in range(steps):
    x = x1 + rng.normal(size=d)  # any iterates will do for the statistics
    grads = rng.normal(size=d) + _ball(rng, (n, d), 0.999 * v)
    grads[n - 1] += 1.2 * u                 # drifts: caught by B
    if k == 7:
      grads[n - 2] += 10.0 * u              # one large vector: caught at once
    if k >= 10 and n >= 8:
      grads[n - 3, 1] = np.nan              # non-finite
    if n == 6 and k >= 3:
      grads[0] += 0.9 * (x - x1)            # drifts along x_t - x_1: A
    grads = grads.astype(np.float32)
    want = ref.step(grads, x)
    out, state = update(_split(grads), state, _split(x))
    np.testing.assert_array_equal(state.selected, ref.good.astype(np.float32))
    np.testing.assert_allclose(_join(out), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state.a, ref.a, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_join(state.b), ref.b, rtol=1e-5, atol=1e-5)
    assert int(state.no_majority) == ref.no_majority
    assert int(state.count) == k + 1
    for i in np.flatnonzero(~ref.good):
      removed_at.setdefault(int(i), k)
  # The scenario exercises every test: each attacker is removed.
  assert removed_at.get(n - 2) == 7
  assert n - 1 in removed_at
  if n >= 8:
    assert removed_at.get(n - 3) == 10
  if n == 6:
    assert 0 in removed_at


_N, _D, _STEPS, _V = 10, 10, 2000, 1.0
_T_A, _T_B = paper_thresholds(_V, 6.0, _STEPS, _N, 0.01)


@functools.partial(jax.jit, static_argnames=("use_mean", "by_m",
                                             "along_travel"))
def _run(t_a, t_b, bias, workers, until, *, use_mean=False, by_m=False,
         along_travel=False, seed=0, lr=0.1):
  """SGD on f(x) = |x - x*|^2 / 2 with noise uniform in the V-ball.

  The workers in the 0/1 mask ``workers`` add ``bias`` times a fixed unit
  vector u (or times (x_t - x_1)/|x_t - x_1| with ``along_travel``) for
  steps k < ``until``. Thresholds are traced, so scenarios share one
  compilation per structural variant.
  """
  n, d = _N, _D
  key = jax.random.key(seed)
  k_star, k_u, k_run = jax.random.split(key, 3)
  x_star = jax.random.normal(k_star, (d,))
  x_star = 3.0 * x_star / jnp.linalg.norm(x_star)
  u = jax.random.normal(k_u, (d,))
  u = u / jnp.linalg.norm(u)
  if use_mean:
    rule = aggregators.mean()
  else:
    rule = byzantine_sgd(_V, threshold_a=t_a, threshold_b=t_b,
                         divide_by_num_workers=by_m)

  def step(carry, key):
    x, state, k = carry
    k1, k2 = jax.random.split(key)
    direction = jax.random.normal(k1, (n, d))
    direction /= jnp.linalg.norm(direction, axis=1, keepdims=True)
    radius = 0.999 * _V * jax.random.uniform(k2, (n, 1)) ** (1.0 / d)
    honest = (x - x_star)[None, :] + radius * direction
    push = x / jnp.maximum(jnp.linalg.norm(x), 1e-6) if along_travel else u
    on = (k < until).astype(jnp.float32)
    stack = honest + (on * bias * workers)[:, None] * push[None, :]
    agg, state = rule.update(stack, state, x)
    x = x - lr * agg
    selected = getattr(state, "selected", jnp.ones((n,), jnp.float32))
    no_majority = getattr(state, "no_majority", jnp.zeros((), jnp.int32))
    return (x, state, k + 1), (selected, jnp.linalg.norm(x - x_star),
                               no_majority)

  x0 = jnp.zeros(d)
  carry = (x0, rule.init(x0, n), 0)
  _, (selected, err, no_majority) = jax.lax.scan(
      step, carry, jax.random.split(k_run, _STEPS))
  return selected, err, no_majority[-1]


def _simulate(t_a=_T_A, t_b=_T_B, bias=0.0, workers=(), until=_STEPS,
              **kwargs):
  mask = np.zeros(_N, np.float32)
  mask[list(workers)] = 1.0
  selected, err, no_majority = _run(t_a, t_b, bias, mask, until, **kwargs)
  return np.asarray(selected), np.asarray(err), int(no_majority)


def test_honest_workers_are_never_filtered_on_an_iid_quadratic():
  for seed in (0, 1):
    selected, err, no_majority = _simulate(seed=seed)
    assert selected.min() == 1.0
    assert no_majority == 0
    assert err[-100:].mean() < 0.2
  # The same run with thresholds 40x smaller removes honest workers: the
  # check above is not vacuous.
  selected, _, _ = _simulate(_T_A / 40, _T_B / 40)
  assert selected[-1].sum() < 10


def test_a_large_bias_is_removed_at_once_and_never_readmitted():
  selected, _, _ = _simulate(bias=7.0, workers=[9], until=5)
  assert np.all(selected[:, 9] == 0.0)  # removed at the first step
  assert np.all(selected[:, :9] == 1.0)


def test_a_bias_within_the_gradient_test_is_removed_by_the_running_sum():
  """Bias 1.5V passes ||g - g_med|| <= 4V; B drifts by 1.5 per step."""
  selected, _, no_majority = _simulate(bias=1.5, workers=[8, 9])
  predicted = 2.0 * _T_B / 1.5  # ||B_byz - B_med|| ~ 1.5 k > 2 T_B
  for worker in (8, 9):
    removed = int(np.argmin(selected[:, worker]))
    assert selected[removed, worker] == 0.0
    assert 0.9 * predicted < removed < 1.1 * predicted, (removed, predicted)
    assert np.all(selected[removed:, worker] == 0.0)  # never readmitted
  assert np.all(selected[:, :8] == 1.0)
  assert no_majority == 0


def test_filtered_run_beats_plain_averaging_under_a_bias_within_threshold():
  attack = dict(bias=1.9, workers=[8, 9])
  _, err_mean, _ = _simulate(use_mean=True, **attack)
  for by_m in (False, True):
    selected, err, _ = _simulate(by_m=by_m, **attack)
    assert selected[-1].sum() == 8
    tail_filtered, tail_mean = err[-300:].mean(), err_mean[-300:].mean()
    assert tail_mean > 0.3  # the mean keeps the bias 2 * 1.9 / 10
    assert tail_filtered < 0.4 * tail_mean, (tail_filtered, tail_mean)


def test_the_a_statistic_removes_a_drift_along_the_distance_travelled():
  attack = dict(bias=1.5, workers=[9], along_travel=True)
  selected, _, _ = _simulate(200.0, 1e6, **attack)
  removed = int(np.argmin(selected[:, 9]))
  # A_9 - A_med grows by ~1.5 |x_t - x_1| ~ 4.5 per step: out of
  # 2 T_A = 400 after ~90 steps.
  assert selected[-1, 9] == 0.0 and 60 < removed < 160, removed
  assert np.all(selected[:, :9] == 1.0)
  selected, _, _ = _simulate(1e9, 1e6, **attack)
  assert selected.min() == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_from_f_workers_give_finite_outputs(bad):
  n, f = 7, 3
  rule = byzantine_sgd(1.0, threshold_a=50.0, threshold_b=50.0,
                       num_byzantine=f)
  rng = np.random.default_rng(0)
  x = _split(np.zeros(6))
  state = rule.init(x, n)
  update = jax.jit(rule.update)
  for k in range(6):
    grads = rng.normal(size=6) + _ball(rng, (n, 6), 0.99)
    if k >= 2:
      grads[4:, :] = bad
      grads[4, 1] = 0.0
    out, state = update(_split(grads.astype(np.float32)), state,
                        _split(0.1 * k * np.ones(6)))
    for leaf in jax.tree.leaves(out):
      assert np.all(np.isfinite(leaf))
    if k >= 2:
      np.testing.assert_array_equal(state.selected, [1, 1, 1, 1, 0, 0, 0])
      np.testing.assert_allclose(_join(out), grads[:4].mean(0), rtol=1e-5,
                                 atol=1e-6)


def test_one_huge_finite_row_does_not_destroy_honest_distances():
  """Rows share a large offset and differ by ~1e-3; one row is 1e12.

  Centring the Gram matrix on the mean would put the other rows ~1e11 from
  the centre and their distances would be lost to float32 rounding (all
  read as 0), so row 5, 10 V away from the others, would be kept.
  """
  n, v = 7, 1e-3
  rng = np.random.default_rng(1)
  rule = byzantine_sgd(v, threshold_a=1e9, threshold_b=1e9)
  grads = 10.0 + _ball(rng, (n, 6), 0.99 * v)
  grads[5] = 10.0 + 10 * v / np.sqrt(6)
  grads[6] = 1e12
  x = _split(np.zeros(6))
  out, state = jax.jit(rule.update)(_split(grads.astype(np.float32)),
                                    rule.init(x, n), x)
  np.testing.assert_array_equal(state.selected, [1, 1, 1, 1, 1, 0, 0])
  assert int(state.no_majority) == 0
  np.testing.assert_allclose(_join(out), grads[:5].mean(0), rtol=1e-6)


def test_even_number_of_workers_uses_the_midpoint_median():
  # One step at x_t - x_1 = 1: A_i = g_i. Loose V and T_B: only A decides.
  rule = byzantine_sgd(100.0, threshold_a=5.5, threshold_b=1e6,
                       filter_scale=1.0)
  state = rule.init(jnp.zeros(1), 4)
  stack = jnp.array([[0.0], [10.0], [20.0], [100.0]])
  _, state = jax.jit(rule.update)(stack, state, jnp.ones(1))
  # Midpoint 15 keeps 10 and 20; the lower (10) or upper (20) median would
  # keep only one of them.
  np.testing.assert_array_equal(state.selected, [0, 1, 1, 0])


def test_default_thresholds_are_the_papers():
  v, d, t, m, delta = 1.5, 2.0, 100, 7, 0.05
  t_a, t_b = paper_thresholds(v, d, t, m, delta)
  root = math.sqrt(t * math.log(16 * m * t / delta))
  assert t_a == pytest.approx(4 * d * v * root, rel=1e-12)
  assert t_b == pytest.approx(4 * v * root, rel=1e-12)
  # The rule with default thresholds behaves as with these explicit ones.
  rng = np.random.default_rng(2)
  default = byzantine_sgd(v, diameter=d, num_steps=t, delta=delta)
  explicit = byzantine_sgd(v, threshold_a=t_a, threshold_b=t_b)
  x = _split(np.zeros(6))
  s1, s2 = default.init(x, m), explicit.init(x, m)
  up1, up2 = jax.jit(default.update), jax.jit(explicit.update)
  for k in range(5):
    grads = _split(rng.normal(size=(m, 6)) * (1 + 30 * (k == 3)))
    xk = _split(rng.normal(size=6))
    o1, s1 = up1(grads, s1, xk)
    o2, s2 = up2(grads, s2, xk)
    for a, b in zip(jax.tree.leaves((o1, s1)), jax.tree.leaves((o2, s2))):
      np.testing.assert_array_equal(a, b)


def test_state_structure_is_stable_and_jit_compiles_once():
  rule = byzantine_sgd(1.0, diameter=5.0, num_steps=50)
  params = {"w": jnp.zeros((3, 2)), "c": jnp.zeros((2,), jnp.bfloat16)}
  state0 = rule.init(params, 4)
  assert state0.selected.dtype == jnp.float32 and state0.a.shape == (4,)
  assert state0.b["w"].shape == (4, 3, 2)
  assert state0.b["c"].dtype == jnp.float32  # accumulated in >= float32
  update = jax.jit(rule.update)
  state = state0
  rng = np.random.default_rng(3)
  for _ in range(3):
    grads = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=(4,) + p.shape), p.dtype),
        params)
    out, state = update(grads, state, params)
    assert jax.tree.map(lambda o: o.dtype, out) == jax.tree.map(
        lambda p: p.dtype, params)
  assert update._cache_size() == 1
  assert jax.tree.structure(state) == jax.tree.structure(state0)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state0)):
    assert a.shape == b.shape and a.dtype == b.dtype
  assert int(state.count) == 3
  # Thresholds and V may be traced (inject_hyperparams): one compilation.

  @jax.jit
  def traced(grads, state, v, t_a, t_b):
    rule = byzantine_sgd(v, threshold_a=t_a, threshold_b=t_b)
    return rule.update(grads, state, params)

  t_a, t_b = paper_thresholds(1.0, 5.0, 50, 4, 0.01)
  selections = []
  for scale in (1.0, 0.05):
    _, new_state = traced(grads, state0, 1.0, t_a * scale, t_b * scale)
    selections.append(np.asarray(new_state.selected))
  # scale 1 is the rule compiled above (default thresholds): same result.
  np.testing.assert_array_equal(selections[0],
                                update(grads, state0, params)[1].selected)
  assert traced._cache_size() == 1


def test_errors_name_their_values():
  with pytest.raises(ValueError, match=r"n > 2f.*n=6, f=3"):
    byzantine_sgd(1.0, threshold_a=1.0, threshold_b=1.0,
                  num_byzantine=3).init(jnp.zeros(2), 6)
  rule = byzantine_sgd(1.0, threshold_a=1.0, threshold_b=1.0,
                       num_byzantine=2)
  state = rule.init(jnp.zeros(2), 5)
  with pytest.raises(ValueError, match=r"n > 2f.*n=4, f=2"):
    rule.update(jnp.ones((4, 2)), state, jnp.zeros(2))
  with pytest.raises(ValueError, match=r"built for n=5.*n=6"):
    byzantine_sgd(1.0, threshold_a=1.0, threshold_b=1.0).update(
        jnp.ones((6, 2)), state, jnp.zeros(2))
  with pytest.raises(ValueError, match="params"):
    rule.update(jnp.ones((5, 2)), state)
  with pytest.raises(ValueError, match="tree structure"):
    rule.update(jnp.ones((5, 2)), state, {"x": jnp.zeros(2)})
  with pytest.raises(ValueError, match="num_steps"):
    byzantine_sgd(1.0, diameter=1.0)
  with pytest.raises(ValueError, match="diameter"):
    byzantine_sgd(1.0, num_steps=10)
  with pytest.raises(ValueError, match="V > 0"):
    byzantine_sgd(0.0, threshold_a=1.0, threshold_b=1.0)
  with pytest.raises(ValueError, match="delta"):
    byzantine_sgd(1.0, diameter=1.0, num_steps=10, delta=1.5)
  with pytest.raises(ValueError, match="filter_scale"):
    byzantine_sgd(1.0, threshold_a=1.0, threshold_b=1.0, filter_scale=0.5)
  with pytest.raises(ValueError, match="threshold_b > 0"):
    byzantine_sgd(1.0, threshold_a=1.0, threshold_b=-1.0)


def test_inside_aggregate_every_worker_gets_the_direct_result():
  n = 6
  rule = byzantine_sgd(1.0, threshold_a=5.0, threshold_b=3.0)
  tx = dist.aggregate(rule)
  rng = np.random.default_rng(4)
  x1 = _split(rng.normal(size=6))
  params = jax.tree.map(lambda p: jnp.stack([p] * n), x1)
  state = jax.vmap(tx.init, axis_name=dist.WORKERS)(params)
  update = jax.jit(jax.vmap(tx.update, axis_name=dist.WORKERS))
  direct_state = rule.init(x1, n)
  direct = jax.jit(rule.update)
  for k in range(4):
    grads = rng.normal(size=6) + _ball(rng, (n, 6), 0.99)
    grads[5] += 2.5 * (k + 1)
    xk = _split(rng.normal(size=6))
    out, state = update(_split(grads), state,
                        jax.tree.map(lambda p: jnp.stack([p] * n), xk))
    want, direct_state = direct(_split(grads), direct_state, xk)
    for o, w in zip(jax.tree.leaves(out), jax.tree.leaves(want)):
      np.testing.assert_allclose(o, np.broadcast_to(w, o.shape), rtol=1e-6)
    np.testing.assert_array_equal(
        state.rule_state.selected,
        np.broadcast_to(direct_state.selected, (n, n)))
  assert direct_state.selected[5] == 0.0
