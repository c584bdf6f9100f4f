r"""3LC on an MNIST MLP: 20-280x fewer bytes, exact round trips, same accuracy.

Claim (Lim, Andersen, Kaminsky, "3LC: Lightweight and Effective Traffic
Compression for Distributed Machine Learning", MLSys 2019, arXiv:1802.07389,
abstract): 3-value quantization with sparsity multiplication, base-3^5
("quartic") encoding and zero-run encoding reach a data compression ratio of
up to 39-107x while preserving the test accuracy of the trained model, and
need no change to the ML algorithm (error feedback is part of 3LC: the
quantized tensor is the state change plus a local error buffer). The
lossless stages (packing five trits to a byte, zero-run encoding of the
all-zero byte) must round-trip exactly.

Set-up (reference card theory_checks.md §12): MLP 784-128-10
(``experiments.models.make_model("mlp", hidden=(128,))``, d = 101,770
parameters in 4 tensors) on MNIST-5k (4,000 train / 1,000 test), ``m = 4``
workers with 32 examples each per step (i.i.d. with replacement), SGD with
learning rate 0.1, ``num_steps`` steps. 3LC runs through the library:
``optax.chain(dist.aggregate(aggregators.mean(),
compressor=threelc.three_lc(s), error_feedback=True), optax.sgd(lr))`` under
``dist.simulate(dist.data_parallel(...), m)``; the baseline is the same chain
without compressor, on the same batches from the same initialisation.
Bytes come from the aggregate's ``CommStats``: ``coded_bytes`` per step and
worker is ``ceil(coded_bits / 8)``, where ``coded_bits`` sums over the
tensors 8 times the zero-run-encoded length of the packed bytes plus 32 bits
of scale. The ratio is float32 bytes over coded bytes, ``4 d N / sum(coded)``
over all steps, workers and seeds (the card's formula); per-step extremes
are reported beside it.

To check the messages that were actually sent, the aggregate is wrapped in a
transform that records the compensated update :math:`p = u + e` (gradient
plus error memory) that ``aggregate`` encodes. At every ``eval_every`` steps,
on the host, for every seed, worker and tensor: the message is rebuilt as
``three_lc(s).encode(p)`` and must reproduce the library's new error memory
bit for bit (``e' = p - decode(message)``, so it is the message that was
sent); then ``zero_run_decode(zero_run_encode(packed)) == packed``,
``unpack_ternary(packed) == quantize(p)`` (the base-3^5 stage),
``len(zero_run_encode(packed)) == zero_run_length(packed)`` and the recorded
``coded_bytes`` of that step equals the length of the streams built here.

Sub-claims (the check PASSes iff all hold, for every sparsity multiplier):

(a) the compression ratio (coded bytes against float32) lies in
    [20, 280]; also reported: per-step extremes and the ratio of the fixed
    wire format (packed bytes, ~20x). The bounds are structural (the packed
    stream is 20x, zero-run encoding gains at most 14x), so the figure to
    compare is where the ratio falls: the paper reports 39-107x on
    ResNet-110/CIFAR-10, the card's prototype 98-268x on this MLP, whose
    always-blank border pixels give all-zero rows of the first layer's
    gradient.
(b) every lossless round trip above is exact on every message checked.
(c) final test accuracy within 1 point of uncompressed training after the
    same number of steps (seed means), the baseline reaching at least
    ``min_accuracy``.
(d) with several multipliers: the ratio is non-decreasing in the sparsity
    multiplier (card §12).

``measured`` is the number of sub-claims that hold (expected 4, tolerance
0); ``ci`` is the 2.5-97.5% range of that count over bootstrap resamples of
the seeds. ``x``/``y`` (and the PNG) are the checkpoint steps and each
seed's compression ratio over the preceding ``eval_every`` steps at the first
multiplier. Quick mode (two multipliers, 2 workers of 64 examples, 300
steps) keeps the examples per step but simulates half the workers (each
simulated worker decodes every worker's message, so the cost grows as
m^2), with a lower accuracy floor, 0.85: the model is not fully trained
after 300 steps.
"""

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import distributed as dist
from distoptax.algorithms import aggregators
from distoptax.algorithms.compressors import threelc
from distoptax.experiments import datasets
from distoptax.experiments import models
from distoptax.theory_checks import harness

