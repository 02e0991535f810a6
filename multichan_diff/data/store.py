"""Zarr v3 stores through tensorstore: a group whose attributes describe the data, with
one array per field of a sample: `x0` [N, H, W, C] (the target panel) and, for cells,
`cond` [N, 1, 1, G] (the genes).

Stores are written to a temporary sibling path and renamed into place only when complete,
so a failed run leaves nothing half-written and an existing store is replaced atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np
import tensorstore as ts

# float32 / bfloat16 stores hold normalised values; uint16 stores hold raw counts, which the
# pipeline normalises on reading (half the bytes of bfloat16 would need, exact counts kept).
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "uint16": "uint16"}

SPLITS = ("train", "val", "test")  # the codes 0, 1, 2 of `sample_split`


def in_splits(attrs: dict, splits) -> np.ndarray:
  """[N] bool: which of a store's samples belong to any of `splits` (names in SPLITS)."""
  return np.isin(attrs["sample_split"], [SPLITS.index(s) for s in splits])


def sha256(path: str, chunk: int = 1 << 20) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def _spec(path: str) -> dict:
  return {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.abspath(path)}}


def check_writable(out: str, overwrite: bool) -> None:
  """Refuses an existing output without `overwrite` (checked before any slow work too)."""
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{os.path.abspath(out)}: already exists; pass --overwrite to "
                          "replace it")


@contextlib.contextmanager
def atomic_dir(out: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary directory that becomes `out` when the block succeeds."""
  out = os.path.abspath(out)
  check_writable(out, overwrite)
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=parent)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.exists(out):
    old = tempfile.mkdtemp(prefix=os.path.basename(out) + ".old-", dir=parent)
    os.rename(out, os.path.join(old, "store"))
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, out)


@contextlib.contextmanager
def atomic_file(out: str) -> Iterator[str]:
  """Yields a temporary file path beside `out` that replaces `out` when the block succeeds."""
  out = os.path.abspath(out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(out) + ".tmp-", dir=os.path.dirname(out))
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, out)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def create_group(path: str, attributes: dict[str, Any]) -> None:
  """A zarr v3 group: the store's root, holding its attributes."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "zarr.json"), "w") as f:
    json.dump({"zarr_format": 3, "node_type": "group", "attributes": attributes}, f)


def create_array(group: str, name: str, shape: tuple[int, ...],
                 dtype: str = "float32") -> ts.TensorStore:
  """A new zarr v3 array `group/name`, one sample ([1, ...]) per chunk."""
  if dtype not in DTYPES:
    raise ValueError(f"unknown store dtype {dtype!r}; choose from {sorted(DTYPES)}")
  spec = {**_spec(os.path.join(group, name)), "create": True, "metadata": {
      "shape": list(shape), "data_type": DTYPES[dtype],
      "chunk_grid": {"name": "regular",
                     "configuration": {"chunk_shape": [1, *shape[1:]]}}}}
  return ts.open(spec).result()


def read_attributes(path: str) -> dict[str, Any]:
  """The attributes of the store at `path`, with a clear error when it is not one."""
  meta = os.path.join(path, "zarr.json")
  try:
    with open(meta) as f:
      group = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a multichan_diff store ({meta} unreadable: {e})") from e
  attrs = group.get("attributes", {})
  if group.get("node_type") != "group" or "kind" not in attrs:
    raise ValueError(f"{path}: not a multichan_diff store (no store attributes)")
  return attrs


def open_array(path: str, name: str) -> ts.TensorStore:
  try:
    return ts.open(_spec(os.path.join(path, name)), open=True).result()
  except ValueError as e:
    raise ValueError(f"{path}: the store has no readable array {name!r} ({e})") from e


def write_samples(array: ts.TensorStore, samples: np.ndarray, start: int) -> None:
  samples = samples.astype(array.dtype.numpy_dtype, copy=False)
  array[start:start + len(samples)].write(samples).result()
