"""The launcher with robust rules, pre-aggregation and attacks."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax.experiments import datasets
from distoptax.experiments import metrics_io
from distoptax.experiments import models
from distoptax.experiments import partition
from distoptax.experiments import trainer
from distoptax.experiments.configs import mnist_krum_ipm
from distoptax.experiments.config import TrainConfig

SMALL = TrainConfig(dataset="digits", hidden=(16,), num_workers=6,
                    batch_size=8, steps=10, log_every=5, checkpoint_every=10,
                    learning_rate=0.05, momentum=0.0)


def _quiet(_):
  pass


def test_krum_under_ipm_logs_which_workers_it_selected(tmp_path):
  config = dataclasses.replace(
      SMALL, num_workers=8, aggregator="krum", num_byzantine=2,
      attack="inner_product_manipulation",
      attack_params=(("epsilon", 0.1),))
  trainer.train(config, str(tmp_path), progress=_quiet)
  rows = metrics_io.read(tmp_path)
  assert any(sum(r["selected_fraction"][:2]) > 0 for r in rows)
  for row in rows:
    fraction = np.asarray(row["selected_fraction"])
    assert fraction.shape == (8,)
    # Krum selects exactly one worker per step: the steps on which it kept a
    # Byzantine update are the sum of the two Byzantine workers' fractions,
    # twice their mean.
    np.testing.assert_allclose(fraction.sum(), 1.0, rtol=1e-6)
    assert row["any_byzantine_selected_fraction"] == pytest.approx(
        fraction[0] + fraction[1])
    assert row["byzantine_selected_fraction_mean"] == pytest.approx(
        (fraction[0] + fraction[1]) / 2)
    assert "byzantine_selected_fraction" not in row
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["attack_params"] == {"epsilon": 0.1}


def test_mean_keeps_no_selection_and_logs_none(tmp_path):
  trainer.train(SMALL, str(tmp_path), progress=_quiet)
  row = metrics_io.read(tmp_path)[-1]
  assert not [k for k in row if "selected" in k]


def test_attack_changes_the_run_and_a_robust_rule_resists_it(tmp_path):
  base = dataclasses.replace(SMALL, steps=40, log_every=20,
                             checkpoint_every=20, learning_rate=0.5,
                             num_workers=10)
  clean = trainer.train(base, str(tmp_path / "clean"), progress=_quiet)
  attacked = dataclasses.replace(base, num_byzantine=2, attack="sign_flip",
                                 attack_params=(("scale", 20.0),))
  # The mean ascends the loss: it diverges (stopped on NaN) or stalls.
  try:
    broken = trainer.train(attacked, str(tmp_path / "mean"),
                           progress=_quiet).test_accuracy
  except trainer.NonFiniteError:
    broken = 0.0
  robust = trainer.train(
      dataclasses.replace(attacked, aggregator="median"),
      str(tmp_path / "median"), progress=_quiet)
  median_clean = trainer.train(
      dataclasses.replace(base, aggregator="median"),
      str(tmp_path / "median_clean"), progress=_quiet)
  assert clean.test_accuracy > 0.8
  assert broken < 0.3
  # The median of small noisy batches learns slower than the mean, attack or
  # not; what the attack must not do is pull it further down.
  assert robust.test_accuracy > median_clean.test_accuracy - 0.1
  assert robust.test_accuracy > broken + 0.25


def test_preaggregation_wraps_the_rule(tmp_path):
  config = dataclasses.replace(
      SMALL, num_workers=10, aggregator="krum", num_byzantine=1,
      attack="zero", preaggregation="bucketing",
      preaggregation_params=(("bucket_size", 2),))
  trainer.train(config, str(tmp_path), progress=_quiet)
  row = metrics_io.read(tmp_path)[-1]
  # Krum behind bucketing selects among 5 buckets, not 10 workers.
  assert len(row["selected_fraction"]) == 5
  assert not [k for k in row if "byzantine" in k]


def test_zeno_receives_a_validation_oracle(tmp_path):
  config = dataclasses.replace(
      SMALL, aggregator="zeno", aggregator_params=(("rho", 0.0005),),
      num_byzantine=2, attack="sign_flip", attack_params=(("scale", 10.0),))
  trainer.train(config, str(tmp_path), progress=_quiet)
  row = metrics_io.read(tmp_path)[-1]
  # Zeno keeps n - b = 4 of the 6 candidates and drops the sign flippers.
  np.testing.assert_allclose(sum(row["selected_fraction"]), 4.0, rtol=1e-6)
  assert row["byzantine_selected_fraction_mean"] == 0.0
  assert row["any_byzantine_selected_fraction"] == 0.0


def test_validation_batch_depends_on_the_step_only():
  data = datasets.load_dataset("digits")
  model = models.make_model("logistic_regression",
                            num_outputs=data.num_outputs)
  loss_fn, _ = trainer._loss_and_metrics(data, model)
  oracle = trainer._validation_oracle(data, loss_fn, 16, seed=0)
  params = model.init(jax.random.key(1), data.x_train[:1])

  def loss_at(step):
    state = trainer.dist.TrainState(jnp.int32(step), params, ())
    return float(oracle(state)["value_fn"](params))

  assert loss_at(3) == loss_at(3)
  assert loss_at(3) != loss_at(4)


def test_label_flip_flips_exactly_the_byzantine_rows():
  data = datasets.load_dataset("digits")
  parts = partition.pad_partition(
      partition.partition(data.y_train, 4, "iid", seed=0))
  clean = trainer._make_sampler(data, parts, 8, seed=0)
  config = dataclasses.replace(SMALL, num_workers=4, num_byzantine=1,
                               attack="label_flip")
  flipped = trainer._make_sampler(data, parts, 8, seed=0,
                                  flipped_workers=trainer._flipped_workers(
                                      config, data))
  (x0, y0), (x1, y1) = clean(7), flipped(7)
  np.testing.assert_array_equal(x0, x1)
  np.testing.assert_array_equal(y1[0], 9 - y0[0])
  np.testing.assert_array_equal(y1[1:], y0[1:])


def test_label_flip_refuses_regression_and_parameters(tmp_path):
  config = dataclasses.replace(SMALL, dataset="least_squares", model="linear",
                               num_byzantine=1, attack="label_flip")
  with pytest.raises(ValueError, match="label_flip.*regression"):
    trainer.train(config, str(tmp_path / "a"), progress=_quiet)
  config = dataclasses.replace(SMALL, num_byzantine=1, attack="label_flip",
                               attack_params=(("scale", 2.0),))
  with pytest.raises(ValueError, match="takes no parameters"):
    trainer.train(config, str(tmp_path / "b"), progress=_quiet)


@pytest.mark.parametrize("changes,message", [
    (dict(aggregator="krum", aggregator_params=(("radius", 1.0),)),
     r"unknown aggregator parameters \['radius'\]; krum accepts"),
    (dict(aggregator="zeno"), r"zeno needs parameters \['rho'\]"),
    (dict(num_byzantine=1, attack="gaussian", attack_params=(("sd", 1.0),)),
     r"unknown attack parameters \['sd'\]"),
    (dict(num_byzantine=1, attack="sign_flop"),
     r"unknown attack 'sign_flop'; known attacks: a_little_is_enough, "
     r"gaussian, inner_product_manipulation, label_flip"),
    (dict(preaggregation="nnm"),
     r"unknown preaggregation 'nnm'; known preaggregations: "
     r"adaptive_robust_clipping, bucketing, nearest_neighbor_mixing"),
    (dict(aggregator="krum", num_byzantine=2, attack="zero"),
     r"n=6.*f=2"),
])
def test_bad_names_and_parameters_are_named(tmp_path, changes, message):
  with pytest.raises(ValueError, match=message):
    trainer.train(dataclasses.replace(SMALL, **changes), str(tmp_path),
                  progress=_quiet)


@pytest.mark.parametrize("changes,message", [
    (dict(num_byzantine=2), r"attack='none' with num_byzantine=2"),
    (dict(attack="zero"), r"attack='zero' with num_byzantine=0"),
    (dict(num_byzantine=6, attack="zero"),
     r"num_byzantine must lie in \[0, num_workers=6\); got 6"),
    (dict(attack_params=(("epsilon", 1.0),)),
     r"attack_params=\{'epsilon': 1.0\} given but attack='none'"),
    (dict(preaggregation_params=(("bucket_size", 2),)),
     r"preaggregation_params=.* given but preaggregation='none'"),
    # Silent traps of the past: Zeno with no validation examples selected
    # every Byzantine worker; the rule's own f silently overrode the run's.
    (dict(aggregator="zeno", aggregator_params=(("rho", 0.001),),
          validation_batch_size=0),
     r"validation_batch_size must be a positive int; got 0"),
    (dict(aggregator="krum", aggregator_params=(("num_byzantine", 1),),
          num_byzantine=2, attack="zero"),
     r"aggregator_params sets num_byzantine=1 but num_byzantine=2"),
    (dict(learning_rate=float("inf")),
     r"learning_rate must be a finite number > 0; got inf"),
    (dict(learning_rate=float("nan")), r"learning_rate must be a finite"),
    (dict(seed=-1), r"seed must be >= 0; got -1"),
    (dict(num_workers=8.0), r"num_workers must be an int; got 8.0"),
    (dict(hidden=("64",)), r"hidden must be a tuple of ints"),
])
def test_config_validation(changes, message):
  with pytest.raises(ValueError, match=message) as e:
    dataclasses.replace(SMALL, **changes)
  # The launcher names the flag --config.<field>.
  assert e.value.field in {f.name for f in dataclasses.fields(TrainConfig)}


def test_the_rule_may_assume_byzantine_workers_the_run_has_not():
  config = dataclasses.replace(
      SMALL, aggregator="krum", aggregator_params=(("num_byzantine", 1),))
  assert dict(config.aggregator_params) == {"num_byzantine": 1}


def test_batch_larger_than_a_shard_is_refused(tmp_path):
  # 6 workers share the digits' training split: about 200 examples each.
  config = dataclasses.replace(SMALL, batch_size=300)
  with pytest.raises(ValueError, match=r"batch_size=300 is larger than "
                     r"worker \d+'s shard \(\d+ examples") as e:
    trainer.train(config, str(tmp_path), progress=_quiet)
  assert e.value.field == "batch_size"


def test_config_with_parameters_round_trips_through_json():
  config = dataclasses.replace(
      SMALL, aggregator="zeno", aggregator_params=(("rho", 0.01),),
      num_byzantine=1, attack="gaussian",
      attack_params=(("std", 3.0),), preaggregation="bucketing",
      preaggregation_params=(("bucket_size", 2),))
  assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == (
      config)


def test_krum_ipm_config_says_what_its_log_shows(tmp_path):
  # The config's docstring: Krum keeps a Byzantine update on (nearly) every
  # step, while each Byzantine worker is kept on about 1/11 of the steps.
  assert "any_byzantine_selected_fraction" in mnist_krum_ipm.__doc__
  config = dataclasses.replace(
      TrainConfig.from_json(mnist_krum_ipm.get_config().to_dict()),
      steps=20, log_every=20, checkpoint_every=20)
  trainer.train(config, str(tmp_path), progress=_quiet)
  row = metrics_io.read(tmp_path)[-1]
  assert row["any_byzantine_selected_fraction"] >= 0.9
  assert row["byzantine_selected_fraction_mean"] == pytest.approx(
      row["any_byzantine_selected_fraction"] / 11)
