"""Theory-check harness and the registered checks (quick mode, CI-sized)."""

import dataclasses
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax import theory_checks
from distoptax.algorithms.compressors import threelc
from distoptax.theory_checks import byzantine_sgd_rate
from distoptax.theory_checks import fall_of_empires
from distoptax.theory_checks import harness
from distoptax.theory_checks import minibatch_sgd
from distoptax.theory_checks import qsgd_variance
from distoptax.theory_checks import run_all
from distoptax.theory_checks import threelc_mnist

# Checks whose quick run is too short for every claim (see the check's
# docstring): the quick test asserts the pipeline and the claims that need no
# trained model; the claims are judged on the full run.
_QUICK_PIPELINE_ONLY = ("fall_of_empires",)


@pytest.fixture(scope="module")
def quick_results():
  return {name: run(quick=True, seeds=None)
          for name, run in theory_checks.CHECKS.items()}


def _with_expected(result, expected):
  return dataclasses.replace(
      result, claim=dataclasses.replace(result.claim, expected=expected))


def test_registry_lists_minibatch_sgd():
  assert theory_checks.CHECKS["minibatch_sgd"] is minibatch_sgd.run
  for name, run in theory_checks.CHECKS.items():
    assert run.__module__ == f"distoptax.theory_checks.{name}"


@pytest.mark.parametrize("name", sorted(theory_checks.CHECKS))
def test_every_check_passes_in_quick_mode(quick_results, name):
  result = quick_results[name]
  assert result.claim.name == name
  if name not in _QUICK_PIPELINE_ONLY:
    assert result.passed, harness.report(result)
  assert result.y.shape[0] == 3  # Quick mode: 3 seeds.
  assert result.ci[0] <= result.measured <= result.ci[1]


def test_minibatch_sgd_quick_slope_and_floor(quick_results):
  result = quick_results["minibatch_sgd"]
  assert abs(result.measured + 1.0) < 0.1
  # The floor agrees with the stationary-variance prediction.
  np.testing.assert_allclose(
      result.extras["measured_over_predicted"], 1.0, atol=0.15)
  assert result.config["quick"] and result.config["num_seeds"] == 3


def test_byzantine_sgd_rate_quick_sub_claims_and_predictions(quick_results):
  result = quick_results["byzantine_sgd_rate"]
  assert [c["passed"] for c in result.extras["sub_claims"]] == [True] * 3
  assert result.measured == 3.0
  # (a) and (b) agree with the exact expectations V^2/(2Tm), alpha^2 d^2/2.
  np.testing.assert_allclose(
      result.extras["workers"]["measured_over_predicted"], 1.0, atol=0.15)
  np.testing.assert_allclose(
      result.extras["alpha"]["measured_over_predicted"], 1.0, atol=0.1)
  contrast = result.extras["contrast"]
  assert contrast["ratio_filter_over_mean"] == pytest.approx(
      contrast["predicted_ratio"], rel=0.25)
  assert result.extras["max_travel"] <= result.extras["diameter"]


def test_byzantine_sgd_rate_bias_beyond_the_filter_radius_is_removed():
  # (b) sizes the bias at 0.9 of the filter's B radius and the attackers are
  # kept (quick run above); 1.2 times the radius is crossed before step T,
  # the attackers are removed and (b) would fail.
  config = dataclasses.replace(byzantine_sgd_rate.QUICK, bias_fraction=1.2,
                               num_byzantine=(4, 9))
  problem = byzantine_sgd_rate.make_problem(config)
  alpha = byzantine_sgd_rate.sweep_alpha(config, problem)
  np.testing.assert_array_equal(alpha["kept_byzantine"], 0.0)
  np.testing.assert_array_equal(alpha["removed_honest"], 0)


def test_byzantine_sgd_rate_tiny_thresholds_remove_honest_workers():
  # With thresholds 50 times below the paper's, (a)'s honest workers drift
  # out of the B radius and are removed: (a) would fail.
  config = dataclasses.replace(byzantine_sgd_rate.QUICK, threshold_scale=0.02,
                               num_workers=(4,), replicas=1)
  problem = byzantine_sgd_rate.make_problem(config)
  workers = byzantine_sgd_rate.sweep_workers(config, problem)
  assert workers["removed"][0] > 0


