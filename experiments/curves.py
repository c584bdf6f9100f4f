"""Curves of one or more training runs, overlaid, drawn to PNG.

Rows: train loss, test loss, test accuracy (when the task has one); columns:
against steps, wire bytes (per worker, cumulative), coded bytes (when a
compressor's entropy or run-length code makes them differ from the wire
bytes) and simulated seconds. Every panel has the same size in inches and the
grid fills the figure; the legend has a band of its own under the grid.

The figure's title names the runs and the settings they share; each run's
legend label is its short name (the last part of its workdir path that tells
the runs apart) followed by the few config keys that differ between the runs,
abbreviated, at most ``MAX_LABEL`` characters in all:

>>> run_labels(["runs/skew", "runs/iid"],
...            [{"partition": "dirichlet", "num_workers": 16},
...             {"partition": "iid", "num_workers": 8}])
['skew: partition=dirichlet, workers=16', 'iid: partition=iid, workers=8']
"""

import math
import os
import re
from typing import Any, Optional, Sequence

from matplotlib import figure as mpl_figure
from matplotlib.backends import backend_agg

from distoptax.experiments import metrics_io

X_AXES = (("step", "steps", 1.0),
          ("wire_bytes", "wire MiB per worker", 2.0**-20),
          ("coded_bytes", "coded MiB per worker", 2.0**-20),
          ("simulated_seconds", "simulated seconds", 1.0))
Y_AXES = (("train_loss", "train loss", True),
          ("test_loss", "test loss", True),
          ("test_accuracy", "test accuracy", False))

# Longest legend label and longest title line, in characters.
MAX_LABEL = 40
MAX_TITLE = 110
# Config keys that do not change the curves: never shown as a difference.
_IGNORED_KEYS = frozenset({"log_every", "checkpoint_every"})
# Short names for config keys in labels and titles.
_ABBREVIATIONS = {
    "aggregator": "agg",
    "batch_size": "batch",
    "classes_per_worker": "classes",
    "compute_seconds": "compute_s",
    "dirichlet_alpha": "alpha",
    "error_feedback": "ef",
    "learning_rate": "lr",
    "num_byzantine": "byz",
    "num_workers": "workers",
    "preaggregation": "preagg",
    "validation_batch_size": "val_batch",
}
# Keys shown first, in this order, when runs differ in them; then the rest in
# alphabetical order.
_PRIORITY = ("partition", "aggregator", "aggregator_params", "attack",
             "attack_params", "num_byzantine", "compressor",
             "compressor_params", "error_feedback", "preaggregation",
             "preaggregation_params", "optimizer", "learning_rate", "model",
             "hidden", "dataset", "num_workers", "batch_size", "runtime",
             "topology", "straggler", "straggler_params", "seed", "steps")
# Settings the title lists when all runs share them (and they are set).
_TITLE_KEYS = ("dataset", "model", "partition", "num_workers", "aggregator",
               "aggregator_params", "attack", "num_byzantine", "compressor",
               "optimizer", "learning_rate", "steps")
_UNSET = ("none", "identity", {}, [], 0)
# Sizes in inches: one panel, the gaps and the margins around the grid.
_PANEL_W, _PANEL_H = 3.8, 2.6
_GAP_W, _GAP_H = 0.75, 0.3
_LEFT, _RIGHT, _TOP, _BOTTOM = 0.85, 0.25, 0.85, 0.55
_LEGEND_ROW_H = 0.28
_LINE_STYLES = ("-", "--", ":", "-.")


