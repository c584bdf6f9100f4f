r"""Bounded-delay asynchronous SGD: gradients at stale iterates.

The gradient used at step :math:`t` is taken at :math:`x_{t - d_t}` with
:math:`0 \le d_t \le \tau`, read from a ring buffer of the last
:math:`\tau + 1` iterates (replicated state). The delay of step :math:`t+1`
is drawn at the end of step :math:`t` by a named policy
(:data:`DELAY_POLICIES`) from the transform's replicated key, per worker
(``fold_in(key, worker_index)``), and stored in the state, so a runtime
takes the gradient with ``data_parallel(loss_fn, tx,
gradient_at=bounded_delay.gradient_at, replicated_params=True)``.

* **Hard cap.** Every delay is clipped to :math:`\min(\tau, t)` after it is
  drawn, whatever the policy: the read never leaves the buffer and never
  precedes :math:`x_0`.
* **Inconsistent reads.** With ``inconsistent_reads=True`` every parameter
  leaf (block) has its own delay, as a lock-free read of shared memory that
  mixes coordinates of different versions (Hogwild).
* **Block-coordinate updates.** With ``block_coordinate=True`` leaf
  :math:`j` belongs to worker :math:`j \bmod n`; every step each worker
  writes one block, chosen at random among its own, and the inner
  optimizer's state of a block (e.g. its momentum) advances only when the
  block is written (Kungurtsev et al., arXiv:1905.11845).

Otherwise the workers' gradients are averaged (one all-reduce) and the inner
optimizer steps on the mean, the same on every worker.

References:
  Alistarh, De Sa, Konstantinov, "The Convergence of Stochastic Gradient
  Descent in Asynchronous Shared Memory", PODC 2018, arXiv:1803.08841.

  Kungurtsev, Egan, Chatterjee, Alistarh, "Asynchronous Optimization Methods
  for Efficient Training of Deep Neural Networks with Guarantees", AAAI
  2021, arXiv:1905.11845.

  Recht, Re, Wright, Niu, "Hogwild!: A Lock-Free Approach to Parallelizing
  Stochastic Gradient Descent", NeurIPS 2011, arXiv:1106.5730.
"""

from typing import Any, Callable, Mapping, NamedTuple

import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.worker_axis import collectives
from distoptax.worker_axis import keys
from distoptax.worker_axis import replication

KEY_NAME = "distoptax.distributed.bounded_delay"
"""Salt of :func:`bounded_delay`'s key stream."""


class DelayContext(NamedTuple):
  """What a delay policy sees when it draws the delays of the next step.

  Attributes:
    key: this worker's key for the draw.
    newest: :math:`t`, the index of the newest stored iterate.
    max_delay: :math:`\\tau`.
    iterates: the ring buffer, leaves ``[tau + 1, ...]``.
    num_delays: delays to draw (1, or the number of leaves).
  """

  key: chex.PRNGKey
  newest: jax.Array
  max_delay: int
  iterates: optax.Params
  num_delays: int


def _constant(ctx: DelayContext, delay: float) -> jax.Array:
  return jnp.full((ctx.num_delays,), int(delay), jnp.int32)


def _uniform(ctx: DelayContext) -> jax.Array:
  return jax.random.randint(ctx.key, (ctx.num_delays,), 0,
                            ctx.max_delay + 1, jnp.int32)


def _geometric(ctx: DelayContext, p: float) -> jax.Array:
  # Number of failures before the first success: P(d = k) = p (1 - p)^k.
  return (jax.random.geometric(ctx.key, p, (ctx.num_delays,)) - 1).astype(
      jnp.int32)


def _oldest(ctx: DelayContext) -> jax.Array:
  return jnp.full((ctx.num_delays,), ctx.max_delay, jnp.int32)


def _farthest(ctx: DelayContext) -> jax.Array:
  size = ctx.max_delay + 1
  lags = jnp.arange(size)
  slots = (ctx.newest - lags) % size
  valid = lags <= ctx.newest

  def distances(leaf):
    newest = leaf[ctx.newest % size]
    diff = (leaf[slots] - newest[None]).astype(jnp.float32)
    return jnp.sum(diff.reshape(size, -1) ** 2, axis=1)

  per_leaf = jnp.stack([distances(leaf)
                        for leaf in jax.tree.leaves(ctx.iterates)])
  if ctx.num_delays == 1:
    per_leaf = jnp.sum(per_leaf, axis=0, keepdims=True)
  # Ties (e.g. equal iterates) go to the oldest lag.
  score = jnp.where(valid[None], per_leaf, -1.0)
  return (size - 1 - jnp.argmax(score[:, ::-1], axis=1)).astype(jnp.int32)


