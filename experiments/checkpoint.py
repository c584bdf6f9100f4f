"""Checkpoints of a training run, written with orbax-checkpoint.

A checkpoint is ``<workdir>/checkpoints/<step>/`` holding the whole train
state (``state/``) and a JSON record (``meta/``: the step, the simulated and
elapsed seconds, the run's configuration). Orbax writes each one into a
temporary directory that it renames when complete, so a run killed while
saving leaves the previous checkpoint intact; every process of a
multi-process run writes its own shards of the state and restores them
again, with the sharding of the state it is given. The last two checkpoints
are kept.
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
LEGACY_FILE = "checkpoint.npz"
_KEEP = 2


class CheckpointError(ValueError):
  """A checkpoint that cannot be used: damaged, foreign, or missing."""


class Checkpoints:
  """The checkpoints of one work directory (every process makes one)."""

  def __init__(self, workdir: str):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    legacy = os.path.join(workdir, LEGACY_FILE)
    if os.path.exists(legacy) and not os.path.isdir(self.directory):
      raise CheckpointError(
          f"{legacy} is a checkpoint of an older distoptax (before orbax "
          "checkpoints); it cannot be resumed by this version: start a new "
          "run in another workdir")
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=_KEEP, create=True,
            enable_async_checkpointing=False))

  def steps(self) -> list[int]:
    """Steps of the complete checkpoints, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> str:
    """Writes ``state`` and JSON ``meta`` as the checkpoint of ``step``.

    Every process calls it with its own (global) arrays. A step that
    already has a checkpoint is not written again.
    """
    if step not in self.steps():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          meta=ocp.args.JsonSave({**meta, "step": step})))
      self._manager.wait_until_finished()
    return os.path.join(self.directory, str(step))

  def meta(self, step: int) -> dict[str, Any]:
    """The JSON record saved with the checkpoint of ``step``.

    Raises:
      CheckpointError: if there is no such checkpoint or it cannot be read.
    """
    where = os.path.join(self.directory, str(step))
    if step not in self.steps():
      raise CheckpointError(f"no checkpoint {where}")
    try:
      return self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"the record of checkpoint {where} cannot be read "
          f"({type(e).__name__})") from e

  def restore(self, like: Any) -> tuple[Any, dict[str, Any]]:
    """Reads the latest checkpoint into the structure and sharding of ``like``.

    Args:
      like: a state of the run being resumed (e.g. ``runtime.init(params)``);
        only its structure, shapes, dtypes and shardings are used.

    Returns:
      ``(state, meta)``.

    Raises:
      CheckpointError: there is no checkpoint, or it cannot be read, or its
        arrays are not those of ``like`` (another run's checkpoint); the
        message says which and what to do.
    """
    step = self.latest_step()
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    where = os.path.join(self.directory, str(step))
    earlier = self.steps()[:-1]
    remedy = (f"delete {where} to resume from step {earlier[-1]}"
              if earlier else "start a new run in another workdir")
    try:
      stored = self._manager.item_metadata(step)["state"]
      stored_tree = stored.tree
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"checkpoint {where} is damaged (its metadata cannot be read: "
          f"{type(e).__name__}); {remedy}") from e
    if stored_tree is None:
      raise CheckpointError(
          f"checkpoint {where} is damaged (it holds no state); {remedy}")
    _check_matches(stored_tree, like, where)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                       sharding=getattr(x, "sharding", None)),
        like)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      first_line = (str(e).strip().splitlines() or [""])[0][:200]
      raise CheckpointError(
          f"checkpoint {where} is damaged ({type(e).__name__}: "
          f"{first_line}); {remedy}") from e
    if not isinstance(restored.meta, dict) or restored.meta.get(
        "step") != step:
      raise CheckpointError(
          f"checkpoint {where} is damaged (its meta record does not name "
          f"step {step}); {remedy}")
    return restored.state, restored.meta


def _path(keys) -> tuple[str | int, ...]:
  """A key path by names and indices (as orbax stores the tree)."""
  out = []
  for key in keys:
    for attr in ("name", "key", "idx"):
      if hasattr(key, attr):
        out.append(getattr(key, attr))
        break
    else:
      out.append(str(key))
  return tuple(out)


def _describe(path: tuple[str | int, ...]) -> str:
  return "".join(f"[{p!r}]" for p in path)


def _check_matches(stored_tree: Any, like: Any, where: str) -> None:
  """Same leaf paths, shapes and dtypes in the checkpoint as in ``like``."""
  stored = {_path(p): (tuple(m.shape), np.dtype(m.dtype))
            for p, m in jax.tree_util.tree_flatten_with_path(stored_tree)[0]
            if hasattr(m, "shape")}
  expected = {_path(p): (tuple(np.shape(x)), np.dtype(x.dtype))
              for p, x in jax.tree_util.tree_flatten_with_path(like)[0]}
  missing = sorted(set(expected) - set(stored), key=str)
  extra = sorted(set(stored) - set(expected), key=str)
  if missing or extra:
    raise CheckpointError(
        f"checkpoint {where} was written by another kind of run: it lacks "
        f"{[_describe(p) for p in missing[:3]]} and has "
        f"{[_describe(p) for p in extra[:3]]} that this run's state has not; "
        "resume it with its own configuration (and the distoptax version "
        "that wrote it), or start a new run in another workdir")
  for path, (shape, dtype) in expected.items():
    if stored[path] != (shape, dtype):
      raise CheckpointError(
          f"checkpoint {where} was written by another kind of run: "
          f"{_describe(path)} is {stored[path][1]}{list(stored[path][0])} "
          f"there and {dtype}{list(shape)} here; resume it with its own "
          "configuration (and the distoptax version that wrote it), or "
          "start a new run in another workdir")


def latest_step(workdir: str) -> int | None:
  """The step of the latest complete checkpoint in ``workdir``, or None."""
  if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    return None
  return Checkpoints(workdir).latest_step()
