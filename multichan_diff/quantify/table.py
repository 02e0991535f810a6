"""Per-cell tables: the mean of every channel over each cell of a label image, with the
posterior spread of the imputed channels, as one AnnData for scanpy / squidpy.

The observed channels are read from the imputed file, which holds them exactly as measured
(binned to the model's pixel size, see `impute.images`): every channel is then averaged
over the same pixels of the same grid, and no measured FOV is needed. Everything is read
and checked before anything is written, so bad input leaves no file behind.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from multichan_diff.data import panels, readers, store
from multichan_diff.impute import provenance

# A mask file of FOV `f` in a folder of masks: f.tif(f) (steinbock), f_mask(s), f_labels,
# f_cp_masks (Cellpose), f_whole_cell (Mesmer / ark).
MASK_SUFFIXES = ("", "_mask", "_masks", "_labels", "_cp_masks", "_whole_cell")
STD_SUFFIX = "_std"


@dataclasses.dataclass(frozen=True)
class Source:
  """One FOV's files: the imputed image, its std image (or None), its mask (or None when
  segmented)."""

  name: str
  image: str
  std: str | None
  mask: str | None


def cell_means(labels: np.ndarray, planes: np.ndarray) -> tuple:
  """labels [H, W] int (0 = background), planes [C, H, W] -> (obs, means [N, C] float32).

  obs: a DataFrame of the N cells in label order: label, area (pixels), centroid_y,
  centroid_x (the mean pixel row and column, as scikit-image's regionprops). One bincount
  per channel: no loop over cells.
  """
  import pandas as pd
  h, w = labels.shape
  flat = labels.ravel()
  inside = np.flatnonzero(flat)  # [P] the cells' pixels
  ids, cell = np.unique(flat[inside], return_inverse=True)  # [N], [P]
  area = np.bincount(cell, minlength=len(ids)).astype(np.float64)  # [N]
  mean = lambda values: np.bincount(cell, weights=values, minlength=len(ids)) / area
  ys, xs = np.divmod(inside, w)
  obs = pd.DataFrame({"label": ids.astype(np.int64), "area": area.astype(np.int64),
                      "centroid_y": mean(ys), "centroid_x": mean(xs)})
  means = np.empty((len(ids), len(planes)), np.float32)
  for c, plane in enumerate(planes):
    means[:, c] = mean(plane.reshape(h * w)[inside].astype(np.float64))
  return obs, means


def check_labels(labels: np.ndarray, path: str, shape: tuple[int, int]) -> np.ndarray:
  """A label image as read -> [H, W] labels, or a ValueError naming `path` and the problem."""
  labels = np.squeeze(labels)
  if labels.ndim != 2:
    raise ValueError(f"{path}: a cell mask is one 2-D label image, got shape {labels.shape}")
  if labels.dtype == bool:
    raise ValueError(f"{path}: a binary (bool) mask, not a label image; give each cell its "
                     "own integer (e.g. skimage.measure.label)")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{path}: the mask's pixels are {labels.dtype}, not integers; a label "
                     "image holds one integer per cell (0 = background)")
  if labels.shape != tuple(shape):
    h, w = shape
    hint = ""
    if labels.shape[0] >= h and labels.shape[0] // h == labels.shape[1] // w > 1:
      hint = (f"; the imputed image is at the model's pixel size (its input binned, here "
              f"apparently by {labels.shape[0] // h}): segment at that size")
    raise ValueError(f"{path}: the mask is {labels.shape[0]} x {labels.shape[1]} pixels but "
                     f"the image is {h} x {w}{hint}")
  if labels.min() < 0:
    raise ValueError(f"{path}: {int((labels < 0).sum())} negative label(s); labels are 0 "
                     "(background) or positive")
  if not labels.any():
    raise ValueError(f"{path}: the mask holds no cells (every pixel is 0)")
  return labels


def read_tiff_mask(path: str) -> np.ndarray:
  """A label TIFF (steinbock, Mesmer, Cellpose) as stored, or a ValueError naming it."""
  import tifffile
  try:
    return tifffile.imread(path)
  except Exception as e:  # tifffile raises several types for broken files
    raise ValueError(f"{path}: cannot read as a TIFF mask ({type(e).__name__}: {e})") from e


def read_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
  """A label TIFF -> [H, W] labels, checked against `shape`."""
  return check_labels(read_tiff_mask(path), path, shape)


def nuclear_channel(spec: str) -> str:
  """`nuclear:CHANNEL` -> CHANNEL."""
  kind, _, channel = spec.partition(":")
  if kind != "nuclear" or not channel.strip():
    raise ValueError(f"--segment takes nuclear:CHANNEL (e.g. nuclear:HH3), got {spec!r}")
  return channel.strip()


def _is_tiff(name: str) -> bool:
  return name.lower().endswith(readers.TIFF_SUFFIXES)


def _tiffs(folder: str) -> dict[str, str]:
  """FOV name -> path of a folder's TIFF files."""
  return {readers.fov_name(f): os.path.join(folder, f) for f in sorted(os.listdir(folder))
          if _is_tiff(f) and os.path.isfile(os.path.join(folder, f))}


def find_file(folder: str, fov: str, suffixes: Sequence[str], what: str) -> str | None:
  """The TIFF in `folder` named FOV + one of `suffixes`, None if there is none (two: an
  error naming both)."""
  files = _tiffs(folder)
  hits = [files[fov + s] for s in suffixes if fov + s in files]
  if len(hits) > 1:
    raise ValueError(f"{folder}: more than one {what} for FOV {fov!r}: "
                     f"{[os.path.basename(h) for h in hits]}")
  return hits[0] if hits else None


def find_sources(input_path: str, mask: str | None, std: str | None) -> list[Source]:
  """The FOVs of `input_path` (an imputed OME-TIFF or a folder of them), each matched by
  name to its std image and its mask."""
  if os.path.isdir(input_path):
    images = {n: p for n, p in _tiffs(input_path).items() if not n.endswith(STD_SUFFIX)}
    if not images:
      zarr = any(e.endswith(".ome.zarr") for e in os.listdir(input_path))
      raise ValueError(f"{input_path}: no imputed OME-TIFFs (<fov>.ome.tif) in this folder"
                       + ("; OME-Zarr images are not read here" if zarr else ""))
  elif os.path.isfile(input_path):
    name = readers.fov_name(input_path)
    if name.endswith(STD_SUFFIX):
      raise ValueError(f"{input_path}: a std image; give the imputed image {name[:-4]}"
                       ".ome.tif (its std is found beside it, or pass --std)")
    images = {name: input_path}
  else:
    raise ValueError(f"{input_path}: no such file or folder")
  if mask is not None and not os.path.exists(mask):
    raise ValueError(f"{mask}: no such mask file or folder")
  if mask is not None and os.path.isfile(mask) and len(images) > 1:
    raise ValueError(f"{mask}: one mask file for a folder of {len(images)} FOVs; give a "
                     "folder of masks named by FOV")
  if std is not None and not os.path.exists(std):
    raise ValueError(f"{std}: no such std file or folder")
  if std is not None and os.path.isfile(std) and len(images) > 1:
    raise ValueError(f"{std}: one std file for a folder of {len(images)} FOVs; give the "
                     "folder of <fov>_std.ome.tif files")
  sources = []
  for name, path in images.items():
    if std is None:
      std_path = find_file(os.path.dirname(path) or ".", name, (STD_SUFFIX,), "std image")
    elif os.path.isdir(std):
      std_path = find_file(std, name, (STD_SUFFIX,), "std image")
      if std_path is None:
        raise ValueError(f"{std}: no {name}{STD_SUFFIX}.ome.tif for the FOV {name!r}")
    else:
      std_path = std
    mask_path = None
    if mask is not None and os.path.isdir(mask):
      mask_path = find_file(mask, name, MASK_SUFFIXES, "mask")
      if mask_path is None:
        held = sorted(_tiffs(mask)) or ["no TIFFs"]
        raise ValueError(f"{mask}: no mask for the FOV {name!r} (looked for "
                         f"{name}[{'|'.join(s for s in MASK_SUFFIXES if s)}].tif[f]); the "
                         f"folder holds: {', '.join(held)}")
    elif mask is not None:
      mask_path = mask
    sources.append(Source(name, path, std_path, mask_path))
  with_std = [s.name for s in sources if s.std]
  if with_std and len(with_std) != len(sources):
    lacking = [s.name for s in sources if not s.std]
    raise ValueError(f"{input_path}: FOVs {with_std} have a std image but {lacking} do not; "
                     "all or none")
  return sources


def imputed_channels(channels: list[str], recorded: list[str] | None, path: str, *,
                     observed: Sequence[str] = (), missing: Sequence[str] = ()) -> np.ndarray:
  """The [C] bool mask of imputed channels: as the file records it (impute writes the
  record), else from --observed / --missing; both must agree where both are given."""
  if observed and missing:
    raise ValueError("give one of --observed or --missing, not both")
  given = None
  try:
    if observed:
      given = np.ones(len(channels), bool)
      given[panels.match(list(observed), channels)] = False
    elif missing:
      given = np.zeros(len(channels), bool)
      given[panels.match(list(missing), channels)] = True
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e
  if recorded is None:
    if given is None:
      raise ValueError(f"{path}: the file does not record which channels were imputed (not "
                       "written by this version of `multichan-diff impute`); pass --missing "
                       "or --observed")
    return given
  unknown = [n for n in recorded if n not in channels]
  if unknown:
    raise ValueError(f"{path}: records imputed channel(s) {unknown} that it does not hold")
  mask = np.isin(channels, recorded)
  if given is not None and (given != mask).any():
    raise ValueError(f"{path}: records {recorded} as imputed, but --observed / --missing "
                     f"give {[n for n, g in zip(channels, given) if g]}")
  return mask


def _read_image(path: str) -> tuple[readers.FOV, list[str] | None]:
  import tifffile
  fov = readers.read_multichannel_tiff(path)
  with tifffile.TiffFile(path) as tf:
    xml = tf.ome_metadata if tf.is_ome else None
  return fov, provenance.read_imputed(xml, path)


def _quantify_fov(src: Source, *, segment: str | None, diameter: float, expand: int,
                  observed: Sequence[str], missing: Sequence[str]) -> dict:
  """One FOV's table, every input read and checked."""
  from multichan_diff.quantify.segment import segment_nuclei
  fov, recorded = _read_image(src.image)
  imputed = imputed_channels(fov.channels, recorded, src.image, observed=observed,
                             missing=missing)
  shape = fov.image.shape[1:]
  std = None
  if src.std:
    sfov = readers.read_multichannel_tiff(src.std)
    if sfov.channels != fov.channels:
      raise ValueError(f"{src.std}: its channels differ from those of {src.image}")
    if sfov.image.shape != fov.image.shape:
      raise ValueError(f"{src.std}: {sfov.image.shape[1]} x {sfov.image.shape[2]} pixels but "
                       f"{src.image} is {shape[0]} x {shape[1]}")
    spread = [n for n, i, s in zip(fov.channels, imputed, sfov.image) if not i and s.any()]
    if spread:
      raise ValueError(f"{src.std}: channel(s) {spread} have a posterior spread, so they were "
                       "imputed, yet are taken as observed")
    std = sfov.image
  if segment is None:
    labels = read_mask(src.mask, shape)
    where = src.mask
  else:
    channel = nuclear_channel(segment)
    try:
      c = panels.match([channel], fov.channels)[0]
    except ValueError as e:
      raise ValueError(f"{src.image}: --segment {segment}: {e}") from e
    labels = segment_nuclei(fov.image[c], diameter=diameter, expand=expand)
    if not labels.any():
      raise ValueError(f"{src.image}: --segment {segment} found no nuclei")
    where = f"{segment} (diameter {diameter:g}, expand {expand})"
  obs, means = cell_means(labels, fov.image)
  obs.insert(0, "fov", src.name)
  stds = None
  if std is not None:
    stds = np.full(means.shape, np.nan, np.float32)  # observed: NaN, no posterior spread
    stds[:, imputed] = cell_means(labels, std[imputed])[1]
  return {"name": src.name, "channels": fov.channels, "imputed": imputed, "obs": obs,
          "X": means, "std": stds, "image": src.image, "std_path": src.std or "",
          "mask": where}


def _assemble(tables: list[dict]):
  import anndata
  import pandas as pd
  first = tables[0]
  for t in tables[1:]:
    if t["channels"] != first["channels"]:
      raise ValueError(f"{t['image']}: its channels differ from {first['image']}'s (all FOVs "
                       "of one table must share one panel)")
    if (t["imputed"] != first["imputed"]).any():
      raise ValueError(f"{t['image']}: its imputed channels differ from {first['image']}'s "
                       "(one table has one `imputed` per channel)")
  obs = pd.concat([t["obs"] for t in tables], ignore_index=True)
  obs.index = [f"{f}_{l}" for f, l in zip(obs["fov"], obs["label"])]
  obs["fov"] = pd.Categorical(obs["fov"], categories=[t["name"] for t in tables])
  var = pd.DataFrame({"imputed": first["imputed"]}, index=first["channels"])
  adata = anndata.AnnData(np.concatenate([t["X"] for t in tables]), obs=obs, var=var)
  if first["std"] is not None:
    adata.layers["std"] = np.concatenate([t["std"] for t in tables])
  adata.obsm["spatial"] = obs[["centroid_x", "centroid_y"]].to_numpy(np.float64)  # [N, (x, y)]
  adata.uns["quantify"] = {"fovs": [t["name"] for t in tables],
                           "images": [t["image"] for t in tables],
                           "stds": [t["std_path"] for t in tables],
                           "masks": [t["mask"] for t in tables],
                           "std_of_observed": "NaN"}
  return adata


def quantify(input_path: str, out: str, *, mask: str | None = None, std: str | None = None,
             segment: str | None = None, nuclear_diameter: float = 10.0, expand: int = 0,
             observed: Sequence[str] = (), missing: Sequence[str] = (),
             overwrite: bool = False) -> dict:
  """Writes `out`, an AnnData .h5ad of every cell of every FOV of `input_path` (an imputed
  <fov>.ome.tif, or a folder of them):

  X [N, C] the mean of each channel over the cell's pixels; var['imputed']; layers['std']
  (with std images) the mean over the cell's pixels of the imputed channels' per-pixel
  posterior std, NaN for observed channels: an upper bound on the std of the cell's mean;
  obs fov, label, area, centroid_y, centroid_x; obsm['spatial'] the centroids as (x, y).

  mask: a label TIFF, or a folder of them named by FOV (see MASK_SUFFIXES); segment:
  `nuclear:CHANNEL` instead, a rough fallback (see `quantify.segment`).
  """
  if (mask is None) == (segment is None):
    raise ValueError("give one of --mask (a label image or a folder of them) or --segment "
                     "nuclear:CHANNEL")
  if segment is not None:
    nuclear_channel(segment)
    if nuclear_diameter < 2 or expand < 0:
      raise ValueError(f"--nuclear-diameter must be at least 2 pixels and --expand at least 0, "
                       f"got {nuclear_diameter:g} and {expand}")
  if not out.lower().endswith(".h5ad"):
    raise ValueError(f"{out}: the output is an AnnData file; name it <name>.h5ad")
  store.check_writable(out, overwrite)
  sources = find_sources(input_path, mask, std)
  tables = [_quantify_fov(s, segment=segment, diameter=nuclear_diameter, expand=expand,
                          observed=observed, missing=missing) for s in sources]
  adata = _assemble(tables)
  out = os.path.abspath(out)
  with store.atomic_file(out) as tmp:
    adata.write_h5ad(tmp)
  return {"out": out, "fovs": [t["name"] for t in tables], "cells": int(adata.n_obs),
          "channels": int(adata.n_vars),
          "imputed": list(adata.var_names[adata.var["imputed"].to_numpy()]),
          "std": "std" in adata.layers}
