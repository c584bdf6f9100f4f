"""The training launcher: main command, resume, NaN stop, registries."""

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from distoptax.experiments import checkpoint
from distoptax.experiments import configs
from distoptax.experiments import metrics_io
from distoptax.experiments import trainer
from distoptax.experiments.config import TrainConfig

SMALL = TrainConfig(dataset="digits", hidden=(16,), num_workers=4,
                    batch_size=8, steps=30, log_every=5, checkpoint_every=10,
                    learning_rate=0.05)


def _quiet(_):
  pass


def _rows_without_time(workdir):
  return [{k: v for k, v in r.items() if k != "elapsed_seconds"}
          for r in metrics_io.read(workdir)]


def test_readme_main_command_runs_a_few_steps(tmp_path):
  workdir = tmp_path / "main"
  out = subprocess.run(
      [sys.executable, "-m", "distoptax.experiments.train",
       f"--workdir={workdir}", "--config.steps=20", "--config.log_every=10",
       "--config.checkpoint_every=10"],
      capture_output=True, text=True, timeout=300, check=True,
      env={**os.environ, "XLA_FLAGS": ""})
  assert "final test accuracy:" in out.stdout
  # Progress: a line before the first step compiles, then steps per second
  # and the time left on each logged step.
  assert out.stdout.splitlines()[1].startswith("training steps 1-20 of 20")
  assert re.search(r"step 10/20 .* [\d.]+ steps/s, elapsed 0:00:\d\d, "
                   r"left 0:00:\d\d", out.stdout), out.stdout
  rows = metrics_io.read(workdir)
  assert [r["step"] for r in rows] == [10, 20]
  for key in ("train_loss", "test_accuracy", "wire_bytes", "simulated_seconds",
              "elapsed_seconds"):
    assert rows[-1][key] is not None and rows[-1][key] > 0
  config = json.loads((workdir / "config.json").read_text())
  assert config["num_workers"] == 8 and config["model"] == "mlp"
  assert (workdir / "curves.png").stat().st_size > 10_000


def test_wire_bytes_and_simulated_seconds_follow_the_model(tmp_path):
  result = trainer.train(SMALL, str(tmp_path), progress=_quiet)
  rows = metrics_io.read(tmp_path)
  param_bytes = sum(x.size * 4 for x in jax.tree.leaves(result.params))
  assert rows[-1]["wire_bytes_step"] == param_bytes
  assert rows[-1]["wire_bytes"] == SMALL.steps * param_bytes
  # No entropy code without compression: coded bytes are the wire bytes.
  assert rows[-1]["coded_bytes"] == rows[-1]["wire_bytes"]
  system = trainer.system_model(SMALL)
  expected = sum(system.step_seconds(t, all_reduce_bytes=param_bytes).total
                 for t in range(SMALL.steps))
  assert rows[-1]["simulated_seconds"] == pytest.approx(expected, rel=1e-12)


class _Interrupt(Exception):
  pass


def test_resume_ends_with_the_same_parameters(tmp_path):
  full = trainer.train(SMALL, str(tmp_path / "full"), progress=_quiet)

  def crash_at_25(line):
    if line.startswith("step 25/"):
      raise _Interrupt

  part = str(tmp_path / "part")
  with pytest.raises(_Interrupt):
    trainer.train(SMALL, part, progress=crash_at_25)
  assert [r["step"] for r in metrics_io.read(part)][-1] == 25
  resumed = trainer.train(SMALL, part, resume=True, progress=_quiet)
  jax.tree.map(np.testing.assert_array_equal, full.params, resumed.params)
  assert _rows_without_time(part) == _rows_without_time(tmp_path / "full")


def test_resume_can_extend_the_number_of_steps(tmp_path):
  longer = dataclasses.replace(SMALL, steps=40)
  full = trainer.train(longer, str(tmp_path / "full"), progress=_quiet)
  trainer.train(SMALL, str(tmp_path / "ext"), progress=_quiet)
  extended = trainer.train(longer, str(tmp_path / "ext"), resume=True,
                           progress=_quiet)
  jax.tree.map(np.testing.assert_array_equal, full.params, extended.params)


def test_resume_refuses_a_changed_configuration(tmp_path):
  trainer.train(dataclasses.replace(SMALL, steps=10), str(tmp_path),
                progress=_quiet)
  changed = dataclasses.replace(SMALL, learning_rate=0.5)
  with pytest.raises(ValueError, match="learning_rate"):
    trainer.train(changed, str(tmp_path), resume=True, progress=_quiet)


