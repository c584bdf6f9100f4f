"""Every docstring example in the library runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import distoptax

PACKAGES = ("worker_axis", "algorithms", "distributed", "experiments",
            "theory_checks")
MODULES = sorted(
    info.name
    for package in PACKAGES
    for info in pkgutil.walk_packages(
        importlib.import_module(f"distoptax.{package}").__path__,
        prefix=f"distoptax.{package}.")
    if not info.name.rsplit(".", 1)[-1] in ("train", "plot", "bench",
                                             "run_all"))


def test_modules_found():
  assert "distoptax.distributed.aggregate" in MODULES
  assert "distoptax.worker_axis.collectives" in MODULES
  assert distoptax.__version__


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS
                           | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} doctest failures in {name}"
