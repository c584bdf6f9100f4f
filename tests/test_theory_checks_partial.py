"""The partial-collective theory checks at a tiny budget: plumbing, controls.

The quick and full budgets (``python -m distoptax.theory_checks.<name>
[--quick]``) judge the claims; these tests run each check for a few seconds
and pin what must hold at any budget: the negative controls come out as
controls, an impossible threshold fails the check, and the result writes.
"""

import json

import numpy as np
import pytest

from distoptax.theory_checks import eager_sgd_imbalance
from distoptax.theory_checks import harness
from distoptax.theory_checks import unreliable_networks


def test_eager_check_control_and_a_failing_threshold(tmp_path):
  result = eager_sgd_imbalance.run(
      quick=True, seeds=1, progress=False, num_rounds=100, smooth=1,
      min_speedup=10.0)
  verdicts = {c.key: c for c in result.sub_claims}
  # Without imbalance every worker is ready every round: the same run.
  assert result.extras["control_speedup"][0] == 1.0
  assert verdicts["d"].holds
  # Imbalance makes rounds shorter; a 10x threshold must be rejected.
  assert result.extras["step_speedup"][0] > 1.3
  assert not verdicts["a"].holds and result.verdict == harness.FAIL
  harness.write_result(result, tmp_path)
  saved = json.loads((tmp_path / "eager_sgd_imbalance.json").read_text())
  assert saved["config"]["min_speedup"] == 10.0
  assert (tmp_path / "eager_sgd_imbalance.png").exists()


def test_rps_check_control_and_a_failing_threshold():
  result = unreliable_networks.run(
      quick=True, seeds=1, progress=False, num_workers=(4, 8),
      num_steps=60, eval_last=2, max_accuracy_loss=-1.0)
  verdicts = {c.key: c for c in result.sub_claims}
  assert not verdicts["c"].holds and result.verdict == harness.FAIL
  table = result.extras["loss_accuracy"]
  # No communication on label-skewed shards is far worse than p = 0.
  assert (table["skewed n=8 p=0.0"][1] - table["skewed n=8 p=1.0"][1]
          > 0.05)
  assert np.all(np.isfinite(result.y))


def test_rps_check_refuses_a_sweep_without_its_probabilities():
  with pytest.raises(ValueError, match="must hold 0.5"):
    unreliable_networks.run(quick=True, progress=False,
                            drop_probabilities=(0.0, 0.1))