def _shorten(text: str, limit: int) -> str:
  """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
  return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _value(value: Any) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return f"{value:.3g}"
  if isinstance(value, (list, tuple)):
    return "x".join(_value(v) for v in value) or "[]"
  if isinstance(value, dict):
    return ",".join(f"{k}={_value(v)}" for k, v in sorted(value.items()))
  return str(value)


def _item(key: str, value: Any) -> str:
  """``key=value``, abbreviated; a ``*_params`` dict shows only its items."""
  if key.endswith("_params") and isinstance(value, dict):
    text = _value(value) or f"{_ABBREVIATIONS.get(key, key)}={{}}"
  else:
    text = f"{_ABBREVIATIONS.get(key, key)}={_value(value)}"
  return _shorten(text, MAX_LABEL // 2)


def _differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
  keys = {k for c in configs for k in c
          if k not in _IGNORED_KEYS
          and len({repr(d.get(k)) for d in configs}) > 1}
  first = [k for k in _PRIORITY if k in keys]
  return first + sorted(keys - set(first))


def _names(workdirs: Sequence[str]) -> list[str]:
  """The shortest trailing path parts that tell ``workdirs`` apart."""
  parts = [os.path.abspath(w).strip(os.sep).split(os.sep) for w in workdirs]
  depth = 1
  while True:
    names = ["/".join(p[-depth:]) for p in parts]
    if (len(set(names)) == len(names)
        or all(depth >= len(p) for p in parts)):
      return names
    depth += 1


def run_labels(workdirs: Sequence[str],
               configs: Sequence[dict[str, Any]]) -> list[str]:
  """Short, distinct legend labels for the runs in ``workdirs``.

  Args:
    workdirs: the runs' work directories.
    configs: their ``config.json`` contents (``{}`` where there is none).

  Returns:
    One label per run: its short name, then as many of the config keys that
    differ between the runs as fit in ``MAX_LABEL`` characters (``+N`` counts
    the others). Labels are distinct whenever the workdirs are.

  Raises:
    ValueError: if ``workdirs`` and ``configs`` differ in length.
  """
  if len(workdirs) != len(configs):
    raise ValueError(f"{len(workdirs)} workdirs but {len(configs)} configs")
  keys = _differing_keys(configs)
  names = [_shorten(n, MAX_LABEL) for n in _names(workdirs)]
  items = [[_item(k, c.get(k)) for k in keys] for c in configs]

  def label(i: int, name: str, run_items: list[str]) -> str:
    if i == 0:
      return name
    more = f" +{len(keys) - i}" if i < len(keys) else ""
    return f"{name}: {', '.join(run_items[:i])}{more}"

  def fits(i: int, name: str, run_items: list[str]) -> bool:
    return len(label(i, name, run_items)) <= MAX_LABEL

  # The same keys for all runs when at least one fits in every label; else
  # as many as fit in each (a name alone always fits).
  counts = range(len(keys) + 1)
  shared = max(i for i in counts
               if all(fits(i, n, it) for n, it in zip(names, items)))
  labels = [label(shared or max(i for i in counts if fits(i, n, it)), n, it)
            for n, it in zip(names, items)]
  if len(set(labels)) < len(labels):
    labels = [_shorten(f"#{i + 1} {text}", MAX_LABEL)
              for i, text in enumerate(labels)]
  return labels


def title(workdirs: Sequence[str],
          configs: Sequence[dict[str, Any]]) -> str:
  """The figure title: the runs' names, then the settings they share."""
  names = _names(workdirs)
  head = " vs ".join(names)
  if len(head) > MAX_TITLE:
    head = f"{len(names)} runs: " + ", ".join(names)
  lines = [_shorten(head, MAX_TITLE)]
  shared = [_item(k, configs[0][k]) for k in _TITLE_KEYS
            if configs and all(k in c for c in configs)
            and len({repr(c[k]) for c in configs}) == 1
            and configs[0][k] not in _UNSET]
  if shared:
    lines.append(_shorten(", ".join(shared), MAX_TITLE))
  return "\n".join(lines)


def _read_runs(workdirs: Sequence[str]) -> list[list[dict[str, Any]]]:
  runs = []
  for w in workdirs:
    rows = metrics_io.read(w)
    if not rows:
      raise ValueError(
          f"no metrics in {w!r}: {metrics_io.METRICS_FILE} is missing or "
          "empty there (is it a training run's --workdir?)")
    runs.append(rows)
  return runs


