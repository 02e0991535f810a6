"""`prepare latent`: an image store's tiles through a trained tile autoencoder, once, into a
latent store that the diffusion model trains on like any other (`space = latent`).

Encoding once, not at every step, keeps a training step the cost of the small latent UNet.
The latent store keeps the pixel store's attributes (panel, splits, FOVs, normaliser, the
pixel tile) and adds `space: latent` and a `latent` block: k, the reduction factor, the
per-feature standardisation fitted on the training tiles, the autoencoder's directory and
the pixel store's. Per-FOV stats (`context_norm = fov`) are recomputed on the latents.
"""

from __future__ import annotations

import os

import numpy as np

from multichan_diff.data import store
from multichan_diff.data.pipeline import StoreSource
from multichan_diff.data.store import SPLITS
from multichan_diff.data.transforms import FOV_STD_FLOOR
from multichan_diff.model.latent import LatentStats, expand

STD_FLOOR = 1e-3  # a latent feature that never varies is left unscaled, not blown up


def _raw_latents(encode, source: StoreSource, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """-> (latents [N, h, w, C*k], present [N, C]) of every sample, in store order."""
  zs = []
  for lo in range(0, len(source), batch_size):
    x = np.stack([source[i]["x0"] for i in range(lo, min(lo + batch_size, len(source)))])
    if not np.isfinite(x).all():
      raise ValueError(f"{source.path}: non-finite values in samples {lo}..{lo + len(x) - 1}")
    zs.append(np.asarray(encode(x)))
  return np.concatenate(zs), source.present


def _weighted_stats(z: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std [F] of z [N, h, w, F] over samples with weight [N, F] (union stores:
  a feature counts only where its channel was measured)."""
  w = weight.astype(np.float64)[:, None, None, :]
  n = np.maximum(np.broadcast_to(w, z.shape).sum((0, 1, 2)), 1.0)
  mean = (z * w).sum((0, 1, 2)) / n
  var = (np.square(z - mean) * w).sum((0, 1, 2)) / n
  return mean, np.sqrt(var)


def encode_store(autoencoder_dir: str, store_path: str, out: str, *, batch_size: int = 16,
                 overwrite: bool = False) -> dict:
  """Writes the latent store of `store_path`'s tiles and returns a summary."""
  import jax
  from multichan_diff.train.model_dir import load_model
  store.check_writable(out, overwrite)
  ae, meta = load_model(autoencoder_dir)
  if meta.get("network") != "autoencoder":
    raise ValueError(f"{autoencoder_dir}: not an exported autoencoder (see "
                     "`multichan-diff train-autoencoder`)")
  attrs = store.read_attributes(store_path)
  if attrs["kind"] != "images" or attrs.get("space", "pixel") != "pixel":
    raise ValueError(f"{store_path}: `prepare latent` needs a pixel image store")
  if attrs["channels"] != meta["channels"]:
    raise ValueError(f"{store_path}: its panel differs from the one {autoencoder_dir} was "
                     f"trained on ({len(attrs['channels'])} vs {len(meta['channels'])} channels)")
  k, factor = ae.cfg.latent_channels, ae.cfg.factor
  if attrs["tile"] % factor:
    raise ValueError(f"{store_path}: tile {attrs['tile']} is not a multiple of the "
                     f"autoencoder's reduction {factor}")

  source = StoreSource(store_path, None)
  raw, present = _raw_latents(jax.jit(ae.encode), source, batch_size)
  weight = expand(present, k, np)
  train = np.asarray(attrs["sample_split"]) == SPLITS.index("train")
  mean, std = _weighted_stats(raw[train], weight[train])
  std = np.maximum(std, STD_FLOOR)
  z = ((raw - mean) / std).astype(np.float32)
  stats = LatentStats(mean, std, z[train].min((0, 1, 2)), z[train].max((0, 1, 2)))

  fov_key = "sample_fov" if "sample_fov" in attrs else "tile_fov"
  fov_of = np.asarray(attrs[fov_key])
  fov_mean, fov_std = [], []
  for f in range(len(attrs["fov_mean"])):
    m, sd = _weighted_stats(z[fov_of == f], weight[fov_of == f])
    fov_mean.append(m.tolist())
    fov_std.append(np.maximum(sd, FOV_STD_FLOOR).tolist())

  latent_attrs = {
      **attrs, "space": "latent", "values": "normalized",
      "fov_mean": fov_mean, "fov_std": fov_std,
      "latent": {"k": k, "factor": factor, "tile": attrs["tile"] // factor,
                 **stats.to_dict(), "autoencoder": os.path.abspath(autoencoder_dir),
                 "pixel_store": os.path.abspath(store_path)},
  }
  with store.atomic_dir(out, overwrite) as tmp:
    store.create_group(tmp, latent_attrs)
    arr = store.create_array(tmp, "x0", z.shape)
    for lo in range(0, len(z), 256):
      store.write_samples(arr, z[lo:lo + 256], lo)
  return {"store": os.path.abspath(out), "samples": len(z), "latent_shape": list(z.shape[1:]),
          "splits": {s: int(np.sum(np.asarray(attrs["sample_split"]) == i))
                     for i, s in enumerate(SPLITS)}}
