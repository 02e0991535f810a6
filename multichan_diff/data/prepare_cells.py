"""CITE-seq counts to a cells store: split cells, select genes and fit normalisation on the
training cells only, write genes (the condition) and proteins (the target) as H = W = 1 samples.

RNA: `log1p_cp10k` (each cell scaled to 10,000 counts, log1p), then each selected gene
z-scored with training-cell statistics. Proteins: `clr` (log1p minus the cell's mean
log1p, as the openproblems recipe) then z-scored per protein with training-cell statistics;
the store keeps those statistics so predictions can be mapped back to CLR units.
Gene selection `hvg:N`: the N genes of highest variance of log1p_cp10k over training cells.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from multichan_diff.data import readers, store
from multichan_diff.data.store import SPLITS


def log1p_cp10k(rna) -> sp.csr_matrix:
  """[N, G] counts (sparse or dense) -> sparse log1p(counts / total * 1e4)."""
  x = sp.csr_matrix(rna, dtype=np.float32)
  totals = np.asarray(x.sum(1)).ravel()
  scale = np.where(totals > 0, 1e4 / np.maximum(totals, 1e-12), 0.0).astype(np.float32)
  x = sp.diags(scale) @ x
  x.data = np.log1p(x.data)
  return sp.csr_matrix(x)


def clr(protein: np.ndarray) -> np.ndarray:
  y = np.log1p(protein.astype(np.float32))
  return y - y.mean(1, keepdims=True)


def _sparse_mean_var(x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
  mean = np.asarray(x.mean(0)).ravel()
  sq = np.asarray(x.multiply(x).mean(0)).ravel()
  return mean, np.maximum(sq - mean ** 2, 0.0)


def select_genes(spec: str, norm_train: sp.csr_matrix, genes: list[str]) -> np.ndarray:
  """Indices of the selected genes: 'all', 'hvg:N', or a file with one gene per line."""
  if spec == "all":
    return np.arange(len(genes))
  if spec.startswith("hvg:"):
    try:
      n = int(spec[4:])
    except ValueError:
      raise ValueError(f"--genes {spec!r}: expected hvg:N with an integer N") from None
    if not 1 <= n <= len(genes):
      raise ValueError(f"--genes {spec!r}: N must be in [1, {len(genes)}]")
    _, var = _sparse_mean_var(norm_train)
    return np.sort(np.argsort(-var, kind="stable")[:n])
  if not os.path.isfile(spec):
    raise ValueError(f"--genes {spec!r}: not 'all', 'hvg:N' or an existing gene list file")
  with open(spec) as f:
    wanted = [line.strip() for line in f if line.strip()]
  index = {g: i for i, g in enumerate(genes)}
  missing = [g for g in wanted if g not in index]
  if missing:
    raise ValueError(f"{spec}: {len(missing)} gene(s) not in the data, e.g. {missing[:5]}")
  return np.asarray([index[g] for g in wanted])


def split_cells(n: int, obs, *, test_fraction: float, val_fraction: float, seed: int,
                split_by: str | None) -> np.ndarray:
  """[N] split index (0 train, 1 val, 2 test); with split_by, whole groups go to test."""
  if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1:
    raise ValueError("test fraction must be in (0, 1) and val fraction in [0, 1)")
  rng = np.random.default_rng(seed)
  split = np.zeros(n, np.int32)
  if split_by:
    if split_by not in obs.columns:
      raise ValueError(f"--split-by {split_by!r}: no such obs column; obs has "
                       f"{list(obs.columns)}")
    groups = np.asarray(obs[split_by].astype(str))
    order = rng.permutation(np.unique(groups))
    taken = 0
    for g in order:
      if taken >= test_fraction * n:
        break
      split[groups == g] = 2
      taken += int((groups == g).sum())
    if (split == 2).all():
      raise ValueError(f"--split-by {split_by!r}: too few groups to keep any training cells")
  else:
    split[rng.permutation(n)[: max(1, int(round(test_fraction * n)))]] = 2
  rest = np.flatnonzero(split == 0)
  split[rng.permutation(rest)[: int(round(val_fraction * len(rest)))]] = 1
  return split


def _zscore_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  mean, std = x.mean(0), x.std(0)
  return mean, np.where(std > 1e-6, std, 1.0)


GENE_SCALES = ("global", "gene")


def gene_scaling(x: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) per gene of the training cells' log1p RNA [N, G]: centred per gene, then
  one scale over all genes (`global`, each gene keeps its variance relative to the others)
  or each gene's own (`gene`, a z-score). A z-score fitted on few cells blows up a rarely
  seen gene in every other cell (its training std is tiny), and the network and the
  linear head then overfit it."""
  mean, std = _zscore_fit(x)
  if how == "global":
    std = np.full_like(std, max(float(np.sqrt(np.mean((x - mean) ** 2))), 1e-6))
  return mean, std


