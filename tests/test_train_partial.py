"""The launcher's partial and unreliable collectives: partial participation
(client sampling, deadlines), eager-SGD and RPS. Presets equal the library
constructions, options are checked, the simulated seconds follow each
method's system model, resumed runs end bit-identical."""

import dataclasses
import functools
import importlib

import jax
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.distributed import eager as eager_lib
from distoptax.distributed import participation as participation_lib
from distoptax.experiments import algorithms
from distoptax.experiments import config as config_lib
from distoptax.experiments import metrics_io
from distoptax.experiments import trainer
from distoptax.experiments.config import ConfigError
from distoptax.experiments.config import TrainConfig
from tests import helpers

pytestmark = pytest.mark.xdist_group("train_partial")

SMALL = dict(dataset="digits", hidden=(16,), num_workers=4, batch_size=8,
             learning_rate=0.05, momentum=0.0, steps=8, log_every=1,
             checkpoint_every=2)
EAGER = TrainConfig(**SMALL, algorithm="eager_sgd", eager_limiter=4,
                    imbalance=(1.0, 1.0, 1.5, 3.0), latency=1e-3)
RPS = TrainConfig(**SMALL, algorithm="rps", drop_probability=0.3)
DEADLINE = TrainConfig(**SMALL, participation="deadline",
                       deadline_seconds=0.012, straggler="exponential",
                       straggler_params=(("mean", 0.005),))
SAMPLING = TrainConfig(**SMALL, participation="client_sampling",
                       participation_k=2)
SEED = trainer.derived_seed(0, trainer._AGGREGATE_SALT)


def _preset(name: str, **changes) -> TrainConfig:
  module = importlib.import_module(f"distoptax.experiments.configs.{name}")
  return dataclasses.replace(
      TrainConfig.from_json(module.get_config().to_dict()), **changes)


def _param_bytes(params) -> int:
  return sum(x.size * 4 for x in jax.tree.leaves(params))


def _final(tx, num_workers, replicated, steps=6):
  """Parameters after ``steps`` data-parallel steps of the test MLP."""
  run = dist.simulate(dist.data_parallel(helpers.mlp_loss, tx,
                                         replicated_params=replicated),
                      num_workers)
  state = run.init(helpers.mlp_params(jax.random.key(1)))
  for t in range(steps):
    state, _ = run.step(state, helpers.worker_batches(t, num_workers, 4))
  return jax.tree.map(np.asarray, state.params)


def _sgd(c: TrainConfig) -> optax.GradientTransformation:
  return optax.sgd(c.learning_rate, momentum=c.momentum or None)


def _server_sgd(c: TrainConfig) -> optax.GradientTransformation:
  """The server's optimizer, its state held once (after the exchange)."""
  return dist.replicated(_sgd(c))


PARAMS = helpers.mlp_params(jax.random.key(1))

LIBRARY = {
    # Each shipped preset next to the library construction it stands for,
    # on the test MLP (whose gradient is what the schedules are sized by).
    "partial_client_sampling": lambda c: optax.chain(
        dist.partial_aggregate(alg.aggregators.mean(),
                               dist.client_sampling(c.participation_k),
                               seed=SEED), _server_sgd(c)),
    "partial_deadline": lambda c: optax.chain(
        dist.partial_aggregate(
            alg.aggregators.mean(), dist.deadline_participation(
                trainer.system_model(c).clock, c.steps,
                deadline_seconds=c.deadline_seconds,
                # The mean of the participants: the parameters and the
                # normaliser (4 bytes) in one all-reduce.
                rounds=[dist.Round("all_reduce",
                                   _param_bytes(PARAMS) + 4)])[0],
            seed=SEED), _server_sgd(c)),
    "eager_sgd_imbalance": lambda c: optax.chain(
        dist.eager_sgd(dist.eager_schedule(
            trainer.system_model(c).clock, c.steps, mode=c.eager_mode,
            message_bytes=_param_bytes(PARAMS),
            limiter=c.eager_limiter)[1].ready), _server_sgd(c)),
    "rps_unreliable": lambda c: optax.chain(
        _sgd(c), dist.rps(c.drop_probability, seed=SEED)),
}


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_presets_equal_the_library_constructions(name):
  config = _preset(name, steps=6)
  built = trainer.build_algorithm(config, params=PARAMS)
  n = config.num_workers
  ours = _final(built.tx, n, built.replicated_params)
  theirs = _final(LIBRARY[name](config), n, built.replicated_params)
  jax.tree.map(np.testing.assert_array_equal, ours, theirs)
  assert built.replicated_params == (name != "rps_unreliable")


