"""Bytes handed to collectives, recorded in optimizer state.

Every communicating transform keeps a :class:`CommStats` in its state. The
byte counts are computed from the shapes and dtypes of the arrays actually
passed to the collective, per worker, at trace time (shapes are static), and
the cumulative total is an exact 64-bit counter held in two ``uint32`` words
(``jax_enable_x64`` is off by default, and an ``int32`` total would overflow
after 2 GiB).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class CommStats(NamedTuple):
  """Per-worker communication of one transform.

  Attributes:
    all_reduce_bytes: bytes handed to all-reduce (``psum``) this step.
    all_gather_bytes: bytes handed to all-gather this step.
    total_bytes: cumulative bytes of both kinds since ``init``, as
      ``uint32[2]`` words ``(low, high)``; read it with :func:`total_bytes`.
    coded_bytes: this step's message length under the compressor's entropy
      or run-length code, ``ceil(bits / 8)`` (data dependent); equal to the
      wire bytes when the compressor defines no code.
    total_coded_bytes: cumulative ``coded_bytes`` as ``uint32[2]``; read it
      with :func:`total_coded_bytes`.
  """

  all_reduce_bytes: jax.Array
  all_gather_bytes: jax.Array
  total_bytes: jax.Array
  coded_bytes: jax.Array
  total_coded_bytes: jax.Array


def init_comm_stats() -> CommStats:
  zero = jnp.zeros((), jnp.int32)
  words = jnp.zeros((2,), jnp.uint32)
  return CommStats(zero, zero, words, zero, words)


def _add(words: jax.Array, amount) -> jax.Array:
  """Adds a non-negative int32 amount to a ``uint32[2]`` (low, high) count."""
  low, high = words[0], words[1]
  new_low = low + jnp.asarray(amount).astype(jnp.uint32)
  carry = (new_low < low).astype(jnp.uint32)
  return jnp.stack([new_low, high + carry])


def tree_bytes(tree) -> int:
  """Bytes of all arrays in ``tree`` (static: from shapes and dtypes)."""
  return sum(int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
             for leaf in jax.tree.leaves(tree))


def record(stats: CommStats, *, all_reduce_bytes: int = 0,
           all_gather_bytes: int = 0,
           coded_bytes: jax.Array | int | None = None) -> CommStats:
  """Returns ``stats`` with this step's byte counts and the totals updated.

  ``coded_bytes`` (may be traced) defaults to the wire bytes.
  """
  step_bytes = all_reduce_bytes + all_gather_bytes
  if not 0 <= step_bytes < 2**31:
    raise ValueError(
        f"one step's wire bytes must lie in [0, 2**31); got {step_bytes}")
  coded = step_bytes if coded_bytes is None else coded_bytes
  coded = jnp.asarray(coded, jnp.int32)
  return CommStats(
      jnp.asarray(all_reduce_bytes, jnp.int32),
      jnp.asarray(all_gather_bytes, jnp.int32),
      _add(stats.total_bytes, step_bytes),
      coded,
      _add(stats.total_coded_bytes, coded))


def find_comm_stats(opt_state) -> list[CommStats]:
  """All :class:`CommStats` nested anywhere in an optimizer state."""
  return [node for node in jax.tree.leaves(
      opt_state, is_leaf=lambda n: isinstance(n, CommStats))
          if isinstance(node, CommStats)]


def _words_to_int(words) -> int:
  words = np.asarray(words, dtype=np.uint64)
  return int(words[..., 0].reshape(-1)[0]) + (
      int(words[..., 1].reshape(-1)[0]) << 32)


def total_bytes(stats: CommStats) -> int:
  """The exact cumulative wire byte count as a Python int (host side)."""
  return _words_to_int(stats.total_bytes)


def total_coded_bytes(stats: CommStats) -> float:
  """Cumulative coded bytes per worker, averaged over workers (host side).

  Wire bytes are the same on every worker (static shapes); coded lengths
  depend on each worker's data, so the stats of a runtime's state (with a
  leading worker axis) are averaged over the workers.
  """
  words = np.asarray(stats.total_coded_bytes, dtype=np.uint64).reshape(-1, 2)
  return float(np.mean(words[:, 0].astype(np.float64)
                       + words[:, 1].astype(np.float64) * 2.0**32))
