r"""SLSGD under attack: trimmed mean + moving average survive scaled models.

Claim (Xie, Koyejo, Gupta, "SLSGD: Secure and Efficient Distributed
On-device Machine Learning", ECML PKDD 2019, arXiv:1903.06996, abstract:
"tolerates data poisoning on a small number of workers"; the robustness
argument: with at most b Byzantine workers, the coordinate-wise trimmed mean
:math:`\mathrm{TrMean}_b` stays inside the honest models' range and the
moving average :math:`x \leftarrow (1 - \alpha) x + \alpha\,
\mathrm{TrMean}_b(w_1..w_n)` moves the global model at most
:math:`\alpha` of the way there): with 20% of the workers sending scaled
negative models, SLSGD keeps its test accuracy within 3 points of its
attack-free run, while FedAvg (the mean, :math:`\alpha = 1`) collapses
(loses at least 30 points).

Attack ("scaled negative model", :func:`scaled_negative_model`): the first
q workers replace their local model :math:`w_i` by :math:`-s\,w_i`. In
``local_sgd``'s pseudo-gradient terms (:math:`p_i = x - w_i`, sent to the
rule) a Byzantine worker sends

.. math::
  \tilde p_i = x - (-s\,w_i) = (1 + s)\,x - s\,p_i,

a ``worker_transform`` that reads the global model :math:`x` (the
``params`` it receives). ``alg.attacks.sign_flip(scale=s)`` would send
:math:`-s\,p_i` instead (the model :math:`x + s\,p_i`: a reversed update,
not a reversed model).

Set-up. Softmax regression (zero init) on MNIST-5k (4,000 train / 1,000
test), n = 20 workers with label-skewed shards (``experiments.partition``,
Dirichlet ``dirichlet_alpha``), q = 4 Byzantine (20%), local SGD with
``period`` steps per round, ``batch_size`` examples per worker per step.
Methods, each through ``dist.simulate(dist.data_parallel(...))``:
``dist.slsgd(lr, period, alpha, num_trimmed=b, worker_transform=attack)``
with b = q, and FedAvg ``dist.fedavg(lr, period, worker_transform=attack)``.
The attack is switched by a traced flag (one program serves both runs of a
method). The measured figure is the test accuracy of the replicated global
model after ``num_steps`` steps, averaged over seeds; a run whose model is
not finite counts as chance (0.1).

Sub-claims (seed means):

1. SLSGD under attack is at least its attack-free accuracy minus
   ``max_drop`` (3 points).
2. FedAvg under attack collapses: it loses at least ``min_fedavg_drop``
   (30 points) against its attack-free run.

Measured: quick (2 seeds, 300 steps) SLSGD 0.866 clean, 0.851 attacked;
FedAvg 0.885 and 0.170. Full (5 seeds, 1,000 steps) SLSGD 0.890 and 0.870
(a 2.0-point drop, inside 3 with little margin); FedAvg 0.899 and 0.251 (the
attackers' models cancel most of the honest ones: with s = 4 and q = 4 of
20 the mean is :math:`(16 \bar w_h - 16 \bar w_b)/20`).

Negative control: ``num_trimmed=0`` (SLSGD without trimming, the moving
average alone): the attackers reach the average and 1 must FAIL.
"""

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import distributed as dist
from distoptax.experiments import datasets
from distoptax.experiments import partition
from distoptax.theory_checks import harness
from distoptax.worker_axis import collectives

NAME = "slsgd_attack"

CHANCE = 0.1
"""Accuracy of a constant guess on the balanced 10-class test set."""

CLAIM = harness.Claim(
    name=NAME,
    statement=(
        "With 20% of 20 workers sending scaled negative models (-s w_i), "
        "SLSGD (trimmed mean b = q, moving average alpha) keeps its test "
        "accuracy within 3 points of its attack-free run, while FedAvg "
        "collapses (loses >= 30 points)."),
    source=("Xie, Koyejo, Gupta 2019, SLSGD: Secure and Efficient "
            "Distributed On-device Machine Learning, ECML PKDD 2019, "
            "arXiv:1903.06996"),
    measured="number of the sub-claims 1-2 that hold",
    expected=2.0,
    tolerance=0.0,
)

