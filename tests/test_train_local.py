"""The launcher's local algorithms: presets equal the library recipes,
options are checked, a period is priced as one, a resumed run continues
mid-period and ends bit-identical."""

import dataclasses
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.experiments import algorithms
from distoptax.experiments import metrics_io
from distoptax.experiments import trainer
from distoptax.experiments.config import ConfigError
from distoptax.experiments.config import TrainConfig
from tests import helpers

pytestmark = pytest.mark.xdist_group("train_local")

SMALL = dict(dataset="digits", hidden=(16,), num_workers=4, batch_size=8,
             learning_rate=0.05, momentum=0.0)


def _preset(name: str, **changes) -> TrainConfig:
  module = importlib.import_module(f"distoptax.experiments.configs.{name}")
  return dataclasses.replace(
      TrainConfig.from_json(module.get_config().to_dict()), **changes)


def _final_params(tx, num_workers, steps=6):
  run = dist.simulate(dist.data_parallel(helpers.mlp_loss, tx), num_workers)
  state = run.init(helpers.mlp_params(jax.random.key(1)))
  for t in range(steps):
    state, _ = run.step(state, helpers.worker_batches(t, num_workers, 4))
  return jax.tree.map(np.asarray, (state.params, trainer.model_of(state)))


RECIPES = {
    # Each shipped preset next to the library recipe it stands for.
    "local_fedavg_dirichlet": lambda c: dist.fedavg(c.learning_rate,
                                                    c.period),
    "local_fedprox_dirichlet": lambda c: dist.fedprox(
        c.learning_rate, c.period, c.proximal_mu),
    "local_fedadam_dirichlet": lambda c: dist.fedadam(
        c.learning_rate, c.period, c.outer_learning_rate, c.outer_momentum,
        c.outer_b2, c.outer_eps),
    "local_diloco": lambda c: dist.diloco(
        c.learning_rate, c.period, c.outer_learning_rate, c.outer_momentum,
        c.weight_decay, c.momentum, c.b2),
    "local_adaalter": lambda c: dist.local_adaalter(
        c.learning_rate, c.period, c.adaalter_eps, c.weight_decay),
    "mnist_cser": lambda c: dist.block_cser(
        c.learning_rate, c.cser_ratio1, c.cser_ratio2, c.period,
        seed=trainer.derived_seed(c.seed, trainer._AGGREGATE_SALT)),
    # Plain SGD has no state: keeping it (local_sgd) equals resetting it.
    "local_sgd": lambda c: dist.fedavg(c.learning_rate, c.period),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_presets_equal_the_library_recipes(name):
  config = _preset(name, num_workers=4, period=3)
  built = trainer.build_algorithm(config)
  assert not built.replicated_params
  ours = _final_params(built.tx, 4)
  theirs = _final_params(RECIPES[name](config), 4)
  jax.tree.map(np.testing.assert_array_equal, ours, theirs)


def test_slsgd_preset_equals_slsgd_under_the_same_attack():
  config = _preset("local_slsgd_attack", num_workers=5, num_byzantine=1,
                   period=2)
  attack = alg.attacks.sign_flip(1, scale=4.0)
  theirs = _final_params(dist.slsgd(config.learning_rate, 2, 0.5,
                                    num_trimmed=1, worker_transform=attack),
                         5)
  ours = _final_params(trainer.build_algorithm(config).tx, 5)
  jax.tree.map(np.testing.assert_array_equal, ours, theirs)


def test_adacomm_preset_needs_the_clock():
  built = trainer.build_algorithm(_preset("local_adacomm"))
  assert built.needs_time
  built = trainer.build_algorithm(_preset("local_adacomm",
                                          adacomm_interval_seconds=0.0,
                                          adacomm_interval=3))
  assert not built.needs_time


def test_cser_is_evaluated_on_the_mean_model():
  built = trainer.build_algorithm(_preset("mnist_cser"))
  params = {"w": jnp.arange(6.0).reshape(3, 2)}
  state = dist.TrainState(jnp.zeros((), jnp.int32), params, ())
  np.testing.assert_array_equal(trainer.model_of(state, built)["w"],
                                [2.0, 3.0])


def test_sync_is_the_synchronous_step():
  built = trainer.build_algorithm(TrainConfig(**SMALL))
  assert built.replicated_params and not built.needs_time


@pytest.mark.parametrize("changes, field, message", [
    (dict(period=4), "period", "period=4 is not used by algorithm='sync'"),
    (dict(proximal_mu=0.1), "proximal_mu", "not used by algorithm='sync'"),
    (dict(algorithm="adacomm", proximal_mu=0.1), "proximal_mu",
     "proximal_mu=0.1 is not used by algorithm='adacomm'"),
    (dict(algorithm="local_sgd", adacomm_form="paddle"), "adacomm_form",
     "not used by algorithm='local_sgd'"),
    (dict(algorithm="local_adaalter", outer_learning_rate=0.5),
     "outer_learning_rate", "not used by algorithm='local_adaalter'"),
    (dict(algorithm="local_sgd", weight_decay=0.1), "weight_decay",
     "weight_decay=0.1 is not used.*optimizer='sgd'"),
    (dict(algorithm="local_sgd", period=0), "period",
     "period must be an int >= 1; got 0"),
    (dict(algorithm="local_sgd", state_policy="avg"), "state_policy",
     "state_policy must be one of.*'avg'"),
    (dict(algorithm="fedavg"), "algorithm",
     "algorithm must be one of.*'fedavg'"),
    (dict(algorithm="local_sgd", proximal_mu=-0.1), "proximal_mu",
     "proximal_mu must be a finite number >= 0; got -0.1"),
    (dict(algorithm="local_sgd", outer_learning_rate=float("nan")),
     "outer_learning_rate", "outer_learning_rate must be a finite number"),
    (dict(algorithm="local_sgd", warmup_steps=-1), "warmup_steps",
     "warmup_steps must be an int >= 0; got -1"),
    (dict(algorithm="adacomm", period=8, adacomm_tau_max=4),
     "adacomm_tau_max", "adacomm_tau_max=4 is below AdaComm's tau_0"),
    (dict(algorithm="adacomm", adacomm_interval=2,
          adacomm_interval_seconds=1.0), "adacomm_interval_seconds",
     "not both"),
    (dict(algorithm="adacomm", adacomm_form="root"), "adacomm_form",
     "adacomm_form must be one of.*'root'"),
    (dict(algorithm="local_adaalter", momentum=0.9), "optimizer",
     "is its own optimizer"),
    (dict(algorithm="local_sgd", outer_optimizer="lamb"), "outer_optimizer",
     "outer_optimizer must be one of.*'lamb'"),
    (dict(algorithm="cser", cser_ratio1=4.0, cser_ratio2=8.0),
     "cser_ratio2", "cser_ratio2=8.0 exceeds cser_ratio1=4.0"),
    (dict(algorithm="cser", cser_ratio1=0.5), "cser_ratio1",
     "cser_ratio1 must be a finite number >= 1; got 0.5"),
    (dict(algorithm="local_sgd", cser_variant="csea"), "cser_variant",
     "not used by algorithm='local_sgd'"),
    (dict(algorithm="cser", cser_form="dense"), "cser_form",
     "cser_form must be one of.*'dense'"),
    (dict(optimizer="adam", nesterov=True), "nesterov",
     "nesterov=True is not used.*optimizer='adam'"),
])
def test_bad_schedule_options_name_the_flag(changes, field, message):
  with pytest.raises(ConfigError, match=message) as error:
    TrainConfig(**{**SMALL, **changes})
  assert error.value.field == field


@pytest.mark.parametrize("changes, message", [
    (dict(algorithm="local_sgd", compressor="powersgd"),
     "compressor 'powersgd' is a synchronous transformation"),
    (dict(algorithm="adacomm", num_byzantine=1, attack="sign_flip"),
     "algorithm='adacomm' takes no worker transform"),
    (dict(algorithm="local_adaalter", compressor="top_k",
          compressor_params=(("fraction", 0.1),)),
     "local_adaalter.*compressor='identity'"),
    (dict(algorithm="cser", aggregator="median"),
     "algorithm='cser' compresses with its own block sparsifiers"),
])
def test_unsupported_combinations_are_refused(changes, message):
  with pytest.raises(ValueError, match=message):
    trainer.build_algorithm(TrainConfig(**{**SMALL, **changes}))


def test_the_choices_are_the_registries():
  from distoptax.experiments import config as config_lib
  choices = config_lib._CHOICES
  assert set(choices["algorithm"]) == set(algorithms.ALGORITHMS)
  assert set(choices["optimizer"]) == set(algorithms.OPTIMIZERS)
  assert set(choices["outer_optimizer"]) == set(algorithms.OUTER_OPTIMIZERS)
  assert choices["state_policy"] == dist.STATE_POLICIES
  assert set(choices["adacomm_form"]) == set(alg.local.PERIOD_FORMS)
  assert choices["adaalter_denominator"] == alg.local.DENOMINATORS
  assert set(choices["cser_variant"]) == set(dist.CSER_VARIANTS)
  assert choices["cser_form"] == dist.CSER_FORMS


LOCAL = TrainConfig(**SMALL, algorithm="local_sgd", period=4, steps=10,
                    log_every=1, checkpoint_every=3, straggler="exponential",
                    straggler_params=(("mean", 0.004),), latency=1e-3)
ADACOMM = dataclasses.replace(
    LOCAL, algorithm="adacomm", period=3, adacomm_tau_max=6,
    adacomm_interval_seconds=0.02)


@functools.cache
def _uninterrupted(config: TrainConfig, workdir: str):
  result = trainer.train(config, workdir, progress=lambda _: None)
  return config, result, metrics_io.read(workdir)


@pytest.fixture(scope="module", params=["local_sgd", "adacomm"])
def full(request, tmp_path_factory):
  config = LOCAL if request.param == "local_sgd" else ADACOMM
  return _uninterrupted(config, str(tmp_path_factory.getbasetemp()
                                    / request.param))


def test_metrics_carry_the_period_and_the_syncs(full):
  config, _, rows = full
  syncs = [r["num_syncs"] for r in rows]
  assert syncs == sorted(syncs) and syncs[-1] >= 2
  for row, before in zip(rows, [0] + syncs):
    synced = row["num_syncs"] > before
    # The models travel on sync steps only; AdaComm's first step also
    # all-reduces one float32 loss (F_0).
    assert (row["wire_bytes_step"] > 4) == synced, row
    if not synced:
      first_loss = config.algorithm == "adacomm" and row["step"] == 1
      assert row["wire_bytes_step"] == 4 * first_loss, row
  assert all(1 <= r["period"] <= max(config.period,
                                     config.adacomm_tau_max) for r in rows)
  if config.algorithm == "adacomm":
    # Each sync that recomputes (it all-reduces the 4-byte loss too) sets
    # the period from the workers' mean loss (train_loss, logged every
    # step) against the first step's.
    model_bytes = rows[2]["wire_bytes_step"] - 4
    f_0, recomputed = rows[0]["train_loss"], 0
    for row in rows:
      if row["wire_bytes_step"] == model_bytes + 4:
        recomputed += 1
        ratio = np.sqrt(row["train_loss"] / f_0)
        assert row["period"] == min(6, max(1, int(np.ceil(ratio * 3))))
    assert recomputed >= 2


def test_a_period_costs_the_slowest_sum_of_local_steps_plus_the_sync(
    tmp_path_factory):
  config, _, rows = _uninterrupted(
      LOCAL, str(tmp_path_factory.getbasetemp() / "local_sgd"))
  clock = trainer.system_model(config).clock
  sync_rows = [r for r in rows if r["wire_bytes_step"] > 0]
  first = sync_rows[0]
  assert first["step"] == config.period
  compute = sum(clock.compute.times(k) for k in range(config.period))
  state = clock.communicate(
      clock.restore({**clock.init()._asdict(), "time": compute}),
      [dist.Round("all_reduce", first["wire_bytes_step"], None)])
  np.testing.assert_allclose(first["simulated_seconds"], state.time.max(),
                             rtol=1e-12)
  # Versus one barrier per step: strictly cheaper with stragglers.
  per_step = sum(clock.compute.times(k).max() for k in range(config.period))
  assert first["simulated_seconds"] < per_step + (
      state.time.max() - compute.max())


def test_resume_mid_period_is_bit_identical(tmp_path, full):
  config, result, rows = full
  stop_at = 6   # Mid-period: 6 is not a multiple of the period.
  calls = iter(range(10**6))

  def stop():
    return next(calls) + 1 >= stop_at

  with pytest.raises(trainer.Interrupted):
    trainer.train(config, str(tmp_path), progress=lambda _: None,
                  should_stop=stop)
  resumed = trainer.train(config, str(tmp_path), resume=True,
                          progress=lambda _: None)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, result.params)
  again = metrics_io.read(tmp_path)
  drop = ("elapsed_seconds",)
  assert [{k: v for k, v in r.items() if k not in drop} for r in again] == [
      {k: v for k, v in r.items() if k not in drop} for r in rows]
