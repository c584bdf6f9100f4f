"""Theory-check harness, the registered checks (quick mode), their notebooks.

The quick checks run once, inside the family notebooks of
``theory_checks/notebooks/`` executed with nbclient (as a user would run
them; ``tests/theory_notebooks.py``, session fixtures ``notebooks`` and
``quick``); the tests read the results the notebooks computed. The tests of
one family share an xdist group, so that ``pytest -n 2 --dist loadgroup``
runs each notebook once.
"""

import dataclasses
import importlib
import itertools
import json

from IPython.lib import pretty
import jax
import jax.numpy as jnp
from matplotlib import figure
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
from tests import theory_notebooks

FAMILIES = theory_notebooks.FAMILIES
FAMILY_OF = theory_notebooks.FAMILY_OF
_group = theory_notebooks.group


def _per_check():
  """Parameters over the registered checks, each in its family's group."""
  return [pytest.param(name, marks=_group(FAMILY_OF[name]))
          for name in sorted(theory_checks.CHECKS)]


def _with_expected(result, expected):
  return dataclasses.replace(
      result, claim=dataclasses.replace(result.claim, expected=expected))


def _fake_run(result, calls=None):
  def run(*, quick, seeds):
    if calls is not None:
      calls.append((quick, seeds))
    return result
  return run


def test_registry_lists_every_family():
  assert theory_checks.CHECKS["minibatch_sgd"] is minibatch_sgd.run
  for name, run in theory_checks.CHECKS.items():
    assert run.__module__ == f"distoptax.theory_checks.{name}"
  assert sorted(FAMILY_OF) == sorted(theory_checks.CHECKS)


@pytest.mark.parametrize("name", sorted(theory_checks.CHECKS))
def test_every_check_declares_its_quick_sub_claims(name):
  module = importlib.import_module(f"distoptax.theory_checks.{name}")
  assert set(module.QUICK_ASSESSED) <= set(module.SUB_CLAIM_KEYS)
  assert len(set(module.SUB_CLAIM_KEYS)) == len(module.SUB_CLAIM_KEYS)


@pytest.mark.parametrize("family", [pytest.param(f, marks=_group(f))
                                    for f in FAMILIES])
def test_notebook_runs_its_quick_checks_and_shows_them(notebooks, family):
  notebook, results = notebooks(family)
  assert list(results) == list(FAMILIES[family][1])
  assert any(cell.source.startswith("QUICK = True")
             for cell in notebook.cells)
  sections = [c.source for c in notebook.cells
              if c.cell_type == "markdown" and c.source.startswith("## ")]
  # A section that explains each claim, then the summary.
  assert len(sections) == len(results) + 1
  outputs = [o for c in notebook.cells if c.cell_type == "code"
             for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                 for o in outputs)
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == len(results)  # One figure per check.
  for name, result in results.items():
    assert result.config["quick"] is True
    assert f"== {name}: {result.verdict} ==" in text  # The report.
    assert f"{name} [1/" in text  # Progress on stderr.
  assert "check" in text and "expected" in text  # The summary table.


@pytest.mark.parametrize("name", _per_check())
def test_every_check_in_quick_mode(quick, name):
  result = quick(name)
  assert result.claim.name == name
  module = importlib.import_module(f"distoptax.theory_checks.{name}")
  assert [c.key for c in result.sub_claims] == list(module.SUB_CLAIM_KEYS)
  assert {c.key for c in result.sub_claims if c.assessed} == set(
      module.QUICK_ASSESSED)
  assert not result.failed, str(result)
  expected = (harness.PARTIAL
              if set(module.QUICK_ASSESSED) != set(module.SUB_CLAIM_KEYS)
              else harness.PASS)
  assert result.verdict == expected, str(result)
  assert result.ci[0] <= result.measured <= result.ci[1]


@pytest.mark.parametrize("name", _per_check())
def test_result_reads_as_text_and_plots(quick, name):
  result = quick(name)
  text = str(result)
  assert text.startswith(f"== {name}: {result.verdict} ==")
  for part in (result.claim.statement, result.claim.source, "95% CI",
               f"{result.claim.expected:g} ± {result.claim.tolerance:g}",
               f"result:    {result.verdict}"):
    assert part in text
  for c in result.sub_claims:
    assert harness.sub_claim_line(c) in text
  assert pretty.pretty(result) == text  # What a notebook shows.
  fig = result.plot()
  assert isinstance(fig, figure.Figure)
  assert f"{name}: {result.verdict}" in fig.axes[0].get_title()


