"""Properties of every registered aggregation rule and pre-aggregation.

``AGGREGATOR_ROWS`` and ``PREAGGREGATOR_ROWS`` hold one row per entry of
``aggregators.AGGREGATORS`` and ``aggregators.PREAGGREGATORS``: how to build
it for ``N`` workers of which ``F`` are Byzantine (through the registry's
own factory), its NumPy reference, and which form of each property it
promises. A registry entry without a row fails
``test_every_registry_entry_has_a_row`` and every test parametrized over
it. A pre-aggregation is tested composed with the rule named in its row.

Where a property does not hold by design, the row says why and the test
asserts the documented behaviour instead: the mean propagates non-finite
inputs and has no bound against finite ones (every other row names the
bound it meets with F Byzantine rows up to the float32 maximum);
bucketing shuffles the workers; Bulyan, MDA and Byzantine SGD break exact
ties by worker index; sums over workers are permutation invariant only to
rounding.

References: most come from ``tests/references.py``, each written from its
paper and shared with the per-rule test files (median, trimmed mean,
MeaMed, Phocas; Krum, Multi-Krum; Bulyan; MDA, static clipping, ARC,
centered clipping; NNM, bucketing; Zeno; Byzantine SGD). The mean and the
geometric median (as the minimiser of the sum of distances, not as an
iteration) are written here. The differential test runs every row on the
same battery, which includes exact ties between values (small-integer
lattices), between different vectors (mirror-symmetric stacks) and exact
duplicates (mimic copies).

All tests share one jitted ``update`` per row (the same shapes throughout),
so each rule compiles once here, plus once under ``dist.simulate``.
"""

import dataclasses
import functools
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.algorithms import aggregators
from distoptax.algorithms.aggregators import clipping
from tests import references

N, F = 11, 2  # Bulyan's n >= 4f + 3 is the tightest precondition.
D = 8  # One worker's update: {"b": [2], "w": [2, 3]}, flattened in that order.

# Hyperparameters of the rows.
CLIP_NORM = 2.0  # Gaussian rows in 8 dimensions have norm ~2.8.
CC_RADIUS, CC_ITERATIONS = 1.0, 2
BSGD_V, BSGD_T = 3.0, 20.0
ZENO_LR, ZENO_RHO = 0.1, 0.01
BUCKET = 2


# ----------------------------------------------------------------- the data
def to_tree(x):
  """``[..., n, 8]`` -> ``{"b": [..., n, 2], "w": [..., n, 2, 3]}``."""
  x = jnp.asarray(x, jnp.float32)
  return {"b": x[..., :2], "w": x[..., 2:].reshape(x.shape[:-1] + (2, 3))}


def from_tree(tree):
  """Inverse of :func:`to_tree` (leaves in ``jax.tree.leaves`` order)."""
  lead = tree["b"].shape[:-1]
  return np.concatenate([np.asarray(tree["b"], np.float64),
                         np.asarray(tree["w"], np.float64).reshape(
                             lead + (6,))], axis=-1)


_VALUE_RNG = np.random.default_rng(1234)
_M = _VALUE_RNG.normal(size=(5, D))
_Y = _VALUE_RNG.normal(size=5)


def value_np(x):
  """Zeno's validation loss in float64 on a flat parameter vector."""
  return 0.5 * np.mean((_M @ x - _Y) ** 2)


def value_fn(params):
  """The same loss on the params pytree (the server's validation batch)."""
  x = jnp.concatenate([params["b"], params["w"].reshape(-1)])
  return 0.5 * jnp.mean((jnp.asarray(_M, jnp.float32) @ x
                         - jnp.asarray(_Y, jnp.float32)) ** 2)


PARAMS0 = to_tree(np.zeros(D))


