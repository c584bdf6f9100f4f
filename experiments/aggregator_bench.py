r"""Times every aggregation rule against the mean, the Gram product and ByzFL.

``python -m distoptax.experiments.bench aggregators`` calls :func:`run` and
prints :func:`format_table` and :func:`check_targets`. For each number of
workers ``n`` and dimension ``d`` one float32 stack ``[n, d]`` (standard
normal, seeded) is generated once; every rule, our baselines and the peer
library's rules run on that same stack in the same process, and each ratio
is formed round by round between functions timed side by side, so that
machine noise (other jobs on the same cores) hits both alike.

Baselines:

* ``mean``: :func:`~distoptax.algorithms.aggregators.mean` (a mat-vec with a
  vector of ones: XLA's ``x.mean(0)`` over a leading axis is far slower on
  CPU). Coordinate-wise rules are reported as a multiple of it.
* ``gram``: :math:`Y Y^\top` of the centred stack :math:`Y = X - x_n`
  (centred once, outside the timing), float32 at ``Precision.HIGHEST`` as in
  :mod:`~distoptax.algorithms.aggregators.distances`. It is timed two ways,
  as XLA's one ``[n, d] x [d, n]`` product (``gram_xla``) and as a loop of
  products over column blocks of about 2 MiB (``gram_blocked``, what the
  distance rules do on CPU); the baseline of a round is the faster of the
  two. Krum, Multi-Krum, NNM, Bulyan and MDA are reported as a multiple
  of it.

Every rule uses ``f = (n - 3) // 4`` Byzantine workers (the largest that
Bulyan accepts: 1, 7 and 31 for ``n`` = 8, 32, 128) unless told otherwise.
Rules that need more than a stack get what they need: centered clipping the
zero vector as its start, Zeno the quadratic loss
:math:`\frac12 \lVert x - 1 \rVert^2` at ``x = 0`` as its oracle, Byzantine
SGD zero params and fixed thresholds. ``bulyan_stage2`` is Bulyan's
coordinate-wise stage alone, on the workers that Bulyan's selection picks
on this stack.

Timing: our functions are compiled ahead of time; each function is then
called once to size it. A function slower than ``slow_seconds`` is timed by
that one call.
The others are timed in ``rounds`` interleaved rounds of up to ``repeats``
calls each (fewer when a call is slow), the median call of each round is
kept, and the reported time is the median over rounds. A rule's ratio to
its baseline is the median over rounds of its time over the baseline's,
timed just before it in the same round (the Gram product of the two that
is faster on this machine), so that load from other processes hits both
alike; ours over ByzFL's is formed the same way (ByzFL's rule runs right
after ours). Jitted outputs are waited for with
``jax.block_until_ready``.

ByzFL (``pip install --no-deps byzfl``, with torch) is optional: when it can
be loaded, its rules run on the same data as a torch float32 tensor sharing
the NumPy buffer (``torch.from_numpy``), with ``torch.set_num_threads`` set
to the cores this process may use. ByzFL's ``Clipping`` and ``ARC`` clip
their input in place, so each of their calls gets a fresh copy, made outside
the timing; our static and adaptive clipping pre-aggregations then get the
same licence: a fresh copy per call, donated to the jitted function. Combinatorial or memory-bound peers are skipped with the reason
in the table (ByzFL's ``MDA`` loops over all :math:`\binom{n}{f}` subsets in
Python; its ``NNM`` gathers an ``[n, n - f, d]`` tensor).
"""

import dataclasses
import importlib
import importlib.util
import math
import os
import statistics
import sys
import time
import types
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from distoptax.algorithms import aggregators as agg
from distoptax.algorithms.aggregators import distances
from distoptax.algorithms.aggregators.bulyan import coordinatewise_stage
from distoptax.algorithms.aggregators.bulyan import recursive_krum_selection

COORDINATEWISE = ("median", "trimmed_mean", "mean_around_median", "phocas",
                  "bulyan_stage2")
"""Rules whose target is a multiple of the mean."""

DISTANCE = ("krum", "multi_krum", "pre:nearest_neighbor_mixing")
"""Rules whose target is a multiple of the Gram product."""

_GRAM_BASED = DISTANCE + ("bulyan", "minimum_diameter_averaging")
"""Rows reported as a multiple of the Gram product (the others: the mean)."""