class _Policy(NamedTuple):
  fn: Callable[..., jax.Array]
  defaults: Mapping[str, float]


DELAY_POLICIES: Mapping[str, _Policy] = {
    "constant": _Policy(_constant, {"delay": -1}),
    "uniform": _Policy(_uniform, {}),
    "geometric": _Policy(_geometric, {"p": 0.5}),
    "adversarial_oldest": _Policy(_oldest, {}),
    "adversarial_farthest": _Policy(_farthest, {}),
}
r"""Delay policies, each drawing :math:`d` before the cap
:math:`\min(\tau, t)`: ``constant`` (``delay``, default :math:`\tau`),
``uniform`` on :math:`\{0..\tau\}`, ``geometric`` (:math:`P(d = k) = p
(1-p)^k`, ``0 < p <= 1``, default 0.5), ``adversarial_oldest`` (always the
oldest stored iterate) and ``adversarial_farthest`` (the stored iterate
farthest in squared distance from the newest one, per block with
inconsistent reads)."""


def _check_policy(policy: str, max_delay: int,
                  params: Mapping[str, Any]) -> Callable[[DelayContext],
                                                         jax.Array]:
  if policy not in DELAY_POLICIES:
    raise ValueError(f"unknown delay policy {policy!r}; known: "
                     f"{sorted(DELAY_POLICIES)}")
  entry = DELAY_POLICIES[policy]
  unknown = sorted(set(params) - set(entry.defaults))
  if unknown:
    raise ValueError(f"delay policy {policy!r} takes parameters "
                     f"{sorted(entry.defaults)}; got unknown {unknown}")
  values = {**entry.defaults, **params}
  if policy == "constant":
    delay = max_delay if values["delay"] == -1 else values["delay"]
    if isinstance(delay, (bool, np.bool_)) or not isinstance(
        delay, (int, np.integer)) or not 0 <= delay <= max_delay:
      raise ValueError(f"constant delay must be an int in [0, max_delay="
                       f"{max_delay}]; got {delay!r}")
    values["delay"] = int(delay)
  if policy == "geometric":
    p = values["p"]
    if isinstance(p, (bool, np.bool_)) or not isinstance(
        p, (int, float, np.number)) or not 0 < float(p) <= 1:
      raise ValueError(f"geometric delay policy: p must lie in (0, 1]; got "
                       f"{p!r}")
    values["p"] = float(p)
  return lambda ctx: entry.fn(ctx, **values)


@replication.replicated_fields("step", "iterates", "inner_state", "key")
class BoundedDelayState(NamedTuple):
  """State of :func:`bounded_delay`.

  Attributes:
    step: :math:`t`, iterates written after :math:`x_0` (int32); replicated.
    iterates: ring buffer, leaves ``[max_delay + 1, *shape]``; slot
      ``t % (max_delay + 1)`` holds :math:`x_t`; replicated.
    inner_state: the inner optimizer's state (with ``block_coordinate``, a
      tuple of one state per leaf); replicated.
    key: shared key data, split every step; replicated.
    delays: this worker's delays for its next read, ``int32[1]`` or
      ``int32[num_leaves]`` with inconsistent reads; always in
      ``[0, min(max_delay, step)]``.
    comm: this worker's bytes handed to the all-reduce.
  """

  step: jax.Array
  iterates: optax.Params
  inner_state: optax.OptState
  key: jax.Array
  delays: jax.Array
  comm: comm_stats.CommStats


def _take_slots(iterates: optax.Params, slots: jax.Array) -> optax.Params:
  leaves, treedef = jax.tree.flatten(iterates)
  if slots.shape[0] == 1:
    slots = jnp.broadcast_to(slots, (len(leaves),))
  return treedef.unflatten([
      lax.dynamic_index_in_dim(leaf, slots[j], 0, keepdims=False)
      for j, leaf in enumerate(leaves)])