def test_presets_partial_rounds_do_take_part():
  # The eager preset has rounds with workers not ready, the deadline
  # preset steps with workers late: neither degenerates to sync.
  config = _preset("eager_sgd_imbalance", steps=64)
  _, plan = dist.eager_schedule(
      trainer.system_model(config).clock, 64, mode="majority",
      message_bytes=_param_bytes(PARAMS), limiter=32)
  assert 0.5 < plan.ready.mean() < 1 and plan.forced.sum() == 2
  config = _preset("partial_deadline", steps=64)
  _, plan = dist.deadline_participation(
      trainer.system_model(config).clock, 64,
      deadline_seconds=config.deadline_seconds)
  assert 0.5 < plan.participants.mean() < 1


def test_examples_normalizer_weighs_by_the_shard_sizes():
  config = TrainConfig(**{**SMALL, "participation": "client_sampling",
                          "participation_k": 3,
                          "participation_normalizer": "examples"})
  sizes = np.array([10, 20, 30, 40])
  built = trainer.build_algorithm(config, params=PARAMS, shard_sizes=sizes)
  theirs = optax.chain(dist.partial_aggregate(
      alg.aggregators.mean(), dist.client_sampling(3),
      normalizer="examples", examples=sizes, seed=SEED), _sgd(config))
  jax.tree.map(np.testing.assert_array_equal, _final(built.tx, 4, True),
               _final(theirs, 4, True))
  uniform = _final(trainer.build_algorithm(
      dataclasses.replace(config, participation_normalizer="participants"),
      params=PARAMS).tx, 4, True)
  assert not np.allclose(uniform["w1"], _final(built.tx, 4, True)["w1"])


def test_robust_rules_that_mask_run_under_sampling():
  config = TrainConfig(**{**SMALL, "num_workers": 5,
                          "participation": "client_sampling",
                          "participation_k": 3, "aggregator": "median"})
  built = trainer.build_algorithm(config, params=PARAMS)
  theirs = optax.chain(dist.partial_aggregate(
      alg.aggregators.median(), dist.client_sampling(3), seed=SEED),
                       _sgd(config))
  jax.tree.map(np.testing.assert_array_equal, _final(built.tx, 5, True),
               _final(theirs, 5, True))


@pytest.mark.parametrize("changes, field, message", [
    (dict(participation="sampled"), "participation",
     "participation must be one of.*'sampled'"),
    (dict(algorithm="local_sgd", participation="client_sampling",
          participation_k=2), "participation",
     "participation='client_sampling' is not used by algorithm='local_sgd'"),
    (dict(participation_k=2), "participation_k",
     "participation_k=2 is not used by participation='everyone'"),
    (dict(participation="client_sampling"), "participation_k",
     "1 <= participation_k <= num_workers=4; got 0"),
    (dict(participation="client_sampling", participation_k=5),
     "participation_k", "num_workers=4; got 5"),
    (dict(participation="client_sampling", participation_k=-1),
     "participation_k", "participation_k must be an int >= 1; got -1"),
    (dict(participation="deadline"), "deadline_seconds",
     "participation='deadline' needs deadline_seconds > 0"),
    (dict(participation="deadline", deadline_seconds=float("inf")),
     "deadline_seconds", "deadline_seconds must be a finite number"),
    (dict(participation="client_sampling", participation_k=2,
          deadline_seconds=0.1), "deadline_seconds",
     "deadline_seconds=0.1 is not used by participation='client_sampling'"),
    (dict(participation_normalizer="workers"), "participation_normalizer",
     "is not used by participation='everyone'"),
    (dict(participation="client_sampling", participation_k=2,
          participation_normalizer="weights"), "participation_normalizer",
     "participation_normalizer must be one of.*'weights'"),
    (dict(participation="client_sampling", participation_k=2,
          participation_normalizer="workers", aggregator="median"),
     "participation_normalizer", "a robust rule aggregates"),
    (dict(eager_mode="solo"), "eager_mode",
     "eager_mode='solo' is not used by algorithm='sync'"),
    (dict(algorithm="eager_sgd", eager_mode="all"), "eager_mode",
     "eager_mode must be one of.*'all'"),
    (dict(algorithm="eager_sgd", eager_limiter=-1), "eager_limiter",
     "eager_limiter must be an int >= 0"),
    (dict(algorithm="rps", eager_limiter=4), "eager_limiter",
     "not used by algorithm='rps'"),
    (dict(drop_probability=0.1), "drop_probability",
     "drop_probability=0.1 is not used by algorithm='sync'"),
    (dict(algorithm="rps", drop_probability=1.5), "drop_probability",
     r"drop_probability must lie in \[0, 1\]; got 1.5"),
    (dict(algorithm="rps", period=2), "period",
     "period=2 is not used by algorithm='rps'"),
])
def test_bad_options_name_the_flag(changes, field, message):
  with pytest.raises(ConfigError, match=message) as error:
    TrainConfig(**{**SMALL, **changes})
  assert error.value.field == field


