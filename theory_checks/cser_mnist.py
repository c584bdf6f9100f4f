r"""CSER on an MNIST MLP: 32x fewer bytes, SGD's accuracy, faster than EF-SGD.

Claim (Xie, Zheng, Koyejo, Gupta, Li, Lin, "CSER: Communication-efficient
SGD with Error Reset", NeurIPS 2020, arXiv:2007.13221, abstract; reference
cards compressors.md A13, local_async.md A4): error reset adapts aggressive
compressors to SGD; with them CSER trains nearly 10x faster than SGD on
CIFAR-100 and 4.5x on ImageNet, and it beats error-feedback SGD at the same
compression. Here, on a small problem, the claim is read as: at an overall
compression ratio of at least 32x, CSER ends within 1 accuracy point of
uncompressed SGD after the same steps, and reaches a target accuracy with
fewer bytes than error-feedback SGD at the same ratio; the same compressor
with neither the reset nor error feedback (the dropped part lost) falls
short, the negative control.

Set-up (as ``theory_checks/threelc_mnist.py``): MLP 784-128-10
(``experiments.models.make_model("mlp", hidden=(128,))``, d = 101,770
parameters) on MNIST-5k (4,000 train / 1,000 test), ``m = 4`` workers with
32 examples each per step (i.i.d. with replacement), the workers' Nesterov
SGD (momentum 0.9, the authors' NAG) at learning rate 0.05, the same
batches and initialisation for every method. Methods, all through the
library under ``dist.simulate(dist.data_parallel(...), m)``:

* ``sgd``: ``optax.chain(dist.aggregate(mean), optax.sgd(lr, 0.9,
  nesterov=True))``, 4 d bytes a step;
* ``cser``: ``dist.block_cser(lr, R1, R2, H)``, the authors'
  ``ERSGD2`` schedule (block of ratio R1 = 64 averaged every step, R2 = 16
  every H = 4 steps instead; the residual form): overall ratio
  ``4 / (3/64 + 1/16) = 36.6x`` (``error_reset.overall_ratio``);
* ``ef_sgd``: ``optax.chain(optax.sgd(lr, 0.9, nesterov=True),
  dist.aggregate(mean, compressor=block_sparsifier(R), error_feedback=True))``
  with R the CSER overall ratio (the authors' EF-SGD baseline uses the same
  block sparsifier; each worker's momentum, the error memory holds the
  lr-scaled update);
* ``no_reset`` (control): the same chain without error feedback.

Accuracy is that of the average of the workers' models (the authors'
``pre_test`` all-reduces the models before testing), every ``eval_every``
steps. Bytes are each worker's recorded ``all_reduce_bytes`` +
``all_gather_bytes`` (``CommStats``), headers included.

Sub-claims (the check PASSes iff all hold):

(a) CSER's compression ratio, ``4 d N / sum(bytes)`` over all steps, is at
    least ``min_ratio`` = 32; EF-SGD's is within 10% of it (the same ratio).
(b) CSER's final test accuracy (seed mean) is within ``max_accuracy_drop``
    = 1 point of SGD's, SGD reaching at least ``min_accuracy``.
(c) CSER reaches ``target_accuracy`` with fewer bytes than EF-SGD (median
    over seeds of the bytes sent until the first checkpoint at or above the
    target; never reaching it counts as infinitely many).
(d) Control: without reset or error feedback the final accuracy is more
    than ``max_accuracy_drop`` below SGD's.

``measured`` is the number of sub-claims that hold (expected 4, tolerance
0); ``ci`` is the 2.5-97.5% range of that count over bootstrap resamples of
the seeds. ``x``/``y`` (and the PNG) are the checkpoint steps and each
seed's CSER accuracy minus SGD's. Quick mode (200 steps, 2 seeds, a lower
target) assesses (a), (c) and (d); (b), a claim about a trained model,
needs the full budget.
"""

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import distributed as dist
from distoptax.algorithms import aggregators
from distoptax.algorithms.local import error_reset
from distoptax.distributed.cser import block_cser
from distoptax.experiments import datasets
from distoptax.experiments import models
from distoptax.theory_checks import harness

NAME = "cser_mnist"

METHODS = ("sgd", "cser", "ef_sgd", "no_reset")
"""Uncompressed SGD, CSER, error-feedback SGD and the control."""

CLAIM = harness.Claim(
    name=NAME,
    statement=(
        "At an overall compression ratio of at least 32x, CSER (block "
        "sparsifiers, error reset, Nesterov SGD) ends within 1 test-accuracy "
        "point of uncompressed SGD on an MNIST MLP and reaches a target "
        "accuracy with fewer bytes than error-feedback SGD at the same "
        "ratio; without reset or error feedback the compressor falls "
        "short."),
    source=("Xie, Zheng, Koyejo, Gupta, Li, Lin 2020, CSER: "
            "Communication-efficient SGD with Error Reset, NeurIPS 2020, "
            "arXiv:2007.13221 (abstract: ~10x faster on CIFAR-100 with "
            "aggressive compressors); schedule of xcgoner/NeurIPS2020_CSER"),
    measured="number of the sub-claims (a)-(d) that hold",
    expected=4.0,
    tolerance=0.0,
)