def test_fall_of_empires_quick_table_is_complete(quick_results):
  result = quick_results["fall_of_empires"]
  labels = ["none", "ipm eps=0.1", "ipm eps=10"]
  table = result.extras["table"]
  assert list(table) == list(fall_of_empires.RULES)
  for row in table.values():
    assert list(row) == labels
    assert all(0.0 <= v <= 1.0 for v in row.values())
  assert result.y.shape == (3, len(labels) * len(fall_of_empires.RULES))
  assert len(result.extras["pairs"]) == result.y.shape[1]
  passed = [c["passed"] for c in result.extras["sub_claims"]]
  assert len(passed) == 5
  # No trained model needed: Krum at eps = 0.1 and the mean at eps = 10 are
  # at chance from the first steps; Krum picks a Byzantine vector every step.
  assert passed[0] and passed[2]
  assert result.extras["byzantine_selected_share"]["krum"][
      "ipm eps=0.1"] == 1.0
  # Trained enough to tell the rules apart without an attack.
  assert table["mean"]["none"] > 0.8


def _fall_of_empires_table(**changes):
  # Columns: none, eps 0.1, 1, 10 (the card's prototype figures).
  rows = {"mean": [0.887, 0.883, 0.870, 0.113],
          "median": [0.836, 0.294, 0.378, 0.329],
          "trimmed_mean": [0.887, 0.288, 0.281, 0.315],
          "krum": [0.823, 0.113, 0.113, 0.786],
          "zeno": [0.880, 0.850, 0.698, 0.877]}
  rows.update(changes)
  return {r: np.array(v)[:, None] for r, v in rows.items()}


@pytest.mark.parametrize("changes, failing", [
    ({}, None),
    ({"krum": [0.823, 0.21, 0.113, 0.786]}, 0),
    ({"median": [0.836, 0.294, 0.378, 0.537]}, 1),
    ({"trimmed_mean": [0.887, 0.288, 0.281, 0.588]}, 1),
    ({"mean": [0.887, 0.883, 0.870, 0.21]}, 2),
    ({"zeno": [0.880, 0.829, 0.698, 0.877]}, 3),
    ({"zeno": [0.880, 0.850, 0.698, 0.829]}, 3),
    ({"mean": [0.887, 0.883, 0.856, 0.113]}, 4),
])
def test_fall_of_empires_thresholds(changes, failing):
  config = fall_of_empires.Config(num_seeds=1)
  passed = fall_of_empires.judge(config, _fall_of_empires_table(**changes))
  assert passed == [i != failing for i in range(5)]


def test_wrong_expected_slope_fails(quick_results):
  result = _with_expected(quick_results["minibatch_sgd"], -0.5)
  assert not result.passed
  assert not result.ci_covers_expected
  assert "FAIL" in harness.report(result)


def test_shared_batch_has_no_averaging_benefit_and_fails():
  result = minibatch_sgd.run(quick=True, shared_batch=True)
  assert abs(result.measured) < 0.15
  assert not result.passed


def test_seeds_override():
  result = minibatch_sgd.run(quick=True, seeds=2, num_workers=(1, 4),
                             tail=200)
  assert result.y.shape == (2, 2)
  assert result.config["num_seeds"] == 2


@pytest.mark.parametrize("name", sorted(theory_checks.CHECKS))
def test_unknown_override_is_refused_before_any_work(name):
  with pytest.raises(ValueError, match=r"has no field 'num_stepz'; fields: "):
    theory_checks.CHECKS[name](quick=True, num_stepz=3)


def test_claim_passes_on_point_estimate():
  claim = harness.Claim("c", "s", "src", "m", expected=-1.0, tolerance=0.15)
  assert claim.passes(-1.15) and claim.passes(-0.9)
  assert not claim.passes(-1.16) and not claim.passes(-0.8)


