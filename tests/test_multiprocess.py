"""Two processes (2 CPU devices each, gloo collectives): the runtime equals
the simulation, and the launcher checkpoints and resumes across them."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.experiments import checkpoint
from distoptax.experiments import metrics_io

NUM_WORKERS = 8
NUM_STEPS = 5
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_step() -> dist.WorkerStep:
  tx = optax.chain(dist.aggregate(alg.aggregators.mean()),
                   optax.sgd(0.1, momentum=0.9))
  return dist.data_parallel(lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2), tx)


def train(runtime: dist.Runtime):
  """Every process passes the same global batch; returns the params."""
  rng = np.random.default_rng(0)
  state = runtime.init(jnp.zeros(3))
  for _ in range(NUM_STEPS):
    batch = (rng.normal(size=(NUM_WORKERS, 8, 3)).astype(np.float32),
             rng.normal(size=(NUM_WORKERS, 8)).astype(np.float32))
    state, _ = runtime.step(state, batch)
  return state.params


def _free_ports(count: int) -> list[int]:
  """``count`` distinct ports that were free a moment ago.

  The sockets are held together until all are chosen, so that the ports
  differ (a port released and asked for again may come back); the
  coordinators bind them right after.
  """
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def test_two_processes_equal_simulation(tmp_path):
  out, (port,) = tmp_path / "params.npy", _free_ports(1)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.multiprocess_worker", str(i), str(port),
       str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      cwd=_REPO) for i in range(2)]
  logs = [p.communicate(timeout=240)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs
  multi = np.load(out)
  simulated = np.asarray(train(dist.simulate(worker_step(), NUM_WORKERS)))
  assert multi.shape == simulated.shape == (NUM_WORKERS, 3)
  np.testing.assert_allclose(multi, simulated, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(multi, np.broadcast_to(multi[:1], multi.shape))


# The launcher in two processes: an uninterrupted run, and a run killed
# after a checkpoint and resumed, end with the same parameters. A linear
# model on synthetic least squares keeps each launch short; the killed run
# is given many steps so that the kill never races with its end, and its
# resume sets the uninterrupted run's number of steps.
_LAUNCHER_CONFIG = [
    "--config.dataset=least_squares", "--config.model=linear",
    "--config.num_workers=8", "--config.batch_size=8",
    "--config.learning_rate=0.05", "--config.runtime=mesh",
    "--config.log_every=10", "--config.checkpoint_every=10"]
_STEPS = 40


def _launch(workdir, port: int, *extra: str) -> list[subprocess.Popen]:
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  return [subprocess.Popen(
      [sys.executable, "-m", "distoptax.experiments.train",
       f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}", *extra],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
          for i in range(2)]


def _finish(procs: list[subprocess.Popen]) -> list[str]:
  logs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs
  return logs


def _final_params(workdir) -> list[np.ndarray]:
  """The parameters of the latest checkpoint, read as host arrays."""
  path = os.path.join(workdir, checkpoint.CHECKPOINT_DIR,
                      str(checkpoint.latest_step(workdir)), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = checkpointer.restore(
      path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def _rows(workdir):
  return [{k: v for k, v in r.items() if k != "elapsed_seconds"}
          for r in metrics_io.read(workdir)]


def test_launcher_in_two_processes_resumes_after_a_kill(tmp_path):
  full, part = tmp_path / "full", tmp_path / "part"
  ports = _free_ports(3)
  # Both runs start together; the second is killed after a checkpoint.
  uninterrupted = _launch(full, ports[0], *_LAUNCHER_CONFIG,
                          f"--config.steps={_STEPS}")
  procs = _launch(part, ports[1], *_LAUNCHER_CONFIG, "--config.steps=100000")
  deadline = time.monotonic() + 240
  while (checkpoint.latest_step(part) or 0) < 10:
    assert time.monotonic() < deadline and all(
        p.poll() is None for p in procs), "no checkpoint of step 10"
    time.sleep(0.05)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.wait(timeout=60)
  killed_at = checkpoint.latest_step(part)
  assert 10 <= killed_at < _STEPS

  logs = _finish(uninterrupted)
  assert "final test loss" in logs[0]
  assert "final test loss" not in logs[1]  # Process 0 reports.
  assert checkpoint.latest_step(full) == _STEPS

  logs = _finish(_launch(part, ports[2], "--resume",
                         f"--config.steps={_STEPS}"))
  assert f"resumed {part} at step {killed_at}" in logs[0]
  for a, b in zip(_final_params(full), _final_params(part), strict=True):
    np.testing.assert_array_equal(a, b)
  # Metrics, simulated seconds included, continue as uninterrupted.
  assert _rows(part) == _rows(full)