TARGET_SIZE = (32, 1_000_000)
"""``(n, d)`` at which the targets are checked."""

COORDINATEWISE_MAX_RATIO = 5.0
DISTANCE_MAX_RATIO = 2.0

_DONATED = ("pre:static_clipping", "pre:adaptive_robust_clipping")

BYZFL_MAX_SUBSETS = 20_000
"""Largest number of subsets for which ByzFL's MDA (a Python loop) is run."""

BYZFL_MAX_BYTES = 4 * 2**30
"""Largest temporary (ByzFL's NNM gathers ``[n, n - f, d]``) allowed."""


@dataclasses.dataclass(frozen=True)
class BenchRow:
  """One rule at one size.

  Attributes:
    num_workers: ``n``.
    dim: ``d``.
    rule: the registry name (``pre:`` prefix for a pre-aggregation), or a
      baseline (``mean``, ``gram_xla``, ``gram_blocked``), or
      ``bulyan_stage2``.
    group: ``baseline``, ``coordinatewise``, ``distance`` or ``other``.
    num_byzantine: ``f`` given to the rule.
    seconds: our time per call (``None`` when skipped).
    baseline: ``"mean"`` or ``"gram"``, what ``ratio`` divides by.
    ratio: ``seconds`` over the baseline's time, round by round.
    byzfl_rule: the ByzFL class timed on the same stack, if any.
    byzfl_seconds: its time per call (``None`` when not timed).
    byzfl_ratio_to_mean: its time over ByzFL's own ``Average``.
    ours_over_byzfl: our time over ByzFL's, round by round.
    note: why something was skipped, or a remark.
  """

  num_workers: int
  dim: int
  rule: str
  group: str
  num_byzantine: int
  seconds: float | None
  baseline: str | None = None
  ratio: float | None = None
  byzfl_rule: str | None = None
  byzfl_seconds: float | None = None
  byzfl_ratio_to_mean: float | None = None
  ours_over_byzfl: float | None = None
  note: str = ""


class TargetCheck(NamedTuple):
  """One target: what it asks, ``PASS``/``MISS``/``SKIP``, the line to print.

  ``SKIP`` only where neither side can run at that size by construction
  (an exhaustive search over too many subsets); anything else not measured
  is a ``MISS``.
  """

  name: str
  status: str
  line: str

  @property
  def passed(self) -> bool:
    return self.status != "MISS"