NAME = "threelc_mnist"

CLAIM = harness.Claim(
    name=NAME,
    statement=(
        "3LC (3-value quantization with sparsity multiplication, base-3^5 "
        "packing, zero-run encoding, error feedback) compresses the MNIST "
        "MLP's gradient traffic 20-280x against float32, its lossless stages "
        "round-trip exactly, the test accuracy stays within 1 point of "
        "uncompressed training after the same steps, and the ratio grows "
        "with the sparsity multiplier."),
    source=("Lim, Andersen, Kaminsky 2019, 3LC: Lightweight and Effective "
            "Traffic Compression for Distributed Machine Learning, MLSys "
            "2019, arXiv:1802.07389 (abstract: 39-107x, accuracy preserved)"),
    measured="number of the sub-claims (a)-(d) that hold",
    expected=4.0,
    tolerance=0.0,
)


@dataclasses.dataclass(frozen=True)
class Config:
  """Configuration of the runs.

  Attributes:
    sparsity_multipliers: the multipliers s in [1, 2) (sub-claims (a)-(c)
      hold for each; (d) compares them).
    hidden: the MLP's hidden widths.
    num_workers: m.
    batch_size: examples per worker per step.
    learning_rate: the SGD step.
    num_steps: training steps.
    eval_every: steps between checkpoints (round-trip checks, ratio curve).
    num_seeds: seeds (initialisation and batches; the split is fixed).
    data_seed: seed of the batch streams.
    min_ratio: lower end of (a).
    max_ratio: upper end of (a).
    max_accuracy_drop: tolerance of (c).
    min_accuracy: the baseline's least final test accuracy for (c).
  """

  sparsity_multipliers: tuple[float, ...] = (1.0, 1.5, 1.75, 1.9)
  hidden: tuple[int, ...] = (128,)
  num_workers: int = 4
  batch_size: int = 32
  learning_rate: float = 0.1
  num_steps: int = 1000
  eval_every: int = 125
  num_seeds: int = 5
  data_seed: int = 0
  min_ratio: float = 20.0
  max_ratio: float = 280.0
  max_accuracy_drop: float = 0.01
  min_accuracy: float = 0.9


QUICK = Config(sparsity_multipliers=(1.0, 1.75), num_workers=2, batch_size=64,
               num_steps=300, eval_every=100, num_seeds=3, min_accuracy=0.85)
"""The CI-sized configuration (``--quick``); see the module docstring."""

SUB_CLAIM_KEYS = ("a", "b", "c", "d")
"""The sub-claims' keys, in order."""

QUICK_ASSESSED = SUB_CLAIM_KEYS
"""The quick budget assesses every sub-claim (module docstring)."""

FULL_BUDGET = harness.full_budget(
    NAME, f"{Config.num_steps:,} steps, {Config.num_seeds} seeds")
"""The budget that assesses every sub-claim."""


class RecordingState(NamedTuple):
  """State of :func:`recording`.

  Attributes:
    inner: the wrapped ``aggregate``'s state.
    compensated: the last compensated update ``u + e`` it encoded.
  """

  inner: Any
  compensated: optax.Updates


def recording(inner: optax.GradientTransformationExtraArgs
              ) -> optax.GradientTransformationExtraArgs:
  """Wraps an error-feedback ``aggregate`` to record what it encodes.

  The compensated update ``u + e`` (``e`` the error memory before the step,
  added in the same order as ``aggregate`` adds it) is kept in the state,
  so that the message sent can be rebuilt exactly on the host.

  Args:
    inner: ``dist.aggregate(..., error_feedback=True)``.

  Returns:
    The same transformation, its state a :class:`RecordingState`.
  """
  def init_fn(params):
    return RecordingState(inner.init(params),
                          jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None, **extra_args):
    compensated = jax.tree.map(lambda u, e: e + u, updates,
                               state.inner.error)
    out, inner_state = inner.update(updates, state.inner, params,
                                    **extra_args)
    return out, RecordingState(inner_state, compensated)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _runtime(config: Config, loss, multiplier: float | None) -> dist.Runtime:
  if multiplier is None:
    agg = dist.aggregate(aggregators.mean())
  else:
    agg = recording(dist.aggregate(
        aggregators.mean(), compressor=threelc.three_lc(multiplier),
        error_feedback=True))
  tx = optax.chain(agg, optax.sgd(config.learning_rate))
  return dist.simulate(dist.data_parallel(loss, tx), config.num_workers)


