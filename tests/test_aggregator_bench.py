"""Smoke test of the aggregator benchmark at a tiny size."""

import math

import jax
import numpy as np
import pytest

from distoptax.algorithms import aggregators as agg
from distoptax.algorithms.aggregators import order_stats
from distoptax.experiments import aggregator_bench as bench


@pytest.fixture(scope="module")
def tiny_run():
  return bench.run(num_workers=(8,), dims=(1000,), rounds=1, repeats=1,
                   byzfl="auto")


def test_rows_are_finite_and_cover_every_rule(tiny_run):
  rows, status = tiny_run
  assert status.startswith("ByzFL")
  by_rule = {row.rule: row for row in rows}
  for name in agg.AGGREGATORS:
    assert name in by_rule or f"{name}" in by_rule, name
  for name in agg.PREAGGREGATORS:
    assert f"pre:{name}" in by_rule, name
  for name in ("mean", "gram_xla", "gram_blocked", "bulyan_stage2"):
    assert name in by_rule
  for row in rows:
    assert (row.num_workers, row.dim, row.num_byzantine) == (8, 1000, 1)
    assert "not finite" not in row.note, row
    assert "failed" not in row.note, row
    # Every rule has a configuration at n = 8 and runs there.
    assert row.seconds is not None and math.isfinite(row.seconds), row
    assert row.seconds > 0
    assert row.ratio is not None and math.isfinite(row.ratio), row
    assert row.ratio > 0
    assert row.baseline in ("mean", "gram")
  for rule in bench.COORDINATEWISE:
    assert by_rule[rule].baseline == "mean"
  for rule in ("krum", "multi_krum", "pre:nearest_neighbor_mixing"):
    assert by_rule[rule].baseline == "gram"


def test_table_names_every_rule(tiny_run):
  rows, _ = tiny_run
  table = bench.format_table(rows)
  for name in list(agg.AGGREGATORS) + list(agg.PREAGGREGATORS):
    assert name in table, name
  lines = table.splitlines()
  assert lines[0].split()[:3] == ["n", "d", "rule"]
  assert len(lines) == len(rows) + 2


def test_byzfl_columns_filled_exactly_when_byzfl_loads(tiny_run):
  rows, status = tiny_run
  loaded = bench.load_byzfl()
  if isinstance(loaded, str):
    # ByzFL is an optional peer (not in the test extra): the run says why it
    # was not compared and leaves every ByzFL column empty.
    assert status == f"ByzFL comparison skipped: {loaded}"
    for row in rows:
      assert (row.byzfl_rule, row.byzfl_seconds, row.ours_over_byzfl) == (
          None, None, None), row
    return
  assert status.startswith("ByzFL 0.") and "torch" in status
  by_rule = {row.rule: row for row in rows}
  for rule, peer in [("median", "Median"), ("trimmed_mean", "TrMean"),
                     ("krum", "Krum"), ("mean", "Average")]:
    row = by_rule[rule]
    assert row.byzfl_rule == peer
    assert math.isfinite(row.byzfl_seconds) and row.byzfl_seconds > 0
    assert math.isfinite(row.ours_over_byzfl) and row.ours_over_byzfl > 0


def test_targets_report_missing_size(tiny_run):
  rows, _ = tiny_run
  checks = bench.check_targets(rows)
  assert [c.status for c in checks] == ["MISS"]
  assert "n=32, d=1e6" in checks[0].line
  # At the size that was run, one line per target, none hidden.
  checks = bench.check_targets(rows, (8, 1000))
  names = [c.name for c in checks]
  for rule in bench.COORDINATEWISE:
    assert f"{rule} <= 5x mean" in names
  assert "pre:nearest_neighbor_mixing <= 2x gram" in names
  for check in checks:
    assert check.line.startswith(check.status)
    assert check.status in ("PASS", "MISS")


def test_byzfl_off_rules_filter_and_bad_arguments():
  rows, status = bench.run(num_workers=(5,), dims=(64,), rounds=2,
                           repeats=2, byzfl="off", rules=["median"])
  assert "off" in status
  assert [row.rule for row in rows] == ["mean", "gram_xla", "gram_blocked",
                                        "median"]
  assert all(row.byzfl_seconds is None for row in rows)
  assert rows[-1].num_byzantine == 0 and math.isfinite(rows[-1].ratio)
  with pytest.raises(ValueError, match="byzfl must be"):
    bench.run(byzfl="maybe")
  with pytest.raises(ValueError, match="unknown rules"):
    bench.run(rules=["medain"])


@pytest.mark.parametrize("n", [65, 100, 128])
def test_median_and_trimmed_mean_networks_above_64_workers(n):
  # The median and the trimmed mean use the pruned network up to
  # SELECT_NETWORK_MAX_WORKERS (128) rows; compare with NumPy exactly.
  assert n <= order_stats.SELECT_NETWORK_MAX_WORKERS
  rng = np.random.default_rng(n)
  x = rng.standard_normal((n, 40)).astype(np.float32)
  x[3, :5] = np.nan
  x[7, 5:9] = np.inf
  x[9, 9:12] = -np.inf
  finite = np.where(np.isnan(x), np.inf, x)
  median = np.asarray(jax.jit(order_stats.median_over_workers)(x))
  np.testing.assert_array_equal(median,
                                np.median(finite, 0).astype(np.float32))
  f = (n - 3) // 4
  trimmed = np.asarray(
      jax.jit(lambda x: order_stats.trimmed_mean_over_workers(x, f))(x))
  want = np.sort(finite, 0)[f:n - f].astype(np.float64).mean(0)
  np.testing.assert_allclose(trimmed, want, rtol=1e-5, atol=1e-6)
