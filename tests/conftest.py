"""Test configuration: eight fake CPU devices, set before JAX starts."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""),
     "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest  # noqa: E402  (after the environment above is set)

from tests import theory_notebooks  # noqa: E402


@pytest.fixture(scope="session")
def notebooks(tmp_path_factory):
  """``notebooks(family) -> (executed notebook, results)``, run once each."""
  executed = {}

  def get(family):
    if family not in executed:
      executed[family] = theory_notebooks.execute(
          family, tmp_path_factory.mktemp(family))
    return executed[family]
  return get


@pytest.fixture(scope="session")
def quick(notebooks):
  """``quick(name)``: the check's quick result, computed by its notebook."""
  return lambda name: notebooks(theory_notebooks.FAMILY_OF[name])[1][name]