def default_num_byzantine(num_workers: int) -> int:
  """``f = (n - 3) // 4`` (at least 0): the largest ``f`` Bulyan accepts.

  Example:
    >>> [default_num_byzantine(n) for n in (8, 32, 128)]
    [1, 7, 31]
  """
  return max(0, (num_workers - 3) // 4)


def load_byzfl() -> tuple[Any, Any] | str:
  """Imports ``byzfl.aggregators`` and torch, or says why it cannot.

  ByzFL's package ``__init__`` also imports its federated-learning framework
  and benchmark, which import torchvision; the aggregators need only torch,
  NumPy and SciPy. When the plain import fails, the package is registered in
  ``sys.modules`` as an empty module whose ``__path__`` is ByzFL's package
  directory, so that ``byzfl.aggregators`` is imported without running
  ``byzfl/__init__.py`` (the stub stays registered for the process). Sets
  torch's thread count to the cores this process may use.

  Returns:
    ``(byzfl.aggregators, torch)``, or a string with the reason.
  """
  try:
    torch = importlib.import_module("torch")
  except ImportError as e:
    return f"torch is not installed ({e})"
  try:
    spec = importlib.util.find_spec("byzfl")
  except (ImportError, ValueError) as e:
    return f"byzfl cannot be found ({e})"
  if spec is None or not spec.submodule_search_locations:
    return "byzfl is not installed"
  try:
    module = importlib.import_module("byzfl.aggregators")
  except ImportError:
    sys.modules.pop("byzfl.aggregators", None)
    stub = types.ModuleType("byzfl")
    stub.__path__ = list(spec.submodule_search_locations)
    stub.__spec__ = spec  # So that a later call finds it again.
    sys.modules["byzfl"] = stub
    try:
      module = importlib.import_module("byzfl.aggregators")
    except ImportError as e:
      return f"byzfl.aggregators cannot be imported ({e})"
  torch.set_num_threads(_num_cores())
  return module, torch


def _num_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


@dataclasses.dataclass
class _Timed:
  """A function to time: ``call(*setup())``; ``setup`` is not timed."""

  call: Callable[..., Any]
  setup: Callable[[], tuple[Any, ...]] | None = None
  samples: list[float] = dataclasses.field(default_factory=list)
  per_round: list[float | None] = dataclasses.field(default_factory=list)
  repeats: int = 1
  slow: bool = False
  finite: bool | None = None
  partner: "_Timed | None" = None
  paired: list[float | None] = dataclasses.field(default_factory=list)

  def once(self) -> tuple[float, Any]:
    args = self.setup() if self.setup is not None else ()
    start = time.perf_counter()
    out = jax.block_until_ready(self.call(*args))
    return time.perf_counter() - start, out


@dataclasses.dataclass
class _Case:
  """One row to fill: our function and ByzFL's, each optional."""

  rule: str
  group: str
  ours: _Timed | None = None
  byzfl_rule: str | None = None
  byzfl: _Timed | None = None
  note: list[str] = dataclasses.field(default_factory=list)


def _jitted(fn: Callable[..., Any], *args: Any) -> _Timed:
  """Compiles ``fn`` for ``args`` now (ahead of time) and times its calls."""
  compiled = jax.jit(fn).lower(*args).compile()
  return _Timed(lambda: compiled(*args))


def _gram_xla(y: jax.Array) -> jax.Array:
  return lax.dot_general(y, y, (((1,), (1,)), ((), ())),
                         precision=lax.Precision.HIGHEST)


def _block_columns(n: int) -> int:
  """Columns per block: about 2 MiB of float32, a power of two."""
  size = 2**19 // max(n, 1)
  return int(min(2**16, max(2**11, 2**int(math.log2(max(size, 1))))))


def _gram_blocked(y: jax.Array) -> jax.Array:
  n, dim = y.shape
  chunk = _block_columns(n)
  num_full = dim // chunk

  def body(i, acc):
    block = lax.dynamic_slice_in_dim(y, i * chunk, chunk, axis=1)
    return acc + _gram_xla(block)

  acc = jnp.zeros((n, n), y.dtype)
  if num_full:
    acc = lax.fori_loop(0, num_full, body, acc)
  if num_full * chunk < dim:
    acc = acc + _gram_xla(y[:, num_full * chunk:])
  return acc


def _rule_timed(rule: agg.AggregationRule, x: jax.Array, n: int,
                params: Any = None, **extra: Any) -> _Timed:
  state = rule.init(params, n)
  return _jitted(lambda x, state: rule.update(x, state, params, **extra)[0],
                 x, state)


def _pre_timed(pre: agg.PreAggregation, x: jax.Array, n: int,
               donate: bool = False) -> _Timed:
  """A pre-aggregation; ``donate``: each call consumes a fresh copy of the
  stack (made outside the timing), so XLA may write the output over it."""
  state = pre.init(None, n)
  if not donate:
    return _jitted(lambda x, state: pre.update(x, state)[0], x, state)
  compiled = jax.jit(lambda x, state: pre.update(x, state)[0],
                     donate_argnums=0).lower(x, state).compile()
  return _Timed(lambda copy: compiled(copy, state),
                setup=lambda: (jax.block_until_ready(jnp.copy(x)),))


def _quadratic_loss(p: jax.Array) -> jax.Array:
  return 0.5 * jnp.sum(jnp.square(p - 1.0))


def _our_cases(x: jax.Array, f: int,
               only: Sequence[str] | None = None) -> list[_Case]:
  """Our side of every row (or of ``only``), in table order; a rule's
  refusal (its precondition) becomes a note."""
  n, dim = x.shape
  zeros = jnp.zeros((dim,), x.dtype)
  builders: dict[str, tuple[str, Callable[[], _Timed]]] = {}

  def add(rule, group, build):
    builders[rule] = (group, build)

  rules = agg.AGGREGATORS
  pres = agg.PREAGGREGATORS
  add("median", "coordinatewise",
      lambda: _rule_timed(rules["median"](), x, n))
  add("trimmed_mean", "coordinatewise",
      lambda: _rule_timed(rules["trimmed_mean"](f), x, n))
  add("mean_around_median", "coordinatewise",
      lambda: _rule_timed(rules["mean_around_median"](f), x, n))
  add("phocas", "coordinatewise",
      lambda: _rule_timed(rules["phocas"](f), x, n))
  add("majority_vote", "coordinatewise",
      lambda: _rule_timed(rules["majority_vote"](), x, n))

  def stage2():
    rules["bulyan"](f).init(None, n)  # Bulyan's precondition.

    def selection(x):
      info = distances.distance_info(x)
      return recursive_krum_selection(info.squared_distances, info.nonfinite,
                                      f, n - 2 * f)

    selected = jax.jit(selection)(x)
    return _jitted(lambda x, s: coordinatewise_stage(x, s, f), x, selected)

  add("bulyan_stage2", "coordinatewise", stage2)
  add("krum", "distance", lambda: _rule_timed(rules["krum"](f), x, n))
  add("multi_krum", "distance",
      lambda: _rule_timed(rules["multi_krum"](f), x, n))
  add("pre:nearest_neighbor_mixing", "distance",
      lambda: _pre_timed(pres["nearest_neighbor_mixing"](f), x, n))
  add("bulyan", "other", lambda: _rule_timed(rules["bulyan"](f), x, n))
  add("minimum_diameter_averaging", "other",
      lambda: _rule_timed(rules["minimum_diameter_averaging"](f), x, n))
  add("geometric_median", "other", lambda: _rule_timed(
      rules["geometric_median"](smoothing=0.1, max_iterations=3,
                                tolerance=0.0, init="zeros"), x, n))
  add("centered_clipping", "other", lambda: _rule_timed(
      rules["centered_clipping"](100.0, iterations=1), x, n, zeros))
  add("static_clipping", "other",
      lambda: _rule_timed(rules["static_clipping"](2.0), x, n))
  add("adaptive_robust_clipping", "other",
      lambda: _rule_timed(rules["adaptive_robust_clipping"](f), x, n))
  add("zeno", "other", lambda: _rule_timed(
      rules["zeno"](f, learning_rate=0.1, rho=0.0), x, n, zeros,
      value_fn=_quadratic_loss))
  add("byzantine_sgd", "other", lambda: _rule_timed(
      rules["byzantine_sgd"](1.0, threshold_a=1e6, threshold_b=1e6,
                             num_byzantine=f), x, n, zeros))
  # ByzFL's Clipping and ARC overwrite their input: ours gets the same
  # licence (a donated copy), so that neither pays for a fresh [n, d] buffer.
  add("pre:static_clipping", "other",
      lambda: _pre_timed(pres["static_clipping"](2.0), x, n, donate=True))
  add("pre:adaptive_robust_clipping", "other", lambda: _pre_timed(
      pres["adaptive_robust_clipping"](f), x, n, donate=True))
  add("pre:bucketing", "other",
      lambda: _pre_timed(pres["bucketing"](2), x, n))

  known = set(builders) | {"mean"}
  for name in rules:
    if name not in known:
      add(name, "other", None)
  for name in pres:
    if f"pre:{name}" not in known:
      add(f"pre:{name}", "other", None)

  cases = []
  for rule, (group, build) in builders.items():
    if only is not None and rule not in only:
      continue
    case = _Case(rule, group)
    if rule in _DONATED:
      case.note.append("input donated (ByzFL clips in place)")
    if build is None:
      case.note.append("no benchmark configuration for this rule")
    else:
      try:
        case.ours = build()
      except (ValueError, TypeError) as e:  # A precondition of the rule.
        case.note.append(f"ours skipped: {e}")
    cases.append(case)
  return cases


def _add_byzfl(cases: list[_Case], byzfl: Any, torch: Any, x: np.ndarray,
               f: int) -> _Timed:
  """Attaches ByzFL's rule to each row it shares; returns its Average."""
  n, dim = x.shape
  tensor = torch.from_numpy(x)

  def plain(obj):
    return _Timed(lambda: obj(tensor))

  def in_place(obj):
    return _Timed(obj, setup=lambda: (tensor.clone(),))

  table = {
      "median": ("Median", lambda: plain(byzfl.Median())),
      "trimmed_mean": ("TrMean", lambda: plain(byzfl.TrMean(f))),
      "mean_around_median": ("Meamed", lambda: plain(byzfl.Meamed(f))),
      "krum": ("Krum", lambda: plain(byzfl.Krum(f))),
      "multi_krum": ("MultiKrum", lambda: plain(byzfl.MultiKrum(f))),
      "pre:nearest_neighbor_mixing": ("NNM", lambda: plain(byzfl.NNM(f))),
      "minimum_diameter_averaging": ("MDA", lambda: plain(byzfl.MDA(f))),
      "geometric_median": (
          "GeometricMedian",
          lambda: plain(byzfl.GeometricMedian(nu=0.1, T=3))),
      "centered_clipping": (
          "CenteredClipping",
          lambda: plain(byzfl.CenteredClipping(L=1, tau=100.0))),
      "pre:static_clipping": ("Clipping",
                              lambda: in_place(byzfl.Clipping(c=2.0))),
      "pre:adaptive_robust_clipping": ("ARC",
                                       lambda: in_place(byzfl.ARC(f))),
      "pre:bucketing": ("Bucketing", lambda: plain(byzfl.Bucketing(s=2))),
  }
  skip = {}
  subsets = math.comb(n, f)
  if subsets > BYZFL_MAX_SUBSETS:
    skip["minimum_diameter_averaging"] = (
        f"ByzFL MDA skipped: C({n}, {n - f}) = {subsets} subsets in a Python "
        f"loop (> {BYZFL_MAX_SUBSETS})")
  gathered = n * (n - f) * dim * 4
  if gathered > BYZFL_MAX_BYTES:
    skip["pre:nearest_neighbor_mixing"] = (
        f"ByzFL NNM skipped: it gathers an [n, n - f, d] tensor of "
        f"{gathered / 2**30:.0f} GiB")
  for case in cases:
    if case.rule not in table:
      continue
    name, build = table[case.rule]
    case.byzfl_rule = name
    if case.rule in skip:
      case.note.append(skip[case.rule])
      continue
    case.byzfl = build()
  return plain(byzfl.Average())


def _prepare(timed: _Timed, repeats: int, slow_seconds: float,
             round_seconds: float) -> None:
  """Sizes a function by one call: repeats per round, or slow.

  Ours are compiled ahead of time, and ByzFL's need no compilation, so the
  sizing call is the first call (for a slow function, its only sample).
  """
  seconds, out = timed.once()
  timed.finite = all(bool(np.all(np.isfinite(np.asarray(leaf))))
                     for leaf in jax.tree.leaves(out))
  del out
  if seconds >= slow_seconds:
    timed.slow = True
    timed.samples = [seconds]
    return
  timed.repeats = int(min(repeats, max(1, round_seconds // max(seconds,
                                                                 1e-9))))


