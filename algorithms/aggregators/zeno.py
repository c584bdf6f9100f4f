"""Zeno: suspicion-based aggregation scored by a loss oracle."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import optax

from distoptax.algorithms.aggregators import base
from distoptax.algorithms.aggregators import distances

_PENALTIES = ("squared_norm", "mean_square")


class ZenoState(NamedTuple):
  """State of :func:`zeno` (diagnostics only; the rule is memoryless).

  Attributes:
    selected: float32 ``[num_workers]``; 1.0 for the candidates averaged at
      the last step (all ones before the first step).
  """

  selected: jax.Array

  @property
  def num_workers(self) -> int:
    """The number of workers ``init`` built this state for."""
    return self.selected.shape[0]


def _check_num_suspicious(num_suspicious: int, n: int) -> None:
  if not 0 <= num_suspicious < n:
    raise ValueError(
        "zeno needs 0 <= b < n (at least one candidate is kept); got "
        f"n={n}, b={num_suspicious}")


def zeno(
    num_suspicious: int,
    *,
    learning_rate: float,
    rho: float,
    penalty: str = "squared_norm",
    map_batch_size: int | None = None,
) -> base.AggregationRule:
  r"""Averages the candidates that a loss oracle finds least suspicious.

  Each candidate update :math:`g_i` gets the stochastic descendant score

  .. math::
    s_i = f_r(x) - f_r(x - \gamma g_i) - \rho \|g_i\|^2,

  where :math:`x` is ``params``, :math:`\gamma` is ``learning_rate`` and
  :math:`f_r` is ``value_fn``: the loss on a small validation batch held by
  the server (the same on every worker). The :math:`b` lowest scores are
  dropped and the remaining :math:`n - b` candidates are averaged:

  .. math::
    \mathrm{Zeno}_b = \frac{1}{n - b} \sum_{i=1}^{n-b} g_{(i)},
    \qquad s_{(1)} \ge s_{(2)} \ge \dots \ge s_{(n)}.

  ``value_fn`` is called :math:`n + 1` times per step (once at :math:`x`, once
  per candidate). The candidates are evaluated with ``jax.vmap`` over the
  worker axis, so the memory of one forward pass is multiplied by ``n``;
  set ``map_batch_size`` to evaluate them with ``lax.map`` in chunks of that
  many instead (``1`` = one at a time, the least memory).

  Conventions:
    * Ties between equal scores: the candidate with the lowest worker index
      is kept (a stable order). Duplicated vectors usually tie exactly, but
      the batched (``vmap``) losses may round them apart in the last bit;
      which copy is kept then varies, the aggregate does not.
    * Non-finite inputs: a candidate with any NaN or +-inf entry ranks below
      every finite candidate (score :math:`-\infty`), so with at most ``b``
      non-finite candidates the result is finite (with more, a non-finite
      candidate is averaged and the result is NaN, on purpose). A NaN
      score of a finite candidate (a NaN loss) is also treated as
      :math:`-\infty`.
    * ``penalty="squared_norm"`` is the paper's :math:`\rho\|g\|^2`.
      ``penalty="mean_square"`` is the official code's variant,
      :math:`\rho \cdot \mathrm{mean}(g^2) = \rho\|g\|^2 / d` over all ``d``
      coordinates, used there with ``rho = learning_rate / rho_ratio`` and
      ``rho_ratio = 200``.

  Args:
    num_suspicious: ``b``, how many candidates to drop; the paper needs
      ``b >= q`` (the number of Byzantine workers) and ``b < n``.
    learning_rate: :math:`\gamma`, the step the server takes along the
      aggregate (use the server optimizer's learning rate).
    rho: :math:`\rho \ge 0`, the weight of the norm penalty.
    penalty: ``"squared_norm"`` (paper) or ``"mean_square"`` (official code).
    map_batch_size: ``None`` evaluates all candidates at once with
      ``jax.vmap``; an integer evaluates them with ``lax.map`` in chunks of
      that size to bound memory.

  Returns:
    An :class:`AggregationRule` whose state is a :class:`ZenoState`. Its
    ``update`` requires ``params`` (the current :math:`x`) and the extra
    argument ``value_fn`` (``value_fn(params) -> scalar``).

  Raises:
    ValueError: at ``init`` or at the first trace if not ``0 <= b < n``; at
      ``update`` if ``params`` or ``value_fn`` is missing; at construction for
      a negative ``rho`` or an unknown ``penalty``.
    TypeError: at ``update`` if ``value_fn`` is not callable.

  Example:
    >>> import jax.numpy as jnp
    >>> from distoptax.algorithms.aggregators.zeno import zeno
    >>> rule = zeno(1, learning_rate=0.1, rho=0.0)
    >>> value_fn = lambda x: 0.5 * jnp.sum((x - 1.0) ** 2)  # minimum at 1
    >>> stack = jnp.array([[-1.0, -1.0], [-2.0, -1.0], [5.0, 5.0]])
    >>> out, state = rule.update(stack, rule.init(None, 3), jnp.zeros(2),
    ...                          value_fn=value_fn)
    >>> out
    Array([-1.5, -1. ], dtype=float32)
    >>> state.selected
    Array([1., 1., 0.], dtype=float32)

  Guarantees:
    (Xie, Koyejo and Gupta 2019, Theorem 1, as recalled; see
    ``third_party_notes/zeno_byzantine_sgd.md``.) For smooth, possibly
    non-convex losses, with ``b >= q`` Byzantine workers out of ``n`` and an
    unbiased validation batch, SGD with Zeno converges to a neighbourhood
    of a stationary point whose size grows with ``b`` and the validation
    noise; one honest worker suffices (no honest majority needed).

  References:
    Xie, Koyejo and Gupta, "Zeno: Distributed Stochastic Gradient Descent
    with Suspicion-based Fault-tolerance", ICML 2019, arXiv:1805.10032.
  """
  if penalty not in _PENALTIES:
    raise ValueError(
        f"zeno penalty must be one of {_PENALTIES}; got {penalty!r}")
  if isinstance(rho, (int, float)) and rho < 0:
    raise ValueError(f"zeno needs rho >= 0; got rho={rho}")
  if map_batch_size is not None and map_batch_size < 1:
    raise ValueError(
        f"zeno map_batch_size must be None or >= 1; got {map_batch_size}")

  def init_fn(params: optax.Params, num_workers: int) -> ZenoState:
    del params
    _check_num_suspicious(num_suspicious, num_workers)
    return ZenoState(selected=jnp.ones((num_workers,), jnp.float32))

  def update_fn(
      stacked_updates: optax.Updates,
      state: ZenoState,
      params: optax.Params | None = None,
      *,
      value_fn: Callable[[optax.Params], jax.Array] | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, ZenoState]:
    del extra_args
    n = base.stack_size(stacked_updates)
    _check_num_suspicious(num_suspicious, n)
    base.check_state("zeno", state, ZenoState, n)
    if value_fn is None:
      raise ValueError(
          "zeno needs the loss oracle: call update(..., value_fn=f) with "
          "f(params) -> scalar loss on the server's validation batch")
    if not callable(value_fn):
      raise TypeError(
          f"zeno value_fn must be callable; got {type(value_fn).__name__}")
    base.check_params(
        "zeno", params, stacked_updates,
        "zeno needs the current params x to score x - learning_rate * g; "
        "call update(updates, state, params, value_fn=f)")

    finite = ~distances.nonfinite_rows(stacked_updates)
    sq_norm = jnp.zeros((n,), jnp.float32)
    size = 0
    for leaf in jax.tree.leaves(stacked_updates):
      flat = leaf.reshape(n, -1).astype(
          jnp.promote_types(leaf.dtype, jnp.float32))
      sq_norm = sq_norm + jnp.einsum("ij,ij->i", flat, flat,
                                     precision=lax.Precision.HIGHEST)
      size += flat.shape[1]
    if penalty == "mean_square":
      sq_norm = sq_norm / max(size, 1)

    def loss_at(update):
      moved = jax.tree.map(lambda p, u: p - learning_rate * u, params, update)
      return jnp.asarray(value_fn(moved), jnp.float32).reshape(())

    base_loss = jnp.asarray(value_fn(params), jnp.float32).reshape(())
    if map_batch_size is None:
      losses = jax.vmap(loss_at)(stacked_updates)
    else:
      losses = lax.map(loss_at, stacked_updates, batch_size=map_batch_size)
    scores = base_loss - losses - rho * sq_norm
    scores = jnp.where(jnp.isnan(scores) | ~finite, -jnp.inf, scores)

    # Order: finite before non-finite, then higher score, then lower index.
    # A sort (not pairwise comparisons) so that the order is one consistent
    # permutation even if XLA recomputes the scores in several fusions.
    order = jnp.lexsort((jnp.arange(n), -scores, ~finite))
    keep = jnp.zeros((n,), bool).at[order[:n - num_suspicious]].set(True)
    weights = keep.astype(jnp.float32) / (n - num_suspicious)
    # Dropped non-finite rows are left out, not weighted by 0 (0 * NaN = NaN).
    aggregated = distances.combine_rows(weights, stacked_updates, ~finite)
    return aggregated, ZenoState(selected=keep.astype(jnp.float32))

  return base.AggregationRule(init_fn, update_fn)
