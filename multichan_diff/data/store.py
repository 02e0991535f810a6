"""Zarr v3 stores through tensorstore: [N, H, W, C] samples plus JSON attributes.

Stores are written to a temporary sibling path and renamed into place only when complete,
so a failed run leaves nothing half-written and an existing store is replaced atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np
import tensorstore as ts

DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


def sha256(path: str, chunk: int = 1 << 20) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def _spec(path: str) -> dict:
  return {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.abspath(path)}}


@contextlib.contextmanager
def atomic_dir(out: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary directory that becomes `out` when the block succeeds."""
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out}: already exists; pass --overwrite to replace it")
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


def create_array(path: str, shape: tuple[int, ...], attributes: dict[str, Any],
                 dtype: str = "float32") -> ts.TensorStore:
  """A new zarr v3 array, one sample ([1, H, W, C]) per chunk."""
  if dtype not in DTYPES:
    raise ValueError(f"unknown store dtype {dtype!r}; choose from {sorted(DTYPES)}")
  spec = {**_spec(path), "create": True, "metadata": {
      "shape": list(shape), "data_type": DTYPES[dtype],
      "chunk_grid": {"name": "regular",
                     "configuration": {"chunk_shape": [1, *shape[1:]]}},
      "attributes": attributes}}
  return ts.open(spec).result()


def open_array(path: str) -> ts.TensorStore:
  if not os.path.exists(os.path.join(path, "zarr.json")):
    raise ValueError(f"{path}: not a multichan_diff store (no zarr.json)")
  return ts.open(_spec(path), open=True).result()


def attributes(array: ts.TensorStore) -> dict[str, Any]:
  return dict(array.spec().to_json()["metadata"].get("attributes", {}))


def write_samples(array: ts.TensorStore, samples: np.ndarray, start: int) -> None:
  samples = samples.astype(array.dtype.numpy_dtype, copy=False)
  array[start:start + len(samples)].write(samples).result()
