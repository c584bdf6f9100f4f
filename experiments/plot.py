r"""Draws the curves of one or more training runs, overlaid, to PNG.

  python -m distoptax.experiments.plot WORKDIR [WORKDIR ...] [--out=FILE]

Rows: train loss, test loss, test accuracy; columns: against steps, wire
bytes and simulated seconds (see ``distoptax.experiments.curves``). Without
``--out`` the figure goes to a new file in the current directory named after
the runs (``curves-skew-iid.png``, or ``curves-skew-iid-2.png`` when that one
exists): no file that was not named with ``--out`` is ever replaced. The
command prints where the figure went.
"""

from typing import Sequence

from absl import app
from absl import flags

from distoptax.experiments import curves

OUT = flags.DEFINE_string(
    "out", None,
    "PNG path, replaced if it exists; default: a new file "
    "curves-NAME-NAME[-N].png in the current directory.")


def main(argv: Sequence[str]) -> None:
  workdirs = list(argv[1:])
  if not workdirs:
    raise app.UsageError("usage: plot WORKDIR [WORKDIR ...] [--out=FILE]")
  if OUT.value == "":
    raise app.UsageError("--out is empty: give a PNG path or leave it out")
  try:
    path = curves.plot_runs(workdirs, OUT.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(f"curves: {path}")


if __name__ == "__main__":
  app.run(main)
