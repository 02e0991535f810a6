"""An exported model directory, read back: its metadata, networks and normalisation.

MODEL_DIR/params   the EMA parameters (orbax)
MODEL_DIR/model.json  model config, diffusion schedule, channel panel (and genes), the
                    store's normalisation, the tile size: everything imputation needs
                    without the training store.
MODEL_DIR/autoencoder  a latent-space model's tile autoencoder (itself an exported model),
                    with the latents' standardisation in model.json's `latent`.
MODEL_DIR/regressor  a residual diffusion model's regressor (itself an exported model),
                    whose mean its samples are added to.
MODEL_DIR/teacher_params  a distilled generator's teacher (orbax, the generator's
                    architecture): its x0 estimate from pure noise is the point estimate
                    beside the generator's draws.

Writing it is `train.export`; everything that reads one (imputation, evaluation,
distillation, latent encoding) imports this module only.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from multichan_diff.data.transforms import Normalizer
from multichan_diff.diffusion.schedules import Schedule, get_schedule
from multichan_diff.model import ModelConfig, build_model

TEACHER_PARAMS = "teacher_params"
REGRESSOR = "regressor"


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


def load_regressor(model_dir: str, meta: dict):
  """A residual diffusion model's regressor network, or None for any other model."""
  if not meta.get("residual"):
    return None
  regressor, _ = load_model(os.path.join(model_dir, REGRESSOR))
  return regressor


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


def model_normalizer(meta: dict) -> Normalizer:
  """The model's per-channel normaliser; a union model takes each channel's from the first
  panel that measured it (the one its training samples of that channel came from)."""
  if "normalizer" in meta:
    return Normalizer.from_dict(meta["normalizer"])
  parts = meta["union_of"]
  if len({(p["normalizer"]["kind"], p["normalizer"]["cofactor"]) for p in parts}) > 1:
    raise ValueError("the union's panels were normalised with different transforms")
  fields: dict[str, list[float]] = {"clip": [], "mean": [], "std": []}
  for c in range(len(meta["channels"])):
    part = next(p for p in parts if c in p["channel_index"])
    j = part["channel_index"].index(c)
    for k in fields:
      fields[k].append(part["normalizer"][k][j])
  n0 = parts[0]["normalizer"]
  return Normalizer(n0["kind"], n0["cofactor"], **fields)


def zero_below(meta: dict) -> np.ndarray | None:
  """[C] normalised value of half the smallest positive value of the model's data (one
  count over a bin's pixels, `count_step`), or None when the data were not whole counts."""
  step = meta.get("count_step")
  if not step:
    return None
  return model_normalizer(meta).forward(np.full(len(meta["channels"]), step / 2, np.float32))
