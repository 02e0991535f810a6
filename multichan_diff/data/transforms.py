"""Intensity transforms: fit on training FOVs only, applied to every split, invertible.

forward(x) = (clip(t(x), 0, hi) - mean) / std per channel, with t one of arcsinh(x / cofactor),
log1p(x) or the identity; hi is the channel's `clip_percentile` over training pixels of
t(x), and mean / std are taken over training pixels after clipping. inverse() maps model
outputs back to counts (clipped values stay at the clip).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from multichan_diff.data.store import in_splits

TRANSFORMS = ("arcsinh", "log1p", "none")


def _t(x: np.ndarray, kind: str, cofactor: float) -> np.ndarray:
  if kind == "arcsinh":
    return np.arcsinh(x / cofactor)
  if kind == "log1p":
    return np.log1p(x)
  return x


def _t_inv(y: np.ndarray, kind: str, cofactor: float) -> np.ndarray:
  if kind == "arcsinh":
    return np.sinh(y) * cofactor
  if kind == "log1p":
    return np.expm1(y)
  return y


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Per-channel transform parameters, stored in a store's attributes."""

  kind: str
  cofactor: float
  clip: list[float]
  mean: list[float]
  std: list[float]

  def forward(self, x: np.ndarray) -> np.ndarray:
    """Counts [..., C] -> normalised values [..., C] float32."""
    y = np.clip(_t(x.astype(np.float32), self.kind, self.cofactor), 0.0,
                np.asarray(self.clip, np.float32))
    return ((y - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(
        np.float32)

  def inverse(self, z: np.ndarray) -> np.ndarray:
    """Normalised values [..., C] -> counts [..., C] (never negative)."""
    y = z * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)
    y = np.clip(y, 0.0, np.asarray(self.clip, np.float32))
    return _t_inv(y, self.kind, self.cofactor).astype(np.float32)

  def bounds(self) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (lo, hi) of normalised values: zero counts and the clip."""
    mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
    return -mean / std, (np.asarray(self.clip, np.float32) - mean) / std

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Normalizer":
    return cls(**d)


# Per-FOV standardisation: "fov" of the contextual network's input only, "fov_targets" of
# the diffused targets too (see `typical_fov_stats` for how outputs get back to units).
CONTEXT_NORMS = ("global", "fov", "fov_targets")
FOV_NORMS = ("fov", "fov_targets")
# A channel nearly absent from a FOV keeps this std (in globally normalised units, where
# the training pixels have std 1), so its few bright pixels are not blown up into noise.
FOV_STD_FLOOR = 0.1


def dihedral(a: np.ndarray, view: int, *, inverse: bool = False) -> np.ndarray:
  """One of the 8 flips / right-angle rotations of [..., H, W, C] images (tissue has no
  orientation): view = k + 4 * flip rotates by k quarter turns, then flips the width axis
  if flip. inverse=True undoes the view."""
  k, flip = view % 4, view // 4 % 2
  if not inverse:
    a = np.rot90(a, k, axes=(-3, -2))
  if flip:
    a = a[..., ::-1, :]
  return np.rot90(a, -k, axes=(-3, -2)) if inverse else a


def fov_stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """image [H, W, C] normalised -> (mean [C], std [C]) over its pixels, std floored.

  FOVs differ in overall intensity (staining, acquisition), so the condition reads better
  as each observed channel relative to its own FOV; the targets stay in global units.
  """
  pix = image.reshape(-1, image.shape[-1]).astype(np.float64)
  return (pix.mean(0).astype(np.float32),
          np.maximum(pix.std(0), FOV_STD_FLOOR).astype(np.float32))


def typical_fov_stats(attrs: dict, splits: Sequence[str] = ("train",)
                      ) -> tuple[list[float], list[float]]:
  """A store's (mean [C], std [C]) averaged over the FOVs of the splits a model trained on.

  A model trained on per-FOV standardised targets ("fov_targets") outputs its missing
  channels in units of their FOV's mean and std, which an imputed FOV cannot know: they
  go back to the dataset's units with these, the average of the FOVs it saw. In a union
  store each channel averages only the FOVs whose panel measured it.
  """
  fov = np.asarray(attrs.get("sample_fov", attrs.get("tile_fov")))
  seen = np.unique(fov[in_splits(attrs, splits)])
  mean = np.asarray(attrs["fov_mean"], np.float64)[seen]
  std = np.asarray(attrs["fov_std"], np.float64)[seen]
  weight = np.ones_like(mean)
  if "panel_present" in attrs:
    panel_of = np.zeros(len(attrs["fov_mean"]), int)
    panel_of[fov] = attrs["sample_panel"]
    weight = np.asarray(attrs["panel_present"], np.float64)[panel_of[seen]]
  n = np.maximum(weight.sum(0), 1.0)  # a channel no FOV measured: mean 0, std 1
  mean = (weight * mean).sum(0) / n
  std = np.where(weight.any(0), (weight * std).sum(0) / n, 1.0)
  return mean.astype(np.float32).tolist(), std.astype(np.float32).tolist()


def fit_normalizer(images: Sequence[np.ndarray], *, kind: str = "arcsinh", cofactor: float = 5.0,
                   clip_percentile: float = 99.9, max_pixels: int = 2_000_000,
                   seed: int = 0) -> Normalizer:
  """Fits on training images, each [H, W, C] counts; percentiles on a pixel subsample."""
  if kind not in TRANSFORMS:
    raise ValueError(f"unknown transform {kind!r}; choose from {TRANSFORMS}")
  if not 0 < clip_percentile <= 100:
    raise ValueError(f"clip percentile must be in (0, 100], got {clip_percentile}")
  rng = np.random.default_rng(seed)
  c = images[0].shape[-1]
  pix = np.concatenate([im.reshape(-1, c) for im in images])
  if len(pix) > max_pixels:
    pix = pix[rng.choice(len(pix), max_pixels, replace=False)]
  y = _t(pix.astype(np.float32), kind, cofactor)
  hi = np.percentile(y, clip_percentile, axis=0)
  hi = np.where(hi > 0, hi, np.maximum(y.max(0), 1e-6))  # a sparse channel keeps its range
  y = np.clip(y, 0.0, hi)
  mean, std = y.mean(0), y.std(0)
  std = np.where(std > 1e-6, std, 1.0)
  return Normalizer(kind, float(cofactor), hi.astype(float).tolist(), mean.astype(float).tolist(),
                    std.astype(float).tolist())
