r"""RPS over unreliable networks: dropped messages cost little, less with n.

Claim (Yu, Tang, Renggli, Kassing, Singla, Alistarh, Zhang & Liu,
"Distributed Learning over Unreliable Networks", ICML 2019,
arXiv:1810.07766, abstract; reference card theory_checks.md §7): when every
worker-server message is dropped with probability :math:`p`, the Robust
Parameter Server (RPS) converges at the rate of reliable distributed SGD,
:math:`p` entering only higher-order terms, and "the influence of the
packet drop rate diminishes with the growth of the number of parameter
servers"; in their network simulation a 10% drop rate does not hurt
convergence. The constants of the theorem are not checked here (card:
do not hard-code a :math:`1/n` law); the check tests the direction.

Set-up. Softmax regression on scikit-learn's digits; ``n`` workers, each
with a colocated server (``optax.chain(optax.sgd(0.2),
dist.rps(p))`` under ``dist.simulate(dist.data_parallel(...), n)``,
per-worker replicas), minibatches of 8 per worker, 300 steps. The final
loss is the mean over workers of their own replica's full training loss,
averaged over the last 5 evaluations (every 10 steps) to damp the SGD
noise of the last iterate; every ``p`` of a seed sees the same minibatches
(common random numbers), so gaps to :math:`p = 0` are paired.

Two data layouts: i.i.d. minibatches (the noise of the workers' own
gradients is what drops let the replicas keep), and label-skewed ones
(each worker draws 80% of its examples from its "home" classes, those
congruent to ``i`` modulo ``min(n, 10)``), where a replica that keeps its own block drifts toward its home
class, which is what a network without communication cannot undo.

Sub-claims (medians/means over seeds as stated):

(a) Drops cost: on i.i.d. data the loss gap :math:`L(p{=}0.5) - L(0)` is
    positive at every ``n`` (median over seeds).
(b) The cost shrinks with ``n``: the log-log slope of that gap against
    :math:`n \in \{4, 8, 16, 32\}` is negative and the gap at the largest
    ``n`` is below the one at the smallest.
(c) 10% drops are tolerated: on label-skewed data, :math:`p = 0.1` stays
    within 1 accuracy point (test set, mean over replicas and seeds) of
    :math:`p = 0` at every ``n``.
(d) Negative control: on label-skewed data without any communication
    (:math:`p = 1`, ``n`` independent SGD runs) the same 1-point criterion
    rejects the largest ``n``.

``measured`` is the number of sub-claims that hold (expected 4, tolerance
0); ``x``/``y`` (and the PNG) are ``n`` and the per-seed gap at
:math:`p = 0.5`.
"""

import dataclasses
import time
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import distributed as dist
from distoptax.distributed import unreliable
from distoptax.experiments import datasets
from distoptax.theory_checks import harness
from distoptax.worker_axis import keys

NAME = "unreliable_networks"

CLAIM = harness.Claim(
    name=NAME,
    statement=("RPS with message drop rate p: the loss gap to p = 0 is "
               "positive and shrinks as the number n of servers grows; "
               "p = 0.1 stays within 1 accuracy point of p = 0"),
    source=("Yu, Tang, Renggli, Kassing, Singla, Alistarh, Zhang, Liu, ICML "
            "2019, arXiv:1810.07766 (abstract)"),
    measured="number of sub-claims (a)-(d) that hold",
    expected=4.0,
    tolerance=0.0)


@dataclasses.dataclass(frozen=True)
class Config:
  """Configuration of the run.

  Attributes:
    num_workers: the swept ``n`` (workers = servers).
    drop_probabilities: the ``p`` of the i.i.d. sweep; must hold 0 and
      ``gap_probability``.
    gap_probability: the ``p`` whose gap (a) and (b) judge.
    skew: fraction of each worker's examples from its home class in the
      label-skewed layout of (c) and (d).
    tolerated_probability: the ``p`` of (c).
    learning_rate: workers' SGD rate.
    batch_size: examples per worker per step.
    num_steps: steps per run.
    eval_every: steps between evaluations.
    eval_last: evaluations averaged into the final figures.
    max_accuracy_loss: tolerance of (c) and (d) (0.01 = 1 point).
    num_seeds: seeds (minibatches and drops).
  """

  num_workers: tuple[int, ...] = (4, 8, 16, 32)
  drop_probabilities: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5)
  gap_probability: float = 0.5
  skew: float = 0.8
  tolerated_probability: float = 0.1
  learning_rate: float = 0.2
  batch_size: int = 8
  num_steps: int = 300
  eval_every: int = 10
  eval_last: int = 5
  max_accuracy_loss: float = 0.01
  num_seeds: int = 4