@functools.partial(jax.jit, static_argnums=1)
def _rebuild(compensated: tuple[jax.Array, ...], multiplier: float):
  """Per tensor: its message's packed bytes and decoded value, ``q`` from
  the quantizer, the unpacked ``q`` and the on-device coded length (one
  compiled program per set of shapes and multiplier)."""
  compressor = threelc.three_lc(multiplier)
  out = []
  for p in compensated:
    message = compressor.encode(jax.random.key(0), p)
    packed = message.arrays["packed"]
    q, _ = threelc.quantize(jnp.ravel(p), multiplier)
    out.append((packed, compressor.decode(message), q,
                threelc.unpack_ternary(packed, p.size),
                threelc.zero_run_length(packed)))
  return out


def check_messages(multiplier: float, compensated: list[np.ndarray],
                   error: list[np.ndarray], coded_bytes: int
                   ) -> dict[str, int]:
  """Rebuilds one worker's message and checks every lossless stage.

  Args:
    multiplier: the sparsity multiplier s.
    compensated: per tensor, the compensated update that was encoded.
    error: per tensor, the error memory after the step.
    coded_bytes: the ``CommStats.coded_bytes`` the library recorded.

  Returns:
    Counts: ``messages`` (tensors checked) and the failures of each check,
    ``sent`` (rebuilt message does not reproduce the error memory bit for
    bit), ``zero_run`` (ZRE round trip), ``ternary`` (base-3^5 round trip),
    ``length`` (``zero_run_length`` differs from the encoder's length) and
    ``coded_bytes`` (0 or 1: the recorded coded bytes differ from the
    streams built here); ``stream_bytes`` is the coded length built here.
  """
  counts = {"messages": 0, "sent": 0, "zero_run": 0, "ternary": 0,
            "length": 0, "coded_bytes": 0}
  bits = 0
  rebuilt = _rebuild(tuple(jnp.asarray(p) for p in compensated), multiplier)
  for p, e, arrays in zip(compensated, error, rebuilt):
    packed, decoded, q, unpacked, length = (np.asarray(a) for a in arrays)
    stream = threelc.zero_run_encode(packed)
    counts["messages"] += 1
    counts["sent"] += int(not np.array_equal(
        (p - decoded).view(np.uint32), e.view(np.uint32)))
    counts["zero_run"] += int(not np.array_equal(
        threelc.zero_run_decode(stream), packed))
    counts["ternary"] += int(not np.array_equal(unpacked, q))
    counts["length"] += int(int(length) != stream.size)
    bits += 8 * stream.size + 32
  counts["coded_bytes"] = int((bits + 7) // 8 != coded_bytes)
  counts["stream_bytes"] = (bits + 7) // 8
  return counts


def _model(config: Config, data: datasets.Dataset):
  return models.make_model("mlp", num_outputs=data.num_classes,
                           hidden=config.hidden)


def init_params(config: Config, data: datasets.Dataset) -> Any:
  """Each seed's initial MLP parameters (leading axis ``num_seeds``)."""
  model = _model(config, data)
  x = jnp.asarray(data.x_train[:1])
  return jax.jit(jax.vmap(lambda seed: model.init(jax.random.key(seed), x)))(
      jnp.arange(config.num_seeds))


def train(config: Config, data: datasets.Dataset, multiplier: float | None,
          batches: np.ndarray, params: Any) -> dict[str, Any]:
  """Trains every seed with 3LC at ``multiplier`` (``None``: uncompressed).

  Args:
    config: the configuration.
    data: MNIST-5k.
    multiplier: the sparsity multiplier, or ``None`` for the baseline.
    batches: ``[num_seeds, num_steps, num_workers, batch_size]`` indices.
    params: from :func:`init_params`.

  Returns:
    ``accuracy [num_seeds]`` (final test accuracy), ``curve [num_seeds,
    num_checkpoints]`` (test accuracy at the checkpoints) and, with 3LC,
    ``coded_bytes [num_seeds, num_steps, num_workers]`` and ``checks``
    (summed counts of :func:`check_messages`).
  """
  model = _model(config, data)
  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

  def loss(params, batch):
    x, y = batch
    return models.softmax_cross_entropy_loss(model.apply(params, x), y)

  runtime = _runtime(config, loss, multiplier)

  def accuracy(state):
    params = dist.worker_slice(state.params)
    return jnp.mean(jnp.argmax(model.apply(params, x_test), -1) == y_test)


  @jax.jit
  @jax.vmap
  def chunk(state, idx):
    def body(state, step_idx):
      state, _ = runtime.step(state, (x_train[step_idx], y_train[step_idx]))
      coded = dist.find_comm_stats(state.opt_state)[0].coded_bytes
      return state, coded
    state, coded = jax.lax.scan(body, state, idx)
    return state, coded, accuracy(state)

  state = jax.jit(jax.vmap(runtime.init))(params)
  curve, coded_all = [], []
  checks = None
  for start in range(0, config.num_steps, config.eval_every):
    idx = batches[:, start:start + config.eval_every]
    state, coded, acc = chunk(state, jnp.asarray(idx))
    curve.append(np.asarray(acc, np.float64))
    coded_all.append(np.asarray(coded))
    if multiplier is not None:
      agg = state.opt_state[0]  # [seeds, workers, ...] leaves.
      compensated = jax.tree.leaves(agg.compensated)
      error = jax.tree.leaves(agg.inner.error)
      last_coded = np.asarray(coded)[:, -1]
      for s in range(config.num_seeds):
        for w in range(config.num_workers):
          counts = check_messages(
              multiplier, [np.asarray(c[s, w]) for c in compensated],
              [np.asarray(e[s, w]) for e in error], int(last_coded[s, w]))
          if checks is None:
            checks = dict.fromkeys(counts, 0)
          for k, v in counts.items():
            checks[k] += v
  out = {"accuracy": curve[-1], "curve": np.stack(curve, axis=1)}
  if multiplier is not None:
    out["coded_bytes"] = np.concatenate(coded_all, axis=1)
    out["checks"] = checks
  return out


def param_sizes(config: Config, data: datasets.Dataset) -> list[int]:
  """Sizes of the MLP's tensors (``jax.tree.leaves`` order)."""
  shapes = jax.eval_shape(_model(config, data).init, jax.random.key(0),
                          data.x_train[:1])
  return [int(np.prod(p.shape)) for p in jax.tree.leaves(shapes)]


def sample_batches(config: Config, num_train: int) -> np.ndarray:
  """Each worker's batch indices for every step and seed (i.i.d.)."""
  return np.stack([
      np.random.default_rng([config.data_seed, seed]).integers(
          0, num_train,
          (config.num_steps, config.num_workers, config.batch_size),
          dtype=np.int32)
      for seed in range(config.num_seeds)])


def _ratio(float_bytes: int, coded: np.ndarray) -> float:
  return float(float_bytes * coded.size / coded.sum())


def _judge(config: Config, float_bytes: int, baseline: np.ndarray,
           runs: list[dict[str, Any]]) -> list[bool]:
  """Sub-claims (a)-(d) on per-seed arrays (``runs`` one per multiplier)."""
  ratios = [_ratio(float_bytes, r["coded_bytes"]) for r in runs]
  return [
      all(config.min_ratio <= q <= config.max_ratio for q in ratios),
      all(r["checks_ok"] for r in runs),
      bool(baseline.mean() >= config.min_accuracy and all(
          baseline.mean() - r["accuracy"].mean() <= config.max_accuracy_drop
          for r in runs)),
      all(b >= a for a, b in zip(ratios, ratios[1:])),
  ]


def run(*, quick: bool = False, seeds: int | None = None,
        progress: bool = True, **overrides) -> harness.CheckResult:
  """Trains the baseline and 3LC at every multiplier; judges (a)-(d).

  Args:
    quick: use :data:`QUICK` instead of ``Config()``; only the sub-claims
      in :data:`QUICK_ASSESSED` are then assessed.
    seeds: number of seeds, overriding the configuration's.
    progress: print a line per training run (the baseline, then each
      multiplier) to stderr.
    **overrides: further :class:`Config` fields (e.g. ``num_steps=2000``).

  Returns:
    The :class:`harness.CheckResult`; ``measured`` is the number of
    assessed sub-claims that hold, ``sub_claims`` has each one's figures
    and ``extras["per_multiplier"]`` the ratios, accuracies and checks.
  """
  config = harness.resolve_config(Config(), QUICK, quick=quick, seeds=seeds,
                                  overrides=overrides)
  if config.num_steps % config.eval_every:
    raise ValueError(f"num_steps={config.num_steps} must be a multiple of "
                     f"eval_every={config.eval_every}")
  assessed = harness.quick_assessment(SUB_CLAIM_KEYS, QUICK_ASSESSED,
                                      quick=quick)
  start = time.perf_counter()
  meter = harness.Progress(NAME, 1 + len(config.sparsity_multipliers),
                           enabled=progress)
  size = (f"{config.num_seeds} seeds x {config.num_workers} workers x "
          f"{config.num_steps} steps")
  data = datasets.load_dataset("mnist5k")
  batches = sample_batches(config, data.x_train.shape[0])
  params = init_params(config, data)
  meter.point(f"uncompressed baseline: {size}")
  baseline = train(config, data, None, batches, params)
  runs = []
  for s in config.sparsity_multipliers:
    meter.point(f"3LC s = {s:g}: {size}, messages checked every "
                f"{config.eval_every} steps")
    runs.append(train(config, data, s, batches, params))
  meter.done()
  elapsed = time.perf_counter() - start

  sizes = param_sizes(config, data)
  num_params = sum(sizes)
  float_bytes = 4 * num_params
  for r in runs:
    failures = sum(v for k, v in r["checks"].items()
                   if k not in ("messages", "stream_bytes"))
    r["checks_ok"] = failures == 0 and r["checks"]["messages"] > 0
  passed = _judge(config, float_bytes, baseline["accuracy"], runs)

  ci = harness.bootstrap_count_ci(
      lambda rows: harness.count_assessed(_judge(
          config, float_bytes, baseline["accuracy"][rows],
          [{"coded_bytes": r["coded_bytes"][rows], "accuracy":
            r["accuracy"][rows], "checks_ok": r["checks_ok"]} for r in runs]),
                                          assessed),
      config.num_seeds)

  wire_bytes = sum(-(-size // 5) + 4 for size in sizes)
  per_multiplier = {}
  for s, r in zip(config.sparsity_multipliers, runs):
    step_ratio = float_bytes / r["coded_bytes"]  # [seeds, steps, workers]
    per_multiplier[f"{s:g}"] = {
        "ratio": _ratio(float_bytes, r["coded_bytes"]),
        "ratio_per_seed": [_ratio(float_bytes, c) for c in r["coded_bytes"]],
        "step_ratio_min": float(step_ratio.min()),
        "step_ratio_max": float(step_ratio.max()),
        "step_ratio_median": float(np.median(step_ratio)),
        "accuracy_mean": float(r["accuracy"].mean()),
        "accuracy_per_seed": r["accuracy"],
        "accuracy_drop": float(baseline["accuracy"].mean()
                               - r["accuracy"].mean()),
        "accuracy_curve": r["curve"].mean(axis=0),
        "checks": r["checks"],
    }
  first = runs[0]["coded_bytes"]
  chunks = first.reshape(config.num_seeds, -1, config.eval_every,
                         config.num_workers)
  y = float_bytes * config.eval_every * config.num_workers / chunks.sum(
      axis=(2, 3))
  ratios = [per_multiplier[f"{s:g}"]["ratio"]
            for s in config.sparsity_multipliers]
  drops = [per_multiplier[f"{s:g}"]["accuracy_drop"]
           for s in config.sparsity_multipliers]
  messages = sum(r["checks"]["messages"] for r in runs)
  rows = [
      dict(name="(a) compression ratio vs float32",
           measured="4 d N / sum(coded bytes) per multiplier "
           + ", ".join(f"s={s:g}: {q:.1f}x" for s, q in zip(
               config.sparsity_multipliers, ratios)),
           value=min(ratios),
           expected=f"in [{config.min_ratio:g}, {config.max_ratio:g}]"),
      dict(name="(b) lossless stages round-trip exactly",
           measured=f"failures over {messages} messages (tensor, worker, "
           "seed, checkpoint)",
           value=float(sum(sum(v for k, v in r["checks"].items()
                               if k not in ("messages", "stream_bytes"))
                           for r in runs)),
           expected="0"),
      dict(name="(c) test accuracy within 1 point of uncompressed",
           measured=(f"largest drop (baseline "
                     f"{baseline['accuracy'].mean():.4f})"),
           value=max(drops),
           expected=(f"<= {config.max_accuracy_drop:g}, baseline >= "
                     f"{config.min_accuracy:g}")),
      dict(name="(d) ratio non-decreasing in the sparsity multiplier",
           measured="last ratio - first, in multiplier order",
           value=ratios[-1] - ratios[0], expected="non-decreasing"),
  ]
  sub_claims = tuple(
      harness.SubClaim(key=key, holds=bool(p), assessed=a,
                       assessed_by="" if a else FULL_BUDGET, **row)
      for key, row, p, a in zip(SUB_CLAIM_KEYS, rows, passed, assessed))
  extras = {
      "num_params": num_params,
      "wire_ratio": float_bytes / wire_bytes,
      "paper_ratio_range": (39.0, 107.0),
      "baseline_accuracy_mean": float(baseline["accuracy"].mean()),
      "baseline_accuracy_per_seed": baseline["accuracy"],
      "baseline_accuracy_curve": baseline["curve"].mean(axis=0),
      "per_multiplier": per_multiplier,
  }
  return harness.CheckResult(
      claim=CLAIM, measured=harness.count_assessed(passed, assessed), ci=ci,
      x=config.eval_every * np.arange(1, y.shape[1] + 1, dtype=np.float64),
      y=y, config=dataclasses.asdict(config) | {"quick": quick},
      elapsed_s=elapsed, x_label="step (end of each eval_every window)",
      y_label=(f"compression ratio vs float32, s = "
               f"{config.sparsity_multipliers[0]:g}"),
      sub_claims=sub_claims,
      extras=extras, details=multiplier_table(extras))


def multiplier_table(extras: dict) -> str:
  """The baseline and the per-multiplier figures, as text.

  Args:
    extras: the result's ``extras``.

  Returns:
    The baseline accuracy and wire-format ratio, then one line per
    multiplier: coded ratio, per-step extremes, accuracy, drop, messages
    checked.
  """
  lines = [f"baseline accuracy {extras['baseline_accuracy_mean']:.4f}; "
           f"wire format (packed) ratio {extras['wire_ratio']:.2f}x",
           f"{'s':>5} {'ratio':>8} {'step min':>9} {'step max':>9} "
           f"{'accuracy':>9} {'drop':>8} {'messages':>9}"]
  for s, m in extras["per_multiplier"].items():
    lines.append(f"{s:>5} {m['ratio']:>8.1f} {m['step_ratio_min']:>9.1f} "
                 f"{m['step_ratio_max']:>9.1f} {m['accuracy_mean']:>9.4f} "
                 f"{m['accuracy_drop']:>8.4f} {m['checks']['messages']:>9}")
  return "\n".join(lines)


def main(argv=None):
  """``python -m distoptax.theory_checks.threelc_mnist [--quick] ...``."""
  harness.run_check_main(run, argv)


if __name__ == "__main__":
  main()
