"""Each transform's own key stream, salted by its name.

Two transforms built with the same seed (an attack and ``aggregate``, both
``seed=0`` by default) must not draw the same per-worker numbers. Each
derives its stream as ``fold_in(key(seed), salt)``, the salt a hash of the
transform's name, so the stream is fixed by ``(seed, name)``.
"""

import zlib

import jax


def transform_key(seed: int, name: str) -> jax.Array:
  """Raw key data of a transform's own stream: ``fold_in(key(seed), salt)``.

  Args:
    seed: the transform's seed.
    name: the transform's fully qualified name; its CRC-32 (31 bits) is the
      salt, so the stream is fixed by ``(seed, name)``.

  Returns:
    ``uint32`` key data (``jax.random.key_data``), for a state field.

  Raises:
    TypeError: for a seed that is not an int or a name that is not a
      non-empty string.

  Example:
    >>> from distoptax import worker_axis
    >>> a = worker_axis.transform_key(0, "distoptax.distributed.aggregate")
    >>> b = worker_axis.transform_key(0, "distoptax.algorithms.attacks")
    >>> bool((a != b).any())
    True
  """
  if not isinstance(seed, int) or isinstance(seed, bool):
    raise TypeError(f"seed must be an int; got {seed!r}")
  if not isinstance(name, str) or not name:
    raise TypeError(f"name must be a non-empty str; got {name!r}")
  salt = zlib.crc32(name.encode()) & 0x7FFFFFFF
  return jax.random.key_data(
      jax.random.fold_in(jax.random.key(seed), salt))