def _median_call(timed: _Timed) -> float:
  return statistics.median(timed.once()[0] for _ in range(timed.repeats))


def _run_round(timed: _Timed) -> None:
  """One round of ``timed``; its baseline partner is timed right before."""
  if timed.slow:
    timed.per_round.append(None)
    timed.paired.append(None)
    return
  if timed.partner is not None:
    timed.paired.append(_median_call(timed.partner))
  value = _median_call(timed)
  timed.samples.append(value)
  timed.per_round.append(value)


def _seconds(timed: _Timed | None) -> float | None:
  if timed is None or not timed.samples:
    return None
  return statistics.median(timed.samples)


def _ratio(num: _Timed | None, den: Sequence[float] | _Timed | None
           ) -> float | None:
  """Median over rounds of ``num / den``; a slow ``num`` uses the median
  of ``den``."""
  if num is None or den is None:
    return None
  den_rounds = den.per_round if isinstance(den, _Timed) else list(den)
  den_all = [v for v in den_rounds if v is not None]
  if isinstance(den, _Timed) and den.slow:
    den_all = den.samples
  if not den_all:
    return None
  if num.slow or (isinstance(den, _Timed) and den.slow):
    return _seconds(num) / statistics.median(den_all)
  pairs = [a / b for a, b in zip(num.per_round, den_rounds)
           if a is not None and b is not None]
  return statistics.median(pairs) if pairs else None