@dataclasses.dataclass(frozen=True)
class Config:
  """Configuration of the runs.

  Attributes:
    hidden: the MLP's hidden widths.
    num_workers: m.
    batch_size: examples per worker per step.
    learning_rate: the workers' Nesterov SGD rate (every method).
    momentum: its momentum.
    ratio1: CSER's R1 (block every step).
    ratio2: CSER's R2 (block every ``period`` steps, instead of R1).
    period: H.
    num_steps: training steps.
    eval_every: steps between checkpoints.
    num_seeds: seeds (initialisation and batches; the split is fixed).
    data_seed: seed of the batch streams.
    min_ratio: the least overall ratio for (a).
    ratio_match: EF-SGD's ratio within this relative distance of CSER's.
    max_accuracy_drop: tolerance of (b) and threshold of (d).
    min_accuracy: SGD's least final accuracy for (b).
    target_accuracy: the target of (c).
  """

  hidden: tuple[int, ...] = (128,)
  num_workers: int = 4
  batch_size: int = 32
  learning_rate: float = 0.05
  momentum: float = 0.9
  ratio1: float = 64.0
  ratio2: float = 16.0
  period: int = 4
  num_steps: int = 1500
  eval_every: int = 50
  num_seeds: int = 5
  data_seed: int = 0
  min_ratio: float = 32.0
  ratio_match: float = 0.1
  max_accuracy_drop: float = 0.01
  min_accuracy: float = 0.9
  target_accuracy: float = 0.9


QUICK = Config(num_steps=200, eval_every=25, num_seeds=2,
               target_accuracy=0.85)
"""The CI-sized configuration (``--quick``)."""

SUB_CLAIM_KEYS = ("a", "b", "c", "d")
"""The sub-claims' keys, in order."""

QUICK_ASSESSED = ("a", "c", "d")
"""The quick budget does not assess (b): 200 steps do not train the MLP."""

FULL_BUDGET = harness.full_budget(
    NAME, f"{Config.num_steps:,} steps, {Config.num_seeds} seeds")
"""The budget that assesses every sub-claim."""


def ef_ratio(config: Config) -> float:
  """EF-SGD's block ratio: CSER's overall ratio (headers ignored)."""
  return error_reset.overall_ratio(config.ratio1, config.ratio2,
                                   config.period, replace=True)


def transform(config: Config, method: str
              ) -> optax.GradientTransformationExtraArgs:
  """The optimizer of one method (see the module docstring).

  Raises:
    ValueError: for a method not in :data:`METHODS`.
  """
  nesterov = lambda: optax.sgd(config.learning_rate, config.momentum,
                               nesterov=True)
  block = error_reset.block_sparsifier(ef_ratio(config))
  builders = {
      "sgd": lambda: optax.chain(dist.aggregate(aggregators.mean()),
                                 nesterov()),
      "cser": lambda: block_cser(
          config.learning_rate, config.ratio1, config.ratio2, config.period,
          momentum=config.momentum),
      "ef_sgd": lambda: optax.chain(nesterov(), dist.aggregate(
          aggregators.mean(), compressor=block, error_feedback=True)),
      "no_reset": lambda: optax.chain(nesterov(), dist.aggregate(
          aggregators.mean(), compressor=block)),
  }
  if method not in builders:
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")
  return builders[method]()


def _model(config: Config, data: datasets.Dataset):
  return models.make_model("mlp", num_outputs=data.num_classes,
                           hidden=config.hidden)