SUB_CLAIM_KEYS = ("1", "2")
"""1: SLSGD survives; 2: FedAvg collapses."""

QUICK_ASSESSED = ("1", "2")
"""The quick budget assesses both."""

METHODS = ("slsgd", "fedavg")
"""The two methods, each run without and with the attack."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Configuration of the runs.

  Attributes:
    num_workers: n.
    num_byzantine: q (the first q workers).
    num_trimmed: SLSGD's b; 0 is the negative control.
    scale: s of the attack.
    alpha: SLSGD's moving-average weight.
    learning_rate: the workers' SGD rate.
    period: local steps per round.
    batch_size: examples per worker per step.
    dirichlet_alpha: label skew of the shards.
    num_steps: steps of each run.
    max_drop: sub-claim 1's tolerance.
    min_fedavg_drop: sub-claim 2's threshold.
    num_seeds: seeds (batches); the partition is fixed by ``data_seed``.
    data_seed: seed of the partition.
  """

  num_workers: int = 20
  num_byzantine: int = 4
  num_trimmed: int = 4
  scale: float = 4.0
  alpha: float = 0.8
  learning_rate: float = 0.1
  period: int = 5
  batch_size: int = 16
  dirichlet_alpha: float = 1.0
  num_steps: int = 1000
  max_drop: float = 0.03
  min_fedavg_drop: float = 0.3
  num_seeds: int = 5
  data_seed: int = 0


QUICK = Config(num_steps=300, num_seeds=2)
"""The CI-sized configuration (``--quick``)."""


def scaled_negative_model(num_byzantine: int, scale: Any, on: Any = True, *,
                          axis_name: str = collectives.WORKERS
                          ) -> optax.GradientTransformationExtraArgs:
  r"""Byzantine workers send the model :math:`-s\,w_i` as a pseudo-gradient.

  .. math::
    \tilde p_i = (1 + s)\,x - s\,p_i \quad (i < q), \qquad
    \tilde p_i = p_i \quad (\text{honest})

  with :math:`p_i = x - w_i` and :math:`x` the global model (``params``).

  Args:
    num_byzantine: q, the first q workers attack.
    scale: s.
    on: whether the attack is active (may be traced, the same on every
      worker).
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``optax.EmptyState``;
    ``update`` needs ``params`` (``local_sgd`` passes the global model).

  Raises:
    ValueError: for ``num_byzantine`` outside ``[0, num_workers)`` (at
      ``init``) or a missing ``params``.
  """

  def init_fn(params):
    del params
    n = collectives.num_workers(axis_name)
    if not 0 <= num_byzantine < n:
      raise ValueError(f"num_byzantine must lie in [0, {n}); got "
                       f"{num_byzantine}")
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("scaled_negative_model needs params, the global "
                       "model (local_sgd's worker_transform receives it)")
    bad = (collectives.worker_index(axis_name) < num_byzantine) & on
    out = jax.tree.map(
        lambda p, x: jnp.where(bad, (1 + scale) * x - scale * p,
                               p).astype(p.dtype), updates, params)
    return out, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _loss(params, batch):
  x, y = batch
  logits = x @ params["w"] + params["b"]
  return optax.losses.softmax_cross_entropy_with_integer_labels(
      logits, y).mean()


def make_method(name: str, config: Config, on: Any
                ) -> optax.GradientTransformation:
  """The transformation of method ``name`` with the switched attack."""
  attack = scaled_negative_model(config.num_byzantine, config.scale, on)
  factories = {
      "slsgd": lambda: dist.slsgd(
          config.learning_rate, config.period, config.alpha,
          num_trimmed=config.num_trimmed, worker_transform=attack),
      "fedavg": lambda: dist.fedavg(config.learning_rate, config.period,
                                    worker_transform=attack),
  }
  if name not in factories:
    raise ValueError(f"unknown method {name!r}; known: {sorted(factories)}")
  return factories[name]()


