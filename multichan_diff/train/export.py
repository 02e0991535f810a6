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
from multichan_diff.train.checkpoint import BEST, Checkpoints
from multichan_diff.train.model_dir import REGRESSOR, TEACHER_PARAMS, read_meta
from multichan_diff.train.trainer import setup
NORMALISATION_KEYS = ("normalizer", "rna_norm", "protein_norm", "tile", "bin", "bin_how",
                      "union_of", "count_step")


def export_model(workdir: str, out: str, overwrite: bool = False,
                 step: int | None = None) -> dict:
  """Writes a checkpoint's EMA parameters and metadata to `out`: by default the one chosen
  on the validation split (the latest when the run had none), or `step`."""
  store.check_writable(out, overwrite)
  latest = Checkpoints(workdir)
  best = Checkpoints(workdir, 1, BEST) if os.path.isdir(os.path.join(workdir, BEST)) else None
  try:
    steps, chosen = latest.all_steps(), best and best.latest_step()
    if not steps:
      raise ValueError(f"{workdir}: no checkpoint to export")
    if step is None:
      step = chosen or steps[-1]
    elif step not in steps + [chosen]:
      raise ValueError(f"{workdir}: no checkpoint at step {step}; it has steps {steps}"
                       + (f" and the validation-best {chosen}" if chosen else ""))
    ckpts = best if step == chosen else latest
    run = ckpts.run_info(step)
    s = setup(ml_collections.ConfigDict(run["config"]), fit_head=False)
    state = ckpts.restore(step, s.state)
    selection = best.run_info(chosen) if chosen else None
  finally:
    latest.close()
    if best is not None:
      best.close()
  meta, parts = _metadata(run, s.attrs, step)
  if selection:  # what validation chose, for a final fit's step count (train.steps_from)
    meta["selection"] = {"step": chosen, "val_r": selection["val_r"]}
  with store.atomic_dir(out, overwrite) as tmp:
    for name, source in parts.items():  # exported models it runs with, copied whole
      shutil.copytree(source, os.path.join(tmp, name))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, "params"), state.ema)
    if meta["network"] == "generator":
      checkpointer.save(os.path.join(tmp, TEACHER_PARAMS), state.teacher)
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, "model.json"), "w") as f:
      json.dump(meta, f)
  return {"model_dir": os.path.abspath(out), "step": step}


def _metadata(run: dict, attrs: dict, step: int) -> tuple[dict, dict[str, str]]:
  """-> (model.json of a run's export, {sub-directory: exported model to copy there}): a
  latent model's `autoencoder`, a residual model's `regressor`."""
  network = run.get("network", "diffusion")
  if network == "generator":  # everything as the teacher's, and how to run the generator
    teacher = read_meta(run["teacher"])
    meta = {**teacher, "network": "generator", "step": step, "teacher": run["teacher"],
            "teacher_step": teacher.get("step"), "t_init": run["config"]["distill"]["t_init"]}
    latent = teacher.get("space") == "latent"
    return meta, {"autoencoder": os.path.join(run["teacher"], "autoencoder")} if latent else {}
  meta = {"network": network, "model": run["model"], "channels": run["channels"],
          "kind": run["kind"], "step": step,
          **{k: attrs[k] for k in NORMALISATION_KEYS if k in attrs}}
  parts = {}
  if network in ("diffusion", "regressor"):
    meta.update(genes=run.get("genes"), context_norm=run.get("context_norm"))
    if run.get("context_norm") == "fov_targets":  # how outputs get back to the data's units
      meta["target_stats"] = typical_fov_stats(attrs, run.get("train_splits", ("train",)))
  if network == "diffusion":
    diffusion = run["config"]["diffusion"]
    meta["schedule"] = {"name": diffusion["schedule"], "num_steps": diffusion["num_steps"],
                        "prediction": diffusion.get("prediction", "eps")}
    if run.get("residual_of"):
      read_meta(run["residual_of"])  # still there and readable
      meta["residual"] = True  # samples are the regressor's mean + residual samples
      parts[REGRESSOR] = run["residual_of"]
  if attrs.get("space") == "latent":
    latent = dict(attrs["latent"])
    parts["autoencoder"] = latent.pop("autoencoder")
    latent.pop("pixel_store", None)
    read_meta(parts["autoencoder"])  # still there and readable
    meta.update(space="latent", latent=latent)
  return meta, parts