def _bench_size(n: int, dim: int, f: int, *, only: Sequence[str] | None,
                rounds: int, repeats: int,
                byzfl: tuple[Any, Any] | None, seed: int,
                slow_seconds: float, round_seconds: float,
                progress: Callable[[str], None]) -> list[BenchRow]:
  """All rows for one ``(n, d)``."""
  progress(f"n={n} d={dim} f={f}: compiling")
  rng = np.random.default_rng(seed)
  host = rng.standard_normal((n, dim), dtype=np.float32)
  x = jnp.asarray(host)
  centred = jax.jit(lambda x: x - x[-1])(x)
  mean = _rule_timed(agg.mean(), x, n)
  gram_xla = _jitted(_gram_xla, centred)
  gram_blocked = _jitted(_gram_blocked, centred)
  cases = _our_cases(x, f, only)
  byzfl_mean = None
  if byzfl is not None:
    byzfl_mean = _add_byzfl(cases, byzfl[0], byzfl[1], host, f)

  timed_all = [mean, gram_xla, gram_blocked]
  if byzfl_mean is not None:
    timed_all.append(byzfl_mean)
  for case in cases:
    timed_all += [t for t in (case.ours, case.byzfl) if t is not None]

  labels = {id(mean): "mean", id(gram_xla): "gram_xla",
            id(gram_blocked): "gram_blocked"}
  if byzfl_mean is not None:
    labels[id(byzfl_mean)] = "ByzFL Average"
  for case in cases:
    if case.ours is not None:
      labels[id(case.ours)] = case.rule
    if case.byzfl is not None:
      labels[id(case.byzfl)] = f"ByzFL {case.byzfl_rule}"

  failed = set()
  progress(f"n={n} d={dim}: sizing {len(timed_all)} functions")
  baselines = {id(t) for t in (mean, gram_xla, gram_blocked, byzfl_mean)}
  for timed in timed_all:
    try:
      _prepare(timed, repeats, slow_seconds, round_seconds)
    except Exception as e:  # pylint: disable=broad-except
      if id(timed) in baselines:
        raise
      # A peer's or a rule's failure is reported in its row, never hidden.
      failed.add(id(timed))
      for case in cases:
        if case.ours is timed:
          case.note.append(f"ours failed: {type(e).__name__}: {e}")
          case.ours = None
        if case.byzfl is timed:
          case.note.append(f"ByzFL failed: {type(e).__name__}: {e}")
          case.byzfl = None
      continue
    if timed.slow:
      progress(f"n={n} d={dim}: {labels[id(timed)]} takes "
               f"{timed.samples[0]:.1f} s a call: timed by that call")
  timed_all = [t for t in timed_all if id(t) not in failed]
  # Each rule's ratio is to its baseline timed just before it in the same
  # round (the faster Gram product for Krum-like rules).
  gram = min((gram_xla, gram_blocked),
             key=lambda t: statistics.median(t.once()[0] for _ in range(3)))
  for case in cases:
    if case.ours is not None:
      case.ours.partner = gram if case.rule in _GRAM_BASED else mean
      if case.ours.partner.slow:
        case.ours.partner = None
  for r in range(rounds):
    progress(f"n={n} d={dim}: round {r + 1}/{rounds}")
    for timed in timed_all:
      _run_round(timed)

  # The Gram baseline of each round: the faster of the two products.
  gram_rounds = [
      min(a, b) if a is not None and b is not None else None
      for a, b in zip(gram_xla.per_round, gram_blocked.per_round)]
  gram_rounds_or_slow = gram_rounds
  if gram_xla.slow or gram_blocked.slow:
    gram_rounds_or_slow = [min(_seconds(gram_xla), _seconds(gram_blocked))]

  rows = [
      BenchRow(n, dim, "mean", "baseline", f, _seconds(mean), "mean", 1.0,
               "Average" if byzfl_mean else None, _seconds(byzfl_mean),
               1.0 if byzfl_mean else None, _ratio(mean, byzfl_mean)),
      BenchRow(n, dim, "gram_xla", "baseline", f, _seconds(gram_xla), "gram",
               _ratio(gram_xla, gram_rounds_or_slow),
               note="one [n, d] x [d, n] product"),
      BenchRow(n, dim, "gram_blocked", "baseline", f, _seconds(gram_blocked),
               "gram", _ratio(gram_blocked, gram_rounds_or_slow),
               note=f"column blocks of {_block_columns(n)}"),
  ]
  for case in cases:
    if case.ours is not None and not case.ours.finite:
      case.note.append("our output is not finite")
    baseline = "gram" if case.rule in _GRAM_BASED else "mean"
    den = gram_rounds_or_slow if baseline == "gram" else mean
    ratio = _ratio(case.ours, den)
    if (case.ours is not None and case.ours.partner is not None
        and not case.ours.slow):
      ratio = _ratio(case.ours, case.ours.paired)
    rows.append(BenchRow(
        n, dim, case.rule, case.group, f, _seconds(case.ours), baseline,
        ratio, case.byzfl_rule, _seconds(case.byzfl),
        _ratio(case.byzfl, byzfl_mean), _ratio(case.ours, case.byzfl),
        "; ".join(case.note)))
  return rows


