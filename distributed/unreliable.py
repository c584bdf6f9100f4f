r"""RPS: data-parallel SGD over a network that drops messages.

Yu, Tang, Renggli, Kassing, Singla, Alistarh, Zhang & Liu's Robust
Parameter Server. The model is split into :math:`n` blocks, block :math:`j`
served by parameter server :math:`j`, colocated with worker :math:`j`. Each
iteration, per worker :math:`i`:

1. a local step on its own replica, :math:`v_i = x_i - \gamma g_i`;
2. block :math:`j` of :math:`v_i` goes to server :math:`j`; the message is
   dropped with probability :math:`p` (the colocated block never is);
3. server :math:`j` averages the blocks it received,
   :math:`\bar v^{(j)} = \sum_i u_{ij} v_i^{(j)} / \sum_i u_{ij}`;
4. server :math:`j` sends :math:`\bar v^{(j)}` to every worker, each message
   dropped with probability :math:`p` (not to its own worker);
5. a worker that misses block :math:`j` keeps its own :math:`v_i^{(j)}`:

.. math::
  x_i^{(j)} \leftarrow d_{ij}\,\bar v^{(j)} + (1 - d_{ij})\, v_i^{(j)},

with :math:`u_{ij}, d_{ij} \sim \mathrm{Bernoulli}(1 - p)` independent,
:math:`u_{jj} = d_{jj} = 1`. The replicas drift apart: it is decentralised
SGD over a random topology that changes every iteration. Steps 2-3 are one
reduce-scatter of the masked blocks and step 4 one all-gather, masked on
receipt; the drop decisions are drawn from the transform's replicated key
(the same on every worker, reproducible from the seed), and every worker
runs both collectives every step.

The paper's analysis (and the card's JAX recipe) fix the protocol above;
the algorithm box itself was not available to check (see
``third_party_notes/partial_collectives.md``).

References:
  Yu, Tang, Renggli, Kassing, Singla, Alistarh, Zhang & Liu, `Distributed
  learning over unreliable networks <https://arxiv.org/abs/1810.07766>`_,
  ICML 2019.
"""

import math
from typing import NamedTuple

import chex
import jax
from jax import flatten_util
import jax.numpy as jnp
import optax

from distoptax.distributed import comm_stats
from distoptax.distributed import communication
from distoptax.distributed import validation
from distoptax.worker_axis import collectives
from distoptax.worker_axis import keys
from distoptax.worker_axis import replication

KEY_NAME = "distoptax.distributed.rps"
"""Salt of :func:`rps`'s key stream (the drop decisions)."""


@replication.replicated_fields("key")
class RPSState(NamedTuple):
  """State of :func:`rps`.

  Attributes:
    key: the shared key data of the drop draws, split every step
      (replicated).
    dropped: int32, this worker's messages lost at the last step: its
      blocks to other servers, and its server's blocks to other workers.
    delivered_bytes: int32, bytes of this worker's messages that arrived at
      the last step (same two kinds).
    total_dropped: int32, ``dropped`` summed over the steps.
    comm: bytes this worker handed to the collectives (``CommStats``): the
      whole block buffer to the reduce-scatter and its server's block to the
      all-gather, as in the lowered program.
  """

  key: chex.PRNGKey
  dropped: jax.Array
  delivered_bytes: jax.Array
  total_dropped: jax.Array
  comm: comm_stats.CommStats


def drop_masks(key: chex.PRNGKey, num_workers: int,
               drop_probability: float) -> tuple[jax.Array, jax.Array]:
  """Delivery masks of one step: ``(up, down)``, bool ``[n, n]``.

  ``up[i, j]``: worker ``i``'s block ``j`` reaches server ``j``;
  ``down[i, j]``: server ``j``'s average reaches worker ``i``. Each is True
  with probability ``1 - p`` independently; the diagonal (colocated) is
  always True.

  Example:
    >>> import jax
    >>> up, down = drop_masks(jax.random.key(0), 3, 1.0)
    >>> up.astype(int)
    Array([[1, 0, 0],
           [0, 1, 0],
           [0, 0, 1]], dtype=int32)
  """
  k_up, k_down = jax.random.split(key)
  eye = jnp.eye(num_workers, dtype=bool)
  shape = (num_workers, num_workers)
  up = jax.random.uniform(k_up, shape) >= drop_probability
  down = jax.random.uniform(k_down, shape) >= drop_probability
  return up | eye, down | eye


