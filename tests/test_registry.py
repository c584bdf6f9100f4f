"""The name registries: clear errors for unknown names, mapping behaviour."""

import re

import pytest

from distoptax import algorithms as alg
from distoptax.algorithms import registry

REGISTRIES = {
    "aggregator": alg.aggregators.AGGREGATORS,
    "pre-aggregation": alg.aggregators.PREAGGREGATORS,
    "compressor": alg.compressors.COMPRESSORS,
    "attack": alg.attacks.ATTACKS,
}


@pytest.fixture(params=sorted(REGISTRIES))
def kind(request):
  return request.param


def test_unknown_name_is_a_value_error_listing_the_known_names(kind):
  reg = REGISTRIES[kind]
  with pytest.raises(ValueError) as info:
    reg["no_such_entry"]  # pylint: disable=pointless-statement
  message = str(info.value)
  assert message.startswith(f"unknown {kind} 'no_such_entry'; known {kind}s: ")
  assert message.endswith(", ".join(sorted(reg)))
  # Still what a mapping raises, and printed as written (no repr quotes).
  assert isinstance(info.value, KeyError)
  assert isinstance(info.value, registry.UnknownNameError)
  assert not message.startswith('"')


def test_a_near_miss_suggests_the_name():
  with pytest.raises(KeyError, match=re.escape(
      "unknown aggregator 'krumm' (did you mean 'krum'?); known "
      "aggregators: adaptive_robust_clipping, bulyan,")):
    alg.aggregators.AGGREGATORS["krumm"]  # pylint: disable=pointless-statement
  with pytest.raises(ValueError, match=r"unknown compressor 'QSGD' \(did you "
                     r"mean 'qsgd'\?\)"):
    alg.compressors.COMPRESSORS["QSGD"]  # pylint: disable=pointless-statement


@pytest.mark.parametrize("name", [None, 3, ("krum",)])
def test_a_name_that_is_not_a_string_is_a_type_error(name):
  reg = alg.aggregators.AGGREGATORS
  with pytest.raises(TypeError, match=rf"aggregator names are strings; got "
                     rf"{type(name).__name__} {re.escape(repr(name))}"):
    reg[name]  # pylint: disable=pointless-statement
  assert name not in reg


def test_registries_behave_as_read_only_mappings(kind):
  reg = REGISTRIES[kind]
  names = list(reg)
  assert names and len(reg) == len(names) == len(set(names))
  for name in names:
    assert name in reg
    assert callable(reg[name])
    assert reg.get(name) is reg[name]
  assert "no_such_entry" not in reg
  assert reg.get("no_such_entry") is None
  assert dict(reg) == {name: reg[name] for name in names}
  assert {**reg} == dict(reg)
  with pytest.raises(TypeError):
    reg["extra"] = len  # pylint: disable=unsupported-assignment-operation
  assert reg.kind == kind


def test_registry_rejects_names_that_are_not_strings():
  with pytest.raises(TypeError, match=r"widget registry names must be "
                     r"strings; got \[1\]"):
    registry.Registry("widget", {"a": len, 1: max})
