"""Covering an image of any size with overlapping tiles and blending them back.

Tiles are weighted by a smooth separable window (a raised sine, highest at the tile's centre,
never zero), so a pixel near one tile's border takes most of its value from the tile in which
it is central: no hard seams, and every pixel is covered by at least one tile.
"""

from __future__ import annotations

import numpy as np


def axis_origins(size: int, tile: int, overlap: int) -> list[int]:
  """Tile starts along one axis: stride `tile - overlap`, the last tile flush with the end."""
  if not 0 <= overlap < tile:
    raise ValueError(f"overlap must be in [0, {tile}), got {overlap}")
  if size <= tile:
    return [0]
  starts = list(range(0, size - tile, tile - overlap))
  return starts + [size - tile]


def origins(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int]]:
  return [(y, x) for y in axis_origins(h, tile, overlap) for x in axis_origins(w, tile, overlap)]


def window(tile: int) -> np.ndarray:
  """[tile, tile] weights: sin^2 along each axis at pixel centres, so strictly positive."""
  w = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
  return np.outer(w, w).astype(np.float32)


def pad_to_tile(image: np.ndarray, tile: int) -> np.ndarray:
  """[H, W, C] -> at least [tile, tile, C], reflecting (an image smaller than one tile)."""
  ph, pw = max(tile - image.shape[0], 0), max(tile - image.shape[1], 0)
  if not ph and not pw:
    return image
  mode = "reflect" if min(image.shape[:2]) > 1 else "edge"
  return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)


class Blender:
  """Accumulates weighted tiles [..., tile, tile, C] into images [..., H, W, C]."""

  def __init__(self, shape: tuple[int, ...], tile: int):
    self.sum = np.zeros(shape, np.float32)
    self.weight = np.zeros(shape[-3:-1] + (1,), np.float32)
    self.w = window(tile)[:, :, None]
    self.tile = tile

  def add(self, tiles: np.ndarray, origin: tuple[int, int]) -> None:
    y, x = origin
    t = self.tile
    self.sum[..., y:y + t, x:x + t, :] += tiles * self.w
    self.weight[y:y + t, x:x + t] += self.w

  def result(self) -> np.ndarray:
    return self.sum / self.weight
