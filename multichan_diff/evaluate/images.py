"""Scoring image imputation on a store's held-out FOVs, against the simple baselines.

FOVs are reassembled from the store's tiles (values as the model saw them: normalised
with the training FOVs' statistics), so smoothing baselines and the model's tiled
sampler both see whole images; only pixels some tile covered are scored.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from multichan_diff.data import store
from multichan_diff.data.pipeline import StoreSource
from multichan_diff.evaluate import cell_level, metrics
from multichan_diff.evaluate.baselines import ImageBaselines
from multichan_diff.impute.images import sample_image
from multichan_diff.impute.posterior import Posterior

MODES = ("single", "multi", "panel")
MULTI_SUBSETS = 10


@dataclasses.dataclass
class PointModel:
  """Another model scored by its point estimate alone (a masked regressor), on the same
  observed sets and FOVs as the model, each with its own tiling and condition norm."""
  posterior: Posterior
  tile: int
  overlap: int
  context_norm: str | None


@dataclasses.dataclass
class FOVImage:
  name: str
  image: np.ndarray    # [H, W, C] normalised
  covered: np.ndarray  # [H, W] bool: pixels inside some stored tile


def read_fovs(path: str, split: str) -> list[FOVImage]:
  """The split's FOVs of an image store, put back together from their tiles."""
  attrs = store.read_attributes(path)
  if attrs.get("space") == "latent":
    raise ValueError(f"{path}: a latent store; evaluate reads pixels, so pass its pixel "
                     f"store, {attrs['latent']['pixel_store']}")
  if attrs["kind"] != "images" or "tile_fov" not in attrs:
    raise ValueError(f"{path}: evaluate needs an image store from `prepare images` (for a "
                     "union model, evaluate on each of the union's stores)")
  source = StoreSource(path, split)
  tile, fov_of = attrs["tile"], np.asarray(attrs["tile_fov"])
  origin = np.asarray(attrs["tile_origin"])
  groups: dict[int, list[int]] = {}
  for i, j in enumerate(source.indices):
    groups.setdefault(int(fov_of[j]), []).append(i)
  fovs = []
  for f, items in sorted(groups.items()):
    ys, xs = origin[source.indices[items]].T
    h, w = ys.max() + tile, xs.max() + tile
    image = np.zeros((h, w, len(source.channels)), np.float32)
    covered = np.zeros((h, w), bool)
    for i, y, x in zip(items, ys, xs):
      image[y:y + tile, x:x + tile] = source[i]["x0"]
      covered[y:y + tile, x:x + tile] = True
    fovs.append(FOVImage(attrs["fovs"][f], image, covered))
  return fovs


def fit_splits(split: str) -> tuple[str, ...]:
  """What the baselines are fit on: the training split, plus validation when scoring test
  (they choose nothing on it, and the reference figures fit them that way)."""
  return ("train", "val") if split == "test" else ("train",)


def fit_fovs(path: str, split: str) -> list[FOVImage]:
  """The FOVs the baselines are fit on when scoring `split` (`fit_splits`; a store without
  a validation split has only its training FOVs)."""
  return [f for s in fit_splits(split) for f in _read_if_any(path, s)]


def _read_if_any(path: str, split: str) -> list[FOVImage]:
  try:
    return read_fovs(path, split)
  except ValueError:
    if split == "train":
      raise
    return []  # no validation split


def observed_sets(mode: str, channels: list[str], panel: list[int] | None = None,
                  held_out: list[int] | None = None, seed: int = 100) -> list[np.ndarray]:
  """[C] bool masks: `single` each channel (or each of `held_out`) held out in turn;
  `multi` 10 fixed subsets (channel observed with p = 0.5, rng seeds 100..109); `panel`
  the given channels."""
  c = len(channels)
  if held_out and mode != "single":
    raise ValueError("--held-out is for --mode single")
  if mode == "single":
    return [np.arange(c) != i for i in (held_out or range(c))]
  if mode == "multi":
    sets = [np.random.default_rng(seed + s).random(c) < 0.5 for s in range(MULTI_SUBSETS)]
    return [s for s in sets if s.any() and not s.all()]
  if mode == "panel":
    if not panel:
      raise ValueError("--mode panel needs --panel A,B,... (the observed channels)")
    mask = np.zeros(c, bool)
    mask[panel] = True
    if mask.all():
      raise ValueError("the panel observes every channel: nothing to score")
    return [mask]
  raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")