def stale_params(state: BoundedDelayState) -> optax.Params:
  """This worker's read: leaf :math:`j` of :math:`x_{t - d_j}`."""
  size = jax.tree.leaves(state.iterates)[0].shape[0]
  return _take_slots(state.iterates, (state.step - state.delays) % size)


def find_state(opt_state: Any) -> BoundedDelayState:
  """The :class:`BoundedDelayState` inside an optimizer state."""
  found = [node for node in jax.tree.leaves(
      opt_state, is_leaf=lambda n: isinstance(n, BoundedDelayState))
           if isinstance(node, BoundedDelayState)]
  if len(found) != 1:
    raise ValueError(f"expected one BoundedDelayState in the optimizer "
                     f"state; found {len(found)}")
  return found[0]


def gradient_at(train_state: Any) -> optax.Params:
  """``data_parallel(gradient_at=...)``: the stale read of a train state."""
  return stale_params(find_state(train_state.opt_state))


def _check_max_delay(max_delay: Any) -> int:
  if isinstance(max_delay, (bool, np.bool_)) or not isinstance(
      max_delay, (int, np.integer)):
    raise TypeError(f"max_delay must be an int >= 0; got {max_delay!r}")
  if max_delay < 0:
    raise ValueError(f"max_delay must be an int >= 0; got {max_delay}")
  return int(max_delay)


