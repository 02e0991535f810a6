"""orbax checkpoints of a run: train state (params, optimiser, EMA, step), the grain
iterator's position, and what the run was (config, panel) so a mismatch is caught."""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


LATEST, BEST = "checkpoints", "best"  # the last `keep` steps; the validation-best step


class Checkpoints:
  """CheckpointManager over `workdir/<folder>`, keeping the last `keep`."""

  def __init__(self, workdir: str, keep: int = 3, folder: str = LATEST):
    self.directory = os.path.join(os.path.abspath(workdir), folder)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=True),
        item_names=("state", "data", "run"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "run": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, iterator, run: dict[str, Any]) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator),
        run=ocp.args.JsonSave(run)), force=True)

  def run_info(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))["run"]

  def restore(self, step: int, state_like, iterator=None):
    """Restores into `state_like`'s shapes, dtypes and shardings, and the iterator (if
    given) in place."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