def train(config: Config, data: datasets.Dataset, method: str,
          batches: np.ndarray, params: Any) -> dict[str, np.ndarray]:
  """Trains every seed with one method.

  Args:
    config: the configuration.
    data: MNIST-5k.
    method: one of :data:`METHODS`.
    batches: ``[num_seeds, num_steps, num_workers, batch_size]`` indices.
    params: each seed's initial parameters (leading axis ``num_seeds``).

  Returns:
    ``curve [num_seeds, num_checkpoints]``: test accuracy of the average
    model at the checkpoints; ``bytes [num_seeds, num_steps]``: worker 0's
    bytes handed to collectives at each step.
  """
  model = _model(config, data)
  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

  def loss(params, batch):
    x, y = batch
    return models.softmax_cross_entropy_loss(model.apply(params, x), y)

  runtime = dist.simulate(dist.data_parallel(loss, transform(config, method)),
                          config.num_workers)

  def accuracy(state):
    average = jax.tree.map(lambda p: p.mean(0), state.params)
    return jnp.mean(jnp.argmax(model.apply(average, x_test), -1) == y_test)

  @jax.jit
  @jax.vmap
  def chunk(state, idx):
    def body(state, step_idx):
      state, metrics = runtime.step(state, (x_train[step_idx],
                                            y_train[step_idx]))
      sent = metrics["all_reduce_bytes"][0] + metrics["all_gather_bytes"][0]
      return state, sent
    state, sent = jax.lax.scan(body, state, idx)
    return state, sent, accuracy(state)

  state = jax.jit(jax.vmap(runtime.init))(params)
  curve, sent_all = [], []
  for start in range(0, config.num_steps, config.eval_every):
    state, sent, acc = chunk(state, jnp.asarray(
        batches[:, start:start + config.eval_every]))
    curve.append(np.asarray(acc, np.float64))
    sent_all.append(np.asarray(sent, np.int64))
  return {"curve": np.stack(curve, axis=1),
          "bytes": np.concatenate(sent_all, axis=1)}


def sample_batches(config: Config, num_train: int) -> np.ndarray:
  """Each worker's batch indices for every step and seed (i.i.d.)."""
  return np.stack([
      np.random.default_rng([config.data_seed, seed]).integers(
          0, num_train,
          (config.num_steps, config.num_workers, config.batch_size),
          dtype=np.int32)
      for seed in range(config.num_seeds)])


def bytes_to_target(config: Config, run: dict[str, np.ndarray]
                    ) -> np.ndarray:
  """Per seed: bytes sent until the first checkpoint at the target (inf if
  never)."""
  cumulative = np.cumsum(run["bytes"], axis=1)[:, config.eval_every - 1::
                                               config.eval_every]
  out = np.full(run["curve"].shape[0], np.inf)
  for s, row in enumerate(run["curve"]):
    hit = np.flatnonzero(row >= config.target_accuracy)
    if hit.size:
      out[s] = float(cumulative[s, hit[0]])
  return out


def _judge(config: Config, float_bytes: int,
           runs: dict[str, dict[str, np.ndarray]]) -> tuple[list[bool], dict]:
  """Sub-claims (a)-(d) on per-seed arrays."""
  def ratio(method):
    sent = runs[method]["bytes"]
    return float(float_bytes * sent.size / sent.sum())

  final = {m: float(r["curve"][:, -1].mean()) for m, r in runs.items()}
  to_target = {m: float(np.median(bytes_to_target(config, runs[m])))
               for m in ("cser", "ef_sgd")}
  r_cser, r_ef = ratio("cser"), ratio("ef_sgd")
  passed = [
      bool(r_cser >= config.min_ratio
           and abs(r_ef / r_cser - 1) <= config.ratio_match),
      bool(final["sgd"] >= config.min_accuracy
           and final["sgd"] - final["cser"] <= config.max_accuracy_drop),
      bool(to_target["cser"] < to_target["ef_sgd"]),
      bool(final["sgd"] - final["no_reset"] > config.max_accuracy_drop),
  ]
  figures = {"ratio_cser": r_cser, "ratio_ef_sgd": r_ef,
             "ratio_no_reset": ratio("no_reset"), "final": final,
             "bytes_to_target": to_target}
  return passed, figures


