"""Smoke test of ``bench step`` (the foundation's overhead benchmark)."""

import json
import subprocess
import sys

import numpy as np

from distoptax.experiments import benchmarks


def test_step_overhead_pairs_rounds_and_reports_their_median():
  result = benchmarks.step_overhead(num_workers=2, batch_size=4, hidden=(8,),
                                    repeats=2, rounds=3)
  ratios = result["round_ratios"]
  assert len(ratios) == 3 and all(r > 0 for r in ratios)
  assert result["ratio"] == np.median(ratios)
  for key in ("distributed_step_s", "plain_sgd_step_s", "per_worker_grads_s",
              "plain_grad_s", "grads_only_ratio"):
    assert np.isfinite(result[key]) and result[key] > 0
  assert result["num_workers"] == 2 and result["hidden"] == [8]


def test_command_line_prints_the_json_and_the_ratio():
  out = subprocess.run(
      [sys.executable, "-m", "distoptax.experiments.bench", "step",
       "--num_workers=2", "--batch_size=4", "--hidden=8", "--rounds=2",
       "--repeats=2"],
      capture_output=True, text=True, timeout=300, check=True)
  body, last = out.stdout.rsplit("}", 1)
  result = json.loads(body + "}")
  assert len(result["round_ratios"]) == 2
  assert last.strip().startswith(f"step: ratio {result['ratio']:.3f}")


def test_skipped_sync_cost_reports_every_variant_per_runtime():
  result = benchmarks.skipped_sync_cost(
      period=2, num_workers=8, batch_size=1, hidden=(4,), blocks=1, rounds=2)
  for runtime in ("simulate", "on_mesh"):
    r = result[runtime]
    for key in ("every_step_s", "periodic_step_s", "no_sync_step_s", "ratio",
                "predicted_ratio_if_skips_are_free"):
      assert np.isfinite(r[key]) and r[key] > 0
  assert result["period"] == 2 and result["num_devices"] == 8


def test_period_command_line_prints_both_runtimes():
  out = subprocess.run(
      [sys.executable, "-m", "distoptax.experiments.bench", "step",
       "--period=2", "--num_workers=8", "--batch_size=1", "--hidden=4",
       "--rounds=1"],
      capture_output=True, text=True, timeout=300, check=True)
  lines = out.stdout.strip().splitlines()
  assert lines[-2].startswith("simulate: period 2 / every step = ")
  assert lines[-1].startswith("on_mesh: period 2 / every step = ")
