"""The launcher with compressors, error feedback and PowerSGD."""

import dataclasses

import jax
import pytest

from distoptax.experiments import metrics_io
from distoptax.experiments import trainer
from distoptax.experiments.config import TrainConfig

SMALL = TrainConfig(dataset="digits", hidden=(16,), num_workers=4,
                    batch_size=8, steps=10, log_every=5, checkpoint_every=10,
                    learning_rate=0.05)


def _quiet(_):
  pass


def test_powersgd_sends_its_factors_only(tmp_path):
  config = dataclasses.replace(SMALL, compressor="powersgd",
                               compressor_params=(("rank", 1),))
  result = trainer.train(config, str(tmp_path), progress=_quiet)
  row = metrics_io.read(tmp_path)[-1]
  shapes = [x.shape for x in jax.tree.leaves(result.params)]
  # Rank 1: n + m floats per matrix that is worth compressing (PyTorch's
  # rule (n + m) * r * 2 < n * m), the whole leaf otherwise.
  expected = sum(
      4 * ((s[0] + s[1]) if len(s) == 2 and (s[0] + s[1]) * 2 < s[0] * s[1]
           else s[0] * (s[1] if len(s) == 2 else 1))
      for s in shapes)
  assert row["wire_bytes_step"] == expected
  assert row["coded_bytes"] == row["wire_bytes"]


@pytest.mark.parametrize("changes,message", [
    (dict(compressor="powersgd", compressor_params=(("rank", 1),),
          aggregator="median"), r"powersgd' averages by itself"),
    (dict(compressor="powersgd", compressor_params=(("rank", 1),),
          error_feedback=True), r"keeps its own error feedback"),
    (dict(compressor="powersgd"), r"compressor powersgd needs parameters "
     r"\['rank'\]"),
    (dict(compressor="zip"), r"unknown compressor 'zip'; known compressors: "
     r".*identity.*powersgd"),
])
def test_bad_compressor_settings_are_named(tmp_path, changes, message):
  with pytest.raises(ValueError, match=message):
    trainer.train(dataclasses.replace(SMALL, **changes), str(tmp_path),
                  progress=_quiet)


def test_error_feedback_with_identity_changes_nothing(tmp_path):
  plain = trainer.train(SMALL, str(tmp_path / "plain"), progress=_quiet)
  with_ef = trainer.train(dataclasses.replace(SMALL, error_feedback=True),
                          str(tmp_path / "ef"), progress=_quiet)
  for a, b in zip(jax.tree.leaves(plain.params),
                  jax.tree.leaves(with_ef.params)):
    assert abs(a - b).max() < 1e-6


def test_three_lc_logs_coded_bytes_below_wire_bytes(tmp_path):
  config = dataclasses.replace(
      SMALL, compressor="three_lc",
      compressor_params=(("sparsity_multiplier", 1.5),), error_feedback=True)
  result = trainer.train(config, str(tmp_path), progress=_quiet)
  row = metrics_io.read(tmp_path)[-1]
  dense = sum(x.size * 4 for x in jax.tree.leaves(result.params))
  # Five ternary values per byte plus a float32 scale per leaf.
  num_leaves = len(jax.tree.leaves(result.params))
  assert row["wire_bytes_step"] == sum(
      -(-x.size // 5) for x in jax.tree.leaves(result.params)) + (
          4 * num_leaves)
  assert row["wire_bytes_step"] < dense / 5
  assert 0 < row["coded_bytes"] < row["wire_bytes"]


def test_top_k_with_error_feedback_trains(tmp_path):
  base = dataclasses.replace(SMALL, steps=40, log_every=20,
                             checkpoint_every=20, learning_rate=0.3)
  plain = trainer.train(base, str(tmp_path / "plain"), progress=_quiet)
  sparse = trainer.train(
      dataclasses.replace(base, compressor="top_k",
                          compressor_params=(("fraction", 0.05),),
                          error_feedback=True),
      str(tmp_path / "topk"), progress=_quiet)
  assert sparse.test_accuracy > plain.test_accuracy - 0.15
  row = metrics_io.read(tmp_path / "topk")[-1]
  dense = sum(x.size * 4 for x in jax.tree.leaves(plain.params))
  assert row["wire_bytes_step"] < dense / 5
