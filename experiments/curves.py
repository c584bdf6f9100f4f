"""Curves of one or more training runs, overlaid, drawn to PNG.

Rows: train loss, test loss, test accuracy (when the task has one); columns:
against steps, wire bytes (per worker, cumulative), coded bytes (when a
compressor's entropy or run-length code makes them differ from the wire
bytes) and simulated seconds.
Each run is labelled with the config fields that differ between the runs.
"""

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from distoptax.experiments import metrics_io

X_AXES = (("step", "steps", 1.0),
          ("wire_bytes", "wire MiB per worker", 2.0**-20),
          ("coded_bytes", "coded MiB per worker", 2.0**-20),
          ("simulated_seconds", "simulated seconds", 1.0))
Y_AXES = (("train_loss", "train loss", True),
          ("test_loss", "test loss", True),
          ("test_accuracy", "test accuracy", False))


def _labels(configs: Sequence[dict]) -> list[str]:
  keys = sorted({k for c in configs for k in c
                 if len({repr(d.get(k)) for d in configs}) > 1})
  if not keys:
    return [""] * len(configs)
  return [", ".join(f"{k}={c.get(k)}" for k in keys) for c in configs]


def plot_runs(workdirs: Sequence[str], out: str) -> str:
  """Plots the metrics of ``workdirs`` into ``out`` (PNG); returns ``out``.

  Raises:
    ValueError: if a workdir holds no ``metrics.jsonl`` rows.
  """
  runs = []
  for w in workdirs:
    rows = metrics_io.read(w)
    if not rows:
      raise ValueError(f"no metrics in {w!r} ({metrics_io.METRICS_FILE})")
    runs.append(rows)
  configs = [metrics_io.read_config(w)
             if os.path.exists(os.path.join(w, metrics_io.CONFIG_FILE))
             else {} for w in workdirs]
  labels = [label or os.path.basename(os.path.normpath(w))
            for label, w in zip(_labels(configs), workdirs)]
  y_axes = [y for y in Y_AXES
            if any(r.get(y[0]) is not None for rows in runs for r in rows)]
  # Coded bytes get a column only when some run's code differs from its wire.
  x_axes = [x for x in X_AXES if x[0] != "coded_bytes" or any(
      r.get("coded_bytes") not in (None, r.get("wire_bytes"))
      for rows in runs for r in rows)]
  fig, axes = plt.subplots(len(y_axes), len(x_axes), squeeze=False,
                           figsize=(4.2 * len(x_axes), 3.0 * len(y_axes)))
  for row, (y_key, y_name, log_y) in enumerate(y_axes):
    for col, (x_key, x_name, x_scale) in enumerate(x_axes):
      ax = axes[row][col]
      for rows, label in zip(runs, labels):
        points = [(r[x_key] * x_scale, r[y_key]) for r in rows
                  if r.get(y_key) is not None and r.get(x_key) is not None]
        if points:
          xs, ys = zip(*points)
          ax.plot(xs, ys, marker=".", label=label)
      if log_y:
        ax.set_yscale("log")
      ax.set_xlabel(x_name)
      ax.set_ylabel(y_name)
      ax.grid(alpha=0.3)
  if len(runs) > 1:
    axes[0][0].legend(fontsize="small")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out