def rps(drop_probability: float, *, axis_name: str = collectives.WORKERS,
        seed: int = 0) -> optax.GradientTransformationExtraArgs:
  r"""The Robust Parameter Server exchange after each worker's local step.

  Receives each worker's update :math:`-\gamma g_i` (put it after the
  local optimizer: ``optax.chain(optax.sgd(lr), rps(p))``) and its own
  ``params`` :math:`x_i`, and returns :math:`x_i^{new} - x_i` with
  :math:`x_i^{new}` as in the module docstring. The model (all leaves,
  flattened and zero-padded to a multiple of :math:`n`) is cut into
  :math:`n` equal blocks. Use ``data_parallel(...)`` with per-worker
  parameters (the default): the replicas differ once a message is lost.

  Args:
    drop_probability: :math:`p \in [0, 1]`, the probability that a
      worker-to-server or server-to-worker message is lost.
    axis_name: the logical worker axis.
    seed: seed of the drop draws, salted with :data:`KEY_NAME`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`RPSState`.

  Raises:
    ValueError: for :math:`p` outside :math:`[0, 1]`, or ``update`` without
      ``params``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> tx = rps(0.0)
    >>> def step(x, u):
    ...   return tx.update(u, tx.init(x), x)[0]
    >>> x = jnp.zeros((2, 2))
    >>> jax.vmap(step, axis_name="workers")(x, jnp.array([[1.0, 2.0],
    ...                                                   [3.0, 4.0]]))
    Array([[2., 3.],
           [2., 3.]], dtype=float32)

  Guarantees:
    :math:`p = 0` is synchronous data-parallel SGD (every replica becomes
    the average of the :math:`v_i`); :math:`p = 1` is :math:`n` independent
    SGD runs. Yu et al. prove for smooth non-convex objectives that RPS
    converges at the rate of centralised SGD, :math:`O(1/\sqrt{nT})` in its
    leading term, with :math:`p` in higher-order terms whose influence
    diminishes as :math:`n` grows.

  References:
    Yu et al., ICML 2019 (arXiv:1810.07766).
  """
  p = validation.check_probability("drop_probability", drop_probability)

  def init_fn(params: optax.Params) -> RPSState:
    del params
    zero = jnp.zeros((), jnp.int32)
    return RPSState(key=keys.transform_key(seed, KEY_NAME), dropped=zero,
                    delivered_bytes=zero, total_dropped=zero,
                    comm=comm_stats.init_comm_stats(capacity=2))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("rps: update needs each worker's params (its replica "
                       "x_i): call tx.update(updates, state, params)")
    n = collectives.num_workers(axis_name)
    i = collectives.worker_index(axis_name)
    step_key, next_key = communication.step_keys(state.key)
    up, down = drop_masks(step_key, n, p)
    local = jax.tree.map(lambda x, u: x + u, params, updates)
    flat, unravel = flatten_util.ravel_pytree(local)
    size = flat.shape[0]
    width = max(math.ceil(size / n), 1)
    blocks = jnp.pad(flat, (0, n * width - size)).reshape(n, width)
    rounds = communication.Rounds(state.comm, axis_name)
    sent = jnp.where(up[i][:, None], blocks, 0)
    received = rounds.reduce_scatter(sent)[0]   # This server's block sum.
    average = received / jnp.sum(up[:, i]).astype(received.dtype)
    served = rounds.all_gather(average)          # [n, width]
    mixed = jnp.where(down[i][:, None], served, blocks)
    new = unravel(mixed.reshape(-1)[:size])
    out = jax.tree.map(lambda a, x, u: (a - x).astype(u.dtype), new, params,
                       updates)
    others = ~jnp.eye(n, dtype=bool)[i]
    lost = (jnp.sum(~up[i] & others) + jnp.sum(~down[:, i] & others)
            ).astype(jnp.int32)
    block_bytes = width * flat.dtype.itemsize
    arrived = (jnp.sum(up[i] & others) + jnp.sum(down[:, i] & others))
    return out, RPSState(
        next_key, lost, (arrived * block_bytes).astype(jnp.int32),
        state.total_dropped + lost, rounds.finish())

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["KEY_NAME", "RPSState", "drop_masks", "rps"]