QUICK = Config(num_workers=(4, 16, 32), drop_probabilities=(0.0, 0.5),
               num_seeds=2, num_steps=200)
"""The CI-sized configuration (``--quick``): n in {4, 16, 32}, p in
{0, 0.5} for the i.i.d. sweep, 2 seeds, 200 steps."""

SUB_CLAIM_KEYS = ("a", "b", "c", "d")
"""The sub-claims' keys, in order."""

QUICK_ASSESSED = SUB_CLAIM_KEYS
"""The quick budget assesses every sub-claim (fewer p, steps and seeds)."""


def _loss(params, batch):
  x, y = batch
  logits = x @ params["w"] + params["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def sample_indices(config: Config, data: datasets.Dataset, n: int,
                   seed: int, skew: float) -> np.ndarray:
  r"""Minibatch indices ``[T, n, batch]``: a fraction ``skew`` from home.

  Worker ``i``'s home classes are those :math:`c \equiv i` modulo
  :math:`\min(n, C)` (``C`` classes), so that every class is some worker's
  home whatever ``n``; each example is drawn from the home classes with
  probability ``skew`` and uniformly otherwise.
  """
  rng = np.random.default_rng([seed, n])
  shape = (config.num_steps, n, config.batch_size)
  uniform = rng.integers(0, data.y_train.shape[0], shape)
  groups = min(n, data.num_classes)
  homes = [np.flatnonzero(data.y_train % groups == i % groups)
           for i in range(n)]
  home = np.stack([rng.choice(homes[i], shape[::2]) for i in range(n)],
                  axis=1)
  return np.where(rng.random(shape) < skew, home, uniform)


def train(config: Config, data: datasets.Dataset, n: int, p: float,
          indices: list[np.ndarray], seeds: list[int]) -> np.ndarray:
  """Final ``(loss, accuracy)`` of RPS for each seed.

  Args:
    config: the configuration.
    data: the dataset.
    n: workers.
    p: drop probability.
    indices: per seed, the minibatch indices of :func:`sample_indices`.
    seeds: the seeds (also of the drop draws).

  Returns:
    ``[num_seeds, 2]``: replica-mean training loss and test accuracy,
    averaged over the last ``eval_last`` evaluations.
  """
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  tx = optax.chain(optax.sgd(config.learning_rate), unreliable.rps(p))
  run = dist.simulate(dist.data_parallel(_loss, tx), n)
  dim, classes = x.shape[1], data.num_classes
  zeros = {"w": jnp.zeros((dim, classes)), "b": jnp.zeros(classes)}

  def evaluate(params):
    def one(w):
      logits = x_test @ w["w"] + w["b"]
      return _loss(w, (x, y)), jnp.mean(jnp.argmax(logits, 1) == y_test)
    loss, accuracy = jax.vmap(one)(params)
    return jnp.stack([loss.mean(), accuracy.mean()])

  @jax.jit
  def chunk(state, idx):
    state, _ = lax.scan(lambda s, i: (run.step(s, (x[i], y[i]))[0], None),
                        state, idx)
    return state, evaluate(state.params)

  out = []
  for seed, index in zip(seeds, indices):
    state = run.init(zeros)
    drops = state.opt_state[1]._replace(
        key=keys.transform_key(seed, unreliable.KEY_NAME))
    state = state._replace(opt_state=(state.opt_state[0], drops))
    figures = []
    for idx in index.reshape(-1, config.eval_every, *index.shape[1:]):
      state, values = chunk(state, idx)
      figures.append(np.asarray(values))
    out.append(np.mean(figures[-config.eval_last:], axis=0))
  return np.asarray(out)


