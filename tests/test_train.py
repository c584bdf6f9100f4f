"""The training loop: main command, simulated time, NaN stop, registries,
shipped configs."""

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

from distoptax import distributed as dist
from distoptax.experiments import checkpoint
from distoptax.experiments import configs
from distoptax.experiments import metrics_io
from distoptax.experiments import train
from distoptax.experiments import trainer
from distoptax.experiments.config import TrainConfig

SMALL = TrainConfig(dataset="digits", hidden=(16,), num_workers=4,
                    batch_size=8, steps=30, log_every=5, checkpoint_every=10,
                    learning_rate=0.05)


def _quiet(_):
  pass


def test_readme_main_command_runs_a_few_steps(tmp_path):
  workdir = tmp_path / "main"
  out = subprocess.run(
      [sys.executable, "-m", "distoptax.experiments.train",
       f"--workdir={workdir}", "--config.steps=20", "--config.log_every=10",
       "--config.checkpoint_every=10"],
      capture_output=True, text=True, timeout=300, check=True,
      env={**os.environ, "XLA_FLAGS": ""}, cwd=tmp_path)
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
  assert config["system_model"]["topology"]["name"] == "ring"
  assert (workdir / "curves.png").stat().st_size > 10_000


def test_wire_bytes_and_simulated_seconds_follow_the_model(tmp_path):
  result = trainer.train(SMALL, str(tmp_path), progress=_quiet)
  rows = metrics_io.read(tmp_path)
  param_bytes = sum(x.size * 4 for x in jax.tree.leaves(result.params))
  assert rows[-1]["wire_bytes_step"] == param_bytes
  assert rows[-1]["wire_bytes"] == SMALL.steps * param_bytes
  # No entropy code without compression: coded bytes are the wire bytes.
  assert rows[-1]["coded_bytes"] == rows[-1]["wire_bytes"]
  # One ring all-reduce of the parameters per step, after the compute.
  n = SMALL.num_workers
  step_seconds = SMALL.compute_seconds + 2 * (n - 1) * (
      SMALL.latency + param_bytes / n / SMALL.bandwidth)
  for row in rows:
    assert row["simulated_seconds"] == pytest.approx(
        row["step"] * step_seconds, rel=1e-12)
  # config.json states the model behind the simulated seconds.
  model = metrics_io.read_system_model(tmp_path)
  assert model["topology"] == {"name": "ring", "num_workers": n,
                               "bandwidth": SMALL.bandwidth,
                               "latency": SMALL.latency}
  assert model["compute"]["compute_seconds"] == SMALL.compute_seconds
  assert "communication rounds" in model["simulated_seconds"]
  assert "system_model" not in metrics_io.read_config(tmp_path)


@pytest.mark.parametrize("changes,rounds", [
    ({}, 1),
    (dict(compressor="powersgd", compressor_params=(("rank", 1),)), 2),
])
def test_each_recorded_round_pays_its_latency(tmp_path, changes, rounds):
  # Latency only: a step costs 2 (n - 1) latencies per ring all-reduce it
  # ran, so PowerSGD's P and Q rounds cost twice the mean's one round (a
  # price from the step's byte totals would charge one).
  config = dataclasses.replace(
      SMALL, steps=4, log_every=2, checkpoint_every=4, compute_seconds=0.0,
      latency=1.0, bandwidth=1e30, **changes)
  trainer.train(config, str(tmp_path), progress=_quiet)
  per_step = rounds * 2 * (config.num_workers - 1) * config.latency
  assert [r["simulated_seconds"] for r in metrics_io.read(tmp_path)] == (
      pytest.approx([2 * per_step, 4 * per_step], rel=1e-9))


def test_clock_step_waits_for_the_participants_only():
  config = dataclasses.replace(SMALL, imbalance=(1.0, 2.0, 1.0, 1.0))
  clock = trainer.system_model(config).clock
  present = np.array([True, True, False, False])
  num_bytes = 4000
  record = dist.RoundRecord(
      kind=np.full((4, 1), dist.KINDS.index("all_reduce"), np.int32),
      bytes=np.full((4, 1), num_bytes, np.int32),
      participated=present[:, None])
  state = trainer.clock_step(
      clock, clock.init(), {"comm": [record], "participation": present})
  # Workers 0 and 1 compute (worker 1 twice as long), then all-reduce
  # between the two of them; workers 2 and 3 neither compute nor wait.
  c = config.compute_seconds
  reduce_seconds = 2 * (config.latency + num_bytes / 2 / config.bandwidth)
  np.testing.assert_allclose(
      state.time, [2 * c + reduce_seconds] * 2 + [0.0] * 2, rtol=1e-12)
  np.testing.assert_array_equal(state.steps, [1, 1, 0, 0])
  # Without a participation mask every worker computes and waits.
  state = trainer.clock_step(clock, clock.init(), {"comm": [record._replace(
      participated=np.ones((4, 1), bool))]})
  reduce_seconds = 6 * (config.latency + num_bytes / 4 / config.bandwidth)
  np.testing.assert_allclose(state.time, [2 * c + reduce_seconds] * 4,
                             rtol=1e-12)


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
  saved = checkpoint.latest_step(tmp_path)
  assert (saved is not None) == (step > SMALL.checkpoint_every)
  # The message names the step the last checkpoint holds.
  assert ("no checkpoint was written yet" if saved is None else
          f"the last checkpoint holds step {saved}") in str(e.value)


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
    ("optimizer", "lamb", "'adam', 'adamw'"),
    ("runtime", "pmap", "mesh, simulate"),
    ("dataset", "cifar10", "digits"),
    ("model", "resnet", "mlp"),
    ("partition", "shards", "dirichlet"),
])
def test_unknown_registry_names_list_the_known_ones(tmp_path, field, value,
                                                    known):
  # Checked when the configuration is made (fixed choices) or when the run
  # looks the name up in its registry.
  with pytest.raises(ValueError,
                     match=f"{value}.*{known}|{known}.*{value}"):
    config = dataclasses.replace(SMALL, **{field: value})
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
def test_every_shipped_config_runs_by_name(tmp_path, monkeypatch, name):
  # From a directory outside the source tree: configs are found by name.
  module = importlib.import_module(f"distoptax.experiments.configs.{name}")
  assert f"--config={name}" in module.__doc__
  monkeypatch.chdir(tmp_path)
  workdir = tmp_path / "run"
  run = train.parse(["train", f"--config={name}", f"--workdir={workdir}",
                     "--config.steps=4", "--config.log_every=2",
                     "--config.checkpoint_every=2"])
  expected = TrainConfig.from_json(module.get_config().to_dict())
  assert run.config == dataclasses.replace(expected, steps=4, log_every=2,
                                           checkpoint_every=2)
  trainer.train(run.config, run.workdir, progress=_quiet)
  assert [r["step"] for r in metrics_io.read(workdir)] == [2, 4]
  assert TrainConfig.from_json(metrics_io.read_config(workdir)) == run.config
