"""Argument checks of the host-side system model (numpy, no JAX).

Shared by :mod:`~distoptax.distributed.stragglers`,
:mod:`~distoptax.distributed.topologies`, :mod:`~distoptax.distributed.clock`
and :mod:`~distoptax.distributed.schedules`. Every check raises a
``ValueError`` that names the argument and shows the offending value; none
corrects a value silently.
"""

import math
import numbers
from typing import Any

import numpy as np


def check_int(name: str, value: Any, *, minimum: int) -> int:
  """Returns ``value`` as an ``int >= minimum``; bools are refused.

  Args:
    name: the argument's name, for the message.
    value: a Python or numpy integer, or a 0-d integer array.
    minimum: the smallest accepted value.

  Returns:
    ``int(value)``.

  Raises:
    ValueError: on a non-integer, a bool, or a value below ``minimum``.

  Example:
    >>> check_int("num_workers", 8, minimum=1)
    8
  """
  arr = np.asarray(value) if isinstance(value, np.ndarray) else value
  if isinstance(arr, np.ndarray):
    if arr.ndim != 0 or arr.dtype.kind not in "iu":
      raise ValueError(
          f"{name} must be an integer >= {minimum}, got {value!r}.")
    arr = arr.item()
  if isinstance(arr, (bool, np.bool_)) or not isinstance(
      arr, (numbers.Integral, np.integer)):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
  if arr < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
  return int(arr)


def check_real(
    name: str,
    value: Any,
    *,
    minimum: float = 0.0,
    strict: bool = False,
) -> float:
  """Returns ``value`` as a finite float ``>= minimum`` (``>`` if strict).

  Args:
    name: the argument's name, for the message.
    value: a Python number or a 0-d numpy/JAX array of a numeric dtype.
    minimum: the bound.
    strict: whether the bound is excluded.

  Returns:
    ``float(value)``.

  Raises:
    ValueError: on a non-scalar, a non-numeric value, NaN, an infinity or a
      value outside the bound.

  Example:
    >>> check_real("latency", 5e-6)
    5e-06
  """
  arr = np.asarray(value)
  if arr.ndim != 0 or arr.dtype.kind not in "iuf":
    raise ValueError(f"{name} must be a real scalar, got {value!r}.")
  x = float(arr)
  bound = ">" if strict else ">="
  if not math.isfinite(x) or (x <= minimum if strict else x < minimum):
    raise ValueError(
        f"{name} must be finite and {bound} {minimum}, got {value!r}.")
  return x


def check_probability(name: str, value: Any) -> float:
  """Returns ``value`` as a float in ``[0, 1]``.

  Example:
    >>> check_probability("drop_probability", 0.1)
    0.1
  """
  p = check_real(name, value)
  if p > 1:
    raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
  return p


def check_mask(name: str, value: Any, num_workers: int) -> np.ndarray:
  """Returns a ``[num_workers]`` boolean mask with at least one ``True``.

  Args:
    name: the argument's name, for the message.
    value: booleans or 0/1 numbers, one per worker.
    num_workers: the expected length.

  Returns:
    A new boolean numpy array.

  Raises:
    ValueError: on a wrong shape, values other than 0/1 (NaN included) or an
      empty mask.

  Example:
    >>> check_mask("participants", [1, 0, 1], 3)
    array([ True, False,  True])
  """
  raw = np.asarray(value)
  if raw.shape != (num_workers,):
    raise ValueError(
        f"{name} must have shape ({num_workers},) (one entry per worker), got "
        f"shape {raw.shape}: {value!r}.")
  if raw.dtype != bool and (raw.dtype.kind not in "iuf"
                            or not np.all((raw == 0) | (raw == 1))):
    raise ValueError(f"{name} must be boolean (or 0/1), got {value!r}.")
  mask = raw.astype(bool)
  if not mask.any():
    raise ValueError(
        f"{name}: at least one worker must participate, got {value!r}.")
  return mask
