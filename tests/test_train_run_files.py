"""Interrupted, resumed and damaged runs: resumes that match an uninterrupted
run (parameters, metrics and simulated seconds), clear errors otherwise."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from distoptax.experiments import checkpoint
from distoptax.experiments import metrics_io
from distoptax.experiments import trainer
from distoptax.experiments.config import TrainConfig

# The tests share module fixtures: one xdist worker runs them all (pytest -n 2
# --dist loadgroup).
pytestmark = pytest.mark.xdist_group("train_run_files")

# Stragglers and a static imbalance make every step's simulated seconds
# depend on the clock's per-worker draws, which a resume must continue.
SMALL = TrainConfig(dataset="digits", hidden=(16,), num_workers=4,
                    batch_size=8, steps=30, log_every=5, checkpoint_every=10,
                    learning_rate=0.05, straggler="exponential",
                    straggler_params=(("mean", 0.02),),
                    imbalance=(1.0, 1.0, 1.5, 1.0))


def _quiet(_):
  pass


def _rows(workdir):
  return [{k: v for k, v in r.items() if k != "elapsed_seconds"}
          for r in metrics_io.read(workdir)]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  """An uninterrupted run of SMALL (its workdir is not to be changed)."""
  workdir = tmp_path_factory.mktemp("full")
  return trainer.train(SMALL, str(workdir), progress=_quiet)


def _copy(run, workdir) -> str:
  shutil.copytree(run.workdir, workdir)
  return str(workdir)


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
  rows = _rows(tmp_path)
  assert [r["step"] for r in rows] == [5, 10, 13, 15, 20, 25, 30]
  # The rows are those of the uninterrupted run, simulated seconds included,
  # but for the extra row of step 13 and the train loss of step 15 (the
  # mean over steps 14-15 instead of 11-15).
  without_train_loss = lambda rows: [
      {k: v for k, v in r.items() if k != "train_loss"} for r in rows]
  assert without_train_loss(r for r in rows if r["step"] != 13) == (
      without_train_loss(_rows(full.workdir)))
  assert [r for r in rows if r["step"] > 15] == [
      r for r in _rows(full.workdir) if r["step"] > 15]


def test_simulated_seconds_depend_on_the_clock_draws(full):
  # Stragglers make the steps unequal: a test of resumed simulated seconds
  # would not see a clock restarted from its saved total alone otherwise.
  seconds = np.array([r["simulated_seconds"] for r in _rows(full.workdir)])
  gaps = np.diff(np.concatenate([[0.0], seconds]))
  assert np.ptp(gaps) > 0.01
  assert np.all(gaps > 5 * SMALL.compute_seconds * 1.5)


def test_checkpoint_holds_the_clock_of_its_step(full):
  checkpoints = checkpoint.Checkpoints(full.workdir)
  clock = trainer.system_model(SMALL).clock
  for step in checkpoints.steps():
    state = clock.restore(checkpoints.meta(step)["clock"])
    np.testing.assert_array_equal(state.steps, [step] * SMALL.num_workers)
    row, = [r for r in _rows(full.workdir) if r["step"] == step]
    assert float(state.time.max()) == row["simulated_seconds"]


def test_checkpoint_without_a_clock_is_named(tmp_path, full):
  workdir = _copy(full, tmp_path / "run")
  meta_file = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, "30", "meta",
                           "metadata")
  with open(meta_file) as f:
    meta = json.load(f)
  del meta["clock"]
  with open(meta_file, "w") as f:
    json.dump(meta, f)
  longer = dataclasses.replace(SMALL, steps=40)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"checkpoint .*30 holds no usable simulated clock "
                     r"state \(it has none\)"):
    trainer.train(longer, workdir, resume=True, progress=_quiet)


def test_resume_can_extend_the_number_of_steps(tmp_path, full):
  shorter = dataclasses.replace(SMALL, steps=20)
  trainer.train(shorter, str(tmp_path), progress=_quiet)
  extended = trainer.train(SMALL, str(tmp_path), resume=True,
                           progress=_quiet)
  _assert_same_params(full, extended)
  assert _rows(tmp_path) == _rows(full.workdir)


def test_resume_refuses_a_changed_configuration(tmp_path, full):
  workdir = _copy(full, tmp_path / "run")
  changed = dataclasses.replace(SMALL, learning_rate=0.5, steps=40)
  with pytest.raises(ValueError, match="learning_rate"):
    trainer.train(changed, workdir, resume=True, progress=_quiet)


def test_existing_run_is_never_overwritten(tmp_path, full):
  workdir = _copy(full, tmp_path / "run")
  before = metrics_io.read(workdir)
  with pytest.raises(ValueError, match="already holds a run"):
    trainer.train(SMALL, workdir, progress=_quiet)
  assert metrics_io.read(workdir) == before
  with pytest.raises(ValueError, match="no checkpoint"):
    trainer.train(SMALL, str(tmp_path / "new"), resume=True, progress=_quiet)


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


def test_damaged_metrics_line_is_named(tmp_path, full):
  workdir = _copy(full, tmp_path / "run")
  path = os.path.join(workdir, metrics_io.METRICS_FILE)
  lines = open(path).read().splitlines()
  lines[1] = lines[1][:20]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(metrics_io.RunFileError, match="line 2 is not a JSON"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)


def test_missing_config_json_is_named(tmp_path, full):
  workdir = _copy(full, tmp_path / "run")
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
  workdir = _copy(full, tmp_path / "run")
  latest = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, "30")
  _truncate_largest_file(os.path.join(latest, "state"))
  with pytest.raises(checkpoint.CheckpointError,
                     match=f"checkpoint {latest} is damaged .*; delete "
                     f"{latest} to resume from step 20"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)
  # Doing what the message says resumes from step 20, to the same end.
  shutil.rmtree(latest)
  resumed = trainer.train(SMALL, workdir, resume=True, progress=_quiet)
  _assert_same_params(full, resumed)
  assert _rows(workdir) == _rows(full.workdir)


def test_empty_checkpoint_is_damaged(tmp_path, full):
  workdir = _copy(full, tmp_path / "run")
  latest = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, "30")
  for name in os.listdir(latest):
    path = os.path.join(latest, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  with pytest.raises(checkpoint.CheckpointError, match="30 is damaged"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)


def _with_checkpoints_of(workdir: str, other: TrainConfig, tmp_path) -> None:
  """Replaces the checkpoints in ``workdir`` by those of a run of ``other``."""
  trainer.train(other, str(tmp_path / "other"), progress=_quiet)
  shutil.rmtree(os.path.join(workdir, checkpoint.CHECKPOINT_DIR))
  shutil.copytree(tmp_path / "other" / checkpoint.CHECKPOINT_DIR,
                  os.path.join(workdir, checkpoint.CHECKPOINT_DIR))


def test_foreign_checkpoint_is_named(tmp_path, full):
  workdir = _copy(full, tmp_path / "run")
  _with_checkpoints_of(
      workdir, dataclasses.replace(SMALL, hidden=(8,), steps=10), tmp_path)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"written by another kind of run: .*Dense_0.*"
                     r"float32\[8\] there and float32\[16\] here"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)


def test_checkpoint_of_another_configuration_is_named(tmp_path, full):
  workdir = _copy(full, tmp_path / "run")
  _with_checkpoints_of(
      workdir, dataclasses.replace(SMALL, learning_rate=0.5, steps=10),
      tmp_path)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"another configuration .*learning_rate"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)


def test_legacy_npz_checkpoint_is_named(tmp_path, full):
  workdir = _copy(full, tmp_path / "run")
  shutil.rmtree(os.path.join(workdir, checkpoint.CHECKPOINT_DIR))
  np.savez(os.path.join(workdir, checkpoint.LEGACY_FILE), leaf_00000=0)
  with pytest.raises(checkpoint.CheckpointError, match="older distoptax"):
    trainer.train(SMALL, workdir, resume=True, progress=_quiet)
