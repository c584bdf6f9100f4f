"""The async benchmark: exact ring-buffer memory, both timings, its verdicts."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import distributed as dist
from distoptax.experiments import async_bench

# The MLP 784 -> 128 -> 10 in float32 bytes, counted by hand.
MODEL_BYTES = (784 * 128 + 128 + 128 * 10 + 10) * 4


@pytest.fixture(scope="module")
def result():
  return async_bench.run(max_staleness=(0, 3), local_steps=2, batch_size=4,
                         rounds=1, repeats=2)


def test_memory_is_exactly_k_plus_one_models(result):
  assert [m["max_staleness"] for m in result["memory"]] == [0, 3]
  for m in result["memory"]:
    k = m["max_staleness"]
    assert m["model_bytes"] == MODEL_BYTES
    assert m["ring_buffer_bytes"] == (k + 1) * MODEL_BYTES
    assert m["server_state_copies"] == {".models": k + 1}
    assert m["runtime_state_copies"] == {".params": 1, ".opt_state.models":
                                         k + 1}
    assert m["state_bytes"] == (k + 2) * MODEL_BYTES + m["other_bytes"]
    assert 0 < m["other_bytes"] < 1024


def test_result_has_both_timings_and_the_ratio(result):
  times, ratios = result["times_s"], result["ratios"]
  assert set(times) == {"fedasync_K0", "fedasync_K3", "sync_round",
                        "local_sgd"}
  assert all(t > 0 for t in times.values())
  for k in (0, 3):
    ratio = ratios[f"fedasync_K{k}_over_sync_round"]
    assert ratio == result["round_ratios"][
        f"fedasync_K{k}_over_sync_round"][0]
    assert ratio == pytest.approx(times[f"fedasync_K{k}"]
                                  / times["sync_round"])
  assert set(result["step_temp_bytes"]) == {"fedasync_K0", "fedasync_K3",
                                            "sync_round"}


def test_main_prints_table_and_verdicts(result, monkeypatch, capsys):
  calls = []

  def fake_run(**kwargs):
    calls.append(kwargs)
    return result

  monkeypatch.setattr(async_bench, "run", fake_run)
  async_bench.main(["--quick", "--local_steps", "3"])
  out = capsys.readouterr().out
  assert calls == [{"num_workers": 8, **async_bench.QUICK,
                    "local_steps": 3}]
  assert re.search(rf"^K=3\s+model {MODEL_BYTES} B, ring buffer "
                   rf"{4 * MODEL_BYTES} B = 4x", out, re.M)
  assert len(re.findall(r"^PASS K=\d memory", out, re.M)) == 2
  assert len(re.findall(r"^(PASS|MISS) K=\d time: .* \d\.\d{3} ", out,
                        re.M)) == 2


def test_memory_check_misses_a_second_model_copy():
  """FedBuff's buffer is one more model-sized leaf: the target misses."""
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
  loss_fn = lambda p, b: jnp.sum((b @ p["w"] + p["b"]) ** 2)
  server = dist.fedbuff(1.0, 2, max_staleness=2)
  state = dist.simulate(dist.fedasync_clients(
      loss_fn, server, optax.sgd(0.1), buffer_size=2), 2).init(params)
  entry = async_bench._memory(state, params, 2)
  assert entry["server_state_copies"] == {".models": 3, ".buffer": 1}
  assert entry["ring_buffer_bytes"] == 3 * 8 * 4
  assert not async_bench._memory_ok(entry)
  lines = async_bench.check({"memory": [entry], "ratios": {
      "fedasync_K2_over_sync_round": 1.5}})
  assert lines[0].startswith("MISS K=2 memory")
  assert lines[1].startswith("MISS K=2 time")


def test_model_copies_needs_the_model_shape_and_dtype():
  model = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
  state = {"stack": {"w": jnp.zeros((4, 3, 2)), "b": jnp.zeros((4, 2))},
           "ints": {"w": jnp.zeros((3, 2), jnp.int8), "b": jnp.zeros(2)},
           "flat": jnp.zeros(8)}
  copies, other = async_bench.model_copies(state, model)
  assert copies == {"['stack']": 4}
  assert other == 6 + 2 * 4 + 8 * 4


def test_sync_round_is_h_steps_of_local_sgd():
  """The comparator computes what local_sgd(sgd, period=H) does in H steps."""
  n, h = 4, 3
  loss_fn = lambda w, b: 0.5 * jnp.sum((b[0] @ w - b[1]) ** 2)
  rng = np.random.default_rng(0)
  data = (jnp.asarray(rng.normal(size=(n, h, 5, 3)), jnp.float32),
          jnp.asarray(rng.normal(size=(n, h, 5)), jnp.float32))
  w0 = jnp.asarray([0.5, -1.0, 2.0])
  sync = dist.simulate(
      async_bench.sync_round_step(loss_fn, optax.sgd(0.05)), n)
  state, _ = sync.step(sync.init(w0), data)
  local = dist.simulate(dist.data_parallel(
      loss_fn, dist.local_sgd(optax.sgd(0.05), period=h)), n)
  local_state = local.init(w0)
  for step in range(h):
    local_state, _ = local.step(local_state,
                                jax.tree.map(lambda a: a[:, step], data))
  assert not np.allclose(state.params, w0)
  np.testing.assert_allclose(local_state.params,
                             np.broadcast_to(state.params, (n, 3)),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"local_steps": 0}, "local_steps must be an int >= 1; got 0"),
    ({"max_staleness": (4, -1)}, "max_staleness must hold ints >= 0; got -1"),
    ({"max_staleness": ()}, "at least one K"),
    ({"num_workers": 2.5}, "num_workers must be an int >= 1; got 2.5"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=re.escape(match)):
    async_bench.run(**kwargs)
