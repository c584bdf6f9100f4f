"""Shipped configurations of ``python -m distoptax.experiments.train``.

Each module here is an ml_collections config file whose ``get_config()``
returns the run's ``ConfigDict``; the launcher takes one by name
(``--config=mnist_krum_ipm``) or any such file by path.
"""

import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
  """The names of the shipped configurations."""
  return sorted(name[:-3] for name in os.listdir(_HERE)
                if name.endswith(".py") and not name.startswith("_"))


def path(name: str) -> str:
  """The file of the shipped configuration ``name``.

  Raises:
    ValueError: if no configuration of that name is shipped.
  """
  if name not in names():
    raise ValueError(
        f"unknown config {name!r}; shipped configs: {', '.join(names())} "
        "(or give the path of a .py file whose get_config() returns one)")
  return os.path.join(_HERE, name + ".py")
