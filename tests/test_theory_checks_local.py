"""Theory checks of the local-SGD family: quick figures and negative controls.

The quick results are those the family notebook computed (session fixture
``quick``, ``tests/theory_notebooks.py``); each negative control runs once
more here. All tests share the family's xdist group, so that ``pytest -n 2
--dist loadgroup`` runs the notebook once.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax import distributed as dist
from distoptax.theory_checks import adacomm_wall_clock
from distoptax.theory_checks import harness
from distoptax.theory_checks import local_adaalter_mnist
from distoptax.theory_checks import local_sgd_error_floor
from distoptax.theory_checks import slsgd_attack
from tests import theory_notebooks

pytestmark = theory_notebooks.group("local")

CHECKS = (local_sgd_error_floor, adacomm_wall_clock, local_adaalter_mnist,
          slsgd_attack)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.NAME)
def test_check_declares_its_sub_claims(check):
  assert set(check.QUICK_ASSESSED) <= set(check.SUB_CLAIM_KEYS)
  assert callable(check.run) and callable(check.main)


def test_error_floor_quick_passes_and_matches_the_exact_prediction(quick):
  floor = quick("local_sgd_error_floor")
  assert floor.verdict == harness.PASS
  noise, drift = floor.sub_claims
  assert abs(noise.value + 1) <= 0.15 and abs(drift.value - 1) <= 0.2
  ratios = np.concatenate([floor.extras["noise_measured_over_predicted"],
                           floor.extras["drift_measured_over_predicted"]])
  assert np.all(np.abs(ratios - 1) < 0.1), ratios


def test_error_floor_broken_sync_fails_the_noise_slope():
  result = local_sgd_error_floor.run(quick=True, progress=False,
                                     broken_sync=True)
  assert result.failed
  noise, _ = result.sub_claims
  assert not noise.holds and abs(noise.value) < 0.3


def test_error_floor_refuses_a_period_of_one():
  with pytest.raises(ValueError, match="periods"):
    local_sgd_error_floor.run(quick=True, progress=False, periods=(1, 2))


def test_adacomm_quick_passes_with_the_trade_off(quick):
  adacomm = quick("adacomm_wall_clock")
  assert adacomm.verdict == harness.PASS
  ex = adacomm.extras
  assert ex["speedup"] >= 2
  assert np.all(np.diff(ex["floors"]) > 0)
  period = ex["adacomm_period"]
  assert period.max() <= 16 and period[-1] < period[0] <= 16
  # The fixed period 16 never reaches synchronous SGD's final loss.
  assert ex["speedup_over_sync_by_method"]["tau=16"] == 0


def test_adacomm_frozen_period_fails_the_speedup():
  result = adacomm_wall_clock.run(quick=True, progress=False,
                                  frozen_period=True)
  assert result.failed
  assert not result.sub_claims[0].holds
  assert np.all(result.extras["adacomm_period"] == 16)


def test_adaalter_quick_passes(quick):
  adaalter = quick("local_adaalter_mnist")
  assert adaalter.verdict == harness.PASS
  gap, fewer, faster = adaalter.sub_claims
  assert gap.value <= 1.02
  assert fewer.value == 4 and faster.value > 0
  assert adaalter.extras["syncs"]["sync_adaalter"] == 600


def test_adaalter_without_accumulator_averaging_is_far_worse(quick):
  adaalter = quick("local_adaalter_mnist")
  control = local_adaalter_mnist.run(quick=True, progress=False,
                                     average_accumulators=False)
  assert control.failed and not control.sub_claims[0].holds
  assert control.sub_claims[0].value > adaalter.sub_claims[0].value + 0.2


def test_slsgd_survives_while_fedavg_collapses(quick):
  slsgd = quick("slsgd_attack")
  assert slsgd.verdict == harness.PASS
  table = slsgd.extras["table"]
  assert table["slsgd"]["attacked"] >= table["slsgd"]["clean"] - 0.03
  assert table["fedavg"]["clean"] > 0.8
  assert table["fedavg"]["clean"] - table["fedavg"]["attacked"] >= 0.3


def test_slsgd_without_trimming_fails():
  result = slsgd_attack.run(quick=True, progress=False, num_trimmed=0)
  assert result.failed and not result.sub_claims[0].holds
  assert result.sub_claims[0].value > 0.3


def test_scaled_negative_model_sends_the_reversed_model():
  attack = slsgd_attack.scaled_negative_model(1, 2.0)
  x = jnp.array([1.0, -1.0])
  local = jnp.array([[3.0, 1.0], [2.0, 0.0]])   # Models w_i.

  def step(w):
    out, _ = attack.update(x - w, attack.init(x), x)
    return out
  sent = jax.vmap(step, axis_name=dist.WORKERS)(local)
  # Worker 0 sends the model -2 w_0, i.e. the pseudo-gradient x + 2 w_0.
  np.testing.assert_allclose(x - sent[0], -2.0 * local[0])
  np.testing.assert_allclose(sent[1], x - local[1])


@pytest.mark.parametrize("name", [c.NAME for c in CHECKS])
def test_results_write_json_and_png(name, quick, tmp_path):
  result = quick(name)
  json_path, png_path = harness.write_result(result, tmp_path)
  with open(json_path) as f:
    saved = json.load(f)
  assert saved["verdict"] == result.verdict
  assert len(saved["sub_claims"]) == len(result.sub_claims)
  with open(png_path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert result.claim.name in str(result)
