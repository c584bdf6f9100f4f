"""Metrics as one JSON object per line (``metrics.jsonl``) in the workdir."""

import json
import math
import os
from typing import Any, Iterable

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SYSTEM_MODEL_KEY = "system_model"
"""The key of ``config.json`` that states the system model of the run."""


class RunFileError(ValueError):
  """A run file (``metrics.jsonl``, ``config.json``) is missing or damaged."""


def _clean(value: Any) -> Any:
  """JSON has no NaN/Inf: write them as null."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def append(workdir: str, rows: Iterable[dict[str, Any]]) -> None:
  with open(os.path.join(workdir, METRICS_FILE), "a") as f:
    for row in rows:
      f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")


def _parse(path: str, allow_torn_last: bool) -> tuple[list[dict[str, Any]],
                                                      bool]:
  """Rows of ``path``, and whether a torn last line was left out."""
  if not os.path.exists(path):
    return [], False
  with open(path) as f:
    lines = f.read().split("\n")
  # A complete file ends with a newline, so its last piece is empty.
  complete, last = lines[:-1], lines[-1]
  rows = []
  for number, line in enumerate(complete, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise RunFileError(
          f"{path} line {number} is not a JSON object ({e.msg}); the file "
          "was edited or damaged") from e
    if not isinstance(row, dict) or "step" not in row:
      raise RunFileError(
          f"{path} line {number} is not a metrics row (no 'step')")
    rows.append(row)
  if not last.strip():
    return rows, False
  if not allow_torn_last:
    raise RunFileError(
        f"{path} ends with a torn line (a run stopped while writing it): "
        f"{last[:60]!r}; resuming the run drops it and reruns its step")
  return rows, True


def read(workdir: str) -> list[dict[str, Any]]:
  """The rows of ``metrics.jsonl`` (none if it does not exist).

  Raises:
    RunFileError: if a line is not a JSON row, naming the line.
  """
  return _parse(os.path.join(workdir, METRICS_FILE), False)[0]


def truncate_after(workdir: str, step: int) -> bool:
  """Drops the rows logged after ``step`` (they are recomputed on resume).

  A torn last line (the run stopped while writing it) is dropped too: its
  step lies after the last checkpoint, which is written after its row.

  Returns:
    Whether a torn last line was dropped.

  Raises:
    RunFileError: if another line is damaged, or no row is left for
      ``step`` although rows were logged.
  """
  path = os.path.join(workdir, METRICS_FILE)
  rows, torn = _parse(path, True)
  kept = [r for r in rows if r["step"] <= step]
  if rows and step and (not kept or kept[-1]["step"] != step):
    raise RunFileError(
        f"{path} has no row for step {step}, which the checkpoint holds; "
        "the file was edited or damaged: restore it, or start a new run")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for row in kept:
      f.write(json.dumps(row) + "\n")
  os.replace(tmp, path)
  return torn


def write_config(workdir: str, config: dict[str, Any],
                 system_model: dict[str, Any] | None = None) -> None:
  """Writes ``config.json`` atomically.

  Args:
    workdir: the run's directory.
    config: the run's options.
    system_model: a description of the simulated system (how simulated
      seconds are made), stored under :data:`SYSTEM_MODEL_KEY` beside the
      options.
  """
  if SYSTEM_MODEL_KEY in config:
    raise ValueError(
        f"{SYSTEM_MODEL_KEY!r} is reserved for the system model's "
        f"description; the options hold {config[SYSTEM_MODEL_KEY]!r}")
  if system_model is not None:
    config = {**config, SYSTEM_MODEL_KEY: system_model}
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_system_model(workdir: str) -> dict[str, Any] | None:
  """The system model stated in the run's ``config.json`` (None if none).

  Raises:
    RunFileError: if ``config.json`` is missing or damaged.
  """
  return _read_config_file(workdir).get(SYSTEM_MODEL_KEY)


def read_config(workdir: str) -> dict[str, Any]:
  """The run's options from its ``config.json``.

  The system model's description stored beside them
  (:func:`read_system_model`) is left out.

  Raises:
    RunFileError: if it is missing or not a JSON object.
  """
  config = _read_config_file(workdir)
  config.pop(SYSTEM_MODEL_KEY, None)
  return config


def _read_config_file(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise RunFileError(
        f"{path} is missing: the run's configuration is lost. Recreate it "
        f"with the configuration the run was started with (e.g. copy "
        f"config.json from a run of the same config), or start a new run")
  try:
    with open(path) as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise RunFileError(
        f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the file "
        "was edited or damaged") from e
  if not isinstance(config, dict):
    raise RunFileError(f"{path} does not hold a JSON object")
  return config