def figure(workdirs: Sequence[str]) -> mpl_figure.Figure:
  """The curves of the runs in ``workdirs`` as a figure (not yet saved).

  Raises:
    ValueError: if ``workdirs`` is empty or one holds no ``metrics.jsonl``
      rows.
  """
  if not workdirs:
    raise ValueError("no workdirs to plot")
  runs = _read_runs(workdirs)
  configs = [metrics_io.read_config(w)
             if os.path.exists(os.path.join(w, metrics_io.CONFIG_FILE))
             else {} for w in workdirs]
  labels = run_labels(workdirs, configs)
  y_axes = [y for y in Y_AXES
            if any(r.get(y[0]) is not None for rows in runs for r in rows)]
  # Coded bytes get a column only when some run's code differs from its wire.
  x_axes = [x for x in X_AXES if x[0] != "coded_bytes" or any(
      r.get("coded_bytes") not in (None, r.get("wire_bytes"))
      for rows in runs for r in rows)]
  n_rows, n_cols = len(y_axes), len(x_axes)
  legend_cols = min(len(runs), n_cols)
  legend_h = (_LEGEND_ROW_H * math.ceil(len(runs) / legend_cols) + 0.2
              if len(runs) > 1 else 0.0)
  width = _LEFT + _RIGHT + n_cols * _PANEL_W + (n_cols - 1) * _GAP_W
  height = (_TOP + _BOTTOM + legend_h + n_rows * _PANEL_H
            + (n_rows - 1) * _GAP_H)
  fig = mpl_figure.Figure(figsize=(width, height))
  backend_agg.FigureCanvasAgg(fig)
  fig.subplots_adjust(left=_LEFT / width, right=1 - _RIGHT / width,
                      top=1 - _TOP / height,
                      bottom=(_BOTTOM + legend_h) / height,
                      wspace=_GAP_W / _PANEL_W, hspace=_GAP_H / _PANEL_H)
  axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex="col",
                      sharey="row")
  for row, (y_key, y_name, log_y) in enumerate(y_axes):
    for col, (x_key, x_name, x_scale) in enumerate(x_axes):
      ax = axes[row][col]
      for i, (rows, label) in enumerate(zip(runs, labels)):
        points = [(r[x_key] * x_scale, r[y_key]) for r in rows
                  if r.get(y_key) is not None and r.get(x_key) is not None]
        if points:
          xs, ys = zip(*points)
          # Ten colours, then the next ten runs dashed, and so on.
          ax.plot(xs, ys, marker=".", label=label, color=f"C{i % 10}",
                  linestyle=_LINE_STYLES[i // 10 % len(_LINE_STYLES)])
      if log_y:
        ax.set_yscale("log")
      else:
        ax.set_ylim(0.0, 1.0)
      if row == n_rows - 1:
        ax.set_xlabel(x_name)
      if col == 0:
        ax.set_ylabel(y_name)
      ax.grid(alpha=0.3)
  fig.suptitle(title(workdirs, configs), fontsize="large")
  if len(runs) > 1:
    handles, texts = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="lower center", ncols=legend_cols,
               fontsize="small", frameon=False,
               bbox_to_anchor=(0.5, 0.1 / height))
  return fig


def _free_path(directory: str, workdirs: Sequence[str]) -> str:
  names = [re.sub(r"[^A-Za-z0-9._-]+", "_", n) for n in _names(workdirs)]
  stem = "curves-" + "-".join(names)
  if len(stem) > 60:
    stem = f"curves-{names[0][:30]}-and-{len(names) - 1}-more"
  return os.path.join(directory, stem)


def plot_runs(workdirs: Sequence[str], out: Optional[str] = None, *,
              directory: str = ".") -> str:
  """Plots the metrics of ``workdirs`` to PNG; returns the file's path.

  Args:
    workdirs: the runs' work directories.
    out: the PNG path, replaced if it exists (the caller named it). ``None``
      writes to a new file in ``directory`` named after the runs
      (``curves-NAME-NAME.png``, then ``-2``, ``-3``, ...), never replacing
      an existing file.
    directory: where the new file goes when ``out`` is ``None``.

  Raises:
    ValueError: if ``workdirs`` is empty or one holds no ``metrics.jsonl``
      rows.
  """
  fig = figure(workdirs)
  if out is not None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
  stem = _free_path(directory, workdirs)
  for n in range(1, 10_000):
    path = f"{stem}.png" if n == 1 else f"{stem}-{n}.png"
    try:
      f = open(path, "xb")  # Claims the name only if it is unused.
    except FileExistsError:
      continue
    with f:
      fig.savefig(f, format="png", dpi=110)
    return path
  raise ValueError(f"no unused name {stem}-N.png left in {directory!r}")
