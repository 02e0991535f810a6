"""grain input pipeline: store -> shuffle -> random channel mask -> batch -> host shard.

Each record is a dict: `x0` [H, W, C] float32, `present` [C] bool (the channels its
dataset measured) and `observed` [C] bool (the random mask of Algorithm 1, drawn from the
record's own seed, so a run is reproducible and a restored iterator resumes exactly).
With `context_norm = "fov"`, image records also carry `cond_shift` and `cond_scale` [C]:
their FOV's channel mean and std, with which the condition is standardised. With
"fov_targets", `x0` itself comes standardised by them (condition and targets alike).

A latent store (`prepare latent`) holds k features per channel: its records' `x0`,
`present`, `observed` and stats have C*k entries, and the mask is drawn per channel, so a
channel's k features are observed or missing together.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Sequence

import grain
import jax
import numpy as np

from multichan_diff.data import store
from multichan_diff.data.store import SPLITS
from multichan_diff.data.transforms import CONTEXT_NORMS, FOV_NORMS, Normalizer, dihedral
from multichan_diff.diffusion.masking import sample_observed_np
from multichan_diff.model.latent import expand


class StoreSource(grain.sources.RandomAccessDataSource):
  """Random access to one split of a store (or several, or all with None). Opened lazily,
  picklable, thread-safe."""

  def __init__(self, path: str, split: str | Sequence[str] | None = "train",
               context_norm: str = "global"):
    if context_norm not in CONTEXT_NORMS:
      raise ValueError(f"unknown context_norm {context_norm!r}; choose from {CONTEXT_NORMS}")
    self.path = os.path.abspath(path)
    self._arrays = None
    self._lock = threading.Lock()
    attrs = store.read_attributes(self.path)
    self.kind = attrs["kind"]
    self.fields = ["x0", "cond"] if self.kind == "cells" else ["x0"]
    self.channels: list[str] = attrs["channels"]
    self.space = attrs.get("space", "pixel")
    self.group = attrs["latent"]["k"] if self.space == "latent" else 1  # features / channel
    self.normalizer = (Normalizer.from_dict(attrs["normalizer"])
                       if attrs.get("values") == "counts" else None)
    if split is None:
      self.indices = np.arange(len(attrs["sample_split"]))
    else:
      splits = (split,) if isinstance(split, str) else tuple(split)
      if not splits or any(s not in SPLITS for s in splits):
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
      self.indices = np.flatnonzero(store.in_splits(attrs, splits))
      if not len(self.indices):
        raise ValueError(f"{self.path}: the {'+'.join(splits)} split has no samples")
    # Union stores: each sample's panel says which channels it measured.
    if "panel_present" in attrs:
      panel = np.asarray(attrs["sample_panel"])[self.indices]
      self.present = np.asarray(attrs["panel_present"], bool)[panel]
    else:
      self.present = np.ones((len(self.indices), len(self.channels)), bool)
    self.present = expand(self.present, self.group, np)
    self.fov_stats = None
    self.standardise_targets = context_norm == "fov_targets"
    if context_norm in FOV_NORMS and self.kind == "images":
      if "fov_mean" not in attrs:
        raise ValueError(f"{self.path}: the store has no per-FOV channel statistics, which "
                         f"context_norm {context_norm!r} needs; prepare it again with this "
                         "version")
      fov = np.asarray(attrs.get("sample_fov", attrs.get("tile_fov")))[self.indices]
      self.fov_stats = (np.asarray(attrs["fov_mean"], np.float32)[fov],
                        np.asarray(attrs["fov_std"], np.float32)[fov])

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_arrays"] = None
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _open(self):
    if self._arrays is None:
      with self._lock:
        if self._arrays is None:
          self._arrays = {f: store.open_array(self.path, f) for f in self.fields}
    return self._arrays

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    j = int(self.indices[i])
    arrays = self._open()
    record = {f: np.asarray(arrays[f][j].read().result(), np.float32) for f in self.fields}
    if self.normalizer is not None:  # a counts store: normalise on reading
      record["x0"] = self.normalizer.forward(record["x0"])
    record["present"] = self.present[i]
    if self.fov_stats is None:
      return record
    shift, scale = self.fov_stats[0][i], self.fov_stats[1][i]
    if self.standardise_targets:
      record["x0"] = (record["x0"] - shift) / scale
    else:
      record["cond_shift"], record["cond_scale"] = shift, scale
    return record


class RandomChannelMask(grain.transforms.RandomMap):
  """Algorithm 1 per record: each present channel observed with probability p (all
  `group` features of a channel together)."""

  def __init__(self, p: float | tuple[float, float], group: int = 1):
    self.p = tuple(p) if isinstance(p, (list, tuple)) else float(p)
    self.group = group

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    observed = sample_observed_np(rng, record["present"][::self.group], self.p)
    return {**record, "observed": expand(observed, self.group, np)}


class RandomDihedral(grain.transforms.RandomMap):
  """One of the 8 flips / right-angle rotations of an image tile: tissue has no orientation."""

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    view = int(rng.integers(4)) + 4 * int(rng.integers(2))
    return {**record, "x0": np.ascontiguousarray(dihedral(record["x0"], view))}


def make_dataset(path: str, split: str | Sequence[str] = "train", *, global_batch_size: int,
                 seed: int = 0, mask_p: float | tuple[float, float] = (0.1, 0.9),
                 augment: bool = False, shuffle: bool = True, context_norm: str = "global",
                 num_epochs: int | None = None, process_index: int | None = None,
                 process_count: int | None = None) -> grain.MapDataset:
  """The batched MapDataset of this host's share: global_batch_size / process_count per batch."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if global_batch_size % pc:
    raise ValueError(f"global batch {global_batch_size} does not split over {pc} hosts")
  source = StoreSource(path, split, context_norm)
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  if source.kind == "images":  # cells: genes always observed, proteins always predicted
    ds = ds.random_map(RandomChannelMask(mask_p, source.group), seed=seed)
    if augment and source.space == "latent":
      raise ValueError(f"{path}: a latent store cannot be augmented by flips and rotations "
                       "(the encoder does not commute with them); set data.augment=False")
    if augment:
      ds = ds.random_map(RandomDihedral(), seed=seed + 1)
  ds = ds[pi::pc]
  return ds.batch(global_batch_size // pc, drop_remainder=True)


def make_iterator(dataset: grain.MapDataset, num_threads: int = 8, prefetch: int = 64):
  """A checkpointable iterator (`get_state` / `set_state`) reading with in-process threads."""
  return iter(dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """This host's batch -> global arrays laid out by `sharding` (batch axis over devices)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
