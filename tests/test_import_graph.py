"""The import graph: worker_axis at the bottom, no cycle between packages."""

import ast
import pathlib
import subprocess
import sys

import distoptax

ROOT = pathlib.Path(distoptax.__file__).parent
PACKAGES = ("worker_axis", "algorithms", "distributed", "experiments",
            "theory_checks")
# What each package may import from distoptax (besides itself).
ALLOWED = {
    "worker_axis": set(),
    "algorithms": {"worker_axis"},
    "distributed": {"worker_axis", "algorithms"},
    "experiments": {"worker_axis", "algorithms", "distributed"},
    "theory_checks": {"worker_axis", "algorithms", "distributed",
                      "experiments"},
}


def _modules():
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
      parts = path.relative_to(ROOT).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      yield package, "distoptax." + ".".join(parts), path


def _imported_packages(path):
  """The distoptax top-level packages a module's import statements name."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    for name in names:
      parts = name.split(".")
      if parts[0] == "distoptax" and len(parts) > 1 and parts[1] in PACKAGES:
        found.add(parts[1])
  return found


MODULES = list(_modules())


def test_every_package_imports_only_what_lies_below_it():
  bad = []
  for package, module, path in MODULES:
    extra = _imported_packages(path) - ALLOWED[package] - {package}
    if extra:
      bad.append(f"{module} imports {sorted(extra)}")
  assert not bad, "\n".join(bad)


def test_the_collectives_import_nothing_from_distoptax():
  for package, module, path in MODULES:
    if package == "worker_axis":
      assert _imported_packages(path) <= {"worker_axis"}, module


# Imports third-party packages once, then forks one child per distoptax
# module; each child starts with no distoptax module loaded and imports its
# module first (a fresh interpreter per module, minus JAX's import time).
_FORK_EACH = """
import os, sys, traceback
import chex, jax, jax.numpy, numpy, optax
failures = []
for module in sys.argv[1:]:
  read, write = os.pipe()
  pid = os.fork()
  if pid == 0:
    os.close(read)
    try:
      __import__(module)
      code = 0
    except BaseException:
      os.write(write, traceback.format_exc().strip().splitlines()[-1].encode())
      code = 1
    os._exit(code)
  os.close(write)
  message = os.read(read, 4096).decode()
  os.close(read)
  _, status = os.waitpid(pid, 0)
  if status:
    failures.append(module + ": " + message)
print("\\n".join(failures))
"""


def test_each_module_imports_first_in_a_fresh_interpreter():
  """Whatever module a user imports first, no import cycle bites."""
  modules = [m for _, m, _ in MODULES]
  assert len(modules) > 50
  out = subprocess.run([sys.executable, "-c", _FORK_EACH, *modules],
                       capture_output=True, text=True, timeout=600,
                       check=True)
  assert out.stdout.strip() == "", out.stdout
