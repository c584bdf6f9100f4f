"""PowerSGD: rank-r power-iteration compression across the worker axis.

PowerSGD (Vogels, Karimireddy, Jaggi, NeurIPS 2019, arXiv:1905.13727) is not
a one-shot ``encode``/``decode`` compressor: its two factors are all-reduced
one after the other with an orthogonalization in between, and its projection
``Q`` is replicated state carried from step to step. So it is a
communicating transformation of its own that replaces
``aggregate(aggregators.mean())`` in an ``optax.chain`` (passing it as
``aggregate(compressor=...)`` raises a ``TypeError``). Its rounds, error
memory and byte accounting are those of ``distributed.communication``. The
conventions follow PyTorch's
``powerSGD_hook`` (``torch/distributed/algorithms/ddp_comm_hooks``); where
they differ from the paper or from the hook, ``third_party_notes/powersgd.md``
says how and why.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.worker_axis import collectives
from distoptax.worker_axis import keys
from distoptax.worker_axis import replication

ERROR_CONVENTIONS = ("aggregate", "local")
"""Values of ``powersgd(error_against=...)``."""

MATRIX_VIEWS = ("first_dim", "last_dim")
"""Values of ``powersgd(matrix_view=...)``."""


@replication.replicated_fields('q', 'step')
class PowerSGDState(NamedTuple):
  """State of :func:`powersgd`.

  Leaves that are sent uncompressed hold an ``optax.MaskedNode()`` in ``q``
  and ``error``.

  Attributes:
    q: per compressed leaf, the ``[n_cols, r]`` factor the next step
      orthogonalizes and multiplies with (float32 or wider). With
      ``warm_start`` it is the all-reduced :math:`\\bar Q` of the last
      compressed step (at ``init``: a draw from the shared seed); without,
      a fresh draw from the shared seed for the next step. Replicated:
      bit-identical on every worker.
    error: per compressed leaf, this worker's ``[n_rows, n_cols]``
      error-feedback memory (float32 or wider), or ``()`` without error
      feedback. It differs across workers.
    step: number of updates so far (int32 scalar), replicated; it selects
      the uncompressed warm-up (``start_iter``) and seeds the cold-start
      draws.
    comm: bytes this worker handed to all-reduce (see ``CommStats``); its
      ``rounds`` record the P round and the Q round (one plain round during
      the ``start_iter`` warm-up).
  """

  q: optax.Updates
  error: optax.Updates
  step: jax.Array
  comm: comm_stats.CommStats


class _Plan(NamedTuple):
  """How one leaf travels: as ``[n_rows, n_cols]`` with rank ``rank``."""

  n_rows: int
  n_cols: int
  rank: int


def _plan(shape: tuple[int, ...], dtype, rank: int,
          min_compression_rate: float, matrix_view: str) -> _Plan | None:
  """The matrix view of a leaf, or ``None`` if it is sent uncompressed."""
  if len(shape) <= 1 or not jnp.issubdtype(dtype, jnp.floating):
    return None
  if matrix_view == "first_dim":
    n_rows, n_cols = shape[0], math.prod(shape[1:])
  else:
    n_rows, n_cols = shape[-1], math.prod(shape[:-1])
  r = min(n_rows, n_cols, rank)
  # PyTorch's ``_should_compress``.
  if (n_rows + n_cols) * r * min_compression_rate < n_rows * n_cols:
    return _Plan(n_rows, n_cols, r)
  return None


def _to_matrix(x: jax.Array, matrix_view: str) -> jax.Array:
  if matrix_view == "first_dim":
    return jnp.reshape(x, (x.shape[0], -1))
  return jnp.reshape(x, (-1, x.shape[-1])).T


def _from_matrix(m: jax.Array, shape: tuple[int, ...],
                 matrix_view: str) -> jax.Array:
  if matrix_view == "first_dim":
    return jnp.reshape(m, shape)
  return jnp.reshape(m.T, shape)


def _orthogonalize(matrix: jax.Array) -> jax.Array:
  """Orthonormal columns spanning ``matrix``'s columns, ``R`` diagonal >= 0.

  Modified Gram-Schmidt for at most two columns, Householder QR (with column
  signs fixed so that ``R`` has a non-negative diagonal, which is what
  Gram-Schmidt returns) otherwise: the two agree up to rounding. An all-zero
  column (after projection) stays zero instead of becoming NaN.
  """
  r = matrix.shape[-1]
  if r > 2:
    q, upper = jnp.linalg.qr(matrix)
    signs = jnp.where(jnp.diagonal(upper) < 0, -1.0, 1.0).astype(q.dtype)
    return q * signs
  cols = [matrix[:, i] for i in range(r)]
  for i in range(r):
    norm = jnp.linalg.norm(cols[i])
    cols[i] = jnp.where(norm > 0, cols[i] / jnp.where(norm > 0, norm, 1.0),
                        0.0)
    for j in range(i + 1, r):
      cols[j] = cols[j] - jnp.dot(cols[i], cols[j]) * cols[i]
  return jnp.stack(cols, axis=-1)


def _compute_dtype(dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


KEY_NAME = "distoptax.distributed.powersgd"
"""Salt of :func:`powersgd`'s key stream (``worker_axis.transform_key``)."""