def prepare_citeseq(input_path: str, out: str, *, protein_key: str = "protein_counts",
                    layer: str | None = None,
                    genes: str = "hvg:2000", rna_norm: str = "log1p_cp10k",
                    protein_norm: str = "clr", gene_scale: str = "global",
                    test_fraction: float = 0.2,
                    val_fraction: float = 0.1, split_by: str | None = None, seed: int = 0,
                    drop_channels: Sequence[str] = (), overwrite: bool = False) -> dict:
  """Writes the store and returns a summary. `drop_channels` leaves proteins out (an
  isotype control; one of two clones of a marker, which panels joined later would match
  as one)."""
  if rna_norm != "log1p_cp10k":
    raise ValueError(f"unknown --rna-norm {rna_norm!r}; supported: log1p_cp10k")
  if protein_norm != "clr":
    raise ValueError(f"unknown --protein-norm {protein_norm!r}; supported: clr")
  if gene_scale not in GENE_SCALES:
    raise ValueError(f"unknown --gene-scale {gene_scale!r}; one of {GENE_SCALES}")
  store.check_writable(out, overwrite)
  cells = readers.read_cells(input_path, protein_key, layer, drop_channels)
  n = len(cells.cell_ids)
  split = split_cells(n, cells.obs, test_fraction=test_fraction, val_fraction=val_fraction,
                      seed=seed, split_by=split_by)
  train = split == 0
  rna = log1p_cp10k(cells.rna)
  gene_idx = select_genes(genes, rna[train], cells.genes)
  g = rna[:, gene_idx].toarray()
  g_mean, g_std = gene_scaling(g[train], gene_scale)
  p = clr(cells.protein)
  p_mean, p_std = _zscore_fit(p[train])
  attrs = {
      "kind": "cells", "channels": cells.proteins,
      "genes": [cells.genes[i] for i in gene_idx],
      "cell_ids": cells.cell_ids, "sample_split": split.tolist(),
      "splits": {s: int((split == i).sum()) for i, s in enumerate(SPLITS)},
      "rna_norm": {"kind": rna_norm, "scale": gene_scale, "mean": g_mean.tolist(),
                   "std": g_std.tolist()},
      "protein_norm": {"kind": protein_norm, "mean": p_mean.tolist(), "std": p_std.tolist()},
      "seed": seed, "split_by": split_by, "protein_key": protein_key, "layer": layer,
      "dropped_channels": list(drop_channels),
      "sources": [{"path": os.path.abspath(input_path), "sha256": store.sha256(input_path)}],
  }
  with store.atomic_dir(out, overwrite) as tmp:
    store.create_group(tmp, attrs)
    x0 = store.create_array(tmp, "x0", (n, 1, 1, len(cells.proteins)))
    cond = store.create_array(tmp, "cond", (n, 1, 1, len(gene_idx)))
    store.write_samples(x0, ((p - p_mean) / p_std)[:, None, None, :], 0)
    store.write_samples(cond, ((g - g_mean) / g_std)[:, None, None, :], 0)
  return {"store": os.path.abspath(out), "cells": attrs["splits"],
          "genes": len(gene_idx), "proteins": len(cells.proteins)}
