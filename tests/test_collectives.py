"""Masked collectives and reduce_scatter: simulate equals on_mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax import worker_axis
from tests import helpers

NUM_WORKERS = 16


def _both_runtimes(per_worker, batch, num_workers=NUM_WORKERS):
  """``per_worker(row) -> dict`` run under simulate and on 8 devices."""
  step = dist.WorkerStep(init=lambda p: p,
                         update=lambda s, b: (s, per_worker(b)),
                         axis_name=dist.WORKERS)
  _, sim = dist.simulate(step, num_workers).step(jnp.zeros(num_workers),
                                                 batch)
  mesh = jax.make_mesh((8,), (dist.WORKERS,))
  _, shm = dist.on_mesh(step, mesh, num_workers).step(
      jnp.zeros(num_workers), batch)
  return sim, shm


def _data(seed=0, d=6):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(NUM_WORKERS, d)).astype(np.float32)
  w = rng.integers(0, 4, size=NUM_WORKERS).astype(np.float32)
  w[[1, 5]] = 0.0
  x[1] = np.nan  # A non-participant's garbage never travels.
  x[5] = np.inf
  return x, w


@pytest.mark.parametrize("num_workers", [8, 16])
def test_masked_psum_and_pmean_with_every_normalizer(num_workers):
  x, w = _data()
  x, w = x[:num_workers], w[:num_workers]

  def per_worker(b):
    xi, wi = b
    out = {"psum": worker_axis.psum(xi, weight=wi)}
    for z in worker_axis.NORMALIZERS:
      out[z] = worker_axis.pmean(xi, weight=wi, normalizer=z)
    return out

  present = w != 0
  total = (w[present, None] * x[present]).sum(0)
  expected = {"psum": total, "workers": total / num_workers,
              "participants": total / present.sum(), "weights": total / w.sum()}
  for out in _both_runtimes(per_worker, (x, w), num_workers):
    for name, value in expected.items():
      np.testing.assert_allclose(out[name],
                                 np.broadcast_to(value, out[name].shape),
                                 rtol=1e-5, err_msg=name)


def test_pmean_with_nobody_present_is_zero():
  x, _ = _data()
  out, _ = _both_runtimes(
      lambda b: {"m": worker_axis.pmean(b, weight=0.0,
                                        normalizer="participants")}, x)
  np.testing.assert_array_equal(out["m"], 0.0)


def test_masked_all_gather_zeroes_absent_rows():
  x, w = _data()

  def per_worker(b):
    xi, wi = b
    return {"rows": worker_axis.all_gather(xi, mask=wi != 0),
            "present": worker_axis.all_gather(wi != 0)}

  expected = np.where((w != 0)[:, None], x, 0.0)
  for out in _both_runtimes(per_worker, (x, w)):
    for i in range(NUM_WORKERS):
      np.testing.assert_array_equal(out["rows"][i], expected)
      np.testing.assert_array_equal(out["present"][i], w != 0)


@pytest.mark.parametrize("num_workers", [8, 16])
@pytest.mark.parametrize("weighted", [False, True])
def test_reduce_scatter_gives_each_worker_its_block(num_workers, weighted):
  rng = np.random.default_rng(3)
  rows = 2 * num_workers
  # Integer-valued data: every order of summation gives the same sum.
  x = rng.integers(-8, 8, size=(num_workers, rows, 3)).astype(np.float32)
  w = rng.integers(0, 3, size=num_workers).astype(np.float32)

  def per_worker(b):
    xi, wi = b
    return {"block": worker_axis.reduce_scatter(
        xi, weight=wi if weighted else None)}

  weights = w if weighted else np.ones(num_workers, np.float32)
  total = (weights[:, None, None] * x).sum(0)
  for out in _both_runtimes(per_worker, (x, w), num_workers):
    for i in range(num_workers):
      np.testing.assert_array_equal(out["block"][i],
                                    total[2 * i:2 * i + 2])


def test_reduce_scatter_on_a_mesh_is_one_psum_scatter():
  x = jnp.ones((NUM_WORKERS, 2 * NUM_WORKERS, 3))
  step = dist.WorkerStep(
      init=lambda p: p,
      update=lambda s, b: (s, {"b": worker_axis.reduce_scatter(b)}),
      axis_name=dist.WORKERS)
  rt = dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)), NUM_WORKERS)
  hlo = rt.lower(jnp.zeros(NUM_WORKERS), x).as_text()
  assert hlo.count("stablehlo.reduce_scatter") == 1
  assert "stablehlo.all_reduce" not in hlo


@pytest.mark.parametrize("call,match", [
    (lambda x: worker_axis.reduce_scatter(x[:3]), r"multiple.*\(8\).*\(3,\)"),
    (lambda x: worker_axis.psum(x, weight=jnp.ones(2)), r"scalar.*\(2,\)"),
    (lambda x: worker_axis.pmean(x, weight=1.0, normalizer="examples"),
     r"normalizer.*'examples'"),
])
def test_bad_arguments_are_refused(call, match):
  with pytest.raises(ValueError, match=match):
    jax.vmap(call, axis_name=dist.WORKERS)(jnp.ones((8, 16)))


MESHES = [(2, 4), (4, 2)]


def _tiered(mesh_shape, per_worker, batch, num_workers=NUM_WORKERS):
  """``per_worker`` under simulate and on a ("hosts", "local") mesh."""
  step = dist.WorkerStep(init=lambda p: p,
                         update=lambda s, b: (s, per_worker(b)),
                         axis_name=dist.WORKERS)
  _, sim = dist.simulate(step, num_workers).step(jnp.zeros(num_workers),
                                                 batch)
  mesh = jax.make_mesh(mesh_shape, ("hosts", "local"))
  _, shm = dist.on_mesh(step, mesh, num_workers).step(
      jnp.zeros(num_workers), batch)
  return sim, shm


@pytest.mark.parametrize("mesh_shape", MESHES)
@pytest.mark.parametrize("num_workers", [8, 16])
def test_tier_collectives_on_a_two_tier_mesh_equal_simulate(mesh_shape,
                                                            num_workers):
  hosts = mesh_shape[0]
  tiers = worker_axis.Tiers(("hosts", "local"),
                            (hosts, num_workers // hosts))
  rng = np.random.default_rng(0)
  x = rng.integers(-8, 8, size=(num_workers, 3)).astype(np.float32)

  def per_worker(b):
    return {
        "index": dist.worker_index(),
        "all": dist.psum(b),
        "gathered": dist.all_gather(b),
        "hosts": worker_axis.tier_psum(b, tiers, "hosts"),
        "local": worker_axis.tier_psum(b, tiers, "local"),
        "local_rows": worker_axis.tier_all_gather(b, tiers, "local"),
        "host_rows": worker_axis.tier_all_gather(b, tiers, "hosts"),
        "block": worker_axis.reduce_scatter(
            jnp.tile(b, (num_workers, 1))),
    }

  grid = x.reshape(tiers.sizes + (3,))
  sim, shm = _tiered(mesh_shape, per_worker, x, num_workers)
  for out in (sim, shm):
    np.testing.assert_array_equal(out["index"], np.arange(num_workers))
    for i in range(num_workers):
      h, l = divmod(i, tiers.sizes[1])
      np.testing.assert_array_equal(out["all"][i], x.sum(0))
      np.testing.assert_array_equal(out["gathered"][i], x)
      np.testing.assert_array_equal(out["local"][i], grid[h].sum(0))
      np.testing.assert_array_equal(out["hosts"][i], grid[:, l].sum(0))
      np.testing.assert_array_equal(out["local_rows"][i], grid[h])
      np.testing.assert_array_equal(out["host_rows"][i], grid[:, l])
      np.testing.assert_array_equal(out["block"][i], x.sum(0)[None])


def test_tiers_that_disagree_with_the_mesh_are_refused():
  wrong = worker_axis.Tiers(("hosts", "local"), (4, 2))
  with pytest.raises(ValueError, match="do not match the mesh"):
    _tiered((2, 4), lambda b: {"s": worker_axis.tier_psum(b, wrong, "hosts")},
            jnp.ones((8, 2)), 8)
  with pytest.raises(ValueError, match=r"unknown tier 'racks'"):
    _tiered((2, 4), lambda b: {"s": worker_axis.tier_psum(
        b, worker_axis.Tiers(("hosts", "local"), (2, 4)), "racks")},
            jnp.ones((8, 2)), 8)
  with pytest.raises(ValueError, match="product"):
    jax.vmap(lambda b: worker_axis.tier_psum(
        b, worker_axis.Tiers(("a", "b"), (3, 3)), "a"),
             axis_name=dist.WORKERS)(jnp.ones((8, 2)))


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_training_on_a_two_tier_mesh_equals_simulate(mesh_shape):
  tx = optax.chain(dist.aggregate(alg.aggregators.krum(num_byzantine=2)),
                   optax.sgd(0.1))
  step = dist.data_parallel(helpers.mlp_loss, tx)
  mesh = jax.make_mesh(mesh_shape, ("hosts", "local"))
  states = []
  for rt in (dist.simulate(step, 16), dist.on_mesh(step, mesh, 16)):
    state = rt.init(helpers.mlp_params(jax.random.key(0)))
    for t in range(3):
      state, _ = rt.step(state, helpers.worker_batches(t, 16, 4))
    states.append(state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7), *states)
