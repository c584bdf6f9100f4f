"""Smoke test of ``bench compressors`` on a small vector."""

import math
import subprocess
import sys

from distoptax.algorithms import compressors
from distoptax.experiments import compressor_bench


def test_every_compressor_is_benchmarked_with_finite_ratios():
  assert set(compressor_bench.SETTINGS) == set(compressors.COMPRESSORS)
  rows = compressor_bench.run(size=4096, rounds=1, repeats=1)
  assert [r.name for r in rows] == sorted(compressors.COMPRESSORS)
  for r in rows:
    assert math.isfinite(r.ratio_to_copy) and r.ratio_to_copy > 0
    assert r.wire_ratio > 0
  by_name = {r.name: r for r in rows}
  assert by_name["identity"].wire_ratio == 1.0
  assert by_name["float16"].wire_ratio == 2.0
  assert by_name["three_lc"].coded_ratio > by_name["three_lc"].wire_ratio
  lines = compressor_bench.check_targets(rows)
  assert len(lines) == len(compressor_bench.TARGETS)


def test_command_line_prints_the_table_and_targets():
  out = subprocess.run(
      [sys.executable, "-m", "distoptax.experiments.bench", "compressors",
       "--dims=4096", "--rounds=1", "--repeats=1", "--rules=qsgd,top_k"],
      capture_output=True, text=True, timeout=300, check=True)
  assert "qsgd" in out.stdout and "top_k" in out.stdout
  assert "x copy: " in out.stdout