def test_write_result_writes_json_and_png(quick_results, tmp_path):
  result = quick_results["minibatch_sgd"]
  json_path, png_path = harness.write_result(result, tmp_path / "out")
  with open(json_path) as f:
    data = json.load(f)
  assert data["name"] == "minibatch_sgd"
  assert data["passed"] is True
  assert data["measured"] == pytest.approx(result.measured)
  assert data["ci"] == pytest.approx(list(result.ci))
  assert data["claim"]["expected"] == -1.0
  assert data["claim"]["tolerance"] == 0.15
  assert "arXiv:1606.04838" in data["claim"]["source"]
  np.testing.assert_allclose(data["y"], result.y)
  np.testing.assert_allclose(data["x"], result.x)
  assert data["fit"]["window"] == [1.0, 32.0]
  assert data["config"]["learning_rate"] == result.config["learning_rate"]
  assert len(data["extras"]["predicted_gap"]) == result.x.size
  with open(png_path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_block(quick_results):
  text = harness.report(quick_results["minibatch_sgd"])
  assert "minibatch_sgd: PASS" in text
  assert "expected:  -1 ± 0.15" in text
  assert "95% CI" in text
  assert "1606.04838" in text


def _fake_run(result, calls):
  def run(*, quick, seeds):
    calls.append((quick, seeds))
    return result
  return run


def test_run_check_main_exit_status_and_files(quick_results, tmp_path,
                                              monkeypatch, capsys):
  result = quick_results["minibatch_sgd"]
  calls = []
  with pytest.raises(SystemExit) as exit_info:
    harness.run_check_main(_fake_run(result, calls),
                           ["prog", "--quick", "--seeds=4",
                            f"--outdir={tmp_path / 'a'}"])
  assert exit_info.value.code == 0
  assert calls == [(True, 4)]
  assert (tmp_path / "a" / "minibatch_sgd.json").exists()
  assert "PASS" in capsys.readouterr().out

  monkeypatch.chdir(tmp_path)  # Default outdir: results/<name>.
  with pytest.raises(SystemExit) as exit_info:
    harness.run_check_main(_fake_run(_with_expected(result, -0.5), calls),
                           ["prog"])
  assert exit_info.value.code == 1
  assert calls[-1] == (False, None)
  assert (tmp_path / "results" / "minibatch_sgd" / "minibatch_sgd.png"
          ).exists()
  assert "FAIL" in capsys.readouterr().out


def test_run_check_main_rejects_bad_flags(capsys):
  with pytest.raises(SystemExit) as exit_info:
    harness.run_check_main(_fake_run(None, []), ["prog", "--seeds=0"])
  assert exit_info.value.code == 2
  with pytest.raises(SystemExit) as exit_info:
    harness.run_check_main(_fake_run(None, []), ["prog", "stray"])
  assert exit_info.value.code == 2
  assert "unexpected arguments" in capsys.readouterr().err


def test_run_all_summary_and_exit_status(quick_results, tmp_path, capsys):
  good = quick_results["minibatch_sgd"]
  bad = _with_expected(good, -0.5)
  bad = dataclasses.replace(
      bad, claim=dataclasses.replace(bad.claim, name="wrong"))
  with pytest.raises(SystemExit) as exit_info:
    run_all.main(["prog", "--quick", f"--outdir={tmp_path}"],
                 checks={"minibatch_sgd": _fake_run(good, [])})
  assert exit_info.value.code == 0
  with pytest.raises(SystemExit) as exit_info:
    run_all.main(["prog", f"--outdir={tmp_path}"],
                 checks={"minibatch_sgd": _fake_run(good, []),
                         "wrong": _fake_run(bad, [])})
  assert exit_info.value.code == 1
  table = capsys.readouterr().out.splitlines()
  assert any(line.startswith("minibatch_sgd") and line.endswith("PASS")
             for line in table)
  assert any(line.startswith("wrong") and line.endswith("FAIL")
             for line in table)
  assert (tmp_path / "wrong" / "wrong.json").exists()


def test_qsgd_variance_quick_sub_claims(quick_results):
  result = quick_results["qsgd_variance"]
  assert [c["passed"] for c in result.extras["sub_claims"]] == [True] * 6
  for sweep in result.extras["sweeps"].values():
    np.testing.assert_allclose(sweep["mc_over_exact"], 1.0, atol=0.05)
    assert np.all(sweep["exact_over_bound"] <= 1.0)


def test_qsgd_variance_exact_moments_match_enumeration():
  v = np.array([0.3, -1.2, 0.7, 2.0])
  norm = np.linalg.norm(v)
  for s in (1, 2, 3, 7):
    y = s * np.abs(v) / norm
    low, p = np.floor(y), y - np.floor(y)
    errors, probs = [], []
    for up in itertools.product((0, 1), repeat=v.size):
      up = np.array(up)
      q = norm * np.sign(v) * (low + up) / s
      errors.append(np.sum((q - v) ** 2) / norm ** 2)
      probs.append(np.prod(np.where(up, p, 1 - p)))
    errors, probs = np.array(errors), np.array(probs)
    mean = probs @ errors
    moments = qsgd_variance.exact_moments(v, s)
    assert moments["variance"] == pytest.approx(mean, rel=1e-12)
    assert moments["draw_sd"] == pytest.approx(
        np.sqrt(probs @ (errors - mean) ** 2), rel=1e-12)


def _qsgd_figures(config, **changes):
  """Per-seed figures that follow the predicted laws exactly."""
  laws = {"d": np.sqrt(np.array(config.dims, float)),
          "small_s": 1 / np.array(config.small_levels, float),
          "large_s": np.array(config.large_levels, float) ** -2.0}
  fig = {}
  for name, law in laws.items():
    ones = np.ones((3, law.size))
    fig[name] = {"mc": law * ones, "exact": law * ones, "se": ones,
                 "z": 0 * ones, "bound": 10 * law * ones,
                 "unbiased_stat": ones, "unbiased_band": ones}
    fig[name].update(changes.get(name, {}))
  return fig


def test_qsgd_variance_judge_rejects_wrong_laws():
  config = qsgd_variance.QUICK
  assert qsgd_variance._judge(config, _qsgd_figures(config)) == [True] * 6
  dims = np.array(config.dims, float)
  steeper = _qsgd_figures(config, d={"mc": np.sqrt(dims) * dims ** 0.1
                                     * np.ones((3, 1))})
  assert qsgd_variance._judge(config, steeper) == [False] + [True] * 5
  far = _qsgd_figures(config, large_s={"z": np.full((3, 2), 4.5)})
  assert qsgd_variance._judge(config, far)[3] is False


def test_topk_error_feedback_quick_figures(quick_results):
  result = quick_results["topk_error_feedback"]
  assert [c["passed"] for c in result.extras["sub_claims"]] == [True] * 5
  ratio = result.extras["ratio_median"]
  assert ratio[0] > 1.5  # The delay is visible before T ~ 10 d/k.
  assert result.extras["control_ratio_median"][-1] > 50


def test_threelc_mnist_quick_figures(quick_results):
  result = quick_results["threelc_mnist"]
  assert [c["passed"] for c in result.extras["sub_claims"]] == [True] * 4
  assert result.extras["wire_ratio"] == pytest.approx(20.0, rel=0.01)
  for figures in result.extras["per_multiplier"].values():
    assert figures["checks"]["messages"] > 0
    assert 19.9 <= figures["step_ratio_min"] <= figures["ratio"] <= 280.0


def test_threelc_mnist_message_checks_catch_corruption():
  rng = np.random.default_rng(0)
  p = [rng.normal(size=(7, 3)).astype(np.float32) * np.float32(1e-3),
       np.zeros(11, np.float32)]
  compressor = threelc.three_lc(1.5)
  key = jax.random.key(0)
  error = [np.asarray(x - compressor.decode(compressor.encode(key, x)))
           for x in (jnp.asarray(q) for q in p)]
  coded = int(compressor.coded_bits(compressor.encode(key, p)) + 7) // 8
  counts = threelc_mnist.check_messages(1.5, p, error, coded)
  assert counts["messages"] == 2
  assert sum(v for k, v in counts.items()
             if k not in ("messages", "stream_bytes")) == 0
  flipped = [e.copy() for e in error]
  flipped[0].view(np.uint32)[0, 0] ^= 1  # One bit of one error entry.
  assert threelc_mnist.check_messages(1.5, p, flipped, coded)["sent"] == 1
  assert threelc_mnist.check_messages(1.5, p, error,
                                      coded + 1)["coded_bytes"] == 1
