"""A rough nuclear segmentation, for when no cell mask is at hand.

The nuclear channel is compressed (arcsinh) and smoothed (Gaussian), thresholded by Otsu,
holes filled and specks dropped; touching nuclei are split by a watershed of the distance
transform from its peaks. It sees nuclei only and knows little of crowded tissue:
steinbock, Mesmer or Cellpose give far better masks, and this is a fallback for a first
per-cell table, not a segmentation to analyse.
"""

from __future__ import annotations

import numpy as np


def segment_nuclei(nuclear: np.ndarray, *, diameter: float = 10.0,
                   expand: int = 0) -> np.ndarray:
  """nuclear [H, W] (counts of a DNA / histone channel) -> labels [H, W] int32, 0 the
  background.

  diameter: a typical nucleus's, in pixels: it sets the smoothing (sigma diameter / 6),
  the smallest object kept (a quarter of a nucleus's area) and how close two nuclei's
  centres may be (diameter / 2). expand: grow each nucleus by this many pixels (without
  overlap) to take in some cytoplasm and membrane.
  """
  from scipy import ndimage
  from skimage import feature, filters, measure, segmentation
  if nuclear.ndim != 2:
    raise ValueError(f"the nuclear channel must be one 2-D plane, got shape {nuclear.shape}")
  if diameter < 2:
    raise ValueError(f"the nucleus diameter must be at least 2 pixels, got {diameter}")
  smooth = filters.gaussian(np.arcsinh(nuclear.astype(np.float32)), sigma=diameter / 6)
  if np.ptp(smooth) == 0:
    return np.zeros(nuclear.shape, np.int32)
  fg = smooth > filters.threshold_otsu(smooth)
  objects = measure.label(ndimage.binary_fill_holes(fg))  # [H, W]
  sizes = np.bincount(objects.ravel())
  keep = sizes >= np.pi * diameter ** 2 / 16  # a quarter of a nucleus's area
  keep[0] = False
  objects[~keep[objects]] = 0
  fg = objects > 0
  dist = ndimage.distance_transform_edt(fg)  # [H, W]
  peaks = feature.peak_local_max(dist, min_distance=max(1, int(diameter / 2)),
                                 labels=objects, exclude_border=False)  # [N, 2]
  markers = np.zeros(nuclear.shape, np.int32)
  markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
  labels = segmentation.watershed(-dist, markers, mask=fg).astype(np.int32)
  if expand > 0:
    labels = segmentation.expand_labels(labels, expand).astype(np.int32)
  return labels
