"""Read-only registries of factories by name, with a clear error on a miss.

``AGGREGATORS``, ``PREAGGREGATORS``, ``COMPRESSORS`` and ``ATTACKS`` are
:class:`Registry` mappings: ``name in registry``, iteration, ``len`` and
``dict(registry)`` work as for any mapping, and nothing can be added or
replaced. Looking up an unknown name raises :class:`UnknownNameError`, a
``KeyError`` (what a mapping raises) that is also a ``ValueError`` (what a
bad argument raises), whose message lists the known names.
"""

from collections.abc import Callable, Iterator, Mapping
import difflib
import types
from typing import Any


class UnknownNameError(KeyError, ValueError):
  """A registry lookup of a name that is not registered.

  Catch it as ``KeyError`` or as ``ValueError``. Unlike a plain
  ``KeyError``, ``str()`` gives the message as written (not its repr).
  """

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, Callable[..., Any]]):
  """An immutable ``name -> factory`` mapping of one kind of object.

  Attributes:
    kind: what the entries build (``"aggregator"``, ``"compressor"``, ...),
      for messages.

  Example:
    >>> from distoptax.algorithms.registry import Registry
    >>> rules = Registry("aggregator", {"mean": len, "median": max})
    >>> "mean" in rules, sorted(rules)
    (True, ['mean', 'median'])
    >>> rules["meen"]
    Traceback (most recent call last):
    ...
    distoptax.algorithms.registry.UnknownNameError: unknown aggregator \
'meen' (did you mean 'mean'?); known aggregators: mean, median
  """

  def __init__(self, kind: str, entries: Mapping[str, Callable[..., Any]]):
    bad = [name for name in entries if not isinstance(name, str)]
    if bad:
      raise TypeError(f"{kind} registry names must be strings; got {bad!r}")
    self.kind = kind
    self._entries = types.MappingProxyType(dict(entries))

  def __getitem__(self, name: str) -> Callable[..., Any]:
    if not isinstance(name, str):
      raise TypeError(
          f"{self.kind} names are strings; got {type(name).__name__} "
          f"{name!r}; known {self.kind}s: {', '.join(sorted(self))}")
    try:
      return self._entries[name]
    except KeyError:
      folded = {known.lower(): known for known in self._entries}
      close = difflib.get_close_matches(name.lower(), list(folded), n=1)
      hint = f" (did you mean {folded[close[0]]!r}?)" if close else ""
      raise UnknownNameError(
          f"unknown {self.kind} {name!r}{hint}; known {self.kind}s: "
          f"{', '.join(sorted(self))}") from None

  def __contains__(self, name: object) -> bool:
    return isinstance(name, str) and name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}, {dict(self._entries)!r})"
