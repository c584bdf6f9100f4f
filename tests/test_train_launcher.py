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
from distoptax.experiments import config as config_lib
from distoptax.experiments import metrics_io
from distoptax.experiments import train
from distoptax.experiments import trainer
from distoptax.experiments.config import TrainConfig

# The tests share module fixtures: one xdist worker runs them all (pytest -n 2
# --dist loadgroup).
pytestmark = pytest.mark.xdist_group("train_launcher")

_TRAIN = [sys.executable, "-m", "distoptax.experiments.train"]
_SMALL = ["--config.dataset=digits", "--config.hidden=16",
          "--config.num_workers=4", "--config.batch_size=8",
          "--config.learning_rate=0.05", "--config.log_every=5",
          "--config.checkpoint_every=10"]


def _quiet(_):
  pass


def _train(*args, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([*_TRAIN, *args], capture_output=True, text=True,
                        timeout=300, **kwargs)


def _usage_error(*args: str) -> str:
  """The one-line message the launcher prints for this command line."""
  with pytest.raises(train.UsageError) as e:
    train.parse(["train", *args])
  message = str(e.value)
  assert "\n" not in message, message
  return message


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
    (["--config=no/such/file.py"], "--config=no/such/file.py: no such file"),
    (["--num_processes=2", "--process_id=2",
      "--coordinator_address=127.0.0.1:1"],
     "--process_id=2 must be below --num_processes=2"),
    (["--num_processes=2"], "a multi-process run needs --coordinator_address"),
])
def test_configuration_errors_are_one_line_naming_the_flag(
    tmp_path, monkeypatch, args, message):
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
  assert message in _usage_error(f"--workdir={tmp_path / 'run'}", *args)


def test_errors_raised_by_the_run_name_the_flag():
  error = config_lib.ConfigError("batch_size", "batch_size=5000 is larger")
  assert train.error_line(error) == (
      "--config.batch_size: batch_size=5000 is larger")
  with pytest.raises(ValueError) as e:
    trainer.aggregation_rule(TrainConfig(aggregator="kroom"))
  assert train.error_line(e.value).startswith(
      "unknown aggregator 'kroom'; known aggregators: ")


@pytest.mark.parametrize("args,message", [
    # Raised by the parser, and by the run once the dataset is split.
    (["--config.hidden=abc"],
     "--config.hidden: hidden must be a tuple of ints; got ('abc',)"),
    (["--config.batch_size=5000"],
     "--config.batch_size: batch_size=5000 is larger than worker"),
])
def test_the_command_line_prints_one_line_and_exits_2(tmp_path, args,
                                                      message):
  out = _train(f"--workdir={tmp_path / 'run'}", *args)
  assert out.returncode == 2, out.stderr
  assert out.stderr.startswith(f"error: {message}"), out.stderr
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert not (tmp_path / "run" / metrics_io.METRICS_FILE).exists()


def test_parameters_are_python_literals(tmp_path):
  # "inf" is text (non_finite takes the string), 0.5 a number.
  config = train.parse([
      "train", f"--workdir={tmp_path}", *_SMALL,
      "--config.num_byzantine=1", "--config.attack=non_finite",
      "--config.attack_params.value=inf",
      "--config.aggregator=trimmed_mean",
      "--config.preaggregation=static_clipping",
      "--config.preaggregation_params.max_norm=0.5"]).config
  assert dict(config.attack_params) == {"value": "inf"}
  assert dict(config.preaggregation_params) == {"max_norm": 0.5}
  # The registered factories accept them.
  assert trainer.update_attack(config) is not None
  assert trainer.aggregation_rule(config) is not None


@pytest.fixture(scope="module")
def krum_run(tmp_path_factory):
  """A finished run of a shipped config with command-line overrides."""
  workdir = tmp_path_factory.mktemp("krum") / "run"
  run = train.parse(["train", f"--workdir={workdir}", "--config=mnist_krum_ipm",
                     *_SMALL, "--config.num_workers=7",
                     "--config.num_byzantine=2", "--config.steps=10"])
  assert (run.config.aggregator, run.config.num_workers) == ("krum", 7)
  trainer.train(run.config, run.workdir, progress=_quiet)
  return workdir


def test_resume_keeps_the_saved_configuration(tmp_path, krum_run):
  workdir = tmp_path / "run"
  shutil.copytree(krum_run, workdir)
  run = train.parse(["train", f"--workdir={workdir}", "--resume",
                     "--config.steps=20", "--config.log_every=10"])
  assert run.resume
  lines = []
  trainer.train(run.config, run.workdir, resume=True, progress=lines.append)
  assert f"resumed {workdir} at step 10" in lines
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
  assert message in _usage_error(f"--workdir={krum_run}", "--resume", *args)


def test_resume_errors_are_one_line(tmp_path, krum_run):
  assert "--resume needs --workdir" in _usage_error("--resume")
  workdir = tmp_path / "run"
  shutil.copytree(krum_run, workdir)
  os.remove(workdir / metrics_io.CONFIG_FILE)
  assert "config.json is missing" in _usage_error(f"--workdir={workdir}",
                                                  "--resume")


def test_signals_become_a_stop_request():
  # SIGTERM runs the whole launcher below; SIGINT takes the same path. The
  # installed handler is called directly: no signal reaches the test process.
  before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  for signum in before:
    with train._StopOnSignal() as stop:
      handler = signal.getsignal(signum)
      assert handler == stop._handle and not stop()
      handler(signum, None)
      assert stop() and stop.received == signum
    assert {s: signal.getsignal(s) for s in before} == before
  assert train._SIGNAL_EXIT == {signal.SIGINT: 130, signal.SIGTERM: 143}


def test_signal_saves_the_step_reached_and_prints_the_resume_command(
    tmp_path):
  workdir = tmp_path / "run"
  # A linear model on synthetic data: the quickest run to start.
  proc = subprocess.Popen(
      [*_TRAIN, f"--workdir={workdir}", "--config.dataset=least_squares",
       "--config.model=linear", "--config.num_workers=4",
       "--config.batch_size=8", "--config.steps=100000",
       "--config.log_every=1000", "--config.checkpoint_every=1000"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lines = []
  deadline = time.monotonic() + 240
  # The first line comes before compilation, the next after the first step.
  while not any(line.startswith("step 1/100000 ran in") for line in lines):
    assert time.monotonic() < deadline and proc.poll() is None, lines
    lines.append(proc.stdout.readline())
  assert any(line.startswith("training steps 1-100000") for line in lines)
  time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 143, stderr
  assert "Traceback" not in stderr
  step = checkpoint.latest_step(workdir)
  assert 1 <= step < 100000
  assert ("interrupted by SIGTERM: stopped at step "
          f"{step} of 100000; the checkpoint in {workdir}/checkpoints holds "
          f"step {step}") in stderr
  assert f"-m distoptax.experiments.train --workdir={workdir} --resume" in (
      stderr)
  assert metrics_io.read(workdir)[-1]["step"] == step
  # The checkpoint is consistent: resumed for 3 more steps, the run ends
  # where an uninterrupted one does.
  config = TrainConfig.from_json(metrics_io.read_config(workdir))
  target = dataclasses.replace(config, steps=step + 3)
  resumed = trainer.train(target, str(workdir), resume=True, progress=_quiet)
  full = trainer.train(target, str(tmp_path / "full"), progress=_quiet)
  jax.tree.map(np.testing.assert_array_equal, full.params, resumed.params)
