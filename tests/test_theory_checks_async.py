"""The asynchronous theory checks: quick runs pass, negative controls fail."""

import functools
import json

import pytest

from distoptax.theory_checks import fedasync_staleness
from distoptax.theory_checks import harness
from distoptax.theory_checks import price_of_asynchrony

CHECKS = {
    "fedasync_staleness": fedasync_staleness,
    "price_of_asynchrony": price_of_asynchrony,
}

NEGATIVE = {
    "fedasync_staleness": dict(ignore_staleness=True, num_events=150),
    "price_of_asynchrony": dict(
        ignore_delay=True, taus=(0, 16),
        policies=("uniform", "adversarial_oldest"), num_steps=600),
}
"""Negative controls (smaller than quick where the control allows it)."""


@functools.cache
def _quick(name):
  return CHECKS[name].run(quick=True, progress=False)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_quick_run_passes_and_writes_json_and_png(name, tmp_path):
  result = _quick(name)
  assert result.verdict == harness.PASS, str(result)
  json_path, png_path = harness.write_result(result, tmp_path)
  with open(json_path) as f:
    saved = json.load(f)
  assert saved["claim"]["name"] == name
  assert [c["holds"] for c in saved["sub_claims"]] == [True, True]
  assert (tmp_path / f"{name}.png").stat().st_size > 1000
  assert png_path.endswith(".png")


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_negative_control_fails_claim_a(name):
  result = CHECKS[name].run(quick=True, progress=False, **NEGATIVE[name])
  assert result.verdict == harness.FAIL, str(result)
  holds = {c.key: c.holds for c in result.sub_claims}
  assert not holds["a"]


def test_fedasync_staleness_margins():
  """The figures behind the verdict, not only the verdict."""
  extras = _quick("fedasync_staleness").extras
  rise = extras["rise"]
  assert rise["constant"] > 0   # Staleness costs the constant weight.
  assert rise["polynomial"] < rise["constant"]
  assert rise["hinge"] < rise["constant"]


def test_price_of_asynchrony_floors_rise_with_tau():
  extras = _quick("price_of_asynchrony").extras
  for policy, floors in extras["floors"].items():
    assert floors[-1] > floors[0], policy