def _draw_qs(seed: int, step, plans, dtypes) -> list[Any]:
  """Standard-normal ``[n_cols, r]`` factors from the shared seed and step.

  The key is ``fold_in(transform_key(seed, KEY_NAME), step)``, then
  ``fold_in(., leaf_index)``: the same on every worker, a stream no other
  transform with the same seed draws from.
  """
  key = jax.random.fold_in(jax.random.wrap_key_data(
      keys.transform_key(seed, KEY_NAME)), step)
  return [optax.MaskedNode() if plan is None else jax.random.normal(
      jax.random.fold_in(key, i), (plan.n_cols, plan.rank),
      _compute_dtype(dtype))
          for i, (plan, dtype) in enumerate(zip(plans, dtypes))]


def powersgd(
    rank: int,
    *,
    min_compression_rate: float = 2.0,
    start_iter: int = 0,
    warm_start: bool = True,
    error_feedback: bool = True,
    error_against: str = "aggregate",
    matrix_view: str = "last_dim",
    seed: int = 0,
    axis_name: str = collectives.WORKERS,
) -> optax.GradientTransformationExtraArgs:
  r"""Averages the workers' updates through rank-``r`` PowerSGD.

  Each leaf is viewed as a matrix (``matrix_view``); on worker :math:`i`
  with update :math:`G_i`, memory :math:`e_i` and the replicated factor
  :math:`Q` (:math:`n_{\mathrm{cols}} \times r`):

  .. math::
    M_i = G_i + e_i, \quad
    \bar P = \tfrac1n \textstyle\sum_i M_i\,\mathrm{orth}(Q), \quad
    \hat P = \mathrm{orth}(\bar P), \quad
    \bar Q = \tfrac1n \textstyle\sum_i M_i^\top \hat P, \quad
    \hat M = \hat P \bar Q^\top, \quad
    e_i \leftarrow M_i - \hat M

  Every worker outputs :math:`\hat M = \hat P\hat P^\top \bar M`, the mean
  :math:`\bar M` of the compensated updates projected on the span of
  :math:`\hat P`. The two means are all-reduces of the factors
  (:math:`n_{\mathrm{rows}} r` and :math:`n_{\mathrm{cols}} r` numbers) in
  the update's dtype; ``orth`` is modified Gram-Schmidt for :math:`r \le 2`
  and Householder QR otherwise (PyTorch's choice), with
  :math:`r = \min(\mathrm{rank}, n_{\mathrm{rows}}, n_{\mathrm{cols}})`.

  Which leaves are compressed (PyTorch's rule): vectors, scalars and
  non-floating leaves never; a matrix view only when
  :math:`(n_{\mathrm{rows}} + n_{\mathrm{cols}})\, r \cdot
  \mathrm{min\_compression\_rate} < n_{\mathrm{rows}} n_{\mathrm{cols}}`.
  The other leaves are all-reduced (mean) uncompressed, in the first round
  with :math:`\bar P`, and keep no memory.

  Error against the aggregate (``error_against="aggregate"``, PyTorch's
  hook and the reference code epfml/powersgd) keeps :math:`M_i - \hat M`,
  which holds the other workers' disagreement too (nonzero even at full
  rank); ``"local"`` keeps :math:`M_i - \hat P (M_i^\top \hat P)^\top`, the
  residual of this worker's own contribution (epfml/powersgd#3). The
  memories differ, but their mean over workers is :math:`\bar M - \hat M`
  under both, and the output depends on the workers only through
  :math:`\bar M`: so both conventions give the same outputs, step after
  step (up to rounding). They differ only where a worker's own memory is
  used on its own (inspected, checkpointed from one worker, or fed to a
  per-worker nonlinear transform). The memory is in the units of
  what the transform receives: first in the chain (before ``optax.sgd``) it
  holds gradients, the learning rate outside, as in PyTorch.

  Warm start: :math:`Q` is kept in the state and the next step
  orthogonalizes and reuses it (one power-iteration step per training
  step). Without it, every step draws a fresh standard-normal :math:`Q` from
  the shared ``seed`` and the step number, the same on every worker and
  different at every step (PyTorch: "a fixed projection would leave some
  gradient directions never synchronized").

  ``init`` and ``update`` run under a runtime (``simulate`` / ``on_mesh``)
  or any ``vmap`` / ``shard_map`` that binds ``axis_name``.

  Args:
    rank: the approximation rank :math:`r \ge 1` (1-4 typical, PyTorch).
    min_compression_rate: compress a matrix only if its
      uncompressed / compressed size exceeds this (PyTorch default 2).
    start_iter: run plain mean all-reduce for the first ``start_iter``
      updates (PyTorch's ``start_powerSGD_iter``; it suggests ~10% of the
      steps, after the learning-rate warm-up), leaving ``q`` and ``error``
      untouched. The predicate is the replicated step counter, so every
      worker takes the same branch: under the runtimes (which hold ``step``
      once) the branch not taken does not run, and ``comm.rounds`` records
      one all-reduce in the warm-up and two after it. 0 (default)
      compresses from the first step: JAX has no DDP bucket rebuild, so
      PyTorch's ``> 1`` rule does not apply.
    warm_start: reuse last step's :math:`\bar Q` (see above).
    error_feedback: keep the per-worker memory :math:`e_i`.
    error_against: ``"aggregate"`` (default) or ``"local"`` (see above).
    matrix_view: which dimension of a leaf of shape ``(d_0, ..., d_k)``
      indexes the rows, the others (flattened in order) indexing the
      columns. ``"last_dim"`` (default): :math:`d_k \times d_0 \cdots
      d_{k-1}`, the transposed reshape; on Flax layouts (``Dense`` kernels
      ``(in, out)``, ``Conv`` kernels ``(h, w, in, out)``) this is the
      matrix PyTorch's hook builds for the same layer (output features x
      fan-in). ``"first_dim"``: :math:`d_0 \times d_1 \cdots d_k`, PyTorch's
      ``view(d_0, -1)`` applied to the array as given (for PyTorch layouts
      ``(out, in, h, w)``).
    seed: seed of the shared draws of :math:`Q`, salted with
      :data:`KEY_NAME` (``worker_axis.transform_key``).
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`PowerSGDState`; it ignores ``params`` and extra arguments.

  Raises:
    ValueError: for ``rank < 1``, ``min_compression_rate < 0``,
      ``start_iter < 0`` or an unknown ``error_against`` / ``matrix_view``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> from distoptax.distributed.powersgd import powersgd
    >>> tx = powersgd(rank=1)
    >>> def step(g):
    ...   state = tx.init(g)  # Under the worker axis, like update.
    ...   out, state = tx.update(g, state)
    ...   return out, state.comm.all_reduce_bytes
    >>> scale = jnp.array([1.0, 3.0])  # Two workers.
    >>> g = {"w": scale[:, None, None] * jnp.ones((2, 8, 8)),
    ...      "b": scale[:, None] * jnp.ones((2, 8))}
    >>> out, wire = jax.vmap(step, axis_name=dist.WORKERS)(g)
    >>> wire  # P (8x1) + Q (8x1) + the bias (8), float32.
    Array([96, 96], dtype=int32)
    >>> bool(jnp.allclose(out["w"], 2.0))  # The mean; it has rank 1.
    True

  References:
    Vogels, Karimireddy, Jaggi, "PowerSGD: Practical Low-Rank Gradient
    Compression for Distributed Optimization", NeurIPS 2019,
    arXiv:1905.13727. PyTorch ``powerSGD_hook``. Karimireddy et al., "Error
    Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML
    2019, arXiv:1901.09847. Xie, Chen, Yuan, "From PowerSGD to PowerSGD+",
    arXiv:2509.11254.

  Guarantees:
    Every worker returns the same update, and ``q`` and ``step`` stay
    replicated. The output depends on the workers' updates only through
    their mean (:math:`\hat M = \hat P\hat P^\top \bar M`,
    :math:`\hat P = \mathrm{orth}(\bar M\,\mathrm{orth}(Q))`), so, like the
    plain mean, it does not depend on how a batch is split over workers
    (equal shards), and
    :math:`\|\bar M - \hat M\|_F \le \|\bar M\|_F`. If
    :math:`r = \min(n_{\mathrm{rows}}, n_{\mathrm{cols}})` and
    :math:`\bar P` has full column rank, the output is the exact mean. With
    error feedback nothing is lost, only delayed: the mean of the new
    memories equals :math:`\bar M - \hat M` (under both conventions), so the
    outputs summed over steps equal the summed mean updates minus the mean
    final memory. No convergence rate is claimed here: Xie, Chen and Yuan
    (arXiv:2509.11254) give a problem on which PowerSGD does not converge
    to the optimum.
  """
  if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
    raise ValueError(f"rank must be an int >= 1; got {rank!r}")
  if not min_compression_rate >= 0:
    raise ValueError(
        f"min_compression_rate must be >= 0; got {min_compression_rate!r}")
  if not isinstance(start_iter, int) or start_iter < 0:
    raise ValueError(f"start_iter must be an int >= 0; got {start_iter!r}")
  if error_against not in ERROR_CONVENTIONS:
    raise ValueError(f"error_against must be one of {ERROR_CONVENTIONS}; "
                     f"got {error_against!r}")
  if matrix_view not in MATRIX_VIEWS:
    raise ValueError(f"matrix_view must be one of {MATRIX_VIEWS}; "
                     f"got {matrix_view!r}")

  def plans_of(leaves) -> list[_Plan | None]:
    return [_plan(tuple(x.shape), x.dtype, rank, min_compression_rate,
                  matrix_view) for x in leaves]

  def init_fn(params: optax.Params) -> PowerSGDState:
    collectives.num_workers(axis_name)  # The worker axis must be bound.
    leaves, treedef = jax.tree.flatten(params)
    plans = plans_of(leaves)
    dtypes = [x.dtype for x in leaves]
    q = treedef.unflatten(_draw_qs(seed, 0, plans, dtypes))
    error = ()
    if error_feedback:
      error = communication.init_memory(treedef.unflatten([
          optax.MaskedNode() if plan is None else jax.ShapeDtypeStruct(
              (plan.n_rows, plan.n_cols), dtype)
          for plan, dtype in zip(plans, dtypes)]))
    return PowerSGDState(q=q, error=error, step=jnp.zeros((), jnp.int32),
                         comm=comm_stats.init_comm_stats(capacity=2))

  def update_fn(
      updates: optax.Updates,
      state: PowerSGDState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, PowerSGDState]:
    del params, extra_args
    leaves, treedef = jax.tree.flatten(updates)
    plans = plans_of(leaves)
    num = collectives.num_workers(axis_name)
    qs = treedef.flatten_up_to(state.q)
    errors = (treedef.flatten_up_to(state.error) if error_feedback
              else [None] * len(leaves))
    rounds = communication.Rounds(state.comm, axis_name)

    def plain():
      summed = rounds.all_reduce(leaves)
      out = [(s / num).astype(x.dtype) for s, x in zip(summed, leaves)]
      return out, state.q, state.error

    def compressed():
      ms, ps = [], []
      for x, plan, q, e in zip(leaves, plans, qs, errors):
        if plan is None:
          continue
        m = _to_matrix(x, matrix_view).astype(_compute_dtype(x.dtype))
        if error_feedback:
          m = communication.compensate(m, e)
        ms.append(m)
        ps.append((m @ _orthogonalize(q)).astype(x.dtype))
      plain_leaves = [x for x, plan in zip(leaves, plans) if plan is None]
      # Round 1: the P factors and the uncompressed leaves.
      ps_sum, plain_sum = rounds.all_reduce((ps, plain_leaves))
      p_hats = [_orthogonalize(p.astype(m.dtype) / num)
                for p, m in zip(ps_sum, ms)]
      # Round 2: the Q factors.
      wire_dtypes = [x.dtype for x, plan in zip(leaves, plans)
                     if plan is not None]
      local_qs = [m.T @ p for m, p in zip(ms, p_hats)]
      q_wire = [q.astype(d) for q, d in zip(local_qs, wire_dtypes)]
      q_means = [q.astype(m.dtype) / num
                 for q, m in zip(rounds.all_reduce(q_wire), ms)]
      m_hats = [p @ q.T for p, q in zip(p_hats, q_means)]
      if error_against == "aggregate":
        new_errors = communication.residual(ms, m_hats)
      else:
        new_errors = communication.residual(
            ms, [p @ q.T for p, q in zip(p_hats, local_qs)])

      if warm_start:
        next_qs = iter(q_means)
      else:
        next_qs = iter(q for q in _draw_qs(seed, state.step + 1, plans,
                                           [x.dtype for x in leaves])
                       if not isinstance(q, optax.MaskedNode))
      m_hats_it, plain_it, errors_it = (iter(m_hats), iter(plain_sum),
                                        iter(new_errors))
      out, q_out, e_out = [], [], []
      for x, plan in zip(leaves, plans):
        if plan is None:
          out.append((next(plain_it) / num).astype(x.dtype))
          q_out.append(optax.MaskedNode())
          e_out.append(optax.MaskedNode())
        else:
          out.append(_from_matrix(next(m_hats_it), x.shape,
                                  matrix_view).astype(x.dtype))
          q_out.append(next(next_qs))
          e_out.append(next(errors_it))
      error = treedef.unflatten(e_out) if error_feedback else ()
      return out, treedef.unflatten(q_out), error

    if start_iter == 0:
      out, q, error = compressed()
    else:
      out, q, error = rounds.cond(state.step < start_iter, plain, compressed)
    return treedef.unflatten(out), PowerSGDState(
        q=q, error=error, step=state.step + 1, comm=rounds.finish())

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
