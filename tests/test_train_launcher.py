"""The command line: config files and overrides, errors, resume, signals."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from distoptax.experiments import checkpoint
from distoptax.experiments import metrics_io
from distoptax.experiments import trainer
from distoptax.experiments.config import TrainConfig

_TRAIN = [sys.executable, "-m", "distoptax.experiments.train"]
_SMALL = ["--config.dataset=digits", "--config.hidden=16",
          "--config.num_workers=4", "--config.batch_size=8",
          "--config.learning_rate=0.05", "--config.log_every=5",
          "--config.checkpoint_every=10"]


def _train(*args, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([*_TRAIN, *args], capture_output=True, text=True,
                        timeout=300, **kwargs)


@pytest.mark.parametrize("args,message", [
    (["--config.hidden=abc"],
     "--config.hidden: hidden must be a tuple of ints; got ('abc',)"),
    (["--config.num_workers=abc"],
     "flag --config.num_workers=abc: invalid literal for int()"),
    (["--config.seed=-1"], "--config.seed: seed must be >= 0; got -1"),
    (["--config.stpes=3"], "--config.stpes: unknown option 'stpes'"),
    (["--config=mnist_mpl"], "--config=mnist_mpl: unknown config "
     "'mnist_mpl'; shipped configs: digits_cnn_mesh"),
    (["--config.learning_rate=inf"],
     "--config.learning_rate: learning_rate must be a finite number > 0; "
     "got inf"),
    (["--config.aggregator=zeno", "--config.aggregator_params.rho=0.001",
      "--config.validation_batch_size=0"],
     "--config.validation_batch_size: validation_batch_size must be a "
     "positive int; got 0"),
    (["--config.aggregator=krum", "--config.num_byzantine=2",
      "--config.attack=zero", "--config.aggregator_params.num_byzantine=1"],
     "--config.aggregator_params: aggregator_params sets num_byzantine=1 "
     "but num_byzantine=2"),
    (["--config.batch_size=5000"],
     "--config.batch_size: batch_size=5000 is larger than worker"),
    (["--config=no/such/file.py"], "--config=no/such/file.py: no such file"),
])
def test_configuration_errors_are_one_line_naming_the_flag(tmp_path, args,
                                                           message):
  out = _train(f"--workdir={tmp_path / 'run'}", *args)
  assert out.returncode == 2, out.stderr
  assert out.stderr.startswith("error: "), out.stderr
  assert message in out.stderr, out.stderr
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert not (tmp_path / "run" / metrics_io.METRICS_FILE).exists()


def test_parameters_are_python_literals(tmp_path):
  # "inf" is text (non_finite takes the string), 0.5 a number.
  workdir = tmp_path / "run"
  out = _train(f"--workdir={workdir}", *_SMALL, "--config.steps=1",
               "--config.log_every=1", "--config.checkpoint_every=1",
               "--config.num_byzantine=1", "--config.attack=non_finite",
               "--config.attack_params.value=inf",
               "--config.aggregator=trimmed_mean",
               "--config.preaggregation=static_clipping",
               "--config.preaggregation_params.max_norm=0.5")
  assert out.returncode == 0, out.stderr
  saved = metrics_io.read_config(workdir)
  assert saved["attack_params"] == {"value": "inf"}
  assert saved["preaggregation_params"] == {"max_norm": 0.5}


@pytest.fixture(scope="module")
def krum_run(tmp_path_factory):
  """A finished launcher run of a shipped config with overrides."""
  workdir = tmp_path_factory.mktemp("krum") / "run"
  out = _train(f"--workdir={workdir}", "--config=mnist_krum_ipm", *_SMALL,
               "--config.num_workers=7", "--config.num_byzantine=2",
               "--config.steps=10")
  assert out.returncode == 0, out.stderr
  return workdir


def test_resume_keeps_the_saved_configuration(tmp_path, krum_run):
  workdir = tmp_path / "run"
  shutil.copytree(krum_run, workdir)
  out = _train(f"--workdir={workdir}", "--resume", "--config.steps=20",
               "--config.log_every=10")
  assert out.returncode == 0, out.stderr
  assert f"resumed {workdir} at step 10" in out.stdout
  assert [r["step"] for r in metrics_io.read(workdir)] == [5, 10, 20]
  saved = TrainConfig.from_json(metrics_io.read_config(workdir))
  assert (saved.aggregator, saved.num_workers, saved.steps,
          saved.log_every) == ("krum", 7, 20, 10)


@pytest.mark.parametrize("args,message", [
    (["--config.learning_rate=0.5"],
     "--config.learning_rate cannot change when resuming"),
    (["--config.aggregator_params.rho=1"],
     "--config.aggregator_params cannot change when resuming"),
    (["--config=mnist_mlp"], "--config with --resume"),
])
def test_resume_refuses_other_changes(krum_run, args, message):
  out = _train(f"--workdir={krum_run}", "--resume", *args)
  assert out.returncode == 2
  assert message in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("remove,message", [
    (metrics_io.CONFIG_FILE, "config.json is missing"),
    ("workdir", "--resume needs --workdir"),
])
def test_resume_errors_are_one_line(tmp_path, krum_run, remove, message):
  workdir = tmp_path / "run"
  shutil.copytree(krum_run, workdir)
  args = ["--resume"]
  if remove != "workdir":
    os.remove(workdir / remove)
    args.append(f"--workdir={workdir}")
  out = _train(*args, cwd=tmp_path)
  assert out.returncode == 2
  assert message in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130),
                                           (signal.SIGTERM, 143)])
def test_signal_saves_the_step_reached_and_prints_the_resume_command(
    tmp_path, signum, status):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(
      [*_TRAIN, f"--workdir={workdir}", *_SMALL, "--config.steps=100000",
       "--config.log_every=1000", "--config.checkpoint_every=1000"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lines = []
  deadline = time.monotonic() + 240
  # The first line comes before compilation, the next after the first step.
  while not any(line.startswith("step 1/100000 ran in") for line in lines):
    assert time.monotonic() < deadline and proc.poll() is None, lines
    lines.append(proc.stdout.readline())
  assert any(line.startswith("training steps 1-100000") for line in lines)
  time.sleep(1)
  proc.send_signal(signum)
  stdout, stderr = proc.communicate(timeout=120)
  assert proc.returncode == status, stderr
  assert "Traceback" not in stderr
  step = checkpoint.latest_step(workdir)
  assert 1 <= step < 100000
  name = signal.Signals(signum).name
  assert (f"interrupted by {name}: stopped at step {step} of 100000; the "
          f"checkpoint in {workdir}/checkpoints holds step {step}") in stderr
  assert f"-m distoptax.experiments.train --workdir={workdir} --resume" in (
      stderr)
  assert metrics_io.read(workdir)[-1]["step"] == step
  # The checkpoint is consistent: resumed for 3 more steps, the run ends
  # where an uninterrupted one does.
  config = TrainConfig.from_json(metrics_io.read_config(workdir))
  target = dataclasses.replace(config, steps=step + 3)
  resumed = trainer.train(target, str(workdir), resume=True,
                          progress=lambda _: None)
  full = trainer.train(target, str(tmp_path / "full"),
                       progress=lambda _: None)
  jax.tree.map(np.testing.assert_array_equal, full.params, resumed.params)
