"""Damaged run files and interrupted runs: clear errors, resumes that match."""

import dataclasses
import os
import shutil

import jax
import numpy as np
import pytest

from distoptax.experiments import checkpoint
from distoptax.experiments import metrics_io
from distoptax.experiments import trainer
from distoptax.experiments.config import TrainConfig

SMALL = TrainConfig(dataset="digits", hidden=(16,), num_workers=4,
                    batch_size=8, steps=30, log_every=5, checkpoint_every=10,
                    learning_rate=0.05)


def _quiet(_):
  pass


def _rows(workdir):
  return [{k: v for k, v in r.items() if k != "elapsed_seconds"}
          for r in metrics_io.read(workdir)]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  """An uninterrupted run of SMALL."""
  workdir = tmp_path_factory.mktemp("full")
  return trainer.train(SMALL, str(workdir), progress=_quiet)


class _Crash(Exception):
  pass


def _crashed_at_25(workdir) -> str:
  """A run that died after logging step 25 (checkpoints of 10 and 20)."""

  def crash(line):
    if line.startswith("step 25/"):
      raise _Crash

  with pytest.raises(_Crash):
    trainer.train(SMALL, str(workdir), progress=crash)
  return str(workdir)


def _assert_same_params(a, b):
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_stop_request_saves_the_current_step_and_resumes(tmp_path, full):
  steps = []

  def stop_after_13():
    return len(steps) >= 13

  with pytest.raises(trainer.Interrupted, match="holds step 13") as e:
    trainer.train(SMALL, str(tmp_path), progress=_quiet,
                  on_step=lambda step, _: steps.append(step),
                  should_stop=stop_after_13)
  assert e.value.step == 13
  assert checkpoint.latest_step(tmp_path) == 13
  # The steps since the last log are logged before the checkpoint.
  assert [r["step"] for r in metrics_io.read(tmp_path)] == [5, 10, 13]
  resumed = trainer.train(SMALL, str(tmp_path), resume=True, progress=_quiet)
  _assert_same_params(full, resumed)
  assert [r["step"] for r in metrics_io.read(tmp_path)] == [
      5, 10, 13, 15, 20, 25, 30]


def test_torn_last_metrics_line_is_dropped_and_its_step_rerun(tmp_path, full):
  workdir = _crashed_at_25(tmp_path)
  with open(os.path.join(workdir, metrics_io.METRICS_FILE), "a") as f:
    f.write('{"step": 30, "train_lo')
  with pytest.raises(metrics_io.RunFileError, match="ends with a torn line"):
    metrics_io.read(workdir)
  lines = []
  resumed = trainer.train(SMALL, workdir, resume=True, progress=lines.append)
  assert any("dropped the torn last line" in line for line in lines)
  _assert_same_params(full, resumed)
  assert _rows(workdir) == _rows(full.workdir)


def test_damaged_metrics_line_is_named(tmp_path):
  workdir = _crashed_at_25(tmp_path)
  path = os.path.join(workdir, metrics_io.METRICS_FILE)
  lines = open(path).read().splitlines()
  lines[1] = lines[1][:20]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(metrics_io.RunFileError, match="line 2 is not a JSON"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)


def test_missing_config_json_is_named(tmp_path):
  workdir = _crashed_at_25(tmp_path)
  os.remove(os.path.join(workdir, metrics_io.CONFIG_FILE))
  with pytest.raises(metrics_io.RunFileError, match="config.json is missing"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)


def _truncate_largest_file(directory):
  files = [os.path.join(d, f) for d, _, names in os.walk(directory)
           for f in names]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)


def test_truncated_checkpoint_says_which_and_what_to_do(tmp_path, full):
  workdir = _crashed_at_25(tmp_path)
  latest = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, "20")
  _truncate_largest_file(os.path.join(latest, "state"))
  with pytest.raises(checkpoint.CheckpointError,
                     match=f"checkpoint {latest} is damaged .*; delete "
                     f"{latest} to resume from step 10"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)
  # Doing what the message says resumes from step 10, to the same end.
  shutil.rmtree(latest)
  resumed = trainer.train(SMALL, workdir, resume=True, progress=_quiet)
  _assert_same_params(full, resumed)


def test_empty_checkpoint_is_damaged(tmp_path):
  workdir = _crashed_at_25(tmp_path)
  latest = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, "20")
  for name in os.listdir(latest):
    path = os.path.join(latest, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  with pytest.raises(checkpoint.CheckpointError, match="20 is damaged"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)


def test_foreign_checkpoint_is_named(tmp_path):
  workdir = _crashed_at_25(tmp_path / "mine")
  other = dataclasses.replace(SMALL, hidden=(8,), steps=20)
  trainer.train(other, str(tmp_path / "other"), progress=_quiet)
  shutil.rmtree(os.path.join(workdir, checkpoint.CHECKPOINT_DIR))
  shutil.copytree(tmp_path / "other" / checkpoint.CHECKPOINT_DIR,
                  os.path.join(workdir, checkpoint.CHECKPOINT_DIR))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"written by another kind of run: .*Dense_0.*"
                     r"float32\[4, 8\] there and float32\[4, 16\] here"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)


def test_checkpoint_of_another_configuration_is_named(tmp_path):
  workdir = _crashed_at_25(tmp_path / "mine")
  other = dataclasses.replace(SMALL, learning_rate=0.5, steps=20)
  trainer.train(other, str(tmp_path / "other"), progress=_quiet)
  shutil.rmtree(os.path.join(workdir, checkpoint.CHECKPOINT_DIR))
  shutil.copytree(tmp_path / "other" / checkpoint.CHECKPOINT_DIR,
                  os.path.join(workdir, checkpoint.CHECKPOINT_DIR))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"another configuration .*learning_rate"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)


def test_legacy_npz_checkpoint_is_named(tmp_path):
  workdir = _crashed_at_25(tmp_path)
  shutil.rmtree(os.path.join(workdir, checkpoint.CHECKPOINT_DIR))
  np.savez(os.path.join(workdir, checkpoint.LEGACY_FILE), leaf_00000=0)
  with pytest.raises(checkpoint.CheckpointError, match="older distoptax"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)


def test_nan_stop_names_the_last_checkpoint(tmp_path):
  config = dataclasses.replace(SMALL, dataset="least_squares", model="linear",
                               learning_rate=50.0, steps=200)
  with pytest.raises(trainer.NonFiniteError,
                     match=r"(the last checkpoint holds step \d+|no "
                     r"checkpoint was written yet)"):
    trainer.train(config, str(tmp_path), progress=_quiet)
