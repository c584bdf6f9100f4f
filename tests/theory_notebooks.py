"""The theory checks' family notebooks, run once per test session.

Each registered check belongs to one family notebook in
``theory_checks/notebooks/``; the session fixtures ``notebooks`` and
``quick`` (``tests/conftest.py``) execute a notebook with nbclient the first
time one of its checks is asked for, as a user would run it, and hand its
results to every test module. Tests that read a family's results carry
:func:`group` of that family, so that ``pytest -n 2 --dist loadgroup``
runs each notebook on one worker, once.
"""

import pathlib
import pickle

from jupyter_client import manager
import nbclient
import nbformat
import pytest

NOTEBOOKS = (pathlib.Path(__file__).resolve().parent.parent / "theory_checks"
             / "notebooks")

FAMILIES = {
    "sgd": ("minibatch_and_byzantine_sgd.ipynb",
            ("minibatch_sgd", "byzantine_sgd_rate")),
    "compressors": ("compressors.ipynb",
                    ("qsgd_variance", "topk_error_feedback",
                     "threelc_mnist")),
    "empires": ("fall_of_empires.ipynb", ("fall_of_empires",)),
    "local": ("local_sgd.ipynb",
              ("local_sgd_error_floor", "adacomm_wall_clock",
               "local_adaalter_mnist", "slsgd_attack")),
    "communication": ("communication.ipynb",
                      ("blueconnect_scaling", "cser_mnist")),
    "partial": ("partial_collectives.ipynb",
                ("eager_sgd_imbalance", "unreliable_networks")),
    "async": ("asynchrony.ipynb",
              ("fedasync_staleness", "price_of_asynchrony")),
}
"""Family -> (notebook, the checks it runs)."""

FAMILY_OF = {check: family for family, (_, checks) in FAMILIES.items()
             for check in checks}


def group(family: str):
  """The xdist group of the tests that read ``family``'s notebook."""
  return pytest.mark.xdist_group(f"theory_{family}")


def execute(family: str, workdir: pathlib.Path):
  """Runs a family's notebook; returns it executed and its ``results``."""
  notebook = nbformat.read(NOTEBOOKS / FAMILIES[family][0], as_version=4)
  out = workdir / "results.pkl"
  # Hands the notebook's results to the tests (not part of the notebook).
  notebook.cells.append(nbformat.v4.new_code_cell(
      f"import pickle\nwith open({str(out)!r}, 'wb') as f:\n"
      "  pickle.dump(results, f)"))
  kernel = manager.KernelManager(kernel_name="python3", transport="ipc",
                                 ip=str(workdir / "kernel"))
  nbclient.NotebookClient(
      notebook, km=kernel, timeout=600,
      resources={"metadata": {"path": str(workdir)}}).execute()
  with open(out, "rb") as f:
    results = pickle.load(f)
  return notebook, results
