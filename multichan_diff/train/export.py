"""Export a trained run as a self-contained model directory (its layout and how it is
read back: `train.model_dir`)."""

from __future__ import annotations

import json
import os
import shutil

import ml_collections
import orbax.checkpoint as ocp

from multichan_diff.data import store
from multichan_diff.data.transforms import typical_fov_stats
from multichan_diff.train.checkpoint import Checkpoints
from multichan_diff.train.model_dir import TEACHER_PARAMS, read_meta
from multichan_diff.train.trainer import setup
NORMALISATION_KEYS = ("normalizer", "rna_norm", "protein_norm", "tile", "bin", "bin_how",
                      "union_of", "count_step")


def export_model(workdir: str, out: str, overwrite: bool = False,
                 step: int | None = None) -> dict:
  """Writes a checkpoint's EMA parameters and metadata to `out`: the latest, or `step`
  (one chosen on the validation split)."""
  store.check_writable(out, overwrite)
  ckpts = Checkpoints(workdir)
  steps = ckpts.all_steps()
  if not steps:
    raise ValueError(f"{workdir}: no checkpoint to export")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f"{workdir}: no checkpoint at step {step}; it has steps {steps}")
  run = ckpts.run_info(step)
  s = setup(ml_collections.ConfigDict(run["config"]))
  state = ckpts.restore(step, s.state)
  ckpts.close()
  meta, autoencoder = _metadata(run, s.attrs, step)
  with store.atomic_dir(out, overwrite) as tmp:
    if autoencoder:
      shutil.copytree(autoencoder, os.path.join(tmp, "autoencoder"))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, "params"), state.ema)
    if meta["network"] == "generator":
      checkpointer.save(os.path.join(tmp, TEACHER_PARAMS), state.teacher)
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, "model.json"), "w") as f:
      json.dump(meta, f)
  return {"model_dir": os.path.abspath(out), "step": step}


def _metadata(run: dict, attrs: dict, step: int) -> tuple[dict, str | None]:
  """-> (model.json of a run's export, the autoencoder directory to copy in or None)."""
  network = run.get("network", "diffusion")
  if network == "generator":  # everything as the teacher's, and how to run the generator
    teacher = read_meta(run["teacher"])
    meta = {**teacher, "network": "generator", "step": step, "teacher": run["teacher"],
            "teacher_step": teacher.get("step"), "t_init": run["config"]["distill"]["t_init"]}
    latent = teacher.get("space") == "latent"
    return meta, os.path.join(run["teacher"], "autoencoder") if latent else None
  meta = {"network": network, "model": run["model"], "channels": run["channels"],
          "kind": run["kind"], "step": step,
          **{k: attrs[k] for k in NORMALISATION_KEYS if k in attrs}}
  if network == "diffusion":
    diffusion = run["config"]["diffusion"]
    meta.update(genes=run.get("genes"), context_norm=run.get("context_norm"), schedule={
        "name": diffusion["schedule"], "num_steps": diffusion["num_steps"],
        "prediction": diffusion.get("prediction", "eps")})
    if run.get("context_norm") == "fov_targets":  # how outputs get back to the data's units
      meta["target_stats"] = typical_fov_stats(attrs, run.get("train_splits", ("train",)))
  autoencoder = None
  if attrs.get("space") == "latent":
    latent = dict(attrs["latent"])
    autoencoder = latent.pop("autoencoder")
    latent.pop("pixel_store", None)
    read_meta(autoencoder)  # still there and readable
    meta.update(space="latent", latent=latent)
  return meta, autoencoder
