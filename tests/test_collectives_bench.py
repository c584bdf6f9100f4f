"""The collectives benchmark runs, its sums agree, and it writes its plot."""

import os
import re

from distoptax.experiments import collectives_bench


def test_quick_run_prints_all_paths_and_ratios(capsys, tmp_path):
  png = os.path.join(tmp_path, "density.png")
  collectives_bench.main(["--quick", "--workers", "4", "8", "--plot", png])
  out = capsys.readouterr().out
  for path in collectives_bench.PATHS:
    assert len(re.findall(rf"^\s*\d+ {path}\s", out, re.M)) == 2
  assert "n=8: all_gather/sparse" in out and "n=8: dense/sparse" in out
  assert os.path.getsize(png) > 0


def test_model_crossovers():
  c = collectives_bench.model_curves(dim=10**6, num_workers=32,
                                     latency=0.0)
  p = c["density"]
  ag = collectives_bench.crossover(p, c["all_gather"], c["dense"])
  split = collectives_bench.crossover(p, c["split_allgather"], c["dense"])
  assert 0.9 / 32 < ag < 1.1 / 32       # k/d = 1/n, 32-bit words.
  assert 0.45 < split < 0.55            # delta = 1/2.