def run(*, num_workers: Iterable[int] = (8, 32, 128),
        dims: Iterable[int] = (10_000, 1_000_000),
        num_byzantine: int | None = None,
        rules: Sequence[str] | None = None, rounds: int = 5, repeats: int = 3,
        byzfl: str = "auto", seed: int = 0, slow_seconds: float = 2.0,
        round_seconds: float = 1.0,
        progress: Callable[[str], None] | None = None
        ) -> tuple[list[BenchRow], str]:
  """Times every rule at every ``(n, d)``; see the module docstring.

  Args:
    num_workers: the values of ``n``.
    dims: the values of ``d``.
    num_byzantine: ``f`` for every size; ``None``: ``(n - 3) // 4``.
    rules: the rows to time (names as in the table, e.g. ``median``,
      ``pre:bucketing``, ``bulyan_stage2``); ``None``: all. The baselines
      are always timed.
    rounds: interleaved timing rounds.
    repeats: most calls per function and round (fewer for slow calls, so
      that one function's round takes about ``round_seconds``).
    byzfl: ``"auto"`` (compare when ByzFL loads), ``"on"`` (fail if it does
      not) or ``"off"``.
    seed: seed of the data.
    slow_seconds: a function whose warm call takes longer is timed by that
      one call.
    round_seconds: time budget of one function in one round.
    progress: called with a short line before each phase (e.g. ``print``).

  Returns:
    ``(rows, byzfl_status)``: the rows in table order, and a line saying
    which ByzFL was compared, or why none was.

  Raises:
    ValueError: for an unknown ``byzfl`` mode, or ``"on"`` when ByzFL
      cannot be loaded.
  """
  if byzfl not in ("auto", "on", "off"):
    raise ValueError(f"byzfl must be 'auto', 'on' or 'off'; got {byzfl!r}")
  if rules is not None:
    unknown = sorted(set(rules) - set(rule_names()))
    if unknown:
      raise ValueError(f"unknown rules {unknown}; known rules: "
                       f"{', '.join(rule_names())}")
  if rounds < 1 or repeats < 1:
    raise ValueError(
        f"rounds and repeats must be >= 1; got {rounds}, {repeats}")
  progress = progress or (lambda line: None)
  peer = None
  if byzfl == "off":
    status = "ByzFL comparison off (--byzfl=off)"
  else:
    loaded = load_byzfl()
    if isinstance(loaded, str):
      if byzfl == "on":
        raise ValueError(f"ByzFL comparison requested but {loaded}")
      status = f"ByzFL comparison skipped: {loaded}"
    else:
      peer = loaded
      version = _distribution_version("byzfl")
      status = (f"ByzFL {version} (torch {peer[1].__version__}, "
                f"{peer[1].get_num_threads()} threads, torch.float32 "
                "tensor input)")
  rows = []
  for n in num_workers:
    f = default_num_byzantine(n) if num_byzantine is None else num_byzantine
    for dim in dims:
      rows += _bench_size(int(n), int(dim), f, only=rules, rounds=rounds,
                          repeats=repeats, byzfl=peer, seed=seed,
                          slow_seconds=slow_seconds,
                          round_seconds=round_seconds, progress=progress)
  return rows, status