SAMPLED = dict(participation="client_sampling", participation_k=2)


@pytest.mark.parametrize("changes, field, message", [
    (dict(SAMPLED, aggregator="bulyan", num_byzantine=1, attack="zero"),
     "aggregator", "aggregator='bulyan' cannot aggregate under a "
     "participation mask"),
    (dict(SAMPLED, preaggregation="bucketing",
          preaggregation_params=(("bucket_size", 2),)), "preaggregation",
     "preaggregation='bucketing' cannot aggregate under a participation"),
    (dict(SAMPLED, compressor="powersgd"), "compressor",
     "participation='client_sampling' aggregates through a compressor"),
    (dict(SAMPLED, compressor="top_k", compressor_params=(("fraction", .5),),
          error_feedback=True), "error_feedback", "drop error_feedback"),
    (dict(algorithm="eager_sgd", aggregator="median"), "aggregator",
     "algorithm='eager_sgd' sums plain updates.*aggregator='mean'"),
    (dict(algorithm="eager_sgd", compressor="top_k",
          compressor_params=(("fraction", 0.5),)), "compressor",
     "algorithm='eager_sgd'.*compressor='identity'"),
    (dict(algorithm="rps", num_byzantine=1, attack="sign_flip"), "attack",
     "algorithm='rps'.*no update attack"),
    (dict(algorithm="rps", aggregator="median"), "aggregator",
     "algorithm='rps'.*aggregator='mean'"),
])
def test_unsupported_combinations_name_the_flag(changes, field, message):
  with pytest.raises(ConfigError, match=message) as error:
    trainer.build_algorithm(TrainConfig(**{**SMALL, **changes}),
                            params=PARAMS)
  assert error.value.field == field


def test_the_choices_are_the_registries():
  choices = config_lib._CHOICES
  assert set(choices["participation"]) == set(algorithms.PARTICIPATIONS)
  assert choices["participation_normalizer"] == participation_lib.NORMALIZERS
  assert set(choices["eager_mode"]) == set(eager_lib.TRIGGERS)
  assert {"eager_sgd", "rps"} <= set(algorithms.ALGORITHMS)


def test_rounds_late_counts_the_missed_rounds():
  ready = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1]], bool)
  np.testing.assert_array_equal(algorithms.rounds_late(ready),
                                [[0, 0, 0], [0, 0, 0], [0, 1, 2], [0, 0, 0]])


