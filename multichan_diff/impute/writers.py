"""How `impute` writes an imputed FOV, one function per file format chosen by name.

Each writer takes the FOV's point estimate and per-channel std ([H, W, C] float32, the
model's panel) and writes them as two images side by side in the output folder: the std
beside its mean under the same name plus `_std`, so that every viewer opens either alone.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import numpy as np

from multichan_diff.impute import provenance

# (folder, fov name, mean [H, W, C], std [H, W, C], channel names, imputed [C] bool)
Writer = Callable[[str, str, np.ndarray, np.ndarray, list[str], np.ndarray], None]

MIN_LEVEL_SIDE = 32  # an OME-Zarr level's shorter side: no smaller level than this
MAX_LEVELS = 3
COLORS = ("FF0000", "00FF00", "0000FF", "FFFF00", "FF00FF", "00FFFF", "FFFFFF", "FF8000")


def _tiff(path: str, image_hwc: np.ndarray, names: list[str], imputed: list[str]) -> None:
  import tifffile
  tifffile.imwrite(path, np.moveaxis(image_hwc, -1, 0).astype(np.float32), ome=True,
                   metadata={"axes": "CYX", "Channel": {"Name": list(names)},
                             **provenance.ome_metadata(imputed)})


def write_ome_tiff(folder: str, fov: str, mean: np.ndarray, std: np.ndarray,
                   names: list[str], imputed: np.ndarray) -> None:
  """<fov>.ome.tif and <fov>_std.ome.tif: one float32 C, Y, X plane stack each, named, with
  the record of the imputed channels (`provenance`)."""
  which = [n for n, m in zip(names, imputed) if m]
  _tiff(os.path.join(folder, f"{fov}.ome.tif"), mean, names, which)
  _tiff(os.path.join(folder, f"{fov}_std.ome.tif"), std, names, which)


def pyramid_levels(h: int, w: int) -> int:
  """Levels of 2x downsampling, while the shorter side stays at least MIN_LEVEL_SIDE."""
  levels = 1
  while levels < MAX_LEVELS and min(h, w) >> levels >= MIN_LEVEL_SIDE:
    levels += 1
  return levels


def _omero(image_cyx: np.ndarray, names: list[str]) -> dict:
  """Plain channel names as labels; a display window from each channel's min to its 99.9th
  percentile (bright single pixels would leave the rest dark), never empty."""
  channels = []
  for i, (name, plane) in enumerate(zip(names, image_cyx)):
    lo, hi = float(plane.min()), float(plane.max())
    end = float(np.percentile(plane, 99.9))
    end = end if end > lo else (hi if hi > lo else lo + 1.0)
    channels.append({"label": name, "color": COLORS[i % len(COLORS)], "active": True,
                     "window": {"min": lo, "max": max(hi, end), "start": lo, "end": end}})
  return {"channels": channels}


def _zarr(path: str, name: str, image_hwc: np.ndarray, names: list[str], info: dict) -> None:
  import zarr
  from ome_zarr.scale import Methods
  with warnings.catch_warnings():  # ome-zarr 0.18 builds a deprecated default on import
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.writer import write_image
  image = np.ascontiguousarray(np.moveaxis(image_hwc, -1, 0), np.float32)
  _, h, w = image.shape
  levels = pyramid_levels(h, w)
  chunks = [{"chunks": (1, min(h >> i, 512), min(w >> i, 512))} for i in range(levels)]
  group = zarr.open_group(path, mode="w-", zarr_format=3)  # NGFF 0.5 is zarr v3
  # Local means: a coarser level's pixel is the mean of the values it covers, as binning.
  write_image(image, group, scale_factors=[2 ** i for i in range(1, levels)], axes="cyx",
              method=Methods.LOCAL_MEAN, storage_options=chunks, name=name,
              omero=_omero(image, names))
  group.attrs["multichan_diff"] = info


def write_ome_zarr(folder: str, fov: str, mean: np.ndarray, std: np.ndarray,
                   names: list[str], imputed: np.ndarray) -> None:
  """<fov>.ome.zarr and <fov>_std.ome.zarr: OME-Zarr (NGFF 0.5) images with a small
  pyramid; `multichan_diff` attributes name the observed and imputed channels."""
  split = {"observed": [n for n, m in zip(names, imputed) if not m],
           "imputed": [n for n, m in zip(names, imputed) if m]}
  _zarr(os.path.join(folder, f"{fov}.ome.zarr"), fov, mean, names,
        {"image": "mean", **split, "std": f"../{fov}_std.ome.zarr"})
  _zarr(os.path.join(folder, f"{fov}_std.ome.zarr"), f"{fov}_std", std, names,
        {"image": "std", **split, "mean": f"../{fov}.ome.zarr"})


WRITERS: dict[str, Writer] = {"ome-tiff": write_ome_tiff, "ome-zarr": write_ome_zarr}


def get_writer(name: str) -> Writer:
  if name not in WRITERS:
    raise ValueError(f"unknown output format {name!r}; choose from {sorted(WRITERS)}")
  return WRITERS[name]
