"""The BlueConnect scaling check: passes quick, and its controls can fail."""

import json

import numpy as np
import pytest

from distoptax.theory_checks import blueconnect_scaling
from distoptax.theory_checks import harness
from tests import theory_notebooks


pytestmark = theory_notebooks.group("communication")


def test_quick_run_passes_every_sub_claim(quick):
  quick = quick("blueconnect_scaling")
  assert quick.verdict == harness.PASS, str(quick)
  assert [c.key for c in quick.sub_claims] == list(
      blueconnect_scaling.SUB_CLAIM_KEYS)
  assert all(c.assessed for c in quick.sub_claims)
  sweep = quick.extras["sweep"]
  assert list(sweep["n"]) == [16, 64, 192]
  # The clock's figures are the model's, and the reduction shrinks towards
  # 1 - 1/g as hosts are added.
  np.testing.assert_allclose(sweep["bc"], sweep["model_bc"], rtol=1e-9)
  assert np.all(np.diff(sweep["reduction_bc"]) < 0)
  assert sweep["reduction_bc"][-1] > 1 - 1 / 8 - 0.05


def test_result_writes_json_and_png(quick, tmp_path):
  quick = quick("blueconnect_scaling")
  json_path, png_path = harness.write_result(quick, tmp_path)
  data = json.loads(open(json_path).read())
  assert data["verdict"] == "PASS" and data["measured"] == 7.0
  assert open(png_path, "rb").read(4) == b"\x89PNG"
  assert "192" in str(quick)


@pytest.mark.parametrize("overrides,failing", [
    # No hierarchy: intra-host links as slow as inter-host ones.
    ({"local_bandwidth": 12.5e9 / 8, "local_latency": 5e-6}, {"d", "e"}),
    # A latency-bound payload: the reduction (2(h-1)a2 + 2(g-1)a1 against
    # 2(n-1)a2) leaves the bandwidth-bound limit, and neither control
    # separates from it, since the order only moves bandwidth terms.
    ({"num_params": 1_000}, {"d", "f", "g"}),
])
def test_wrong_systems_fail_the_predicted_reduction(overrides, failing):
  result = blueconnect_scaling.run(quick=True, progress=False,
                                   hosts=(2, 24), **overrides)
  assert result.failed
  failed = {c.key for c in result.sub_claims if not c.holds}
  assert failing <= failed, str(result)
  assert {"a", "b", "c"}.isdisjoint(failed)
