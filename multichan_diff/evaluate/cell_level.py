"""Cell-level scores of image imputation: Pearson r over cells of the per-cell means,
imputed against measured, per channel; what biologists analyse after segmentation.

The cells are label images of the evaluated FOVs: the user's masks (steinbock, Mesmer,
Cellpose; at the store's pixel size or at the source's, which is binned here by the store's
bin), or a rough nuclear segmentation (`quantify.segment`) of the store's nuclear channel.
Only pixels some stored tile covered count, and the means are in the store's units (the
normalised values the pixel scores use).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from multichan_diff.data import panels
from multichan_diff.evaluate import metrics
from multichan_diff.quantify.table import (MASK_SUFFIXES, cell_means, check_labels, find_file,
                                          nuclear_channel, read_tiff_mask)

# Nuclei are about 10 source pixels across: the default diameter at the store's pixel size.
SOURCE_NUCLEUS = 10.0


@dataclasses.dataclass
class Cells:
  """Labels [H, W] per evaluated FOV (0 = background or not covered), and where they came
  from (for the report)."""
  labels: list[np.ndarray]
  source: str

  @property
  def count(self) -> int:
    return sum(len(np.unique(x[x > 0])) for x in self.labels)


def _to_store_pixels(labels: np.ndarray, path: str, shape: tuple[int, int], bin_size: int):
  """A mask at the store's pixel size (cropped to the FOV's covered extent `shape`) or at
  the source's (every bin-th pixel, from each bin's centre) -> [H, W] labels."""
  h, w = shape
  labels = check_labels(labels, path, labels.shape[-2:])  # a 2-D label image
  if bin_size > 1 and labels.shape[0] >= h * bin_size and labels.shape[1] >= w * bin_size:
    labels = labels[bin_size // 2::bin_size, bin_size // 2::bin_size]
  if labels.shape[0] < h or labels.shape[1] < w:
    raise ValueError(f"{path}: the mask is {labels.shape[0]} x {labels.shape[1]} pixels, "
                     f"smaller than the FOV's {h} x {w} at the store's pixel size (or "
                     f"{h * bin_size} x {w * bin_size} before binning by {bin_size})")
  return labels[:h, :w]


def read_cells(fovs, channels: list[str], *, bin_size: int, masks: str | None = None,
               segment: str | None = None, diameter: float | None = None) -> Cells:
  """The evaluated FOVs' (`images.FOVImage`) cells: from a folder of masks named by FOV,
  or by `segment` ("nuclear:CHANNEL") with nuclei `diameter` store pixels across (default
  10 source pixels, binned)."""
  from multichan_diff.quantify.segment import segment_nuclei
  if (masks is None) == (segment is None):
    raise ValueError("cell-level scores need either a folder of masks or --segment")
  labels = []
  if masks is not None:
    if not os.path.isdir(masks):
      raise ValueError(f"{masks}: not a folder; give a folder of label TIFFs named by FOV")
    for f in fovs:
      path = find_file(masks, f.name, MASK_SUFFIXES, "mask")
      if path is None:
        raise ValueError(f"{masks}: no mask for the FOV {f.name!r} (looked for "
                         f"{f.name}{{{','.join(MASK_SUFFIXES)}}}.tif[f])")
      labels.append(_to_store_pixels(np.squeeze(read_tiff_mask(path)), path, f.covered.shape,
                                     bin_size))
    source = f"masks in `{os.path.abspath(masks)}`"
  else:
    channel = nuclear_channel(segment)
    c = panels.match([channel], channels)[0]
    d = max(2.0, SOURCE_NUCLEUS / bin_size) if diameter is None else diameter
    labels = [segment_nuclei(f.image[..., c], diameter=d) for f in fovs]
    source = f"a rough nuclear segmentation ({segment}, nuclei {d:g} pixels across)"
  labels = [np.where(f.covered, x, 0) for x, f in zip(labels, fovs)]
  for x, f in zip(labels, fovs):
    if not x.any():
      raise ValueError(f"FOV {f.name}: no cell inside the stored tiles ({source})")
  return Cells(labels, source)


def cell_pearson(pred: list[np.ndarray], truth: list[np.ndarray], cells: Cells,
                 missing: np.ndarray) -> np.ndarray:
  """Per-FOV [H, W, C] predictions and truths -> [C_missing] Pearson r over all cells of
  the per-cell means."""
  means = lambda images: np.concatenate([cell_means(x, np.moveaxis(y[..., missing], -1, 0))[1]
                                         for x, y in zip(cells.labels, images)])
  return metrics.pearson(means(pred), means(truth))