def rule_names() -> list[str]:
  """The names of the rows :func:`run` can time (besides the baselines).

  Example:
    >>> names = rule_names()
    >>> "bulyan_stage2" in names and "pre:nearest_neighbor_mixing" in names
    True
  """
  names = ["median", "trimmed_mean", "mean_around_median", "phocas",
           "bulyan_stage2", "krum", "multi_krum",
           "pre:nearest_neighbor_mixing", "bulyan"]
  names += [name for name in agg.AGGREGATORS
            if name not in names and name != "mean"]
  names += [f"pre:{name}" for name in agg.PREAGGREGATORS
            if f"pre:{name}" not in names]
  return names


def _distribution_version(name: str) -> str:
  try:
    return importlib.import_module("importlib.metadata").version(name)
  except Exception:  # pylint: disable=broad-except
    return "(version unknown)"


def _ms(seconds: float | None) -> str:
  if seconds is None:
    return "-"
  ms = seconds * 1e3
  if ms >= 100:
    return f"{ms:.0f}"
  if ms >= 10:
    return f"{ms:.1f}"
  return f"{ms:.2f}"


def _x(ratio: float | None, digits: int = 2) -> str:
  return "-" if ratio is None else f"{ratio:.{digits}f}"


def format_table(rows: Sequence[BenchRow]) -> str:
  """The rows as a fixed-width text table (times in milliseconds).

  Columns: ``ms`` our time; ``x base`` our time over the baseline named in
  ``base`` (mean or gram); ``ByzFL ms`` the peer's time; ``x its mean`` the
  peer's time over its own Average; ``ours/ByzFL``.
  """
  header = ("n", "d", "rule", "f", "ms", "base", "x base", "ByzFL rule",
            "ByzFL ms", "x its mean", "ours/ByzFL", "note")
  lines = []
  for row in rows:
    lines.append((str(row.num_workers), f"{row.dim:.0e}".replace("+0", ""),
                  row.rule, str(row.num_byzantine), _ms(row.seconds),
                  row.baseline or "-", _x(row.ratio), row.byzfl_rule or "-",
                  _ms(row.byzfl_seconds), _x(row.byzfl_ratio_to_mean, 1),
                  _x(row.ours_over_byzfl, 3), row.note))
  widths = [max(len(h), *(len(line[i]) for line in lines)) if lines
            else len(h) for i, h in enumerate(header)]
  widths[-1] = 0

  def fmt(cells):
    return "  ".join(c.ljust(w) if i in (2, 5, 7, 11) else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

  out = [fmt(header), fmt(["-" * w for w in widths[:-1]] + ["----"])]
  last = None
  for row, line in zip(rows, lines):
    if last is not None and (row.num_workers, row.dim) != last:
      out.append("")
    last = (row.num_workers, row.dim)
    out.append(fmt(line))
  return "\n".join(out)


def check_targets(rows: Sequence[BenchRow],
                  size: tuple[int, int] = TARGET_SIZE) -> list[TargetCheck]:
  """The issue's targets at ``size``, one :class:`TargetCheck` each.

  * every coordinate-wise rule at most 5x the mean;
  * Krum, Multi-Krum and NNM at most 2x the Gram product;
  * every rule that ByzFL also has faster than ByzFL's.

  A target whose row is missing or was not timed is a ``MISS`` that says so.
  """
  n, dim = size
  at = {row.rule: row for row in rows
        if (row.num_workers, row.dim) == (n, dim)}
  where = f"n={n}, d={dim:.0e}".replace("+0", "")
  if not at:
    return [TargetCheck("size", "MISS",
                        f"MISS  targets apply at {where}, which was not run")]
  checks = []

  def add(name, status, detail):
    checks.append(TargetCheck(name, status,
                              f"{status}  {name} at {where}: {detail}"))

  def bound(rule, base, limit):
    row = at.get(rule)
    name = f"{rule} <= {limit:g}x {base}"
    if row is None or row.ratio is None:
      add(name, "MISS", "not timed" + (f" ({row.note})" if row and row.note
                                       else ""))
      return
    add(name, "PASS" if row.ratio <= limit else "MISS",
        f"{row.ratio:.2f}x ({_ms(row.seconds)} ms)")

  for rule in COORDINATEWISE:
    bound(rule, "mean", COORDINATEWISE_MAX_RATIO)
  for rule in DISTANCE:
    bound(rule, "gram", DISTANCE_MAX_RATIO)
  for row in at.values():
    if row.byzfl_rule is None:
      continue
    name = f"{row.rule} faster than ByzFL {row.byzfl_rule}"
    if row.ours_over_byzfl is None:
      both_refused = (row.seconds is None and row.byzfl_seconds is None
                      and "ours skipped" in row.note
                      and "ByzFL" in row.note and "subsets" in row.note)
      add(name, "SKIP" if both_refused else "MISS",
          f"not compared ({row.note or 'not timed'})")
      continue
    add(name, "PASS" if row.ours_over_byzfl < 1.0 else "MISS",
        f"ours/ByzFL = {row.ours_over_byzfl:.3f} ({_ms(row.seconds)} ms vs "
        f"{_ms(row.byzfl_seconds)} ms)")
  return checks
