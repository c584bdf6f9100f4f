"""The compressor contract: what travels on the wire and how it is read."""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

Message = Any
EncodeFn = Callable[[chex.PRNGKey, optax.Updates], Message]
DecodeFn = Callable[[Message], optax.Updates]
CodedBitsFn = Callable[[Message], jax.Array]


class Compressor(NamedTuple):
  """A pair of pure functions plus the properties the communicator relies on.

  ``encode(key, updates)`` returns the message: a pytree of arrays with static
  shapes, exactly the arrays handed to the collective (so their bytes are the
  wire bytes). ``decode(message)`` reconstructs an update with the structure
  of ``updates``.

  Attributes:
    encode: ``encode(key, updates) -> message``; ``key`` is this worker's key
      (``fold_in(step_key, worker_index)``), or the step key itself, the same
      on every worker, when ``shared_key`` is set.
    decode: ``decode(message) -> updates``.
    unbiased: whether ``E[decode(encode(key, x))] == x`` over ``key``.
    summable: whether messages may be summed by ``psum`` before decoding,
      that is ``decode(m_1 + m_2) == decode(m_1) + decode(m_2)`` (identity,
      casts, shared-seed random-k).
    coded_bits: ``coded_bits(message) -> int32 scalar``, the exact length in
      bits of the message under the entropy or run-length code the paper
      defines (QSGD's Elias code, 3LC's zero-run code); ``None`` where the
      paper defines none (the coded length is then the wire length).
    shared_key: whether ``encode`` needs randomness shared by all workers
      (random-k's indices): it then receives the step key, identical on
      every worker and new at every step, instead of a per-worker key.
  """

  encode: EncodeFn
  decode: DecodeFn
  unbiased: bool
  summable: bool
  coded_bits: CodedBitsFn | None = None
  shared_key: bool = False


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["arrays"], meta_fields=["shape", "dtype"])
@dataclasses.dataclass(frozen=True)
class LeafMessage:
  """The message of one array: the arrays that travel and its static layout.

  Attributes:
    arrays: dict of the arrays handed to the collective (their bytes are the
      wire bytes).
    shape: the original array's shape (static, not sent: both sides know
      the model).
    dtype: the original array's dtype (static).
  """

  arrays: dict[str, jax.Array]
  shape: tuple[int, ...]
  dtype: Any


def is_leaf_message(x: Any) -> bool:
  return isinstance(x, LeafMessage)


def check_floating(name: str, updates: optax.Updates) -> None:
  """Raises ``TypeError`` unless every leaf has a real floating dtype.

  Quantizers and sparsifiers compute scales, levels and magnitudes that
  mean nothing on integers, booleans or complex numbers (QSGD would round
  an int32 update to garbage and cast it back). The message names the
  compressor, the first offending leaf's path and its dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> check_floating("qsgd", {"w": jnp.zeros(3, jnp.int32)})
    Traceback (most recent call last):
    ...
    TypeError: qsgd needs real floating-point updates; got dtype int32 at \
['w'] (cast gradients to a float dtype first)
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(updates)[0]:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{name} needs real floating-point updates; got dtype "
          f"{jnp.dtype(dtype).name} at {jax.tree_util.keystr(path)} (cast "
          "gradients to a float dtype first)")


LeafEncodeFn = Callable[[chex.PRNGKey, jax.Array], dict[str, jax.Array]]
LeafDecodeFn = Callable[[dict[str, jax.Array], tuple[int, ...], Any],
                        jax.Array]
LeafCodedBitsFn = Callable[[dict[str, jax.Array], tuple[int, ...]],
                           jax.Array]


def leafwise(
    encode_leaf: LeafEncodeFn,
    decode_leaf: LeafDecodeFn,
    *,
    unbiased: bool,
    summable: bool,
    coded_bits_leaf: LeafCodedBitsFn | None = None,
    shared_key: bool = False,
    name: str = "compressor",
) -> Compressor:
  """Lifts a compressor of one array to any pytree, leaf by leaf.

  Leaf ``i`` (in ``jax.tree.leaves`` order) is encoded with
  ``fold_in(key, i)``, so leaves draw independent randomness. The message
  has the structure of the updates, each leaf replaced by a
  :class:`LeafMessage`. Every leaf must have a real floating dtype
  (:func:`check_floating`: a ``TypeError`` at trace time otherwise).

  Args:
    encode_leaf: ``encode_leaf(key, x) -> dict of arrays``.
    decode_leaf: ``decode_leaf(arrays, shape, dtype) -> x``.
    unbiased: see :class:`Compressor`.
    summable: see :class:`Compressor`.
    coded_bits_leaf: ``coded_bits_leaf(arrays, shape) -> int32`` or None.
    shared_key: see :class:`Compressor`.
    name: the compressor's name, for error messages.

  Returns:
    A :class:`Compressor` over pytrees.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms.compressors import base
    >>> half = base.leafwise(
    ...     lambda key, x: {"x": x.astype(jnp.float16)},
    ...     lambda arrays, shape, dtype: arrays["x"].astype(dtype),
    ...     unbiased=False, summable=True)
    >>> message = half.encode(jax.random.key(0), {"w": jnp.ones((2, 3))})
    >>> message["w"].arrays["x"].dtype, message["w"].shape
    (dtype('float16'), (2, 3))
    >>> half.decode(message)["w"].dtype
    dtype('float32')
  """

  def encode(key: chex.PRNGKey, updates: optax.Updates) -> Message:
    check_floating(name, updates)
    leaves, treedef = jax.tree.flatten(updates)
    messages = [
        LeafMessage(encode_leaf(jax.random.fold_in(key, i), leaf),
                    tuple(leaf.shape), jnp.dtype(leaf.dtype))
        for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, messages)

  def decode(message: Message) -> optax.Updates:
    return jax.tree.map(lambda m: decode_leaf(m.arrays, m.shape, m.dtype),
                        message, is_leaf=is_leaf_message)

  def coded_bits(message: Message) -> jax.Array:
    leaves = jax.tree.leaves(message, is_leaf=is_leaf_message)
    return sum((coded_bits_leaf(m.arrays, m.shape).astype(jnp.int32)
                for m in leaves), jnp.zeros((), jnp.int32))

  return Compressor(
      encode, decode, unbiased=unbiased, summable=summable,
      coded_bits=None if coded_bits_leaf is None else coded_bits,
      shared_key=shared_key)


def identity() -> Compressor:
  """The no-op compressor: the message is the update itself.

  Returns:
    A :class:`Compressor` that is unbiased and summable.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax.algorithms import compressors
    >>> c = compressors.identity()
    >>> c.decode(c.encode(jax.random.key(0), jnp.ones(3)))
    Array([1., 1., 1.], dtype=float32)
  """

  def encode(key: chex.PRNGKey, updates: optax.Updates) -> Message:
    del key
    return updates

  def decode(message: Message) -> optax.Updates:
    return message

  return Compressor(encode, decode, unbiased=True, summable=True)