def bounded_delay(
    inner: optax.GradientTransformation,
    max_delay: int,
    policy: str = "uniform",
    *,
    policy_params: Mapping[str, Any] | None = None,
    inconsistent_reads: bool = False,
    block_coordinate: bool = False,
    axis_name: str = collectives.WORKERS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Asynchronous SGD with delays at most ``max_delay``.

  .. math::
    g_t = \frac1n \sum_i \nabla f_i\big(x_{t - d_{t,i}}\big), \qquad
    x_{t+1} = x_t + \mathrm{inner}(g_t), \qquad
    0 \le d_{t,i} \le \min(\tau, t)

  (with inconsistent reads :math:`d_{t,i}` is a vector over blocks; with
  block-coordinate updates each worker writes one of its blocks and the
  block-sum replaces the mean).

  Args:
    inner: the optimizer on the aggregated stale gradient, e.g.
      ``optax.sgd(0.1, momentum=0.9)`` or ``algorithms.yellowfin``; its
      state is replicated.
    max_delay: :math:`\tau \ge 0`; the ring buffer holds :math:`\tau + 1`
      iterates. 0 is synchronous SGD.
    policy: a name of :data:`DELAY_POLICIES`.
    policy_params: its parameters (``delay`` for ``constant``, ``p`` for
      ``geometric``).
    inconsistent_reads: one delay per leaf instead of one per read.
    block_coordinate: each worker writes one of its own leaves per step.
    axis_name: the logical worker axis.
    seed: seed of the key stream (salted with :data:`KEY_NAME`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`BoundedDelayState`. ``update`` needs ``params`` (the current
    iterate, replicated: ``data_parallel(..., replicated_params=True)``);
    extra arguments reach ``inner``.

  Raises:
    TypeError: for a non-int ``max_delay`` or an ``inner`` that is not an
      optax transformation.
    ValueError: for ``max_delay < 0``, an unknown policy or bad policy
      parameters.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from distoptax import distributed as dist
    >>> from distoptax.distributed.bounded_delay import (
    ...     bounded_delay, gradient_at)
    >>> loss_fn = lambda w, b: 0.5 * jnp.sum((w - b) ** 2)
    >>> tx = bounded_delay(optax.sgd(0.5), 2, "constant")
    >>> step = dist.data_parallel(loss_fn, tx, gradient_at=gradient_at,
    ...                           replicated_params=True)
    >>> run = dist.simulate(step, num_workers=1)
    >>> state = run.init(jnp.zeros(1))
    >>> for _ in range(4):
    ...   state, _ = run.step(state, jnp.ones((1, 1)))
    ...   print(state.params, state.opt_state.delays)
    [0.5] [[1]]
    [1.] [[2]]
    [1.5] [[2]]
    [1.75] [[2]]

  References:
    Alistarh, De Sa, Konstantinov, PODC 2018, arXiv:1803.08841.
    Kungurtsev, Egan, Chatterjee, Alistarh, arXiv:1905.11845.

  Guarantees:
    Every delay lies in :math:`[0, \min(\tau, t)]` under every policy (a
    clip after the draw; tested for each policy); ``max_delay = 0`` is
    synchronous data-parallel SGD with ``inner`` (tested). The buffer holds
    :math:`(\tau + 1)\times` the model and nothing else model-sized besides
    ``inner``'s state. For a strongly convex quadratic
    :math:`x_{t+1} = x_t - \eta\lambda x_{t-\tau}` is stable iff
    :math:`\eta\lambda < 2\sin(\pi / (2(2\tau + 1)))`: the admissible step
    shrinks like :math:`1/\tau`.
  """
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(f"inner must be an optax GradientTransformation; got "
                    f"{inner!r}")
  max_delay = _check_max_delay(max_delay)
  draw = _check_policy(policy, max_delay, dict(policy_params or {}))
  if not isinstance(seed, int) or isinstance(seed, bool):
    raise TypeError(f"seed must be an int; got {seed!r}")
  inner = optax.with_extra_args_support(inner)
  size = max_delay + 1

  def num_delays(params):
    return len(jax.tree.leaves(params)) if inconsistent_reads else 1

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    if block_coordinate:
      inner_state = tuple(inner.init(leaf) for leaf in leaves)
    else:
      inner_state = inner.init(params)
    return BoundedDelayState(
        step=jnp.zeros((), jnp.int32),
        iterates=treedef.unflatten([
            jnp.broadcast_to(leaf, (size,) + jnp.shape(leaf))
            for leaf in leaves]),
        inner_state=inner_state,
        key=keys.transform_key(seed, KEY_NAME),
        delays=jnp.zeros((num_delays(params),), jnp.int32),
        comm=comm_stats.init_comm_stats(capacity=1))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("bounded_delay.update needs params, the current "
                       "iterate (data_parallel passes them)")
    key, next_key = communication.step_keys(state.key)
    rounds = communication.Rounds(state.comm, axis_name)
    leaves, treedef = jax.tree.flatten(updates)
    p_leaves = treedef.flatten_up_to(params)
    if block_coordinate:
      n = collectives.num_workers(axis_name)
      me = collectives.worker_index(axis_name)
      owners = np.arange(len(leaves)) % n
      mine = jnp.asarray(owners) == me
      # A random one of this worker's blocks (none if it owns none).
      scores = jax.random.uniform(communication.worker_key(key, axis_name),
                                  (len(leaves),))
      chosen = jnp.argmax(jnp.where(mine, scores, -1.0))
      write = (jnp.arange(len(leaves)) == chosen) & mine
      flags = write.astype(jnp.float32)
      masked = [jnp.where(write[j], g, jnp.zeros_like(g))
                for j, g in enumerate(leaves)]
      summed, written = rounds.all_reduce((masked, flags))
      written = written > 0
      new_leaves, new_inner = [], []
      for j, (g, p, s) in enumerate(zip(summed, p_leaves,
                                        state.inner_state)):
        u, s_new = inner.update(g, s, p, **extra_args)
        new_leaves.append(jnp.where(written[j], u, jnp.zeros_like(u)))
        new_inner.append(jax.tree.map(
            lambda a, b, w=written[j]: jnp.where(w, a, b), s_new, s))
      out = treedef.unflatten(new_leaves)
      inner_state = tuple(new_inner)
    else:
      mean = rounds.mean(updates)
      out, inner_state = inner.update(mean, state.inner_state, params,
                                      **extra_args)
    out = jax.tree.map(lambda u, p: u.astype(p.dtype), out, params)
    new = optax.apply_updates(params, out)
    step = state.step + 1
    iterates = jax.tree.map(
        lambda m, x: lax.dynamic_update_index_in_dim(m, x, step % size, 0),
        state.iterates, new)
    delay_key = jax.random.fold_in(communication.worker_key(key, axis_name),
                                   1)
    ctx = DelayContext(delay_key, step,
                       max_delay, iterates, num_delays(params))
    delays = jnp.clip(draw(ctx), 0, jnp.minimum(max_delay, step))
    return out, BoundedDelayState(step, iterates, inner_state, next_key,
                                  delays.astype(jnp.int32), rounds.finish())

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
