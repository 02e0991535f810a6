"""Users' images to a training store: read, split by FOV, fit transforms on training FOVs,
tile, write. Each FOV goes to exactly one split, so no tile of a test FOV is ever trained on.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from multichan_diff.data import readers, store
from multichan_diff.data.store import SPLITS
from multichan_diff.data.transforms import fit_normalizer, fov_stats


def bin_image(image: np.ndarray, b: int, how: str = "mean") -> np.ndarray:
  """[H, W, C] -> [H // b, W // b, C] by summing or averaging b x b blocks (edges dropped)."""
  if b == 1:
    return image
  h, w, c = image.shape
  v = image[: h - h % b, : w - w % b].reshape(h // b, b, w // b, b, c)
  return v.sum((1, 3)) if how == "sum" else v.mean((1, 3))


def count_step(fovs, bin_size: int, bin_how: str) -> float | None:
  """The smallest positive value binned data can take when every pixel is a whole count
  (ion counts): one count over a bin's pixels when they are averaged. None otherwise."""
  if not all(np.array_equal(f.image, np.round(f.image)) for f in fovs):
    return None
  return 1.0 if bin_how == "sum" else 1.0 / bin_size ** 2


def tile_origins(h: int, w: int, tile: int, stride: int) -> list[tuple[int, int]]:
  return [(y, x) for y in range(0, h - tile + 1, stride) for x in range(0, w - tile + 1, stride)]


def signal_fraction(counts_tile: np.ndarray) -> float:
  """Tissue rule: the fraction of a tile's pixels with any positive count in any channel."""
  return float((counts_tile.sum(-1) > 0).mean())


def prepare_images(input_dir: str, out: str, *, panel_csv: str | None = None, tile: int = 64,
                   stride: int | None = None, bin_size: int = 1, bin_how: str = "mean",
                   transform: str = "arcsinh", cofactor: float = 5.0,
                   clip_percentile: float = 99.9, test_fovs: Sequence[str] = (),
                   val_fovs: Sequence[str] = (), min_signal: float = 0.0,
                   dtype: str = "float32", zero_nonfinite: bool = False,
                   drop_channels: Sequence[str] = (), overwrite: bool = False) -> dict:
  """Writes the store and returns a summary (tiles per split, channels). `drop_channels`
  leaves channels out of the panel before anything else reads them."""
  if tile < 1 or bin_size < 1:
    raise ValueError(f"--tile {tile}, --bin {bin_size}: tile and bin must be positive integers")
  stride = tile if stride is None else stride
  if not 1 <= stride <= tile:  # 0 would never move; more than a tile would skip pixels
    raise ValueError(f"--stride {stride}: a stride must be >= 1 and <= the tile size ({tile})")
  counts = dtype == "uint16"
  if counts and bin_size > 1 and bin_how != "sum":
    raise ValueError("a uint16 store holds integer counts: bin with --bin-how sum")
  store.check_writable(out, overwrite)
  panel = readers.read_panel_csv(panel_csv) if panel_csv else None
  fovs = readers.read_image_folder(input_dir, panel, zero_nonfinite, drop_channels)
  names = [f.name for f in fovs]
  for split_names, what in ((test_fovs, "test"), (val_fovs, "validation")):
    unknown = sorted(set(split_names) - set(names))
    if unknown:
      raise ValueError(f"{input_dir}: unknown {what} FOV(s) {unknown}; FOVs are {names}")
  if set(test_fovs) & set(val_fovs):
    raise ValueError(f"FOV(s) {sorted(set(test_fovs) & set(val_fovs))} are in both test and val")
  split_of = {n: "test" if n in test_fovs else "val" if n in val_fovs else "train" for n in names}
  if "train" not in split_of.values():
    raise ValueError("every FOV is in test or val; leave at least one for training")

  step = count_step(fovs, bin_size, bin_how)
  images = {f.name: bin_image(np.moveaxis(f.image, 0, -1), bin_size, bin_how) for f in fovs}
  for f in fovs:
    h, w, _ = images[f.name].shape
    if tile > min(h, w):
      raise ValueError(f"{f.sources[0]}: tile {tile} is larger than the image "
                       f"({h} x {w} after binning by {bin_size})")
  norm = fit_normalizer([images[n] for n in names if split_of[n] == "train"], kind=transform,
                        cofactor=cofactor, clip_percentile=clip_percentile)

  records = []  # (fov, y, x)
  for n in names:
    im = images[n]
    for y, x in tile_origins(im.shape[0], im.shape[1], tile, stride):
      if min_signal <= 0 or signal_fraction(im[y:y + tile, x:x + tile]) >= min_signal:
        records.append((n, y, x))
  if not records:
    raise ValueError(f"{input_dir}: no tile passed the tissue filter (min signal {min_signal})")
  channels = fovs[0].channels
  stats = [fov_stats(norm.forward(images[n])) for n in names]  # for context_norm = fov
  attrs = {
      "kind": "images", "channels": channels, "tile": tile, "stride": stride,
      "bin": bin_size, "bin_how": bin_how, "fovs": names,
      "dropped_channels": list(drop_channels),
      "splits": {s: [n for n in names if split_of[n] == s] for s in SPLITS},
      "tile_fov": [names.index(r[0]) for r in records],
      "tile_origin": [[r[1], r[2]] for r in records],
      "sample_split": [SPLITS.index(split_of[r[0]]) for r in records],
      "normalizer": norm.to_dict(), "min_signal": min_signal,
      "fov_mean": [m.tolist() for m, _ in stats], "fov_std": [sd.tolist() for _, sd in stats],
      "values": "counts" if counts else "normalized", "count_step": step,
      "sources": [{"path": os.path.abspath(p), "sha256": store.sha256(p)}
                  for f in fovs for p in f.sources],
  }
  with store.atomic_dir(out, overwrite) as tmp:
    store.create_group(tmp, attrs)
    arr = store.create_array(tmp, "x0", (len(records), tile, tile, len(channels)), dtype)
    batch = []
    start = 0
    for i, (n, y, x) in enumerate(records):
      t = images[n][y:y + tile, x:x + tile]
      if counts and t.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"FOV {n}: counts up to {t.max():.0f} do not fit a uint16 store")
      batch.append(np.rint(t) if counts else norm.forward(t))
      if len(batch) == 256 or i == len(records) - 1:
        store.write_samples(arr, np.stack(batch), start)
        start += len(batch)
        batch = []
  counts = {s: sum(1 for r in records if split_of[r[0]] == s) for s in SPLITS}
  return {"store": os.path.abspath(out), "tiles": counts, "channels": channels}


def prepare_union(stores: Sequence[str], out: str, *, name_map: str | None = None,
                  intersection: bool = False, overwrite: bool = False) -> dict:
  """Image stores with different panels -> one store over the union of their channels, or
  with `intersection` over only the channels every panel measured (the paper's Fig. 3b
  compares the two).

  Channels are matched by `panels.union` (spelling-insensitive, plus the name map). Each
  sample keeps its values on its own panel's channels, zeros elsewhere, and its panel's
  `present` mask; each panel keeps its own normaliser and FOV splits.
  """
  from multichan_diff.data import panels
  if len(stores) < 2:
    raise ValueError("a union needs at least two stores")
  store.check_writable(out, overwrite)
  nmap = panels.NameMap.read_csv(name_map) if name_map else panels.NameMap()
  attrs = [store.read_attributes(s) for s in stores]
  for s, a in zip(stores, attrs):
    if a["kind"] != "images":
      raise ValueError(f"{s}: only image stores can be joined (this one holds {a['kind']})")
    if a.get("values") == "counts":
      raise ValueError(f"{s}: holds raw counts (uint16); join float32 or bfloat16 stores")
    if a["tile"] != attrs[0]["tile"]:
      raise ValueError(f"{s}: tile {a['tile']} differs from {stores[0]}'s {attrs[0]['tile']}")
  u = panels.union([a["channels"] for a in attrs], nmap, labels=list(stores))
  names = u.shared if intersection else u.names
  if not names:
    raise ValueError(f"{', '.join(stores)}: the panels share no channel")
  pos = {n: i for i, n in enumerate(names)}
  # Per panel: each of its channels' place in the output (-1: dropped, not shared).
  index = [[pos.get(u.names[k], -1) for k in idx] for idx in u.indices]
  arrays = [store.open_array(s, "x0") for s in stores]
  stats = _union_fov_stats(attrs, index, len(names))
  n = sum(a.shape[0] for a in arrays)
  tile = attrs[0]["tile"]
  union_attrs = {
      "kind": "images", "channels": names, "tile": tile, "union_of": [
          {"store": os.path.abspath(s), "channels": a["channels"], "fovs": a["fovs"],
           "normalizer": a["normalizer"], "channel_index": idx}
          for s, a, idx in zip(stores, attrs, index)],
      "panel_present": [[i in idx for i in range(len(names))] for idx in index],
      "sample_panel": [i for i, a in enumerate(arrays) for _ in range(a.shape[0])],
      "sample_split": [v for a in attrs for v in a["sample_split"]],
      "sources": [src for a in attrs for src in a["sources"]],
      **stats,
  }
  steps = {a.get("count_step") for a in attrs}
  if len(steps) == 1:  # the panels' draws are counts alike
    union_attrs["count_step"] = steps.pop()
  with store.atomic_dir(out, overwrite) as tmp:
    store.create_group(tmp, union_attrs)
    dst = store.create_array(tmp, "x0", (n, tile, tile, len(names)))
    start = 0
    for arr, idx in zip(arrays, index):
      src, to = _kept(idx)
      for lo in range(0, arr.shape[0], 256):
        block = arr[lo:min(lo + 256, arr.shape[0])].read().result()
        full = np.zeros(block.shape[:-1] + (len(names),), np.float32)
        full[..., to] = block[..., src]
        store.write_samples(dst, full, start)
        start += len(block)
  return {"store": os.path.abspath(out), "channels": len(names), "shared": u.shared,
          "samples": n}


def _kept(index: Sequence[int]) -> tuple[list[int], list[int]]:
  """A panel's channel places in a union store (-1: dropped) -> (its kept channels,
  their places)."""
  src = [j for j, k in enumerate(index) if k >= 0]
  return src, [index[j] for j in src]


def _union_fov_stats(attrs, index, n_channels: int) -> dict:
  """Every panel's per-FOV channel stats on the union's channels (mean 0 and std 1 where
  a panel did not measure a channel) and each sample's FOV among them, or {} when some
  store predates them."""
  if not all("fov_mean" in a and "tile_fov" in a for a in attrs):
    return {}
  mean, std, sample_fov = [], [], []
  for a, idx in zip(attrs, index):
    src, to = _kept(idx)
    sample_fov += [len(mean) + f for f in a["tile_fov"]]
    for m, sd in zip(a["fov_mean"], a["fov_std"]):
      fm, fs = np.zeros(n_channels), np.ones(n_channels)
      fm[to], fs[to] = np.asarray(m)[src], np.asarray(sd)[src]
      mean.append(fm.tolist())
      std.append(fs.tolist())
  return {"fov_mean": mean, "fov_std": std, "sample_fov": sample_fov}