def mirror_stack(rng):
  """Pairs of lattice rows that differ only in the sign of coordinate 0.

  The stack is symmetric under that reflection, so every score, distance
  and neighbourhood of a row equals its mirror's (exactly: small integers),
  and selection rules tie between two *different* vectors: the output shows
  which index wins. The last row, on the mirror plane, is an outlier.
  """
  half = rng.integers(-2, 3, size=(N // 2, D)).astype(float)
  half[:, 0] = rng.choice([-2.0, -1.0, 1.0, 2.0], size=N // 2)
  mirrored = half * np.r_[-1.0, np.ones(D - 1)]
  outlier = np.r_[0.0, np.full(D - 1, 9.0)]
  return np.concatenate([half, mirrored, outlier[None]])[rng.permutation(N)]


def battery(seed, count=3):
  """Honest Gaussian stacks plus stacks with exact ties and duplicates."""
  rng = np.random.default_rng(seed)
  stacks = []
  for _ in range(count):
    x = rng.normal(size=(N, D))
    stacks.append(("gaussian", x))
    lattice = rng.integers(-2, 3, size=(N, D)).astype(float)
    stacks.append(("lattice", lattice))  # Exact ties in values, distances.
    stacks.append(("mirror", mirror_stack(rng)))  # Ties between vectors.
    mimic = x.copy()
    central = np.argmin(np.linalg.norm(x - x.mean(0), axis=1))
    others = rng.choice(np.delete(np.arange(N), central), F, replace=False)
    mimic[others] = mimic[central]  # Mimic: F copies of a central row.
    stacks.append(("mimic", mimic))
    dup = rng.normal(size=(N, D))
    dup[rng.choice(N, 2, replace=False)] = dup[0]  # Honest duplicates too.
    dup[rng.choice(N, 2, replace=False)] = dup[1]
    stacks.append(("duplicates", dup))
    outliers = rng.normal(size=(N, D))
    rows = rng.choice(N, F, replace=False)
    outliers[rows] = rng.normal(size=(F, D)) * 30 + 5
    stacks.append(("outliers", outliers))
  return [(kind, x.astype(np.float32)) for kind, x in stacks]


BAD_KINDS = ("nan", "+inf", "-inf", "mixed", "one_entry", "huge")
FLOAT32_MAX = np.finfo(np.float32).max
# Finite Byzantine rows up to the float32 maximum: squares that overflow,
# reciprocals of the largest entry that are subnormal (1e38, the float32
# maximum), the power of two 2^126 where they start to be, one huge entry
# in an honest-looking row, and moderate values whose squares overflow.
EXTREME_KINDS = ("max", "-max", "opposite", "1e38", "2^126", "one_max",
                 "1e20")


def byzantine_stack(rng, kind):
  """Honest Gaussian rows with F Byzantine rows at random positions."""
  x = rng.normal(size=(N, D)).astype(np.float32)
  rows = rng.choice(N, F, replace=False)
  for k, row in enumerate(rows):
    if kind == "nan":
      x[row] = np.nan
    elif kind == "+inf":
      x[row] = np.inf
    elif kind == "-inf":
      x[row] = -np.inf
    elif kind == "mixed":  # NaN, +inf, -inf and finite entries in one row.
      x[row] = rng.choice(np.array([np.nan, np.inf, -np.inf, 1.0],
                                   np.float32), size=D)
      x[row, k % D] = np.nan
    elif kind == "one_entry":
      x[row, rng.integers(D)] = (np.nan, np.inf, -np.inf)[k % 3]
    elif kind == "huge":  # Finite, but their squares overflow float32.
      x[row] = np.float32(3e38) * rng.choice([-1, 1], size=D)
    elif kind == "max":
      x[row] = FLOAT32_MAX
    elif kind == "-max":
      x[row] = -FLOAT32_MAX
    elif kind == "opposite":  # One row at +max, the next at -max.
      x[row] = FLOAT32_MAX * (-1) ** k
    elif kind == "1e38":
      x[row] = np.float32(1e38)
    elif kind == "2^126":
      x[row] = np.float32(2.0 ** 126) * rng.choice([-1, 1], size=D)
    elif kind == "one_max":
      x[row, rng.integers(D)] = FLOAT32_MAX * rng.choice([-1, 1])
    elif kind == "1e20":
      x[row] = np.float32(1e20) * rng.choice([-1, 1], size=D)
    else:
      raise ValueError(f"unknown kind {kind!r}")
  return x, np.sort(rows)


# ------------------------------------------------------------ references
def ref_mean(x):
  return np.asarray(x, np.float64).mean(0)


def ref_geometric_median(x):
  """argmin_z sum_i |z - x_i| in float64 (Weiszfeld 1937).

  The minimiser is either a data point (checked directly: duplicates often
  put it there) or the limit of Weiszfeld's iteration, run long from the
  mean with a negligible smoothing.
  """
  x = np.asarray(x, np.float64)
  z = x.mean(0)
  for _ in range(2000):
    beta = 1.0 / np.maximum(1e-12, np.linalg.norm(x - z, axis=1))
    z = beta @ x / beta.sum()
  return min([z] + list(x), key=lambda c: gm_objective(x, c))


def gm_objective(x, z):
  return np.linalg.norm(np.asarray(x, np.float64) - z, axis=1).sum()


def stateless(fn):
  """A reference factory for a rule without state: ``step(x, p, s)``."""
  return lambda: (lambda x, params, state: fn(x))


def krum_reference(x):
  return np.asarray(x, np.float64)[references.ref_krum_index(x, F)]


def centered_clipping_reference():
  history = []

  def step(x, params, state):
    del params, state
    history.append(x)
    return references.ref_centered_clipping(
        history, CC_RADIUS, CC_ITERATIONS)[-1]

  return step


def byzantine_sgd_reference():
  ref = references.ByzantineSGDReference(
      N, from_tree(PARAMS0), BSGD_V, BSGD_T, BSGD_T)
  return lambda x, params, state: ref.step(x, from_tree(params))


def zeno_reference(x, params, state):
  del state
  return references.zeno_reference(
      x, from_tree(params), value_np, ZENO_LR, ZENO_RHO, F)[0]


def bucketing_then_median_reference(x, params, state):
  del params
  key, _ = jax.random.split(jax.random.wrap_key_data(state.pre[0].key))
  perm = np.asarray(jax.random.permutation(key, N))
  buckets = references.ref_bucketing(x, perm, BUCKET)
  return references.np_median(buckets)


# ------------------------------------------------------------- the table
EXACT = "exact"      # permuting the workers gives bit-identical outputs
CLOSE = "close"      # ... equal to float tolerance (sums in worker order)
TIES = "ties"        # ... equal unless the paper's rule itself ties
SHUFFLE = "shuffle"  # random shuffle of the workers: see the test


@dataclasses.dataclass(frozen=True)
class Row:
  """How one registry entry is built and what it promises.

  Attributes:
    make: ``make(factory) -> AggregationRule`` from the registry's factory
      (for a pre-aggregation, composed with a downstream rule).
    reference: ``reference() -> step(x, params, state) -> [D]``, the NumPy
      reference (stateful where the rule is); ``state`` is the rule's state
      before the step (bucketing's shared key).
    permutation: one of EXACT, CLOSE, TIES, SHUFFLE.
    nonfinite: empty if up to ``F`` non-finite workers never reach the
      output; otherwise the documented reason they do.
    precondition: ``(n, message)``: the largest ``n`` that violates the
      rule's precondition at ``F``, and the expected ``ValueError`` text.
    bound: where the output must lie with up to ``F`` Byzantine workers
      sending anything (NaN, infinities, finite values up to the float32
      maximum); see :func:`check_bound`:
      "honest_range" (per coordinate, within the honest rows' range),
      "clipped_range" (the same range widened to include 0: clipping
      scales rows towards 0, then a coordinate-wise rule),
      "near_median" / "near_trimmed_mean" (per coordinate, within the
      honest values' largest distance to that centre),
      "input" (one of the honest rows),
      "vote" (every coordinate whose honest signs agree by more than ``F``
      votes has the honest majority's sign),
      "clip_influence" (within ``F C / N`` of the mean of the clipped
      honest rows, ``C`` from ``clip_threshold``, at most the largest
      honest norm), or
      "near_honest_mean" (within ``SPREAD_MULTIPLE`` times the honest
      spread, the largest distance of an honest row to the honest mean).
    unbounded: why the rule has no such bound (then ``bound`` is empty and
      the test asserts that extreme finite rows do move the output out of
      the "near_honest_mean" bound, as stated).
    clip_threshold: for "clip_influence": ``clip_threshold(x) -> C``, in
      float64, from the whole stack.
    needs: required inputs beyond the stack: "init_params" (``init``),
      "params" and "value_fn" (``update``).
    compare: "allclose", or "objective" (geometric median: the sum of
      distances of the output matches the reference's minimum).
    varying_state: a state field (not per worker) that may differ when the
      workers are permuted, and why (in a comment).
  """

  make: Callable[[Callable[..., Any]], aggregators.AggregationRule]
  reference: Callable[[], Callable[..., np.ndarray]]
  permutation: str
  nonfinite: str = ""
  precondition: tuple[int, str] | None = None
  bound: str = ""
  unbounded: str = ""
  clip_threshold: Callable[[np.ndarray], float] | None = None
  needs: tuple[str, ...] = ()
  compare: str = "allclose"
  varying_state: str = ""


def _precondition(name, n, need="n > 2f", f_name="f"):
  """``(n, the ValueError text)`` for a violating ``n``."""
  return n, re.escape(f"{name} needs {need}") + rf".*got n={n}, {f_name}={F}"


def ref_majority_vote(x):
  """signSGD's vote: the sign of the sum of the workers' signs."""
  return np.sign(np.sign(np.nan_to_num(x, nan=0.0, posinf=1.0,
                                       neginf=-1.0)).sum(0))


def arc_threshold(x):
  """ARC's C in float64: the (k + 1)-th largest norm (non-finite: inf)."""
  norms = np.linalg.norm(np.asarray(x, np.float64), axis=1)
  norms = np.where(np.isfinite(norms), norms, np.inf)
  return np.sort(norms)[::-1][clipping.arc_num_clipped(len(x), F)]


AGGREGATOR_ROWS = {
    "majority_vote": Row(
        make=lambda make: make(),
        reference=stateless(ref_majority_vote),
        permutation=EXACT, bound="vote"),
    "mean": Row(
        make=lambda make: make(),
        reference=stateless(ref_mean),
        permutation=CLOSE,
        nonfinite="not robust by design: one NaN or infinite update makes "
        "the mean non-finite (the docstring's 'Not robust')",
        unbounded="not robust by design: one finite update moves the mean "
        "anywhere (a row at the float32 maximum moves it by max / n, or "
        "to inf when the sum overflows)"),
    "median": Row(
        make=lambda make: make(num_byzantine=F),
        reference=stateless(references.np_median),
        permutation=EXACT, precondition=_precondition("median", 2 * F),
        bound="honest_range"),
    "trimmed_mean": Row(
        make=lambda make: make(F),
        reference=stateless(
            lambda x: references.np_trimmed_mean(x, F)),
        # The kept values are summed in an order that depends on the input
        # order (order_stats prunes the sorting network to the multiset).
        permutation=CLOSE, precondition=_precondition("trimmed_mean", 2 * F),
        bound="honest_range"),
    "mean_around_median": Row(
        make=lambda make: make(F),
        reference=stateless(lambda x: references.np_meamed(x, F)),
        permutation=CLOSE,  # As the trimmed mean; ties: see the notes.
        precondition=_precondition("mean_around_median", 2 * F),
        bound="near_median"),
    "phocas": Row(
        make=lambda make: make(F),
        reference=stateless(lambda x: references.np_phocas(x, F)),
        permutation=CLOSE, precondition=_precondition("phocas", 2 * F),
        bound="near_trimmed_mean"),
    "geometric_median": Row(
        make=lambda make: make(num_byzantine=F),
        reference=stateless(ref_geometric_median),
        permutation=CLOSE,
        precondition=_precondition("geometric_median", 2 * F),
        compare="objective", bound="near_honest_mean",
        # The stopping test (relative change <= 1e-7) sits at float32's
        # rounding level: rounding, hence the input order, decides when it
        # stops (e.g. 14 or 17 steps); the result agrees to tolerance.
        varying_state="iterations"),
    "krum": Row(
        make=lambda make: make(F),
        reference=stateless(krum_reference),
        permutation=EXACT,
        precondition=_precondition("krum", 2 * F + 2, "n > 2f + 2"),
        bound="input"),
    "multi_krum": Row(
        make=lambda make: make(F),
        reference=stateless(
            lambda x: references.ref_multi_krum(x, F, N - F)[0]),
        permutation=CLOSE,
        precondition=_precondition("multi_krum", 2 * F + 2, "n > 2f + 2"),
        bound="near_honest_mean"),
    "bulyan": Row(
        make=lambda make: make(F),
        reference=stateless(lambda x: references.ref_bulyan(x, F)[0]),
        # With f = 2 the last Krum round sums one neighbour: two mutual
        # nearest neighbours always tie and the lower index wins.
        permutation=TIES,
        precondition=_precondition("bulyan", 4 * F + 2, "n >= 4f + 3"),
        bound="near_honest_mean"),
    "minimum_diameter_averaging": Row(
        make=lambda make: make(F),
        reference=stateless(lambda x: references.ref_mda(x, F)[0]),
        # Subsets of equal diameter: the lexicographically first wins.
        permutation=TIES,
        precondition=_precondition("minimum_diameter_averaging", 2 * F),
        bound="near_honest_mean"),
    "static_clipping": Row(
        make=lambda make: make(CLIP_NORM),
        reference=stateless(
            lambda x: references.ref_clip(x, CLIP_NORM).mean(0)),
        permutation=CLOSE, bound="clip_influence",
        clip_threshold=lambda x: CLIP_NORM),
    "adaptive_robust_clipping": Row(
        make=lambda make: make(F),
        reference=stateless(
            lambda x: references.ref_arc(x, F).mean(0)),
        permutation=CLOSE,
        precondition=_precondition("adaptive_robust_clipping", 2 * F),
        bound="clip_influence", clip_threshold=arc_threshold),
    "centered_clipping": Row(
        make=lambda make: make(CC_RADIUS, iterations=CC_ITERATIONS),
        reference=centered_clipping_reference,
        permutation=CLOSE, needs=("init_params",), bound="near_honest_mean"),
    "byzantine_sgd": Row(
        make=lambda make: make(BSGD_V, threshold_a=BSGD_T,
                               threshold_b=BSGD_T, num_byzantine=F),
        reference=byzantine_sgd_reference,
        # B_med and g_med are the lowest-index worker with a majority of
        # neighbours (the paper: "any"); the filter is relative to them.
        permutation=TIES, precondition=_precondition("byzantine_sgd", 2 * F),
        needs=("init_params", "params"), bound="near_honest_mean"),
    "zeno": Row(
        make=lambda make: make(F, learning_rate=ZENO_LR, rho=ZENO_RHO),
        reference=lambda: zeno_reference,
        permutation=CLOSE,
        # Zeno's f is b, the number of candidates it drops.
        precondition=_precondition("zeno", F, "0 <= b < n", "b"),
        needs=("params", "value_fn"), bound="near_honest_mean"),
}

PREAGGREGATOR_ROWS = {
    "adaptive_robust_clipping": Row(
        make=lambda make: aggregators.pre_aggregated(
            make(F), aggregators.trimmed_mean(F)),
        reference=stateless(lambda x: references.np_trimmed_mean(
            references.ref_arc(x, F), F)),
        permutation=CLOSE,
        precondition=_precondition("adaptive_robust_clipping", 2 * F),
        bound="clipped_range"),
    "bucketing": Row(
        make=lambda make: aggregators.pre_aggregated(
            make(BUCKET), aggregators.median(F)),
        reference=lambda: bucketing_then_median_reference,
        permutation=SHUFFLE,
        # The downstream median sees ceil(n / 2) rows: n = 8 gives 4 <= 2f.
        precondition=(2 * BUCKET * F, _precondition("median", 2 * F)[1]),
        # Up to F buckets hold a Byzantine row; the median of ceil(N / 2)
        # bucket means, more than 2F of them honest, lies in the range of
        # the honest bucket means, inside the honest range.
        bound="honest_range"),
    "nearest_neighbor_mixing": Row(  # Then TrMean, as Allouah et al.
        make=lambda make: aggregators.pre_aggregated(
            make(F), aggregators.trimmed_mean(F)),
        reference=stateless(lambda x: references.np_trimmed_mean(
            references.ref_nnm(x, F), F)),
        permutation=CLOSE,
        precondition=_precondition("nearest_neighbor_mixing", 2 * F),
        # Each honest row's N - F nearest rows are the honest ones, so the
        # honest mixed rows are honest averages; TrMean cuts the others.
        bound="honest_range"),
    "static_clipping": Row(
        make=lambda make: aggregators.pre_aggregated(
            make(CLIP_NORM), aggregators.median(F)),
        reference=stateless(lambda x: references.np_median(
            references.ref_clip(x, CLIP_NORM))),
        permutation=EXACT, precondition=_precondition("median", 2 * F),
        bound="clipped_range"),
}

REGISTRIES = {"aggregator": aggregators.AGGREGATORS,
              "preaggregator": aggregators.PREAGGREGATORS}
TABLES = {"aggregator": AGGREGATOR_ROWS, "preaggregator": PREAGGREGATOR_ROWS}
KEYS = [(kind, name) for kind in sorted(REGISTRIES)
        for name in sorted(REGISTRIES[kind])]
IDS = [f"{kind}:{name}" for kind, name in KEYS]


def row_of(key) -> Row:
  kind, name = key
  if name not in TABLES[kind]:
    pytest.fail(f"{kind} {name!r} is registered but has no row in "
                f"tests/test_robust_rules.py: add one")
  return TABLES[kind][name]


def build(key) -> aggregators.AggregationRule:
  kind, name = key
  return row_of(key).make(REGISTRIES[kind][name])


@functools.lru_cache(maxsize=None)
def compiled(key):
  """``(rule, jitted update, trace counter)``, one per row for all tests.

  Every rule receives params and ``value_fn``; to all but Zeno,
  ``value_fn`` is an unknown extra argument.
  """
  rule = build(key)
  traces = [0]

  def update(stack, state, params):
    traces[0] += 1
    return rule.update(stack, state, params, value_fn=value_fn)

  return rule, jax.jit(update), traces


def init_state(key):
  rule, _, _ = compiled(key)
  return rule.init(PARAMS0, N)


def per_worker(leaf) -> bool:
  """State leaves with a leading worker axis (params here never start
  with N: their leading sizes are 2)."""
  return jnp.ndim(leaf) >= 1 and jnp.shape(leaf)[0] == N


def permute_state(state, perm):
  return jax.tree.map(lambda l: l[perm] if per_worker(l) else l, state)


@pytest.fixture(params=KEYS, ids=IDS)
def key(request):
  row_of(request.param)
  return request.param


# ---------------------------------------------------------------- tests
def test_every_registry_entry_has_a_row():
  for kind, registry in REGISTRIES.items():
    assert sorted(TABLES[kind]) == sorted(registry), kind


def test_differential_against_numpy_references(key):
  """Many random stacks, with exact ties and duplicates, against NumPy.

  Stateful rules run the battery as a sequence of steps, the reference
  alongside, each at new params.
  """
  row = row_of(key)
  _, update, _ = compiled(key)
  reference = row.reference()
  rng = np.random.default_rng(5)
  state = init_state(key)
  for step, (kind, x) in enumerate(battery(seed=17)):
    params = to_tree(rng.normal(size=D))
    want = reference(x, params, state)
    out, state = update(to_tree(x), state, params)
    got = from_tree(out)
    msg = f"step {step} ({kind})"
    assert np.all(np.isfinite(got)), msg
    if row.compare == "objective":
      np.testing.assert_allclose(gm_objective(x, got), gm_objective(x, want),
                                 rtol=1e-5, err_msg=msg)
      np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3,
                                 err_msg=msg)
    else:
      np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5,
                                 err_msg=msg)


def test_nonfinite_inputs_from_f_workers(key):
  """Up to F NaN/inf workers, at random positions, never reach the output.

  Rows whose table entry says otherwise (the mean) must then give a
  non-finite output, as documented.
  """
  row = row_of(key)
  _, update, _ = compiled(key)
  rng = np.random.default_rng(6)
  for kind in BAD_KINDS:
    for trial in range(3):
      x, rows = byzantine_stack(rng, kind)
      out, _ = update(to_tree(x), init_state(key), PARAMS0)
      finite = np.all(np.isfinite(from_tree(out)))
      msg = f"{kind} #{trial}: Byzantine rows {rows}, input\n{x}"
      if not row.nonfinite:
        assert finite, msg
      elif kind != "one_entry" or trial == 0:
        assert not finite, f"{row.nonfinite}; yet finite on {msg}"


def test_permutation_invariance(key):
  """Permuting the workers (and per-worker state) leaves the output alone.

  Inputs are continuous (no ties); stateful rules are permuted after two
  steps, so that their per-worker statistics differ.
  """
  row = row_of(key)
  _, update, _ = compiled(key)
  rng = np.random.default_rng(7)
  state = init_state(key)
  warmup = []
  for _ in range(2):
    warmup.append((rng.normal(size=(N, D)).astype(np.float32),
                   to_tree(rng.normal(size=D))))
    _, state = update(to_tree(warmup[-1][0]), state, warmup[-1][1])
  for trial in range(4):
    x = rng.normal(size=(N, D)).astype(np.float32)
    x[rng.choice(N, F, replace=False)] += 4.0
    perm = rng.permutation(N)
    params = to_tree(rng.normal(size=D))
    out, new_state = update(to_tree(x), state, params)
    out_p, new_state_p = update(to_tree(x[perm]), permute_state(state, perm),
                                params)
    a, b = from_tree(out), from_tree(out_p)
    msg = f"trial {trial}, permutation {perm}"
    if row.permutation == EXACT:
      np.testing.assert_array_equal(b, a, err_msg=msg)
    elif row.permutation == CLOSE:
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=msg)
    elif row.permutation == TIES:
      # The reference breaks ties by the lowest index too: where it gives
      # the same result in both orders, so must the rule; elsewhere the
      # rule must match it in each order.
      ref, ref_p = row.reference(), row.reference()
      for wx, wp in warmup:
        ref(wx, wp, None)
        ref_p(wx[perm], wp, None)
      want, want_p = ref(x, params, None), ref_p(x[perm], params, None)
      if np.allclose(want, want_p, rtol=1e-6, atol=1e-7):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=msg)
      else:
        np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-5,
                                   err_msg=msg)
        np.testing.assert_allclose(b, want_p, rtol=1e-5, atol=1e-5,
                                   err_msg=msg)
    else:
      assert row.permutation == SHUFFLE
      # Bucketing draws its own permutation, so a permuted input changes
      # which workers share a bucket: invariant in distribution only. What
      # holds exactly is that the buckets partition the workers: the
      # bucket means, weighted by bucket sizes, sum to the same total.
      stage = REGISTRIES[key[0]][key[1]](BUCKET)
      sizes = np.array([min(BUCKET, N - b * BUCKET)
                        for b in range(-(-N // BUCKET))])
      totals = [sizes @ np.asarray(stage.update(x_, state.pre[0])[0],
                                   np.float64)
                for x_ in (x, x[perm])]
      np.testing.assert_allclose(totals[1], totals[0], rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(totals[0], x.astype(np.float64).sum(0),
                                 rtol=1e-5, atol=1e-5)
    if row.permutation == TIES:
      continue
    fields = jax.tree_util.tree_flatten_with_path(
        permute_state(new_state, perm))[0]
    for (path, s), s_p in zip(fields, jax.tree.leaves(new_state_p)):
      if row.varying_state and row.varying_state in jax.tree_util.keystr(
          path):
        continue
      np.testing.assert_allclose(s_p, s, rtol=1e-5, atol=1e-6,
                                 err_msg=f"{msg}, state {path}")


# A Byzantine row that reached the output, even scaled by 1 / N, would miss
# this bound by dozens of orders of magnitude; the rules that meet it stay
# below 1 on these stacks (Krum, which returns an honest row, the
# highest).
SPREAD_MULTIPLE = 2.0


def bound_violation(row, out, x, rows):
  """Why ``out`` misses ``row.bound`` on stack ``x``, or ``""``.

  ``rows`` are the Byzantine rows; bounds are in float64 with a relative
  slack of 1e-6 (1e-5 for sums of clipped rows) and an absolute 1e-6.
  """
  honest = np.delete(x, rows, axis=0).astype(np.float64)
  if not np.all(np.isfinite(out)):
    return "output not finite"
  mean = honest.mean(0)
  spread = np.linalg.norm(honest - mean, axis=1).max()
  if row.bound in ("", "near_honest_mean"):
    gap = np.linalg.norm(out - mean)
    if gap > SPREAD_MULTIPLE * spread:
      return (f"|out - honest mean| = {gap:.4g} > {SPREAD_MULTIPLE} x "
              f"honest spread {spread:.4g}")
    return ""
  if row.bound == "input":
    return "" if any(np.array_equal(out, h) for h in honest) else (
        "not one of the honest rows")
  if row.bound == "vote":
    votes = np.sign(honest).sum(0)
    decided = np.abs(votes) > F
    if not np.all(np.isin(out, (-1.0, 0.0, 1.0))):
      return "a vote outside {-1, 0, 1}"
    if np.any(out[decided] != np.sign(votes[decided])):
      return f"against an honest majority of more than F: votes {votes}"
    return ""
  if row.bound == "clip_influence":
    c = row.clip_threshold(x)
    if c > np.linalg.norm(honest, axis=1).max() * (1 + 1e-6):
      return f"threshold {c:.4g} above the largest honest norm"
    honest_part = references.ref_clip(honest, c).sum(0) / N
    gap = np.linalg.norm(out - honest_part)
    if gap > F * c / N * (1 + 1e-5) + 1e-6:
      return (f"|out - clipped honest mean| = {gap:.4g} > F C / N = "
              f"{F * c / N:.4g}")
    return ""
  if row.bound in ("honest_range", "clipped_range"):
    low, high = honest.min(0), honest.max(0)
    if row.bound == "clipped_range":
      low, high = np.minimum(low, 0), np.maximum(high, 0)
  else:
    sane = np.where(np.isnan(x), np.inf, x).astype(np.float64)
    centre = (references.np_median(sane) if row.bound == "near_median"
              else references.np_trimmed_mean(sane, F))
    reach = np.abs(honest - centre).max(0) * (1 + 1e-6) + 1e-6
    low, high = centre - reach, centre + reach
  outside = (out < low - 1e-6) | (out > high + 1e-6)
  if np.any(outside):
    return (f"coordinates {np.flatnonzero(outside)} outside the "
            f"{row.bound}: {out[outside]} not in "
            f"[{low[outside]}, {high[outside]}]")
  return ""


def test_every_row_states_its_bound_or_why_it_has_none(key):
  row = row_of(key)
  assert bool(row.bound) != bool(row.unbounded), (
      f"{key}: give exactly one of bound= and unbounded=")
  assert (row.bound == "clip_influence") == (row.clip_threshold is not None)


def test_output_stays_within_the_documented_bound(key):
  """Up to F Byzantine rows of anything keep the output within the bound.

  Anything: NaN and infinities, finite values up to the float32 maximum
  (where squares overflow and reciprocals are subnormal), and outliers.
  See ``Row.bound`` and :func:`bound_violation`; MeaMed's and Phocas'
  reach follows third_party_notes/coordinatewise_rules.md. A rule without
  a bound (the mean) must then miss even the loosest one on the extreme
  finite stacks whose Byzantine rows do not cancel: the row's
  ``unbounded`` reason is checked, not assumed.
  """
  row = row_of(key)
  _, update, _ = compiled(key)
  rng = np.random.default_rng(8)
  for kind in BAD_KINDS + EXTREME_KINDS + ("outliers",):
    for trial in range(3):
      if kind == "outliers":
        x, rows = byzantine_stack(rng, "nan")
        x[rows] = rng.normal(size=(F, D)) * 1e3
      else:
        x, rows = byzantine_stack(rng, kind)
      out = from_tree(update(to_tree(x), init_state(key), PARAMS0)[0])
      msg = f"{kind} #{trial}: Byzantine rows {rows}, output {out}"
      violation = bound_violation(row, out, x, rows)
      if row.bound:
        assert not violation, f"{violation}; {msg}"
      elif kind in EXTREME_KINDS and kind != "opposite":
        # ("opposite": its +max and -max rows cancel in a sum.)
        assert violation, f"{row.unbounded}; yet bounded on {msg}"


def test_trimmed_mean_with_f_zero_is_the_mean():
  rng = np.random.default_rng(9)
  tree = to_tree(rng.normal(size=(N, D)))
  trimmed = aggregators.AGGREGATORS["trimmed_mean"](0)
  mean = aggregators.AGGREGATORS["mean"]()
  got = jax.jit(trimmed.update)(tree, trimmed.init(None, N))[0]
  want = jax.jit(mean.update)(tree, mean.init(None, N))[0]
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_jits_once_and_state_keeps_its_structure_dtype_and_shape(key):
  """A second call, fed the first call's state, reuses the compilation."""
  _, update, traces = compiled(key)
  state0 = init_state(key)
  rng = np.random.default_rng(10)
  state = state0
  for _ in range(3):
    _, state = update(to_tree(rng.normal(size=(N, D))), state,
                      to_tree(rng.normal(size=D)))
  assert traces[0] == 1
  assert update._cache_size() == 1  # pylint: disable=protected-access
  assert jax.tree.structure(state) == jax.tree.structure(state0)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state0)):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert (getattr(a, "weak_type", False) ==
            getattr(jnp.asarray(b), "weak_type", False))


def test_unknown_extra_args_are_ignored(key):
  """Extra keyword arguments a rule does not know change nothing.

  Compared on the traced programs (no compilation): identical jaxprs.
  """
  rule = compiled(key)[0]
  stack, state = to_tree(np.ones((N, D))), init_state(key)

  def program(**extra):
    return str(jax.make_jaxpr(
        lambda s, st, p: rule.update(s, st, p, value_fn=value_fn, **extra))(
            stack, state, PARAMS0))

  assert program() == program(value=jnp.float32(2.0), unknown_arg="x",
                              staleness=3)


def test_required_inputs_are_checked(key):
  """What the row says a rule needs raises ValueError when missing; what
  it does not need may be left out."""
  row = row_of(key)
  rule = compiled(key)[0]
  stack = to_tree(np.ones((N, D)))
  if "init_params" in row.needs:
    with pytest.raises(ValueError, match="params"):
      rule.init(None, N)
    state = init_state(key)
  else:
    state = rule.init(None, N)
  for arg in ("params", "value_fn"):
    given = {"params": PARAMS0, "value_fn": value_fn}
    del given[arg]
    call = lambda given=given: jax.eval_shape(
        lambda s, st: rule.update(s, st, **given), stack, state)
    if arg in row.needs:
      with pytest.raises(ValueError, match=arg):
        call()
    else:
      call()


def test_a_state_built_for_other_workers_is_rejected(key):
  """A state from ``init(params, n0)`` updated with ``n != n0`` rows: a
  ValueError naming both counts (at trace time), in either direction; a
  state that ``init`` did not build (``None``) is a TypeError."""
  rule = compiled(key)[0]
  for built, given in ((N + 2, N), (N, N + 2)):
    state = rule.init(PARAMS0, built)
    with pytest.raises(ValueError, match=(
        rf"state was built for n={built} workers; got a stack of "
        rf"n={given}")):
      jax.eval_shape(
          lambda s, st: rule.update(s, st, PARAMS0, value_fn=value_fn),
          to_tree(np.ones((given, D))), state)
  with pytest.raises(TypeError, match=r"needs the state its init returned"):
    jax.eval_shape(
        lambda s: rule.update(s, None, PARAMS0, value_fn=value_fn),
        to_tree(np.ones((N, D))))


def test_preconditions_name_n_and_f(key):
  row = row_of(key)
  if row.precondition is None:
    # Rules without an f: any n >= 1 is accepted.
    compiled(key)[0].init(PARAMS0, 1)
    return
  n, message = row.precondition
  rule = compiled(key)[0]
  with pytest.raises(ValueError, match=message):
    rule.init(PARAMS0, n)
  # At trace, a stack of n rows with a state that init built for N: the
  # rule's own precondition or, where a stage without one runs first, the
  # state check; either way a ValueError naming the stack's n.
  state = init_state(key)
  mismatch = rf"state was built for n={N} workers; got a stack of n={n}"
  with pytest.raises(ValueError, match=rf"{message}|{mismatch}"):
    jax.jit(lambda s, st: rule.update(s, st, PARAMS0, value_fn=value_fn))(
        to_tree(np.ones((n, D))), state)
  rule.init(PARAMS0, n + 1)  # The bound is exact.


def test_inside_aggregate_under_simulate(key):
  """``dist.aggregate(rule)`` under ``dist.simulate`` with mimic attackers
  at random positions: every worker applies the rule's own result."""
  _, update, _ = compiled(key)
  lr = 0.1
  rng = np.random.default_rng(11)
  byzantine = np.zeros(N, bool)
  byzantine[rng.choice(N, F, replace=False)] = True
  target = int(rng.choice(np.flatnonzero(~byzantine)))
  tx = optax.chain(
      alg.attacks.mimic(byzantine_mask=tuple(byzantine), target=target),
      dist.aggregate(build(key)), optax.sgd(lr))

  def loss_fn(params, centre):
    return 0.5 * sum(jnp.sum((p - c) ** 2) for p, c in zip(
        jax.tree.leaves(params), jax.tree.leaves(centre)))

  # Synchronous: the model is held once (Zeno and Byzantine SGD read it).
  run = dist.simulate(
      dist.data_parallel(loss_fn, tx,
                         extra_args=lambda s: {"value_fn": value_fn},
                         replicated_params=True),
      num_workers=N)
  state = run.init(PARAMS0)
  params, rule_state = PARAMS0, init_state(key)
  for _ in range(2):
    centres = rng.normal(size=(N, D)).astype(np.float32)
    state, metrics = run.step(state, to_tree(centres))
    grads = from_tree(params)[None, :] - centres
    grads[byzantine] = grads[target]  # What the mimic attackers send.
    out, rule_state = update(to_tree(grads), rule_state, params)
    params = jax.tree.map(lambda p, o: p - lr * o, params, out)
    np.testing.assert_allclose(from_tree(state.params), from_tree(params),
                               rtol=1e-5, atol=1e-6)
    assert metrics["all_gather_bytes"].shape == (N,)
