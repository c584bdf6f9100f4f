"""Plots of training runs: short labels, fixed layout, titles, no overwrite."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from distoptax.experiments import curves
from distoptax.experiments import metrics_io

# The configs of the README's runs/skew and runs/iid: they differ in 8 keys,
# which made legend labels of 140-178 characters.
IID = {
    "aggregator": "mean", "aggregator_params": {}, "attack": "none",
    "attack_params": {}, "bandwidth": 1.25e9, "batch_size": 32,
    "checkpoint_every": 250, "classes_per_worker": 2,
    "compressor": "identity", "compressor_params": {},
    "compute_seconds": 0.01, "dataset": "mnist5k", "dirichlet_alpha": 0.5,
    "error_feedback": False, "hidden": [128], "imbalance": [],
    "latency": 5e-05, "learning_rate": 0.1, "log_every": 10, "model": "mlp",
    "momentum": 0.9, "num_byzantine": 0, "num_workers": 8, "optimizer": "sgd",
    "partition": "iid", "preaggregation": "none",
    "preaggregation_params": {}, "runtime": "simulate", "seed": 0,
    "steps": 30, "straggler": "none", "straggler_params": {},
    "topology": "ring", "validation_batch_size": 32,
}
SKEW = {**IID, "partition": "dirichlet", "dirichlet_alpha": 0.3,
        "num_workers": 16, "batch_size": 16, "straggler": "exponential",
        "straggler_params": {"mean": 0.005},
        "topology": "parameter_server", "bandwidth": 1.25e8}


def _rows(accuracy=None, coded_factor=1.0):
  rows = []
  for i, step in enumerate((10, 20, 30)):
    wire = 400_000 * step
    rows.append({
        "step": step, "train_loss": 2.0 / (i + 1),
        "test_loss": 1.5 / (i + 1),
        "test_accuracy": accuracy if accuracy is not None else 0.7 + 0.1 * i,
        "wire_bytes": wire, "coded_bytes": wire * coded_factor,
        "simulated_seconds": 0.01 * step, "elapsed_seconds": 0.1 * step})
  return rows


def _run(path, config, **kwargs):
  path.mkdir(parents=True)
  metrics_io.append(str(path), _rows(**kwargs))
  metrics_io.write_config(str(path), config)
  return str(path)


def _union_of_axes(fig):
  boxes = [ax.get_position() for ax in fig.axes]
  return (min(b.x0 for b in boxes), min(b.y0 for b in boxes),
          max(b.x1 for b in boxes), max(b.y1 for b in boxes))


def test_labels_short_and_distinct_for_runs_differing_in_one_key(tmp_path):
  # Same workdir basename: the label uses the parent directory too.
  a = _run(tmp_path / "lr_big" / "run", IID)
  b = _run(tmp_path / "lr_small" / "run", {**IID, "learning_rate": 0.01})
  assert curves.run_labels([a, b], [IID, {**IID, "learning_rate": 0.01}]) == [
      "lr_big/run: lr=0.1", "lr_small/run: lr=0.01"]


def test_readme_runs_get_short_distinct_labels_in_the_legend(tmp_path):
  skew = _run(tmp_path / "runs" / "skew", SKEW)
  iid = _run(tmp_path / "runs" / "iid", IID)
  fig = curves.figure([skew, iid])
  texts = [t.get_text() for t in fig.legends[0].get_texts()]
  assert texts == ["skew: partition=dirichlet, workers=16 +6",
                   "iid: partition=iid, workers=8 +6"]
  assert all(len(t) <= curves.MAX_LABEL for t in texts)


@pytest.mark.parametrize("n_runs", [2, 7])
def test_labels_are_capped_and_distinct_for_long_names(tmp_path, n_runs):
  stem = "a_very_long_experiment_name_" * 4
  configs = [{**IID, "seed": i, "learning_rate": 0.1 / (i + 1),
              "aggregator_params": {"rho": 0.0005 * i, "tag": "x" * 50}}
             for i in range(n_runs)]
  workdirs = [str(tmp_path / f"{stem}{i}") for i in range(n_runs)]
  labels = curves.run_labels(workdirs, configs)
  assert len(set(labels)) == n_runs
  assert max(len(label) for label in labels) <= curves.MAX_LABEL


def test_same_workdir_twice_gets_distinct_labels(tmp_path):
  run = _run(tmp_path / "run", IID)
  labels = curves.run_labels([run, run], [IID, IID])
  assert len(set(labels)) == 2


def test_run_labels_rejects_mismatched_lengths():
  with pytest.raises(ValueError, match="2 workdirs but 1 configs"):
    curves.run_labels(["a", "b"], [{}])


@pytest.mark.parametrize("n_runs", [1, 2, 9])
def test_grid_fills_the_figure_with_equal_panels(tmp_path, n_runs):
  workdirs = [_run(tmp_path / f"run{i}", {**IID, "seed": i})
              for i in range(n_runs)]
  fig = curves.figure(workdirs)
  assert len(fig.axes) == 9
  x0, y0, x1, y1 = _union_of_axes(fig)
  assert x0 < 0.1 and x1 > 0.95 and y1 > 0.85
  # The legend band under the grid grows with the runs; the panels do not.
  assert y0 < (0.15 if n_runs <= 3 else 0.25)
  width, height = fig.get_size_inches()
  sizes = {(round(ax.get_position().width * width, 6),
            round(ax.get_position().height * height, 6)) for ax in fig.axes}
  assert len(sizes) == 1
  legend_boxes = [lg.get_window_extent() for lg in fig.legends]
  if n_runs > 1:
    top_of_legend = legend_boxes[0].y1 / fig.bbox.height
    assert top_of_legend < y0
  else:
    assert not legend_boxes


def test_coded_bytes_column_only_when_they_differ(tmp_path):
  plain = _run(tmp_path / "plain", IID)
  coded = _run(tmp_path / "coded", IID, coded_factor=0.5)
  assert len(curves.figure([plain]).axes) == 9
  fig = curves.figure([plain, coded])
  assert len(fig.axes) == 12
  assert "coded MiB per worker" in [ax.get_xlabel() for ax in fig.axes]


def test_title_names_the_run_and_its_settings(tmp_path):
  run = _run(tmp_path / "runs" / "skew", SKEW)
  head, settings = curves.figure([run]).get_suptitle().split("\n")
  assert head == "skew"
  assert "dataset=mnist5k" in settings and "partition=dirichlet" in settings


def test_title_names_every_run_and_only_shared_settings(tmp_path):
  skew = _run(tmp_path / "skew", SKEW)
  iid = _run(tmp_path / "iid", IID)
  head, settings = curves.figure([skew, iid]).get_suptitle().split("\n")
  assert head == "skew vs iid"
  assert "model=mlp" in settings and "partition" not in settings


def test_accuracy_axes_span_zero_to_one(tmp_path):
  # A flat line at chance must look flat, not like a swing.
  run = _run(tmp_path / "chance", IID, accuracy=0.1)
  fig = curves.figure([run])
  accuracy_row = fig.axes[6:9]
  assert accuracy_row[0].get_ylabel() == "test accuracy"
  for ax in accuracy_row:
    assert ax.get_ylim() == (0.0, 1.0)
  for ax in fig.axes[:6]:
    assert ax.get_yscale() == "log"


def test_new_file_never_replaces_an_existing_one(tmp_path):
  skew = _run(tmp_path / "skew", SKEW)
  iid = _run(tmp_path / "iid", IID)
  taken = tmp_path / "curves-skew-iid.png"
  taken.write_bytes(b"keep me")
  first = curves.plot_runs([skew, iid], directory=str(tmp_path))
  second = curves.plot_runs([skew, iid], directory=str(tmp_path))
  assert taken.read_bytes() == b"keep me"
  assert first == str(tmp_path / "curves-skew-iid-2.png")
  assert second == str(tmp_path / "curves-skew-iid-3.png")
  for path in (first, second):
    assert pathlib.Path(path).read_bytes()[:4] == b"\x89PNG"


def test_named_out_is_written_even_if_it_exists(tmp_path):
  run = _run(tmp_path / "run", IID)
  out = tmp_path / "named.png"
  out.write_bytes(b"old")
  assert curves.plot_runs([run], str(out)) == str(out)
  assert out.read_bytes()[:4] == b"\x89PNG"


def test_missing_metrics_name_the_workdir(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match=f"no metrics in '{empty}'"):
    curves.figure([str(empty)])
  with pytest.raises(ValueError, match="no workdirs"):
    curves.figure([])


def test_command_without_out_keeps_the_runs_curves_png(tmp_path):
  skew = _run(tmp_path / "runs" / "skew", SKEW)
  iid = _run(tmp_path / "runs" / "iid", IID)
  own = pathlib.Path(skew) / "curves.png"
  own.write_bytes(b"the run's own curves")
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  out = subprocess.run(
      [sys.executable, "-m", "distoptax.experiments.plot", skew, iid],
      cwd=cwd, capture_output=True, text=True, timeout=120, check=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert own.read_bytes() == b"the run's own curves"
  assert out.stdout.strip() == "curves: ./curves-skew-iid.png"
  assert (cwd / "curves-skew-iid.png").read_bytes()[:4] == b"\x89PNG"
  assert json.loads((pathlib.Path(skew) / "config.json").read_text()) == SKEW


def test_runs_past_ten_colours_get_another_line_style(tmp_path):
  workdirs = [_run(tmp_path / f"run{i}", {**IID, "seed": i})
              for i in range(11)]
  lines = curves.figure(workdirs).axes[0].get_lines()
  styles = {(line.get_color(), line.get_linestyle()) for line in lines}
  assert len(styles) == 11