@functools.cache
def _run(config: TrainConfig, workdir: str):
  result = trainer.train(config, workdir, progress=lambda _: None)
  return result, metrics_io.read(workdir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.getbasetemp()
  return lambda config, name: _run(config, str(base / name))


def test_eager_seconds_are_the_schedule_end_times(runs):
  result, rows = runs(EAGER, "eager")
  clock = trainer.system_model(EAGER).clock
  plan = {mode: dist.eager_schedule(
      clock, EAGER.steps, mode=mode, message_bytes=_param_bytes(
          result.params), limiter=4)[1] for mode in ("majority", "sync")}
  majority = plan["majority"]
  assert [r["simulated_seconds"] for r in rows] == majority.end.tolist()
  assert [r["ready_fraction"] for r in rows] == majority.ready.mean(
      axis=1).tolist()
  assert [r["forced_rounds"] for r in rows] == majority.forced.tolist()
  assert not majority.ready.all()
  # Every gradient computed is applied once, at most limiter - 1 late.
  assert rows[-1]["gradients_applied"] == majority.ready.sum()
  assert sum(sum(r["staleness_histogram"]) for r in rows) == (
      majority.ready.sum())
  assert max(r["staleness_max"] for r in rows) <= 3
  assert any(r["staleness_max"] > 0 for r in rows)
  # The imbalance costs eager-SGD less than the synchronous rounds.
  assert majority.end[-1] < plan["sync"].end[-1]
  assert rows[-1]["wire_bytes_step"] == _param_bytes(result.params)


def test_rps_p0_equals_synchronous_sgd():
  config = TrainConfig(**{**SMALL, "algorithm": "rps"})
  ours = _final(trainer.build_algorithm(config, params=PARAMS).tx, 4, False)
  sync = _final(trainer.build_algorithm(
      dataclasses.replace(config, algorithm="sync"), params=PARAMS).tx, 4,
                True)
  for name, value in sync.items():
    for worker in ours[name]:   # Every replica is the synchronous model.
      np.testing.assert_allclose(worker, value, rtol=1e-5, atol=1e-6)
  lossy = _final(trainer.build_algorithm(
      dataclasses.replace(config, drop_probability=0.3), params=PARAMS).tx,
                 4, False)
  assert not np.allclose(lossy["w1"][0], lossy["w1"][1])


def test_rps_seconds_are_a_reduce_scatter_and_an_all_gather(runs):
  result, rows = runs(RPS, "rps")
  n, size = RPS.num_workers, _param_bytes(result.params) // 4
  block = -(-size // n) * 4      # The model cut into n padded blocks.
  alpha, beta = RPS.latency, RPS.bandwidth
  step = RPS.compute_seconds + (n - 1) * alpha + (n - 1) / n * (
      n * block) / beta + (n - 1) * alpha + (n - 1) * block / beta
  for row in rows:
    assert row["simulated_seconds"] == pytest.approx(row["step"] * step,
                                                     rel=1e-12)
    assert row["wire_bytes_step"] == n * block + block
  # p = 0.3 of the 2 n (n - 1) messages a step are lost, on average.
  drops = sum(r["drops"] for r in rows)
  messages = 2 * n * (n - 1) * RPS.steps
  assert 0.15 * messages < drops < 0.45 * messages
  assert rows[-1]["drops_total"] == drops
  assert sum(r["delivered_bytes"] for r in rows) == (messages - drops) * block


def test_client_sampling_participation_is_k_over_n(runs):
  _, rows = runs(SAMPLING, "sampling")
  assert [r["participation"] for r in rows] == [0.5] * SAMPLING.steps
  assert all(r["simulated_seconds"] > 0 for r in rows)


def test_deadline_seconds_are_the_schedule_end_times(runs):
  result, rows = runs(DEADLINE, "deadline")
  _, plan = dist.deadline_participation(
      trainer.system_model(DEADLINE).clock, DEADLINE.steps,
      deadline_seconds=DEADLINE.deadline_seconds,
      rounds=[dist.Round("all_reduce", _param_bytes(result.params) + 4)])
  assert [r["simulated_seconds"] for r in rows] == plan.end.tolist()
  assert [r["participation"] for r in rows] == plan.participants.mean(
      axis=1).tolist()
  assert not plan.participants.all()


def _stop_at(step: int):
  calls = iter(range(10**6))
  return lambda: next(calls) + 1 >= step


def _without_elapsed(rows):
  return [{k: v for k, v in r.items() if k != "elapsed_seconds"}
          for r in rows]


@pytest.mark.parametrize("config", [EAGER, RPS, DEADLINE],
                         ids=["eager_sgd", "rps", "deadline"])
def test_resume_is_bit_identical(tmp_path, runs, config):
  result, rows = runs(config, config.algorithm + config.participation)
  # Stopped mid-run (between checkpoints' steps), then resumed.
  with pytest.raises(trainer.Interrupted):
    trainer.train(config, str(tmp_path / "stop"), progress=lambda _: None,
                  should_stop=_stop_at(3))
  resumed = trainer.train(config, str(tmp_path / "stop"), resume=True,
                          progress=lambda _: None)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, result.params)
  assert _without_elapsed(metrics_io.read(tmp_path / "stop")) == (
      _without_elapsed(rows))
  # A shorter run whose step budget grows on resume: its schedule is a
  # prefix of the longer run's.
  trainer.train(dataclasses.replace(config, steps=4), str(tmp_path / "grow"),
                progress=lambda _: None)
  grown = trainer.train(config, str(tmp_path / "grow"), resume=True,
                        progress=lambda _: None)
  jax.tree.map(np.testing.assert_array_equal, grown.params, result.params)
  assert _without_elapsed(metrics_io.read(tmp_path / "grow")) == (
      _without_elapsed(rows))


def test_a_step_that_ran_other_than_the_schedule_is_refused(runs):
  # The timing checks each step against its schedule: a gradient of
  # another size, or other participants, is not silently priced.
  result, _ = runs(EAGER, "eager")
  built = trainer.build_algorithm(EAGER, params=result.params)
  state = built.timing.init()
  ready = dist.eager_schedule(
      trainer.system_model(EAGER).clock, 1, mode="majority",
      message_bytes=_param_bytes(result.params), limiter=4)[1].ready[0]
  # One all-reduce of 4 bytes too many, as a runtime's per-worker record.
  comm = dist.CommStats(
      0, 0, 0, 0, 0, dist.RoundRecord(
          np.full((4, 1), dist.KINDS.index("all_reduce")),
          np.full((4, 1), _param_bytes(result.params) + 4), ready[:, None]))
  with pytest.raises(RuntimeError, match="the rounds of step 1 differ"):
    built.timing.advance(state, 0, {"comm": comm})
  built = trainer.build_algorithm(DEADLINE, params=result.params)
  metrics = {"participation": np.zeros(4), "comm": comm}
  with pytest.raises(RuntimeError, match="the participants of step 1"):
    built.timing.advance(built.timing.init(), 0, metrics)
