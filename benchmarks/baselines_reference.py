"""Reproduces the baseline table of measured.md on the shared data (images and cells).

    python benchmarks/baselines_reference.py                     # bin 4 single + multi, TEA-seq
    python benchmarks/baselines_reference.py --bin 2 --modes single --no-cells
    python benchmarks/baselines_reference.py --modes --genes hvg:500   # cells on 500 HVGs

Images: mibi_granuloma, train Point2-6, test Point7, arcsinh(x / 5), clip at the 99.9th
percentile of the training FOVs, z-score; Pearson r per missing channel over the test
pixels, mean over scored channels (a channel constant in the test FOV is skipped).
Cells: TEA-seq, 20 % of cells held out per seed; r_p and r_c of the cell baselines. With all
genes ridge on SVD components matches KRR (r_p 0.567); measured.md's ridge row (0.484 / 0.880)
is reproduced with `--genes hvg:500` (500 HVGs, z-scored per gene), which leaves KRR at 0.562.
On a busy 2-core machine set OPENBLAS_NUM_THREADS=1: threaded BLAS there is 10x slower.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def image_table(bin_size: int, modes: list[str]) -> None:
  from multichan_diff.data import prepare, readers, transforms
  from multichan_diff.evaluate import baselines, metrics

  src = DATA / "mibi_granuloma"
  fovs = readers.read_image_folder(str(src), readers.read_panel_csv(src / "panel.csv"), False)
  images = {f.name: prepare.bin_image(np.moveaxis(f.image, 0, -1), bin_size, "mean")
            for f in fovs}
  train_names = [f"Point{i}" for i in range(2, 7)]
  norm = transforms.fit_normalizer([images[n] for n in train_names])
  train = [norm.forward(images[n]) for n in train_names]
  test = norm.forward(images["Point7"])
  c = test.shape[-1]
  t0 = time.perf_counter()
  model = baselines.ImageBaselines(train, [test])
  print(f"images: bin {bin_size}, {len(train)} train FOVs {train[0].shape}, "
        f"setup {time.perf_counter() - t0:.1f} s")
  subsets = {"single": [np.arange(c) != t for t in range(c)],
             "multi": [np.random.default_rng(100 + s).random(c) < 0.5 for s in range(10)]}
  print("| mode | bin | " + " | ".join(baselines.IMAGE_BASELINES) + " |")
  for mode in modes:
    t0 = time.perf_counter()
    scores = {n: [] for n in baselines.IMAGE_BASELINES}
    for observed in subsets[mode]:
      for name, (pred,) in model.predict(observed).items():
        scores[name].append(metrics.pearson(pred, test)[~observed])
    row = [metrics.nanmean_skip(np.concatenate(scores[n])) for n in baselines.IMAGE_BASELINES]
    print(f"| {mode} | {bin_size} | " + " | ".join(f"{r:.3f}" for r in row)
          + f" |  ({time.perf_counter() - t0:.1f} s)")


def _genes(rna, train, spec: str, names: list[str]):
  """All genes as they are, or `hvg:N` z-scored with training-cell statistics (a store's view)."""
  from multichan_diff.data import prepare_cells
  if spec == "all":
    return rna
  x = rna[:, prepare_cells.select_genes(spec, rna[train], names)].toarray()
  mean, std = x[train].mean(0), x[train].std(0)
  return (x - mean) / np.where(std > 1e-6, std, 1.0)


def cell_table(seeds: list[int], clip: bool, genes: str) -> None:
  from multichan_diff.data import prepare_cells, readers
  from multichan_diff.evaluate import baselines, metrics

  cells = readers.read_cells(str(DATA / "citeseq_teaseq_pbmc.h5ad"), "protein_counts", None)
  rna = prepare_cells.log1p_cp10k(cells.rna)
  prot = prepare_cells.clr(cells.protein)
  n = rna.shape[0]
  scores = {name: [] for name in baselines.CELL_BASELINES}
  t0 = time.perf_counter()
  for seed in seeds:
    test = np.zeros(n, bool)
    test[np.random.default_rng(seed).permutation(n)[: round(0.2 * n)]] = True
    x = _genes(rna, ~test, genes, cells.genes)
    preds = baselines.cell_baselines(x[~test], x[test], prot[~test], seed=seed, clip=clip)
    for name, p in preds.items():
      scores[name].append((metrics.r_p(p, prot[test]), metrics.r_c(p, prot[test])))
  print(f"cells: TEA-seq {n} cells, genes {genes} of {rna.shape[1]}, {prot.shape[1]} proteins, "
        f"seeds {seeds}, clip {clip} ({time.perf_counter() - t0:.1f} s)")
  print("| method | r_p | r_c | r_p per seed |")
  for name, s in scores.items():
    s = np.asarray(s)
    print(f"| {name} | {s[:, 0].mean():.3f} +- {s[:, 0].std():.3f} | {s[:, 1].mean():.3f} | "
          + ", ".join(f"{v:.3f}" for v in s[:, 0]) + " |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--bin", type=int, default=4, help="image bin size")
  parser.add_argument("--modes", nargs="*", default=["single", "multi"],
                      choices=["single", "multi"], help="image modes (none: skip images)")
  parser.add_argument("--no-cells", action="store_true", help="skip the cell baselines")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--clip", action="store_true", help="clip KRR predictions at 0")
  parser.add_argument("--genes", default="all",
                      help="RNA features: 'all' (log1p cp10k) or 'hvg:N' z-scored per gene")
  args = parser.parse_args()
  if not DATA.is_dir():
    sys.exit(f"shared data not found at {DATA}: this benchmark reads the real data there")
  t0 = time.perf_counter()
  if args.modes:
    image_table(args.bin, args.modes)
  if not args.no_cells:
    cell_table(args.seeds, args.clip, args.genes)
  print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
  main()
