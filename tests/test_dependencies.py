"""The library needs only its own dependencies; experiments have an extra."""

import json
import pathlib
import subprocess
import sys
import tomllib

_EXPERIMENT_ONLY = ("sklearn", "matplotlib", "mlxtend", "ml_collections",
                    "orbax")
_PYPROJECT = pathlib.Path(__file__).parent.parent / "pyproject.toml"


def _modules_after_importing_the_library() -> set[str]:
  code = ("import json, sys\n"
          "import distoptax.algorithms, distoptax.distributed\n"
          "print(json.dumps(sorted(sys.modules)))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300, check=True)
  return {name.split(".")[0] for name in json.loads(out.stdout)}


def test_library_does_not_import_experiment_dependencies():
  imported = _modules_after_importing_the_library()
  assert not imported & set(_EXPERIMENT_ONLY), sorted(
      imported & set(_EXPERIMENT_ONLY))


def test_library_does_not_import_flax():
  # rich comes with flax.
  assert not {"flax", "rich"} & _modules_after_importing_the_library()


def _name(requirement: str) -> str:
  for sep in "<>=[; ":
    requirement = requirement.split(sep)[0]
  return requirement.lower()


def test_experiment_dependencies_are_an_extra_that_tests_install():
  project = tomllib.loads(_PYPROJECT.read_text())["project"]
  core = {_name(r) for r in project["dependencies"]}
  assert core == {"jax", "jaxlib", "optax", "chex", "numpy"}
  extras = project["optional-dependencies"]
  assert {"absl-py", "matplotlib", "ml-collections", "mlxtend",
          "orbax-checkpoint", "rich", "scikit-learn", "flax"} <= {
              _name(r) for r in extras["experiments"]}
  assert "distoptax[experiments]" in extras["test"]