@_group("sgd")
def test_minibatch_sgd_quick_slope_and_floor(quick):
  result = quick("minibatch_sgd")
  assert abs(result.measured + 1.0) < 0.1
  # The floor agrees with the stationary-variance prediction.
  np.testing.assert_allclose(
      result.extras["measured_over_predicted"], 1.0, atol=0.15)
  assert result.config["quick"] and result.config["num_seeds"] == 3


@_group("sgd")
def test_byzantine_sgd_rate_quick_sub_claims_and_predictions(quick):
  result = quick("byzantine_sgd_rate")
  assert [c.verdict for c in result.sub_claims] == [harness.PASS] * 3
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


@_group("empires")
def test_fall_of_empires_quick_table_is_complete(quick):
  result = quick("fall_of_empires")
  labels = ["none", "ipm eps=0.1", "ipm eps=10"]
  table = result.extras["table"]
  assert list(table) == list(fall_of_empires.RULES)
  for row in table.values():
    assert list(row) == labels
    assert all(0.0 <= v <= 1.0 for v in row.values())
  assert result.y.shape == (3, len(labels) * len(fall_of_empires.RULES))
  assert len(result.extras["pairs"]) == result.y.shape[1]
  # Krum at eps = 0.1 and the mean at eps = 10 are at chance from the first
  # steps; Krum picks a Byzantine vector every step.
  assert result.extras["byzantine_selected_share"]["krum"][
      "ipm eps=0.1"] == 1.0
  # Trained enough that a 30-point loss of the median is measurable.
  assert table["mean"]["none"] > 0.8
  for rule in ("median", "trimmed_mean"):
    assert table[rule]["none"] > 0.7


@_group("empires")
def test_fall_of_empires_quick_assesses_1_to_3_and_never_prints_fail(quick):
  result = quick("fall_of_empires")
  verdicts = [c.verdict for c in result.sub_claims]
  assert verdicts == [harness.PASS] * 3 + [harness.NOT_ASSESSED] * 2
  assert result.verdict == harness.PARTIAL
  assert result.measured == 3.0 and not result.failed
  # The not-assessed sub-claims keep their figures and name the budget.
  zeno = result.sub_claims[3]
  assert zeno.value == pytest.approx(
      max(result.extras["zeno_drop"].values()))
  assert "1,200 steps" in zeno.assessed_by
  assert "python -m distoptax.theory_checks.fall_of_empires" in str(result)
  assert "FAIL" not in str(result)


@_group("empires")
def test_fall_of_empires_plot_is_grouped_bars(quick):
  result = quick("fall_of_empires")
  ax = result.plot().axes[0]
  assert ax.get_xscale() == "linear"
  assert [t.get_text() for t in ax.get_xticklabels()] == [
      "no attack", "IPM ε = 0.1", "IPM ε = 10"]
  heights = sorted(round(p.get_height(), 6) for p in ax.patches)
  expected = sorted(round(float(v), 6) for v in result.y.mean(axis=0))
  assert heights == expected  # One bar per (attack, rule) pair.
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend == ["chance", "mean", "median", "trimmed mean", "krum",
                    "zeno"]
  assert "fall_of_empires: PARTIAL" in ax.get_title()
  assert "40 steps, 3 seeds" in ax.get_title()


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
  table = _fall_of_empires_table(**changes)
  passed = fall_of_empires.judge(config, table)
  assert passed == [i != failing for i in range(5)]
  values = fall_of_empires.sub_claim_values(config, table)
  bounds = [(config.krum_max_accuracy, -1), (config.median_min_drop, 1),
            (config.mean_max_accuracy, -1), (config.zeno_max_drop, -1),
            (config.mean_max_drop, -1)]
  assert passed == [sign * (v - bound) >= 0
                    for v, (bound, sign) in zip(values, bounds)]


def _sub_claim_result(quick_result, sub_claims):
  return dataclasses.replace(
      quick_result, sub_claims=tuple(sub_claims),
      measured=harness.count_assessed([c.holds for c in sub_claims],
                                      [c.assessed for c in sub_claims]))


