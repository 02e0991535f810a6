"""Tiles/s through the whole input pipeline: store -> shuffle -> mask -> batch.

    python benchmarks/loader_throughput.py                  # prepares mibi_granuloma first
    python benchmarks/loader_throughput.py --store STORE    # an existing store

64x64 tiles of the 39 kept channels, float32, read with in-process threads (on 2 cores they
beat worker processes).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--store", help="an existing store (default: prepare one)")
  parser.add_argument("--tiles", type=int, default=4000, help="tiles to time")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--threads", type=int, default=8)
  args = parser.parse_args()

  from multichan_diff.data.pipeline import make_dataset, make_iterator
  from multichan_diff.data.prepare import prepare_images

  with tempfile.TemporaryDirectory() as tmp:
    path = args.store
    if path is None:
      src = DATA / "mibi_granuloma"
      if not src.is_dir():
        sys.exit(f"shared data not found at {src}; pass --store")
      path = os.path.join(tmp, "granuloma.zarr")
      t0 = time.perf_counter()
      s = prepare_images(str(src), path, tile=64, test_fovs=["Point7"], val_fovs=["Point6"])
      print(f"prepared {sum(s['tiles'].values())} tiles of 64x64x{len(s['channels'])} "
            f"in {time.perf_counter() - t0:.1f} s")
    it = make_iterator(make_dataset(path, "train", global_batch_size=args.batch, seed=0),
                       num_threads=args.threads)
    for _ in range(5):  # warm-up: open the store, start the threads
      next(it)
    n = 0
    t0 = time.perf_counter()
    while n < args.tiles:
      batch = next(it)
      n += len(batch["x0"])
    dt = time.perf_counter() - t0
    print(f"loader: {n / dt:.0f} tiles/s ({n} tiles of shape {batch['x0'].shape[1:]} "
          f"{batch['x0'].dtype}, batch {args.batch}, {args.threads} threads, "
          f"{os.cpu_count()} cpus)")


if __name__ == "__main__":
  main()
