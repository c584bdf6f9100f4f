"""The collectives benchmark runs, its means agree, and it writes its plot."""

import os
import re

import pytest

from distoptax.experiments import collectives_bench


@pytest.mark.parametrize("runtime", sorted(collectives_bench.RUNTIMES))
def test_quick_run_prints_all_paths_ratios_and_verdicts(capsys, tmp_path,
                                                        runtime):
  png = os.path.join(tmp_path, "density.png")
  collectives_bench.main(["--quick", "--workers", "8", "16", "--plot", png,
                          "--runtime", runtime, "--dim", "4096"])
  out = capsys.readouterr().out
  assert f"runtime {runtime}" in out
  for path in collectives_bench.PATHS:
    assert len(re.findall(rf"^\s*\d+ {path}\s", out, re.M)) == 2
  assert "n=8: all_gather/sparse" in out and "n=16: dense/sparse" in out
  assert len(re.findall(r"^(PASS|MISS)  n=16 ", out, re.M)) == 3
  assert os.path.getsize(png) > 0


def test_paths_record_their_rounds():
  rows, encode = collectives_bench.run(workers=(8,), dim=4096, rounds=1,
                                       repeats=1)
  by = {r.path: r for r in rows}
  assert set(by) == set(collectives_bench.PATHS) and encode[8] > 0
  # Same mean, same fill; dense sends d float32 per worker in one
  # all-reduce, the all-gather 41 (int32, float32) pairs.
  assert len({r.fill for r in rows}) == 1
  assert by["dense"].handed_bytes == 4096 * 4
  assert by["all_gather"].handed_bytes == 41 * 8
  assert by["all_gather"].link_bytes == 7 * 41 * 8
  assert by["sparse"].handed_bytes > 0


def test_bad_arguments():
  with pytest.raises(ValueError, match="density"):
    collectives_bench.run(workers=(8,), dim=64, density=0.0)
  with pytest.raises(ValueError, match="unknown runtime 'tpu'"):
    collectives_bench.run(workers=(8,), dim=64, runtime="tpu")
  with pytest.raises(ValueError, match="do not divide"):
    collectives_bench.run(workers=(12,), dim=64, runtime="on_mesh")


def test_model_crossovers():
  c = collectives_bench.model_curves(dim=10**6, num_workers=32,
                                     latency=0.0)
  p = c["density"]
  ag = collectives_bench.crossover(p, c["all_gather"], c["dense"])
  split = collectives_bench.crossover(p, c["split_allgather"], c["dense"])
  assert 0.9 / 32 < ag < 1.1 / 32       # k/d = 1/n, 32-bit words.
  assert 0.45 < split < 0.55            # delta = 1/2.
