"""Export a trained run as a self-contained model directory, and load it back.

MODEL_DIR/params   the EMA parameters (orbax)
MODEL_DIR/model.json  model config, diffusion schedule, channel panel (and genes), the
                    store's normalisation, the tile size: everything imputation needs
                    without the training store.
MODEL_DIR/autoencoder  a latent-space model's tile autoencoder (itself an exported model),
                    with the latents' standardisation in model.json's `latent`.
MODEL_DIR/teacher_params  a distilled generator's teacher (orbax, the generator's
                    architecture): its x0 estimate from pure noise is the point estimate
                    beside the generator's draws.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from multichan_diff.data import store
from multichan_diff.data.transforms import typical_fov_stats
from multichan_diff.diffusion.schedules import Schedule, get_schedule
from multichan_diff.model import ModelConfig, build_model
from multichan_diff.train.checkpoint import Checkpoints

TEACHER_PARAMS = "teacher_params"
NORMALISATION_KEYS = ("normalizer", "rna_norm", "protein_norm", "tile", "bin", "bin_how",
                      "union_of", "count_step")


def export_model(workdir: str, out: str, overwrite: bool = False,
                 step: int | None = None) -> dict:
  """Writes a checkpoint's EMA parameters and metadata to `out`: the latest, or `step`
  (one chosen on the validation split)."""
  from multichan_diff.train.trainer import setup
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


def read_meta(model_dir: str) -> dict:
  """model.json of an exported model, with a clear error when it is not one."""
  try:
    with open(os.path.join(model_dir, "model.json")) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{model_dir}: not an exported model (model.json unreadable: {e})") from e


def load_model(model_dir: str):
  """-> (model with the exported EMA parameters, metadata dict): the diffusion model, or
  the tile autoencoder when model.json says `"network": "autoencoder"`."""
  meta = read_meta(model_dir)
  if meta.get("network") == "autoencoder":
    from multichan_diff.model.autoencoder import AutoencoderConfig, build_autoencoder
    model = build_autoencoder(AutoencoderConfig.from_mapping(meta["model"]))
  else:
    model = build_model(ModelConfig.from_mapping(meta["model"]))
  return _restored(model, os.path.join(model_dir, "params")), meta


def load_teacher(model_dir: str, meta: dict):
  """A distilled generator's teacher network, or None when the export carries none (a
  diffusion model, or a generator exported before teachers were written beside it)."""
  path = os.path.join(model_dir, TEACHER_PARAMS)
  if meta.get("network") != "generator" or not os.path.isdir(path):
    return None
  return _restored(build_model(ModelConfig.from_mapping(meta["model"])), path)


def _restored(model, path: str):
  params = nnx.state(model, nnx.Param)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)
  nnx.update(model, ocp.StandardCheckpointer().restore(os.path.abspath(path), abstract))
  model.eval()  # dropout off: imputation is a function of the noise draws alone
  return model


def load_codec(model_dir: str, meta: dict):
  """A latent-space model's `LatentCodec` (its autoencoder and latent standardisation);
  None for a pixel-space model."""
  if meta.get("space", "pixel") != "latent":
    return None
  from multichan_diff.model.latent import LatentCodec, LatentStats
  autoencoder, _ = load_model(os.path.join(model_dir, "autoencoder"))
  return LatentCodec(autoencoder, LatentStats.from_dict(meta["latent"]))


def load_schedule(meta: dict) -> Schedule:
  """The noise schedule the exported model was trained with."""
  return get_schedule(meta["schedule"]["name"], meta["schedule"]["num_steps"])


def load_prediction(meta: dict) -> str:
  """What the exported network outputs: "eps" or "v"."""
  return meta["schedule"].get("prediction", "eps")