def run_method(name: str, config: Config, data: datasets.Dataset,
               shards: partition.PaddedPartition) -> np.ndarray:
  """Final test accuracies ``[2 (attack off, on), num_seeds]``."""
  m, b = config.num_workers, config.batch_size
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  table, sizes = jnp.asarray(shards.indices), jnp.asarray(shards.sizes)
  zeros = {"w": jnp.zeros((data.dim, data.num_classes), jnp.float32),
           "b": jnp.zeros((data.num_classes,), jnp.float32)}

  def one_run(on, seed):
    runtime = dist.simulate(
        dist.data_parallel(_loss, make_method(name, config, on)), m)
    state = runtime.init(zeros)
    key = jax.random.key(seed)

    def step(st, t):
      u = jax.random.uniform(jax.random.fold_in(key, t), (m, b))
      idx = jnp.take_along_axis(
          table, jnp.floor(u * sizes[:, None]).astype(jnp.int32), axis=1)
      st, _ = runtime.step(st, (x[idx], y[idx]))
      return st, None

    state, _ = jax.lax.scan(step, state, jnp.arange(config.num_steps))
    params = state.opt_state.global_params
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(p))
                                for p in jax.tree.leaves(params)]))
    logits = x_test @ params["w"] + params["b"]
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y_test)
    return jnp.where(finite, accuracy, CHANCE)

  over_seeds = jax.vmap(one_run, in_axes=(None, 0))
  over_attacks = jax.jit(jax.vmap(over_seeds, in_axes=(0, None)))
  return np.asarray(over_attacks(jnp.array([False, True]),
                                 jnp.arange(config.num_seeds)), np.float64)


def judge(config: Config, acc: dict[str, np.ndarray]) -> tuple[list[bool],
                                                             list[float]]:
  """The sub-claims and their figures on seed-mean accuracies.

  Args:
    config: the configuration.
    acc: method -> ``[2, num_seeds]`` accuracies (attack off, on).

  Returns:
    The verdicts, and the drops of SLSGD and of FedAvg under attack.
  """
  mean = {k: v.mean(axis=1) for k, v in acc.items()}
  drop = float(mean["slsgd"][0] - mean["slsgd"][1])
  collapse = float(mean["fedavg"][0] - mean["fedavg"][1])
  return ([drop <= config.max_drop,
           collapse >= config.min_fedavg_drop], [drop, collapse])