@_group("empires")
def test_not_assessed_sub_claim_does_not_fail_run_all_but_a_real_failure_does(
    quick, tmp_path, capsys):
  partial = quick("fall_of_empires")
  with pytest.raises(SystemExit) as exit_info:
    run_all.main(["prog", "--quick", f"--outdir={tmp_path}"],
                 checks={"fall_of_empires": _fake_run(partial)})
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert "FAIL" not in out
  assert "PARTIAL (3 of 5 assessed)" in out
  assert "sub-claim(s) 4, 5 not assessed at this budget" in out
  assert "1 checks, 0 failed" in out

  # An assessed sub-claim that fails (Krum not broken) fails the run, even
  # beside sub-claims that are not assessed.
  claims = list(partial.sub_claims)
  claims[0] = dataclasses.replace(claims[0], holds=False)
  broken = _sub_claim_result(partial, claims)
  assert broken.verdict == harness.FAIL and broken.measured == 2.0
  with pytest.raises(SystemExit) as exit_info:
    run_all.main(["prog", "--quick", f"--outdir={tmp_path}"],
                 checks={"fall_of_empires": _fake_run(broken)})
  assert exit_info.value.code == 1
  out = capsys.readouterr().out
  assert "FAIL          1. Krum" in out
  assert "1 checks, 1 failed: fall_of_empires" in out
  with open(tmp_path / "fall_of_empires" / "fall_of_empires.json") as f:
    data = json.load(f)
  assert data["verdict"] == "FAIL" and data["failed"] is True
  assert [c["verdict"] for c in data["sub_claims"]] == [
      "FAIL", "PASS", "PASS", "NOT ASSESSED", "NOT ASSESSED"]


def _claims(*outcomes):
  """Sub-claims from (holds, assessed) pairs."""
  return [harness.SubClaim(key=str(i), name=f"{i}. c", holds=h, assessed=a,
                           assessed_by="" if a else "the full budget")
          for i, (h, a) in enumerate(outcomes, 1)]


@_group("sgd")
@pytest.mark.parametrize("outcomes, verdict", [
    (((True, True), (True, True)), harness.PASS),
    (((True, True), (False, True)), harness.FAIL),
    (((True, True), (False, False)), harness.PARTIAL),
    (((False, True), (True, False)), harness.FAIL),
    (((False, False), (False, False)), harness.NOT_ASSESSED),
])
def test_verdict_follows_assessed_sub_claims(quick, outcomes, verdict):
  base = dataclasses.replace(
      quick("minibatch_sgd"),
      claim=dataclasses.replace(quick("minibatch_sgd").claim, expected=2.0,
                                tolerance=0.0))
  result = _sub_claim_result(base, _claims(*outcomes))
  assert result.verdict == verdict
  assert result.failed == (verdict == harness.FAIL)
  assert result.passed == (verdict == harness.PASS)
  assert ("FAIL" in str(result)) == (verdict == harness.FAIL)


def test_quick_assessment_refuses_unknown_keys():
  with pytest.raises(ValueError, match=r"unknown sub-claims \['z'\]"):
    harness.quick_assessment(("a", "b"), ("a", "z"), quick=True)


@_group("sgd")
def test_wrong_expected_slope_fails(quick):
  result = _with_expected(quick("minibatch_sgd"), -0.5)
  assert not result.passed and result.failed
  assert not result.ci_covers_expected
  assert "FAIL" in harness.report(result)


def test_shared_batch_has_no_averaging_benefit_and_fails():
  result = minibatch_sgd.run(quick=True, shared_batch=True, progress=False)
  assert abs(result.measured) < 0.15
  assert result.failed


def test_seeds_override_and_progress_lines(capsys):
  result = minibatch_sgd.run(quick=True, seeds=2, num_workers=(1, 4),
                             tail=200)
  assert result.y.shape == (2, 2)
  assert result.config["num_seeds"] == 2
  err = capsys.readouterr().err.splitlines()
  assert err[0].startswith("minibatch_sgd [1/2] m = 1 workers: 2 seeds x ")
  assert err[1].startswith("minibatch_sgd [2/2] m = 4 workers: 2 seeds x ")
  assert err[2].startswith("minibatch_sgd: sweep done in ")
  minibatch_sgd.run(quick=True, seeds=2, num_workers=(1, 4), tail=200,
                    progress=False)
  assert not capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(theory_checks.CHECKS))
def test_unknown_override_is_refused_before_any_work(name):
  with pytest.raises(ValueError, match=r"has no field 'num_stepz'; fields: "):
    theory_checks.CHECKS[name](quick=True, num_stepz=3)


def test_claim_passes_on_point_estimate():
  claim = harness.Claim("c", "s", "src", "m", expected=-1.0, tolerance=0.15)
  assert claim.passes(-1.15) and claim.passes(-0.9)
  assert not claim.passes(-1.16) and not claim.passes(-0.8)