def _pool(images: list[np.ndarray], fovs: list[FOVImage], missing: np.ndarray) -> np.ndarray:
  """Per-FOV [H, W, C] -> [N, C_missing]: the covered pixels of all FOVs, missing channels."""
  return np.concatenate([x[f.covered][:, missing] for x, f in zip(images, fovs)])


def _scores(pred: list[np.ndarray], t: np.ndarray, fovs: list[FOVImage],
            missing: np.ndarray) -> dict:
  """Per missing channel Pearson, Spearman, RMSE over the covered pixels of all FOVs
  (t: the truth there, `_pool`ed)."""
  p = _pool(pred, fovs, missing)
  return {"pearson": metrics.pearson(p, t), "spearman": metrics.spearman(p, t),
          "rmse": metrics.rmse(p, t)}


def _row(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
  """Scores of the missing channels [..., C_missing] -> [..., C] with NaN where observed."""
  row = np.full(np.shape(values)[:-1] + (len(missing),), np.nan)
  row[..., missing] = values
  return row


def calibration_rows(calibration: metrics.DrawCalibration) -> dict[str, np.ndarray]:
  """The pooled calibration as uncertainty metrics: "pit" [K + 1, C] and one [C] coverage
  per level ("coverage_50", ...)."""
  res = calibration.result()
  return {"pit": res["pit"], **{metrics.coverage_key(p): v
                                for p, v in zip(calibration.levels, res["coverage"])}}


def evaluate_images(posterior: Posterior, store_path: str, *, split: str, mode: str,
                    panel: list[int] | None, channel_index: np.ndarray, model_channels: int,
                    tile: int, overlap: int, context_norm: str | None = "global",
                    keep: list[int] | None = None, held_out: list[int] | None = None,
                    points: dict[str, PointModel] | None = None, seed: int = 0,
                    cells: dict | None = None, progress: bool = True) -> dict:
  """Scores of the model (posterior mean, and one sample) and of every baseline.

  keep: the store channels used (observed or scored), or None for all; the rest are as if
  never measured, for the model and the baselines alike (two models with different panels
  compared on the channels they share). channel_index [C_kept]: each kept channel's index
  in the model's panel (a union model is scored on one of its panels). held_out (`single`
  only): the kept channels held out in turn, or None for all. points: rows of other models'
  point estimates, by name (each with the model's panel). cells: `cell_level.read_cells`'s
  keywords (masks or segment, diameter) to add "cell_pearson" to every method's scores.
  Returns
  {"channels", "sets", "scores": {method: {metric: [S, C] with NaN where a channel was
  observed}}, "uncertainty": {"draws": K, metric: [S, C], "pit": [S, K + 1, C]}
  (`metrics.uncertainty` of the posterior's draws, the coverage of their central intervals
  and the truth's rank among them), "examples": {channel: {"fov", "truth", "mean", "std"}} (a central
  tile-sized crop of the first FOV)}.
  """
  test = read_fovs(store_path, split)
  train = fit_fovs(store_path, split)
  channels = StoreSource(store_path, split).channels
  if keep is not None:
    test, train = ([dataclasses.replace(f, image=f.image[..., keep]) for f in fovs]
                   for fovs in (test, train))
    channels = [channels[k] for k in keep]
  sets = observed_sets(mode, channels, panel, held_out)
  labels = None
  if cells is not None:
    labels = cell_level.read_cells(test, channels, bin_size=store.read_attributes(
        store_path)["bin"], **cells)
  # a held-out channel draws as in a full `single` run, so a part of one is that part
  ids = held_out if held_out else range(len(sets))
  test_images = [f.image for f in test]
  baselines = ImageBaselines([f.image for f in train], test_images)
  key = jax.random.key(seed)
  scores: dict[str, dict[str, list[np.ndarray]]] = {}
  uncertainty: dict[str, list[np.ndarray]] = {}
  examples: dict[str, dict] = {}
  for s, observed in zip(ids, sets):
    missing = ~observed
    mean, samples_mean, single, lo, hi, std = [], [], [], [], [], []
    others: dict[str, list[np.ndarray]] = {name: [] for name in points or {}}
    calibration = None
    for i, f in enumerate(test):
      fov_key = jax.random.fold_in(key, s * 1000 + i)
      draws, point = _model_draws(posterior, f.image, observed, channel_index, model_channels, tile,
                           overlap, fov_key, context_norm, progress)
      for name, other in (points or {}).items():
        others[name].append(_model_draws(other.posterior, f.image, observed, channel_index,
                                         model_channels, other.tile, other.overlap, fov_key,
                                         other.context_norm, progress)[1])
      if calibration is None:
        calibration = metrics.DrawCalibration(len(draws), int(missing.sum()))
      calibration.add(draws[..., missing][:, f.covered], f.image[f.covered][:, missing])
      mean.append(point)
      samples_mean.append(draws.mean(0))
      single.append(draws[0])
      lo.append(draws.min(0))
      hi.append(draws.max(0))
      std.append(draws.std(0))
      if i == 0:  # a crop of the first FOV for each channel, from the first set missing it
        y0, x0 = (max((n - tile) // 2, 0) for n in f.image.shape[:2])
        crop = lambda a: a[..., y0:y0 + tile, x0:x0 + tile, :]
        for c in np.flatnonzero(missing):
          examples.setdefault(channels[c], {
              "fov": f.name, "truth": crop(f.image)[..., c], "mean": crop(mean[-1])[..., c],
              "std": crop(std[-1])[..., c]})
    preds = {"model": mean, **sample_rows(posterior, samples_mean, single), **others,
             **baselines.predict(observed)}
    truth = _pool(test_images, test, missing)  # once per set, for every method
    for name, pred in preds.items():
      sc = _scores(pred, truth, test, missing)
      if labels is not None:
        sc["cell_pearson"] = cell_level.cell_pearson(pred, test_images, labels, missing)
      for metric, values in sc.items():
        scores.setdefault(name, {}).setdefault(metric, []).append(_row(values, missing))
    unc = metrics.uncertainty(*(_pool(x, test, missing) for x in (lo, hi, std, mean)), truth)
    for metric, values in {**unc, **calibration_rows(calibration)}.items():
      uncertainty.setdefault(metric, []).append(_row(values, missing))
  return {"channels": channels, "sets": [s.tolist() for s in sets],
          "scores": {m: {k: np.stack(v) for k, v in d.items()} for m, d in scores.items()},
          "uncertainty": {"draws": draws.shape[0],
                          **{k: np.stack(v) for k, v in uncertainty.items()}},
          "examples": examples,
          **({"cells": {"count": labels.count, "source": labels.source}} if labels else {})}


def sample_rows(posterior: Posterior, samples_mean, one_sample) -> dict:
  """The rows scored beside the point estimate ("model"): one sample, and the mean of the
  K samples when the point estimate is the denoiser's (else it is "model" itself)."""
  rows = {"model_1_sample": one_sample}
  if posterior.point != "samples":
    rows["model_samples_mean"] = samples_mean
  return rows


def _model_draws(posterior: Posterior, image: np.ndarray, observed: np.ndarray,
                 channel_index: np.ndarray, model_channels: int, tile: int, overlap: int,
                 key, context_norm: str | None, progress: bool):
  """(samples [K, H, W, C_store], point estimate [H, W, C_store]): the store's channels
  placed in the model's panel (its other channels, if any, are neither observed nor
  scored)."""
  full = np.zeros(image.shape[:2] + (model_channels,), np.float32)
  full[..., channel_index] = image
  obs = np.zeros(model_channels, bool)
  obs[channel_index[observed]] = True
  draws, point = sample_image(posterior, full, obs, tile=tile, overlap=overlap, key=key,
                              context_norm=context_norm, progress=progress)
  return draws[..., channel_index], point[..., channel_index]