def test_existing_run_is_never_overwritten(tmp_path):
  config = dataclasses.replace(SMALL, steps=10)
  trainer.train(config, str(tmp_path), progress=_quiet)
  with pytest.raises(ValueError, match="already holds a run"):
    trainer.train(config, str(tmp_path), progress=_quiet)
  with pytest.raises(ValueError, match="no checkpoint"):
    trainer.train(config, str(tmp_path / "new"), resume=True, progress=_quiet)


def test_non_finite_loss_stops_with_step_and_metric(tmp_path):
  config = dataclasses.replace(SMALL, dataset="least_squares", model="linear",
                               learning_rate=50.0, steps=200)
  with pytest.raises(trainer.NonFiniteError,
                     match=r"non-finite (train|test)_loss at step \d+") as e:
    trainer.train(config, str(tmp_path), progress=_quiet)
  step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
  rows = metrics_io.read(tmp_path)
  # Everything before the bad step was kept; nothing after it was written.
  assert all(r["step"] < step for r in rows)
  assert (checkpoint.latest_step(tmp_path) is not None) == (
      step > SMALL.checkpoint_every)


def test_mesh_runtime_matches_simulation(tmp_path):
  config = dataclasses.replace(SMALL, num_workers=8, steps=10)
  sim = trainer.train(config, str(tmp_path / "sim"), progress=_quiet)
  mesh = trainer.train(dataclasses.replace(config, runtime="mesh"),
                       str(tmp_path / "mesh"), progress=_quiet)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               sim.params, mesh.params)


@pytest.mark.parametrize("field,value,known", [
    ("aggregator", "kroom", "krum, majority_vote, mean"),
    ("optimizer", "lamb", "adam, sgd"),
    ("runtime", "pmap", "mesh, simulate"),
    ("dataset", "cifar10", "digits"),
    ("model", "resnet", "mlp"),
    ("partition", "shards", "dirichlet"),
])
def test_unknown_registry_names_list_the_known_ones(tmp_path, field, value,
                                                    known):
  config = dataclasses.replace(SMALL, **{field: value})
  with pytest.raises(ValueError, match=f"{value}.*{known}"):
    trainer.train(config, str(tmp_path), progress=_quiet)


def test_config_validation_names_the_value():
  with pytest.raises(ValueError, match="checkpoint_every=15.*log_every=10"):
    TrainConfig(log_every=10, checkpoint_every=15)
  with pytest.raises(ValueError, match="num_workers must be a positive int"):
    TrainConfig(num_workers=0)
  with pytest.raises(ValueError, match="imbalance has 2 factors"):
    TrainConfig(num_workers=8, imbalance=(1.0, 2.0))


def test_config_round_trips_through_json():
  config = dataclasses.replace(SMALL, straggler="exponential",
                               straggler_params=(("mean", 0.01),))
  assert TrainConfig.from_json(
      json.loads(json.dumps(config.to_json()))) == config


@pytest.mark.parametrize("name", configs.names())
def test_every_shipped_config_runs_by_name(tmp_path, name):
  # From a directory outside the source tree: configs are found by name.
  module = importlib.import_module(f"distoptax.experiments.configs.{name}")
  assert f"--config={name}" in module.__doc__
  workdir = tmp_path / "run"
  subprocess.run(
      [sys.executable, "-m", "distoptax.experiments.train",
       f"--config={name}", f"--workdir={workdir}", "--config.steps=4",
       "--config.log_every=2", "--config.checkpoint_every=2"],
      capture_output=True, text=True, timeout=300, check=True, cwd=tmp_path)
  assert [r["step"] for r in metrics_io.read(workdir)] == [2, 4]
  saved = TrainConfig.from_json(metrics_io.read_config(workdir))
  expected = TrainConfig.from_json(module.get_config().to_dict())
  assert saved == dataclasses.replace(expected, steps=4, log_every=2,
                                      checkpoint_every=2)


def test_unknown_name_on_the_command_line_is_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "distoptax.experiments.train",
       f"--workdir={tmp_path}", "--config.aggregator=kroom",
       "--config.steps=2"],
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.startswith(
      "error: unknown aggregator 'kroom'; known aggregators: ")
  assert "krum, majority_vote, mean, mean_around_median" in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr
