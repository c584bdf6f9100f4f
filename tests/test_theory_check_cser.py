"""The CSER theory check: a short run end to end, and a judge that fails."""

import json

import numpy as np
import pytest

from distoptax.theory_checks import cser_mnist
from distoptax.theory_checks import harness


@pytest.fixture(scope="module")
def short_run():
  return cser_mnist.run(quick=True, seeds=1, num_steps=50, eval_every=25,
                        progress=False)


def test_a_short_run_reports_every_sub_claim_and_writes_files(short_run,
                                                              tmp_path):
  result = short_run
  assert [c.key for c in result.sub_claims] == list(
      cser_mnist.SUB_CLAIM_KEYS)
  assessed = [c.key for c in result.sub_claims if c.assessed]
  assert assessed == list(cser_mnist.QUICK_ASSESSED)
  ratios = result.extras["ratios"]
  # Measured from the recorded bytes: ~36.6x plus the blocks' headers.
  assert 32 <= ratios["cser"] <= 40
  assert abs(ratios["ef_sgd"] / ratios["cser"] - 1) <= 0.1
  assert result.sub_claims[0].holds
  assert result.y.shape == (1, 2)
  harness.write_result(result, tmp_path)
  saved = json.loads(next(tmp_path.glob("*.json")).read_text())
  assert saved["config"]["num_steps"] == 50
  assert list(tmp_path.glob("*.png"))


def _runs(final, steps=4, eval_every=2, sent=None):
  """Synthetic runs: constant accuracy curves and bytes per step."""
  sent = sent or {"sgd": 400, "cser": 10, "ef_sgd": 10, "no_reset": 10}
  return {m: {"curve": np.full((3, steps // eval_every), acc),
              "bytes": np.full((3, steps), sent[m], np.int64)}
          for m, acc in final.items()}


CONFIG = cser_mnist.Config(num_steps=4, eval_every=2, num_seeds=3)


def test_the_judge_passes_a_good_outcome():
  runs = _runs({"sgd": 0.95, "cser": 0.945, "ef_sgd": 0.5, "no_reset": 0.8})
  passed, figures = cser_mnist._judge(CONFIG, 400, runs)
  assert passed == [True, True, True, True]
  assert figures["ratio_cser"] == 40.0


@pytest.mark.parametrize("final,sent,failing", [
    ({"sgd": 0.95, "cser": 0.93, "ef_sgd": 0.5, "no_reset": 0.8}, None, 1),
    ({"sgd": 0.95, "cser": 0.95, "ef_sgd": 0.95, "no_reset": 0.8}, None, 2),
    ({"sgd": 0.95, "cser": 0.95, "ef_sgd": 0.5, "no_reset": 0.945}, None, 3),
    ({"sgd": 0.95, "cser": 0.95, "ef_sgd": 0.5, "no_reset": 0.8},
     {"sgd": 400, "cser": 20, "ef_sgd": 20, "no_reset": 20}, 0),
    ({"sgd": 0.95, "cser": 0.95, "ef_sgd": 0.5, "no_reset": 0.8},
     {"sgd": 400, "cser": 10, "ef_sgd": 13, "no_reset": 10}, 0),
])
def test_the_judge_rejects_a_bad_outcome(final, sent, failing):
  passed, _ = cser_mnist._judge(CONFIG, 400, _runs(final, sent=sent))
  assert not passed[failing]
  assert sum(passed) == 3


def test_bytes_to_target_counts_until_the_first_checkpoint_reached():
  run = {"curve": np.array([[0.5, 0.95, 0.99], [0.1, 0.2, 0.3]]),
         "bytes": np.array([[1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 1]])}
  out = cser_mnist.bytes_to_target(CONFIG, run)
  np.testing.assert_array_equal(out, [10.0, np.inf])


def test_an_unknown_method_is_refused():
  with pytest.raises(ValueError, match="unknown method 'sgdd'"):
    cser_mnist.transform(CONFIG, "sgdd")
