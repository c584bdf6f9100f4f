"""Attacks: formulas, honest pass-through, masks, randomness, validation."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax import worker_axis
from distoptax.algorithms.attacks import base
from distoptax.algorithms.attacks import omniscient
from distoptax.algorithms.attacks import simple
from tests import helpers

FACTORIES = {
    "a_little_is_enough": omniscient.a_little_is_enough,
    "gaussian": simple.gaussian,
    "inner_product_manipulation": omniscient.inner_product_manipulation,
    "mimic": omniscient.mimic,
    "non_finite": simple.non_finite,
    "sign_flip": simple.sign_flip,
    "zero": simple.zero,
}
NAMES = sorted(FACTORIES)


def _grads(seed, n, shapes=(("w", (3, 2)), ("b", (2,)))):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.normal(size=(n,) + s), jnp.float32)
          for k, s in shapes}


def _init(tx, grads):
  return jax.vmap(tx.init, axis_name=dist.WORKERS)(grads)


def _apply(tx, grads, state=None):
  state = _init(tx, grads) if state is None else state
  return jax.jit(jax.vmap(lambda g, s: tx.update(g, s),
                          axis_name=dist.WORKERS))(grads, state)


def _bits(x):
  return np.asarray(x).view(np.uint32)


def _rows(tree, rows):
  return jax.tree.map(lambda x: np.asarray(x)[rows], tree)


# -- Contract shared by every attack ---------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mask", [None, (False, True, False, True, False)])
def test_honest_outputs_are_bitwise_unchanged(name, mask):
  n = 5
  grads = _grads(0, n)
  tx = FACTORIES[name](None if mask else 2, byzantine_mask=mask)
  out, _ = _apply(tx, grads)
  byz = np.arange(n) < 2 if mask is None else np.asarray(mask)
  for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
    np.testing.assert_array_equal(_bits(o[~byz]), _bits(g[~byz]))
    assert not np.array_equal(_bits(o[byz]), _bits(g[byz])), name
    assert o.dtype == g.dtype and o.shape == g.shape


@pytest.mark.parametrize("name", NAMES)
def test_every_attack_changes_the_mean_aggregate(name):
  n = 6
  grads = _grads(1, n)
  clean = optax.chain(dist.aggregate(alg.aggregators.mean()))
  attacked = optax.chain(FACTORIES[name](2),
                         dist.aggregate(alg.aggregators.mean()))
  ref, _ = _apply(clean, grads)
  out, _ = _apply(attacked, grads)
  for o, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    o, r = np.asarray(o), np.asarray(r)
    np.testing.assert_array_equal(o, np.broadcast_to(o[:1], o.shape))
    if name == "non_finite":
      assert np.all(np.isnan(o)), "NaN from 2 workers must reach the mean"
    else:
      assert np.all(np.isfinite(o))
      assert np.abs(o - r).max() > 1e-3, f"{name} left the mean unchanged"


@pytest.mark.parametrize("name", NAMES)
def test_zero_byzantine_equals_no_attack(name):
  n = 4
  grads = _grads(2, n)
  clean = dist.aggregate(alg.aggregators.mean())
  attacked = optax.chain(FACTORIES[name](0), clean)
  ref, _ = _apply(clean, grads)
  out, _ = _apply(attacked, grads)
  alone, _ = _apply(FACTORIES[name](0), grads)
  for o, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(_bits(o), _bits(r))
  for a, g in zip(jax.tree.leaves(alone), jax.tree.leaves(grads)):
    np.testing.assert_array_equal(_bits(a), _bits(g))


@pytest.mark.parametrize("name", NAMES)
def test_jits_once_ignores_extra_args_and_keeps_state_shape(name):
  n = 4
  tx = FACTORIES[name](1)
  update = jax.jit(jax.vmap(
      lambda g, s, v: tx.update(g, s, None, value=v, unknown_arg=3),
      axis_name=dist.WORKERS))
  state0 = _init(tx, _grads(0, n))
  state = state0
  for seed in range(3):
    _, state = update(_grads(seed, n), state, jnp.ones(n) * seed)
  assert update._cache_size() == 1
  assert jax.tree.structure(state) == jax.tree.structure(state0)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state0)):
    assert a.shape == b.shape and a.dtype == b.dtype
  helpers.assert_replicated(state)


@pytest.mark.parametrize("name", NAMES)
def test_explicit_mask_selects_exactly_those_workers(name):
  mask = (True, False, False, True, False, True)
  grads = _grads(3, len(mask))
  out, _ = _apply(FACTORIES[name](byzantine_mask=mask), grads)
  for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
    changed = np.any(_bits(o) != _bits(g), axis=tuple(range(1, o.ndim)))
    np.testing.assert_array_equal(changed, mask)


@pytest.mark.parametrize("name", NAMES)
def test_validation_names_n_and_f(name):
  factory = FACTORIES[name]
  grads = _grads(0, 4)
  with pytest.raises(ValueError, match=r"0 <= f < n; got n=4, f=4"):
    _init(factory(4), grads)
  with pytest.raises(ValueError, match=r"got f=-1"):
    factory(-1)
  with pytest.raises(ValueError, match=r"got f=1.5"):
    factory(1.5)
  with pytest.raises(ValueError, match=r"needs num_byzantine or"):
    factory()
  with pytest.raises(ValueError, match=r"length 3 but there are n=4"):
    _init(factory(byzantine_mask=(True, False, False)), grads)
  with pytest.raises(ValueError, match=r"num_byzantine=2 disagrees"):
    factory(2, byzantine_mask=(True, False, False, False))
  with pytest.raises(ValueError, match=r"booleans"):
    factory(byzantine_mask=(1, 0, 0, 0))
  # The check also runs when update is traced without init (another n).
  tx = factory(3)
  state = _init(tx, _grads(0, 8))
  with pytest.raises(ValueError, match=r"got n=3, f=3"):
    jax.vmap(lambda g, s: tx.update(g, s), axis_name=dist.WORKERS)(
        _grads(0, 3), jax.tree.map(lambda s: s[:3], state))


def test_registry_names_the_factories():
  attacks = importlib.import_module("distoptax.algorithms.attacks")
  assert dict(attacks.ATTACKS) == FACTORIES


def test_omniscient_gather_is_not_counted_as_traffic():
  n = 4
  grads = _grads(4, n)
  clean = dist.aggregate(alg.aggregators.mean())
  attacked = optax.chain(omniscient.a_little_is_enough(1), clean)
  _, s_clean = _apply(clean, grads)
  _, s_attacked = _apply(attacked, grads)
  a, = dist.find_comm_stats(s_attacked)
  c, = dist.find_comm_stats(s_clean)
  assert dist.total_bytes(a) == dist.total_bytes(c) > 0


# -- Formulas ---------------------------------------------------------------


def test_sign_flip_formula():
  grads = _grads(5, 4)
  out, _ = _apply(simple.sign_flip(2, scale=3.0), grads)
  for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
    np.testing.assert_array_equal(o[:2], -3.0 * np.asarray(g[:2]))


def test_ipm_is_minus_epsilon_times_honest_mean_exactly():
  # Integer inputs: the honest mean over 4 rows and -0.5 * it are exact.
  rng = np.random.default_rng(6)
  g = jnp.asarray(rng.integers(-50, 50, size=(5, 7)), jnp.float32)
  out, _ = _apply(omniscient.inner_product_manipulation(1, epsilon=0.5), g)
  expected = -0.5 * (np.asarray(g[1:], np.float64).sum(0) / 4)
  np.testing.assert_array_equal(np.asarray(out[0], np.float64), expected)
  # Random floats and a scattered mask: within float32 rounding of the
  # float64 reference (a wrong epsilon or the full mean would be far off).
  mask = (False, True, False, False, True, False, False)
  grads = _grads(7, len(mask))
  out, _ = _apply(omniscient.inner_product_manipulation(
      byzantine_mask=mask, epsilon=0.1), grads)
  honest = ~np.asarray(mask)
  for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
    ref = -0.1 * np.asarray(g, np.float64)[honest].mean(0)
    for row in np.flatnonzero(mask):
      np.testing.assert_allclose(o[row], ref, rtol=1e-6, atol=1e-7)


def test_alie_z_matches_the_papers_formula_and_scipy():
  n, f = 50, 24
  s = int(np.floor(n / 2 + 1)) - f
  assert s == 2
  np.testing.assert_allclose(omniscient.alie_z(n, f),
                             stats.norm.ppf((n - s) / n), rtol=1e-12)
  np.testing.assert_allclose(omniscient.alie_z(n, f), 1.750686, atol=1e-6)
  # Garfield's hard-coded 1.035 for n=20, f=8 (s=3) is the paper's formula.
  np.testing.assert_allclose(omniscient.alie_z(20, 8), 1.035, atol=2e-3)
  # The epfml/Blades convention, including its negative z.
  for n, f, z in [(20, 8, 0.6745), (25, 5, 0.2533), (10, 1, -0.1397)]:
    s = int(np.floor(n / 2 + 1)) - f
    np.testing.assert_allclose(
        omniscient.alie_z(n, f, convention="epfml"),
        stats.norm.ppf((n - f - s) / (n - f)), rtol=1e-12)
    np.testing.assert_allclose(omniscient.alie_z(n, f, convention="epfml"),
                               z, atol=1e-4)
  np.testing.assert_allclose(omniscient.alie_z(25, 5), 0.4677, atol=1e-4)
  with pytest.raises(ValueError, match=r"n=6, f=4, s=0"):
    omniscient.alie_z(6, 4)
  with pytest.raises(ValueError, match=r"convention"):
    omniscient.alie_z(6, 1, convention="blades")


def _alie_reference(g, byz, z):
  h = np.asarray(g, np.float64)[~byz]
  return h.mean(0) - z * h.std(0, ddof=0)


def test_alie_output_is_mean_minus_z_std_of_honest_workers():
  n, f = 50, 24
  grads = _grads(8, n, shapes=(("w", (4, 3)), ("b", (5,))))
  out, _ = _apply(omniscient.a_little_is_enough(f), grads)
  z = stats.norm.ppf((n - 2) / n)
  byz = np.arange(n) < f
  for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
    ref = _alie_reference(g, byz, z)
    for row in range(f):
      # rtol rejects ddof=1 (a factor sqrt(26/25) = 1.019 on the std).
      np.testing.assert_allclose(o[row], ref, rtol=2e-5, atol=2e-6)


def test_alie_explicit_z_and_mask_and_one_honest_worker():
  mask = (True, True, False, True, False)
  grads = _grads(9, len(mask))
  byz = np.asarray(mask)
  for z in (1.5, -0.75):  # Negative z gives the "mean + z std" convention.
    out, _ = _apply(omniscient.a_little_is_enough(byzantine_mask=mask, z=z),
                    grads)
    for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
      ref = _alie_reference(g, byz, z)
      for row in np.flatnonzero(byz):
        np.testing.assert_allclose(o[row], ref, rtol=1e-5, atol=1e-6)
  # One honest worker: std 0 (ddof=0), the attack sends its update.
  grads = _grads(10, 3)
  out, _ = _apply(omniscient.a_little_is_enough(2, z=1.0), grads)
  for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
    np.testing.assert_allclose(o[:2], np.broadcast_to(g[2], o[:2].shape))


def test_alie_formula_precondition_checked_at_init():
  grads = _grads(0, 6)
  with pytest.raises(ValueError, match=r"n=6, f=4, s=0.*pass z explicitly"):
    _init(omniscient.a_little_is_enough(4), grads)
  _init(omniscient.a_little_is_enough(4, z=1.0), grads)  # z given: fine.


def test_mimic_copies_the_first_honest_worker_or_the_target():
  mask = (True, False, True, False, False)
  grads = _grads(11, len(mask))
  out, _ = _apply(omniscient.mimic(byzantine_mask=mask), grads)
  for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
    for row in (0, 2):
      np.testing.assert_array_equal(_bits(o[row]), _bits(g[1]))
  out, _ = _apply(omniscient.mimic(2, target=4), grads)
  for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
    for row in (0, 1):
      np.testing.assert_array_equal(_bits(o[row]), _bits(g[4]))
  with pytest.raises(ValueError, match=r"target=1 with n=5, f=2"):
    _init(omniscient.mimic(2, target=1), grads)
  with pytest.raises(ValueError, match=r"target=5 with n=5"):
    _init(omniscient.mimic(2, target=5), grads)
  with pytest.raises(ValueError, match=r"worker index"):
    omniscient.mimic(2, target=1.0)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_fills_every_coordinate(value):
  grads = _grads(12, 4)
  out, _ = _apply(simple.non_finite(1, value=value), grads)
  for o in jax.tree.leaves(out):
    np.testing.assert_array_equal(o[0], np.full(o[0].shape, float(value)))
    assert np.all(np.isfinite(o[1:]))
  with pytest.raises(ValueError, match=r"one of \['-inf', 'inf', 'nan'\]"):
    simple.non_finite(1, value="huge")


def test_zero_sends_zeros():
  grads = _grads(13, 3)
  out, _ = _apply(simple.zero(2), grads)
  for o in jax.tree.leaves(out):
    np.testing.assert_array_equal(o[:2], 0.0)


# -- Randomness of the Gaussian attack ---------------------------------------


def test_gaussian_noise_has_the_requested_mean_and_std():
  n, d = 4, 50_000
  g = {"x": jnp.zeros((n, d), jnp.float32)}
  out, _ = _apply(simple.gaussian(3, std=3.0, mean=0.5), g)
  x = np.asarray(out["x"], np.float64)
  for row in range(3):
    # Sample std of 5e4 normals: relative s.e. 0.3%; a factor-2 error (or
    # std confused with variance, 9) is rejected by a wide margin.
    np.testing.assert_allclose(x[row].std(), 3.0, rtol=0.02)
    np.testing.assert_allclose(x[row].mean(), 0.5, atol=0.06)
  # Different workers draw independent noise.
  assert abs(np.corrcoef(x[0], x[1])[0, 1]) < 0.03
  np.testing.assert_array_equal(x[3], 0.0)


def test_gaussian_default_std_is_zenos_200():
  g = {"x": jnp.zeros((2, 40_000), jnp.float32)}
  out, _ = _apply(simple.gaussian(1), g)
  np.testing.assert_allclose(np.asarray(out["x"][0]).std(), 200.0, rtol=0.02)


def test_gaussian_key_is_replicated_split_each_step_and_seeded():
  n = 3
  g = {"x": jnp.zeros((n, 64), jnp.float32)}

  def run(seed, steps):
    tx = simple.gaussian(2, std=1.0, seed=seed)
    update = jax.jit(jax.vmap(lambda g, s: tx.update(g, s),
                              axis_name=dist.WORKERS))
    state, outs = _init(tx, g), []
    helpers.assert_replicated(state)
    for _ in range(steps):
      out, state = update(g, state)
      helpers.assert_replicated(state)
      outs.append(np.asarray(out["x"]))
    return outs

  out1, out2 = run(7, 2)
  assert not np.array_equal(out1[0], out2[0])
  np.testing.assert_array_equal(run(7, 1)[0], out1)
  assert not np.array_equal(run(8, 1)[0][0], out1[0])


def test_gaussian_keeps_each_leaf_dtype():
  g = {"a": jnp.zeros((2, 8), jnp.bfloat16), "b": jnp.zeros((2, 3))}
  out, _ = _apply(simple.gaussian(1, std=1.0), g)
  assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float32
  assert np.all(np.asarray(out["a"][0], np.float32) != 0)
  np.testing.assert_array_equal(np.asarray(out["a"][1], np.float32), 0)


# -- Runtimes ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["a_little_is_enough", "gaussian", "mimic"])
def test_simulate_equals_on_mesh_with_an_attack(name):
  assert jax.device_count() == 8, "conftest must provide 8 CPU devices"
  num_workers = 16
  # std=1 for the noise: with 200 the sums differ by float32 rounding of the
  # large noise (same draws, different summation order).
  attack = (simple.gaussian(5, std=1.0) if name == "gaussian"
            else FACTORIES[name](5))
  tx = optax.chain(attack,
                   dist.aggregate(alg.aggregators.mean()), optax.sgd(0.05))
  step = dist.data_parallel(helpers.mlp_loss, tx)
  params = helpers.mlp_params(jax.random.key(1))
  mesh = jax.make_mesh((8,), (dist.WORKERS,))
  states = []
  for runtime in (dist.simulate(step, num_workers),
                  dist.on_mesh(step, mesh, num_workers)):
    state = runtime.init(params)
    for t in range(2):
      state, _ = runtime.step(state, helpers.worker_batches(t, num_workers, 4))
    states.append(state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-6, atol=1e-7), *states)
  clean = dist.simulate(dist.data_parallel(
      helpers.mlp_loss, optax.chain(dist.aggregate(alg.aggregators.mean()),
                                    optax.sgd(0.05))), num_workers)
  state = clean.init(params)
  for t in range(2):
    state, _ = clean.step(state, helpers.worker_batches(t, num_workers, 4))
  assert not np.allclose(state.params["w1"], states[0].params["w1"])


def test_context_helpers():
  ctx = base.AttackContext(5, np.array([True, False, True, False, False]),
                           jnp.int32(0), dist.WORKERS)
  assert ctx.num_byzantine == 2
  np.testing.assert_array_equal(ctx.honest_indices, [1, 3, 4])


def test_gaussian_attack_and_aggregate_with_one_seed_draw_different_keys():
  attack = alg.attacks.gaussian(1, seed=0)
  agg = dist.aggregate(alg.aggregators.mean(), seed=0)

  def keys(g):
    return attack.init(g).key, agg.init(g).key

  attack_key, agg_key = jax.vmap(keys, axis_name=dist.WORKERS)(
      jnp.ones((3, 4)))
  assert not np.array_equal(attack_key[0], agg_key[0])
  np.testing.assert_array_equal(
      attack_key[0],
      worker_axis.transform_key(0, "distoptax.algorithms.attacks.gaussian"))
