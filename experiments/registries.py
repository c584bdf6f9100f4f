"""Explicit registries from which the launchers build their objects."""

import inspect
import types
from typing import Any, Callable, Mapping

import jax
import optax

from distoptax import algorithms as alg
from distoptax import distributed as dist


def lookup(registry: Mapping[str, Any], name: str, kind: str) -> Any:
  """``registry[name]``, or a ValueError naming ``name`` and the known names."""
  if name not in registry:
    raise ValueError(
        f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(registry))}")
  return registry[name]


def _on_all_devices(step: dist.WorkerStep, num_workers: int) -> dist.Runtime:
  mesh = jax.make_mesh((jax.device_count(),), (step.axis_name,))
  return dist.on_mesh(step, mesh, num_workers)


COMMUNICATORS = types.MappingProxyType({
    "powersgd": dist.powersgd,
})
"""Compressors that are whole transformations (several collective rounds),
used in place of ``aggregate(mean)`` rather than inside it."""


def compressor_names() -> list[str]:
  """Every name ``--compressor`` accepts."""
  return sorted((*alg.compressors.COMPRESSORS, *COMMUNICATORS))


DATA_ATTACKS = ("label_flip",)
"""Attacks applied to the Byzantine workers' sampled batches, not updates."""


def attack_names() -> list[str]:
  """Every name ``--attack`` accepts: update attacks and data attacks."""
  return sorted((*alg.attacks.ATTACKS, *DATA_ATTACKS))


RUNTIMES: Mapping[str, Callable[[dist.WorkerStep, int], dist.Runtime]]
RUNTIMES = types.MappingProxyType({
    "simulate": dist.simulate,
    "mesh": _on_all_devices,
})


Params = dict[str, float | str]


def call_with_params(factory: Callable[..., Any], params: Params, kind: str,
                     context: dict[str, Any] | None = None) -> Any:
  """Calls a registered factory with user parameters and run context.

  ``params`` are the user's ``key=value`` settings; an unknown key is a
  ValueError listing the accepted ones. ``context`` holds values the run
  already fixes (``num_byzantine``, ``num_workers``, ``learning_rate``);
  each is passed only when the factory takes an argument of that name and
  the user did not set it. Integral floats become ints (flag values are
  parsed as numbers). A required argument that neither supplies is a
  ValueError naming it.

  Example:
    >>> from distoptax.algorithms import aggregators
    >>> rule = call_with_params(aggregators.trimmed_mean, {}, "aggregator",
    ...                         {"num_byzantine": 2, "num_workers": 8})
    >>> call_with_params(aggregators.krum, {"radius": 1.0}, "aggregator")
    Traceback (most recent call last):
    ...
    ValueError: unknown aggregator parameters ['radius']; krum accepts ['num_byzantine']
  """
  accepted = inspect.signature(factory).parameters
  unknown = sorted(set(params) - set(accepted))
  if unknown:
    raise ValueError(
        f"unknown {kind} parameters {unknown}; {factory.__name__} accepts "
        f"{sorted(accepted)}")
  values = {k: int(v) if isinstance(v, float) and v.is_integer() else v
            for k, v in params.items()}
  implied = {k: v for k, v in (context or {}).items()
             if k in accepted and k not in values}
  missing = sorted(
      k for k, p in accepted.items()
      if p.default is inspect.Parameter.empty
      and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
      and k not in values and k not in implied)
  if missing:
    raise ValueError(
        f"{kind} {factory.__name__} needs parameters {missing}; pass them "
        f"as --{kind}_params={missing[0]}=VALUE")
  return factory(**implied, **values)