def run(*, quick: bool = False, seeds: int | None = None,
        progress: bool = True, **overrides) -> harness.CheckResult:
  """Trains the four methods and judges (a)-(d).

  Args:
    quick: use :data:`QUICK` instead of ``Config()``; only the sub-claims
      in :data:`QUICK_ASSESSED` are then assessed.
    seeds: number of seeds, overriding the configuration's.
    progress: print a line per method to stderr.
    **overrides: further :class:`Config` fields (e.g. ``num_steps=3000``).

  Returns:
    The :class:`harness.CheckResult`; ``measured`` is the number of
    assessed sub-claims that hold, ``sub_claims`` has each one's figures.

  Raises:
    ValueError: if ``num_steps`` is not a multiple of ``eval_every``.
  """
  config = harness.resolve_config(Config(), QUICK, quick=quick, seeds=seeds,
                                  overrides=overrides)
  if config.num_steps % config.eval_every:
    raise ValueError(f"num_steps={config.num_steps} must be a multiple of "
                     f"eval_every={config.eval_every}")
  assessed = harness.quick_assessment(SUB_CLAIM_KEYS, QUICK_ASSESSED,
                                      quick=quick)
  start = time.perf_counter()
  meter = harness.Progress(NAME, len(METHODS), enabled=progress)
  data = datasets.load_dataset("mnist5k")
  batches = sample_batches(config, data.x_train.shape[0])
  model = _model(config, data)
  x0 = jnp.asarray(data.x_train[:1])
  params = jax.jit(jax.vmap(lambda s: model.init(jax.random.key(s), x0)))(
      jnp.arange(config.num_seeds))
  runs = {}
  for method in METHODS:
    meter.point(f"{method}: {config.num_seeds} seeds x {config.num_workers} "
                f"workers x {config.num_steps} steps")
    runs[method] = train(config, data, method, batches, params)
  meter.done()
  elapsed = time.perf_counter() - start

  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(
      jax.tree.map(lambda a: a[0], params)))
  float_bytes = 4 * num_params
  passed, figures = _judge(config, float_bytes, runs)
  ci = harness.bootstrap_count_ci(
      lambda rows: harness.count_assessed(_judge(
          config, float_bytes,
          {m: {k: v[rows] for k, v in r.items()} for m, r in runs.items()})[0],
                                          assessed),
      config.num_seeds)
  final = figures["final"]
  to_target = figures["bytes_to_target"]
  rows = [
      dict(name="(a) CSER's compression ratio vs float32",
           measured=(f"4 d N / sum(bytes); EF-SGD "
                     f"{figures['ratio_ef_sgd']:.1f}x, no-reset "
                     f"{figures['ratio_no_reset']:.1f}x"),
           value=figures["ratio_cser"],
           expected=(f">= {config.min_ratio:g}, EF-SGD within "
                     f"{config.ratio_match:.0%}")),
      dict(name="(b) CSER's test accuracy within 1 point of SGD",
           measured=f"SGD - CSER, final (SGD {final['sgd']:.4f})",
           value=final["sgd"] - final["cser"],
           expected=(f"<= {config.max_accuracy_drop:g}, SGD >= "
                     f"{config.min_accuracy:g}")),
      dict(name="(c) CSER reaches the target with fewer bytes than EF-SGD",
           measured=(f"median bytes to {config.target_accuracy:g}: CSER / "
                     f"EF-SGD (EF-SGD {to_target['ef_sgd']:.3g} bytes)"),
           value=to_target["cser"] / to_target["ef_sgd"],
           expected="< 1"),
      dict(name="(d) control: no reset, no error feedback falls short",
           measured="SGD - no-reset, final",
           value=final["sgd"] - final["no_reset"],
           expected=f"> {config.max_accuracy_drop:g}"),
  ]
  sub_claims = tuple(
      harness.SubClaim(key=key, holds=bool(p), assessed=a,
                       assessed_by="" if a else FULL_BUDGET, **row)
      for key, row, p, a in zip(SUB_CLAIM_KEYS, rows, passed, assessed))
  steps = config.eval_every * np.arange(
      1, runs["sgd"]["curve"].shape[1] + 1, dtype=np.float64)
  extras = {
      "num_params": num_params,
      "ef_block_ratio": ef_ratio(config),
      "ratios": {m: figures[f"ratio_{m}"]
                 for m in ("cser", "ef_sgd", "no_reset")},
      "final_accuracy": final,
      "final_accuracy_per_seed": {m: r["curve"][:, -1]
                                  for m, r in runs.items()},
      "accuracy_curve": {m: r["curve"].mean(axis=0) for m, r in runs.items()},
      "bytes_to_target": to_target,
      "steps": steps,
  }
  return harness.CheckResult(
      claim=CLAIM, measured=harness.count_assessed(passed, assessed), ci=ci,
      x=steps, y=runs["cser"]["curve"] - runs["sgd"]["curve"],
      config=dataclasses.asdict(config) | {"quick": quick},
      elapsed_s=elapsed, x_label="step",
      y_label="test accuracy, CSER - SGD", sub_claims=sub_claims,
      extras=extras, details=method_table(extras))


def method_table(extras: dict) -> str:
  """Each method's ratio, final accuracy and accuracy curve, as text.

  Args:
    extras: the result's ``extras``.

  Returns:
    One line per method, then the accuracy at a few checkpoints.
  """
  lines = [f"{'method':>9} {'ratio':>7} {'final acc':>10}"]
  for m, acc in extras["final_accuracy"].items():
    ratio = extras["ratios"].get(m, 1.0)
    lines.append(f"{m:>9} {ratio:>7.1f} {acc:>10.4f}")
  steps = extras["steps"]
  picks = np.unique(np.linspace(0, len(steps) - 1, 6).round().astype(int))
  lines.append("step " + " ".join(f"{int(steps[j]):>7}" for j in picks))
  for m, curve in extras["accuracy_curve"].items():
    lines.append(f"{m[:4]:>4} " + " ".join(f"{curve[j]:>7.4f}"
                                            for j in picks))
  return "\n".join(lines)


def main(argv=None):
  """``python -m distoptax.theory_checks.cser_mnist [--quick] ...``."""
  harness.run_check_main(run, argv)


if __name__ == "__main__":
  main()
