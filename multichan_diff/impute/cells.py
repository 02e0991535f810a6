"""Per-cell imputation: RNA counts in an h5ad -> proteins with uncertainty, in CLR units
(the z-scored proteins the model predicts, mapped back with the training statistics)."""

from __future__ import annotations

import os

import jax
import numpy as np

from multichan_diff.data import store
from multichan_diff.data.prepare_cells import log1p_cp10k
from multichan_diff.impute.posterior import Posterior, load_posterior
from multichan_diff.train.metrics import Progress

MAX_MISSING_GENES = 0.1  # beyond this fraction of the model's genes absent: refuse


def genes_matrix(rna, genes: list[str], meta: dict, where: str) -> tuple[np.ndarray, int]:
  """Raw counts [N, G_in] over `genes` -> the model's normalised genes [N, G_model] and the
  number of model genes absent from the input (set to their training mean, z = 0)."""
  index = {g: i for i, g in enumerate(genes)}
  wanted = meta["genes"]
  absent = [g for g in wanted if g not in index]
  if len(absent) > MAX_MISSING_GENES * len(wanted):
    raise ValueError(f"{where}: {len(absent)} of the model's {len(wanted)} genes are absent "
                     f"(e.g. {absent[:5]}); is this the same organism and gene naming?")
  x = log1p_cp10k(rna)
  norm = meta["rna_norm"]
  mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
  out = np.zeros((x.shape[0], len(wanted)), np.float32)
  have = [j for j, g in enumerate(wanted) if g in index]
  cols = x[:, [index[wanted[j]] for j in have]].toarray()
  out[:, have] = (cols - mean[have]) / std[have]
  return out, len(absent)


def sample_cells(posterior: Posterior, genes: np.ndarray, num_proteins: int, *,
                 key: jax.Array, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """genes [N, G] normalised -> (samples [K, N, P], point estimate [N, P]), z-scored."""
  n, b = len(genes), posterior.batch_size
  bar = Progress(n, unit="cells") if progress else None
  parts = []
  for lo in range(0, n, b):
    parts.append(posterior.cells(jax.random.fold_in(key, lo), genes[lo:lo + b], num_proteins))
    if bar:
      bar.update(min(lo + b, n))
  if bar:
    bar.close()
  return (np.concatenate([s for s, _ in parts], axis=1),
          np.concatenate([m for _, m in parts], axis=0))


def to_clr(z: np.ndarray, meta: dict) -> np.ndarray:
  norm = meta["protein_norm"]
  return z * np.asarray(norm["std"], np.float32) + np.asarray(norm["mean"], np.float32)


def impute_cells(model_dir: str, input_path: str, out: str, *, samples: int = 8,
                 sampler: str = "ddim", steps: int | None = None, seed: int = 0,
                 batch_size: int = 256, layer: str | None = None, point: str = "denoiser",
                 views: int | None = None, overwrite: bool = False) -> dict:
  """Writes `out`: the input h5ad plus obsm['protein_predicted'] (posterior mean) and
  obsm['protein_predicted_std'], DataFrames with the model's protein names."""
  import anndata
  import pandas as pd
  store.check_writable(out, overwrite)
  posterior, meta = load_posterior(model_dir, sampler=sampler, steps=steps, samples=samples,
                                   batch_size=batch_size, point=point, views=views)
  if meta["kind"] != "cells":
    raise ValueError(f"{model_dir}: an {meta['kind']} model; cells need a cells model")
  try:
    adata = anndata.read_h5ad(input_path)
  except Exception as e:  # h5py / anndata raise several types for bad files
    raise ValueError(f"{input_path}: cannot read as h5ad ({type(e).__name__}: {e})") from e
  if adata.n_obs == 0:
    raise ValueError(f"{input_path}: no cells")
  if layer is not None and layer not in adata.layers:
    raise ValueError(f"{input_path}: no layer {layer!r}; layers are {list(adata.layers)}")
  rna = adata.layers[layer] if layer else adata.X
  genes, missing = genes_matrix(rna, list(map(str, adata.var_names)), meta, input_path)
  draws, mean = sample_cells(posterior, genes, len(meta["channels"]),
                             key=jax.random.key(seed), progress=True)
  frame = lambda v: pd.DataFrame(v, index=adata.obs_names, columns=meta["channels"])
  adata.obsm["protein_predicted"] = frame(to_clr(mean, meta))
  adata.obsm["protein_predicted_std"] = frame(to_clr(draws, meta).std(0))
  out = os.path.abspath(out)
  with store.atomic_file(out) as tmp:
    adata.write_h5ad(tmp)
  return {"out": out, "cells": int(adata.n_obs), "proteins": len(meta["channels"]),
          "genes_absent": missing}