@_group("sgd")
def test_write_result_writes_json_and_png(quick, tmp_path):
  result = quick("minibatch_sgd")
  json_path, png_path = harness.write_result(result, tmp_path / "out")
  with open(json_path) as f:
    data = json.load(f)
  assert data["name"] == "minibatch_sgd"
  assert data["verdict"] == "PASS"
  assert data["passed"] is True and data["failed"] is False
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


@_group("sgd")
def test_report_block(quick):
  text = harness.report(quick("minibatch_sgd"))
  assert "minibatch_sgd: PASS" in text
  assert "expected:  -1 ± 0.15" in text
  assert "95% CI" in text
  assert "1606.04838" in text


@_group("sgd")
def test_run_check_main_exit_status_and_files(quick, tmp_path, monkeypatch,
                                              capsys):
  result = quick("minibatch_sgd")
  calls = []
  with pytest.raises(SystemExit) as exit_info:
    harness.run_check_main(_fake_run(result, calls),
                           ["prog", "--quick", "--seeds=4",
                            f"--outdir={tmp_path / 'a'}"])
  assert exit_info.value.code == 0
  assert calls == [(True, 4)]
  assert (tmp_path / "a" / "minibatch_sgd.json").exists()
  assert str(result) in capsys.readouterr().out  # The same text.

  monkeypatch.chdir(tmp_path)  # Default outdir: results/<name>.
  with pytest.raises(SystemExit) as exit_info:
    harness.run_check_main(_fake_run(_with_expected(result, -0.5), calls),
                           ["prog"])
  assert exit_info.value.code == 1
  assert calls[-1] == (False, None)
  assert (tmp_path / "results" / "minibatch_sgd" / "minibatch_sgd.png"
          ).exists()
  assert "FAIL" in capsys.readouterr().out


@_group("empires")
def test_run_check_main_exits_0_on_partial(quick, tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    harness.run_check_main(_fake_run(quick("fall_of_empires")),
                           ["prog", "--quick", f"--outdir={tmp_path}"])
  assert exit_info.value.code == 0
  assert "fall_of_empires: PARTIAL" in capsys.readouterr().out


def test_run_check_main_rejects_bad_flags(capsys):
  with pytest.raises(SystemExit) as exit_info:
    harness.run_check_main(_fake_run(None), ["prog", "--seeds=0"])
  assert exit_info.value.code == 2
  with pytest.raises(SystemExit) as exit_info:
    harness.run_check_main(_fake_run(None), ["prog", "stray"])
  assert exit_info.value.code == 2
  assert "unexpected arguments" in capsys.readouterr().err


@_group("sgd")
def test_run_all_summary_progress_and_exit_status(quick, tmp_path, capsys):
  good = quick("minibatch_sgd")
  bad = _with_expected(good, -0.5)
  bad = dataclasses.replace(
      bad, claim=dataclasses.replace(bad.claim, name="wrong"))
  with pytest.raises(SystemExit) as exit_info:
    run_all.main(["prog", "--quick", f"--outdir={tmp_path}"],
                 checks={"minibatch_sgd": _fake_run(good)})
  assert exit_info.value.code == 0
  captured = capsys.readouterr()
  assert captured.err.startswith("run_all [1/1] minibatch_sgd (quick budget")
  assert str(good) in captured.out
  with pytest.raises(SystemExit) as exit_info:
    run_all.main(["prog", f"--outdir={tmp_path}"],
                 checks={"minibatch_sgd": _fake_run(good),
                         "wrong": _fake_run(bad)})
  assert exit_info.value.code == 1
  captured = capsys.readouterr()
  assert "run_all [2/2] wrong (full budget" in captured.err
  table = captured.out.splitlines()
  assert any(line.startswith("minibatch_sgd") and line.endswith("PASS")
             for line in table)
  assert any(line.startswith("wrong") and line.endswith("FAIL")
             for line in table)
  assert (tmp_path / "wrong" / "wrong.json").exists()


@_group("compressors")
def test_qsgd_variance_quick_sub_claims(quick):
  result = quick("qsgd_variance")
  assert [c.verdict for c in result.sub_claims] == [harness.PASS] * 6
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


@_group("compressors")
def test_topk_error_feedback_quick_figures(quick):
  result = quick("topk_error_feedback")
  assert [c.verdict for c in result.sub_claims] == [harness.PASS] * 5
  ratio = result.extras["ratio_median"]
  assert ratio[0] > 1.5  # The delay is visible before T ~ 10 d/k.
  assert result.extras["control_ratio_median"][-1] > 50


@_group("compressors")
def test_threelc_mnist_quick_figures(quick):
  result = quick("threelc_mnist")
  assert [c.verdict for c in result.sub_claims] == [harness.PASS] * 4
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
