"""A per-channel scale of the draws' spread, fitted on the validation split.

Draws of a diffusion model trained on a small budget are often too narrow: far more measured
values fall outside all K draws than the 2 / (K + 1) a calibrated posterior leaves there.
The scale s_c widens (or narrows) channel c's draws about the point estimate,
draw' = point + s_c (draw - point), with s_c the value on a grid whose share of
validation entries outside every widened draw is nearest 2 / (K + 1). `calibrate` writes
a copy of the model whose `model.json` holds `spread_scale`, which `Posterior` applies;
fitted on validation only, it leaves the point estimate as it is.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np

from multichan_diff.data import store
from multichan_diff.data.store import SPLITS
from multichan_diff.evaluate.images import observed_sets, read_fovs
from multichan_diff.evaluate.metrics import TIE_ATOL, calibrated_tail
from multichan_diff.impute.cells import sample_cells
from multichan_diff.impute.images import sample_image
from multichan_diff.impute.posterior import load_posterior

SCALES = np.geomspace(0.25, 64.0, 81)


class SpreadFit:
  """Accumulates, per channel and grid scale, the entries outside every widened draw."""

  def __init__(self, channels: int, scales: np.ndarray = SCALES):
    self.scales = scales
    self.outside = np.zeros((len(scales), channels))
    self.count = np.zeros(channels)

  def add(self, draws: np.ndarray, point: np.ndarray, truth: np.ndarray,
          scored: np.ndarray) -> None:
    """draws [K, ..., C], point and truth [..., C], scored [C] bool (the missing channels)."""
    c = np.flatnonzero(scored)
    p = point[..., c].reshape(-1, len(c)).astype(np.float64)
    t = truth[..., c].reshape(-1, len(c)) - p
    lo = draws[..., c].min(0).reshape(-1, len(c)) - p
    hi = draws[..., c].max(0).reshape(-1, len(c)) - p
    for g, s in enumerate(self.scales):
      self.outside[g, c] += ((t < s * lo - TIE_ATOL) | (t > s * hi + TIE_ATOL)).sum(0)
    self.count[c] += len(p)

  def result(self, k: int) -> np.ndarray:
    """[C] scales (1 where a channel was never scored)."""
    share = self.outside / np.maximum(self.count, 1)
    best = self.scales[np.argmin(np.abs(share - 2 * calibrated_tail(k)), axis=0)]
    return np.where(self.count > 0, best, 1.0)


def calibrate(model_dir: str, store_path: str, out: str, *, split: str = "val",
              samples: int = 8, sampler: str = "ddim", steps: int | None = None,
              point: str = "denoiser", seed: int = 0, overwrite: bool = False) -> dict:
  """Fits `spread_scale` on the store's `split` and writes the model with it to `out`."""
  store.check_writable(out, overwrite)
  posterior, meta = load_posterior(model_dir, sampler=sampler, steps=steps, samples=samples,
                                   point=point)
  if meta.get("network") == "regressor":
    raise ValueError(f"{model_dir}: a regressor has no draws to calibrate")
  if "spread_scale" in meta:
    raise ValueError(f"{model_dir}: already calibrated (on {meta['spread_fit']['split']}); "
                     "calibrate the model it was made from")
  attrs = store.read_attributes(store_path)
  if attrs["channels"] != meta["channels"] or attrs.get("genes") != meta.get("genes"):
    raise ValueError(f"{store_path}: its channels or genes differ from the model's "
                     f"({model_dir}); calibrate on the store the model was trained on")
  key = jax.random.key(seed)
  fit = SpreadFit(len(meta["channels"]))
  if meta["kind"] == "cells":
    idx = np.flatnonzero(np.asarray(attrs["sample_split"]) == SPLITS.index(split))
    if not len(idx):
      raise ValueError(f"{store_path}: the {split} split has no cells")
    genes = np.asarray(store.open_array(store_path, "cond")[idx].read().result())[:, 0, 0]
    truth = np.asarray(store.open_array(store_path, "x0")[idx].read().result())[:, 0, 0]
    draws, mean = sample_cells(posterior, genes, len(meta["channels"]), key=key,
                               progress=True)
    fit.add(draws, mean, truth, np.ones(len(meta["channels"]), bool))
  else:
    fovs = read_fovs(store_path, split)
    for s, observed in enumerate(observed_sets("multi", meta["channels"])):
      for i, f in enumerate(fovs):
        draws, mean = sample_image(posterior, f.image, observed, tile=meta["tile"],
                                   overlap=meta["tile"] // 4,
                                   key=jax.random.fold_in(key, s * 1000 + i),
                                   context_norm=meta.get("context_norm"), progress=True)
        fit.add(draws[:, f.covered], mean[f.covered], f.image[f.covered], ~observed)
  scale = fit.result(samples)
  with store.atomic_dir(out, overwrite) as tmp:
    shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
    meta = {**meta, "spread_scale": scale.tolist(),
            "spread_fit": {"store": os.path.abspath(store_path), "split": split,
                           "samples": samples, "sampler": sampler}}
    with open(os.path.join(tmp, "model.json"), "w") as f:
      json.dump(meta, f)
  return {"out": os.path.abspath(out), "spread_scale": dict(zip(meta["channels"],
                                                                np.round(scale, 3).tolist()))}