def run(*, quick: bool = False, seeds: int | None = None,
        progress: bool = True, **overrides) -> harness.CheckResult:
  """Trains both methods with and without the attack; judges the claims.

  Args:
    quick: use :data:`QUICK` instead of ``Config()``.
    seeds: number of seeds, overriding the configuration's.
    progress: print a line per method to stderr.
    **overrides: further :class:`Config` fields (e.g. ``num_trimmed=0``).

  Returns:
    The :class:`harness.CheckResult`; ``measured`` is the number of
    sub-claims that hold; ``y`` the per-seed accuracies of the (method,
    attack) pairs ``extras["pairs"]``.
  """
  config = harness.resolve_config(Config(), QUICK, quick=quick, seeds=seeds,
                                  overrides=overrides)
  if config.num_workers <= 2 * config.num_trimmed:
    raise ValueError(f"num_workers must exceed 2 * num_trimmed; got "
                     f"{config.num_workers} and {config.num_trimmed}")
  assessed = harness.quick_assessment(SUB_CLAIM_KEYS, QUICK_ASSESSED,
                                      quick=quick)
  start = time.perf_counter()
  data = datasets.load_dataset("mnist5k")
  shards = partition.pad_partition(partition.partition(
      data.y_train, config.num_workers, "dirichlet", seed=config.data_seed,
      alpha=config.dirichlet_alpha))
  meter = harness.Progress(NAME, len(METHODS), enabled=progress)
  acc = {}
  for name in METHODS:
    meter.point(f"{name}: attack off/on x {config.num_seeds} seeds x "
                f"{config.num_steps:,} steps")
    acc[name] = run_method(name, config, data, shards)
  meter.done()
  elapsed = time.perf_counter() - start
  holds, values = judge(config, acc)
  ci = harness.bootstrap_count_ci(
      lambda rows: harness.count_assessed(
          judge(config, {k: v[:, rows] for k, v in acc.items()})[0],
          assessed), config.num_seeds, num_resamples=200)
  sub_claims = (
      harness.SubClaim(
          key="1", name=f"1. SLSGD (b = {config.num_trimmed}) loses at most "
          f"{config.max_drop:g} under attack", holds=bool(holds[0]),
          assessed=assessed[0], value=values[0],
          expected=f"<= {config.max_drop:g}",
          measured="attack-free minus attacked test accuracy"),
      harness.SubClaim(
          key="2", name=f"2. FedAvg loses at least "
          f"{config.min_fedavg_drop:g} under attack", holds=bool(holds[1]),
          assessed=assessed[1], value=values[1],
          expected=f">= {config.min_fedavg_drop:g}",
          measured="attack-free minus attacked test accuracy"),
  )
  pairs = [(k, a) for k in METHODS for a in ("clean", "attacked")]
  y = np.stack([acc[k][i] for k in METHODS for i in range(2)], axis=1)
  table = {k: {"clean": float(acc[k][0].mean()),
               "attacked": float(acc[k][1].mean())} for k in METHODS}
  details = "test accuracy (seed means): " + "; ".join(
      f"{k}: clean {v['clean']:.3f}, attacked {v['attacked']:.3f}"
      for k, v in table.items())
  return harness.CheckResult(
      claim=CLAIM, measured=harness.count_assessed(holds, assessed), ci=ci,
      x=np.arange(1, len(pairs) + 1, dtype=np.float64), y=y,
      config=dataclasses.asdict(config) | {"quick": quick},
      elapsed_s=elapsed,
      x_label="(method, attack) pair number i: extras['pairs'][i - 1]",
      y_label="final test accuracy", extras={"pairs": pairs, "table": table},
      sub_claims=sub_claims, details=details, plot_fn=plot_accuracies)


def plot_accuracies(result: harness.CheckResult) -> Any:
  """Bars: each method's accuracy without and with the attack.

  Args:
    result: this check's result.

  Returns:
    A ``matplotlib.figure.Figure``.
  """
  pairs = [tuple(p) for p in result.extras["pairs"]]
  fig = harness.new_figure(6, 4.5)
  ax = fig.add_subplot()
  means = result.y.mean(axis=0)
  colors = ["C0" if a == "clean" else "C3" for _, a in pairs]
  bars = ax.bar(np.arange(len(pairs)), means, color=colors)
  ax.bar_label(bars, labels=[f"{v:.3f}" for v in means], fontsize=8)
  for j in range(len(pairs)):
    ax.plot(np.full(result.y.shape[0], j), result.y[:, j], ".", color="k")
  ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=0.8,
             label="chance")
  ax.set_xticks(np.arange(len(pairs)), [f"{k}\n{a}" for k, a in pairs])
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("final test accuracy (MNIST-5k)")
  cfg = result.config
  ax.set_title(
      f"{result.claim.name}: {result.verdict}. q = {cfg['num_byzantine']} of "
      f"{cfg['num_workers']} send -{cfg['scale']:g} w_i;\nSLSGD b = "
      f"{cfg['num_trimmed']}, alpha = {cfg['alpha']:g}, period "
      f"{cfg['period']}", fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(True, axis="y", alpha=0.3)
  fig.tight_layout()
  return fig


def main(argv=None):
  """``python -m distoptax.theory_checks.slsgd_attack [--quick]``."""
  harness.run_check_main(run, argv)


if __name__ == "__main__":
  main()