def run(*, quick: bool = False, seeds: int | None = None,
        progress: bool = True, **overrides) -> harness.CheckResult:
  """Runs both sweeps and counts the sub-claims that hold.

  Args:
    quick: use :data:`QUICK` instead of ``Config()``.
    seeds: number of seeds, overriding the configuration's.
    progress: print a line per ``n`` and layout to stderr.
    **overrides: further :class:`Config` fields.

  Returns:
    The :class:`harness.CheckResult`.
  """
  config = harness.resolve_config(Config(), QUICK, quick=quick, seeds=seeds,
                                  overrides=overrides)
  assessed = harness.quick_assessment(SUB_CLAIM_KEYS, QUICK_ASSESSED,
                                      quick=quick)
  for p in (0.0, config.gap_probability):
    if p not in config.drop_probabilities:
      raise ValueError(f"drop_probabilities {config.drop_probabilities} "
                       f"must hold {p}")
  start = time.perf_counter()
  data = datasets.load_dataset("digits")
  seed_list = list(range(config.num_seeds))
  ns = config.num_workers
  meter = harness.Progress(NAME, 2 * len(ns), enabled=progress)
  iid, skewed = {}, {}
  for n in ns:
    meter.point(f"n={n}: i.i.d., p in {config.drop_probabilities}")
    idx = [sample_indices(config, data, n, s, 0.0) for s in seed_list]
    for p in config.drop_probabilities:
      iid[n, p] = train(config, data, n, p, idx, seed_list)
    meter.point(f"n={n}: label-skewed, p in "
                f"(0, {config.tolerated_probability}, 1)")
    idx = [sample_indices(config, data, n, s, config.skew)
           for s in seed_list]
    for p in (0.0, config.tolerated_probability, 1.0):
      skewed[n, p] = train(config, data, n, p, idx, seed_list)
  meter.done()
  elapsed = time.perf_counter() - start

  q = config.gap_probability
  gap = np.stack([iid[n, q][:, 0] - iid[n, 0.0][:, 0] for n in ns], axis=1)
  drop = {p: np.stack([skewed[n, 0.0][:, 1] - skewed[n, p][:, 1]
                       for n in ns], axis=1)
          for p in (config.tolerated_probability, 1.0)}
  log_n = np.log(np.asarray(ns, np.float64))

  def judge(rows):
    median_gap = np.median(gap[rows], axis=0)
    positive = np.all(median_gap > 0)
    slope = (np.polyfit(log_n, np.log(median_gap), 1)[0] if positive
             else np.inf)
    return [
        positive,
        slope < 0 and median_gap[-1] < median_gap[0],
        np.all(drop[config.tolerated_probability][rows].mean(0)
               <= config.max_accuracy_loss),
        drop[1.0][rows].mean(0)[-1] > config.max_accuracy_loss,
    ], slope

  everyone = np.arange(config.num_seeds)
  holds, slope = judge(everyone)
  ci = harness.bootstrap_count_ci(
      lambda rows: harness.count_assessed(judge(rows)[0], assessed),
      config.num_seeds)
  median_gap = np.median(gap, axis=0)
  rows = [
      dict(name=f"(a) loss gap at p={q} is positive at every n",
           measured="smallest median gap over n",
           value=float(median_gap.min()), expected="> 0"),
      dict(name="(b) the gap shrinks with n",
           measured="log-log slope of the median gap against n",
           value=float(slope), expected="< 0, gap(n_max) < gap(n_min)"),
      dict(name=f"(c) p={config.tolerated_probability} within 1 accuracy "
           "point (label-skewed)",
           measured="largest accuracy loss over n (mean over seeds)",
           value=float(drop[config.tolerated_probability].mean(0).max()),
           expected=f"<= {config.max_accuracy_loss}"),
      dict(name="(d) control: p=1 (no communication) is rejected",
           measured=f"accuracy loss at n={ns[-1]}",
           value=float(drop[1.0].mean(0)[-1]),
           expected=f"> {config.max_accuracy_loss}"),
  ]
  sub_claims = tuple(
      harness.SubClaim(key=key, holds=bool(h), assessed=a, **row)
      for key, row, h, a in zip(SUB_CLAIM_KEYS, rows, holds, assessed))
  table = {f"iid n={n} p={p}": iid[n, p].mean(0) for n, p in iid}
  table |= {f"skewed n={n} p={p}": skewed[n, p].mean(0)
            for n, p in skewed}
  extras = {"loss_accuracy": table, "gap_median": median_gap,
            "slope": float(slope)}
  return harness.CheckResult(
      claim=CLAIM, measured=harness.count_assessed(holds, assessed), ci=ci,
      x=np.asarray(ns, np.float64), y=gap,
      config=dataclasses.asdict(config) | {"quick": quick},
      elapsed_s=elapsed, x_label="workers = servers n",
      y_label=f"loss gap L(p={q}) - L(0), i.i.d.", sub_claims=sub_claims,
      extras=extras, details=_table(iid, skewed))


def _table(iid: dict, skewed: dict) -> str:
  """Loss and accuracy per n and p, as text."""
  lines = [f"{'layout':>7} {'n':>3} {'p':>5} {'loss':>8} {'accuracy':>8}"]
  for name, runs in (("iid", iid), ("skewed", skewed)):
    for (n, p), values in sorted(runs.items()):
      loss, accuracy = values.mean(0)
      lines.append(f"{name:>7} {n:>3} {p:>5.2f} {loss:>8.4f} "
                   f"{accuracy:>8.4f}")
  return "\n".join(lines)


def main(argv=None):
  """``python -m distoptax.theory_checks.unreliable_networks [--quick]``."""
  harness.run_check_main(run, argv)


if __name__ == "__main__":
  main()
