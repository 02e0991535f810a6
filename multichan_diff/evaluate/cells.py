"""Scoring protein imputation on a cells store's held-out cells, against the baselines.

Everything is scored in CLR units (the store's z-scored proteins mapped back), as the
openproblems metric is defined there; r_c depends on the units, r_p does not. The
baselines need every gene, so they re-read the store's source file.
"""

from __future__ import annotations

import jax
import numpy as np

from multichan_diff.data import readers, store
from multichan_diff.data.store import SPLITS
from multichan_diff.evaluate.images import calibration_rows, fit_splits, sample_rows
from multichan_diff.data.prepare_cells import clr, log1p_cp10k
from multichan_diff.evaluate import metrics
from multichan_diff.evaluate.baselines import cell_baselines
from multichan_diff.impute.cells import sample_cells, to_clr
from multichan_diff.impute.posterior import Posterior


def source_cells(attrs: dict, path: str):
  """The store's source cells, checked against the store (same cells, same file)."""
  src = attrs["sources"][0]["path"]
  try:
    cells = readers.read_cells(src, attrs.get("protein_key", "protein_counts"),
                               attrs.get("layer"), drop=attrs.get("dropped_channels", ()))
  except ValueError as e:
    raise ValueError(f"{path}: the baselines need the store's source file: {e}") from e
  if list(cells.cell_ids) != list(attrs["cell_ids"]):
    raise ValueError(f"{src}: its cells differ from those the store {path} was made from")
  return cells


def evaluate_cells(posterior: Posterior, store_path: str, meta: dict, *, split: str,
                   points: dict[str, tuple[Posterior, dict]] | None = None, seed: int = 0,
                   baselines: bool = True, progress: bool = True) -> dict:
  """points: rows of other models' point estimates (a masked regressor), by name: (posterior,
  model.json), each with the model's proteins and genes.

  -> {"channels", "truth" [N, P], "preds": {method: [N, P]}, "scores": {method: {"r_p",
  "r_c", "pearson" [P], "spearman" [P], "rmse" [P]}}, "uncertainty": {"draws": K, metric:
  [1, P], "pit" [1, K + 1, P]}} on the split's cells (CLR units), as `evaluate_images`."""
  attrs = store.read_attributes(store_path)
  if attrs["kind"] != "cells":
    raise ValueError(f"{store_path}: a {attrs['kind']} store; this is a cells model")
  if attrs["channels"] != meta["channels"] or attrs["genes"] != meta["genes"]:
    raise ValueError(f"{store_path}: its proteins or genes differ from the model's")
  which = np.asarray(attrs["sample_split"]) == SPLITS.index(split)
  if not which.any():
    raise ValueError(f"{store_path}: the {split} split has no cells")
  idx = np.flatnonzero(which)
  genes = np.asarray(store.open_array(store_path, "cond")[idx].read().result())[:, 0, 0]
  truth_z = np.asarray(store.open_array(store_path, "x0")[idx].read().result())[:, 0, 0]
  truth = to_clr(truth_z, meta)
  draws, mean = sample_cells(posterior, genes, len(meta["channels"]),
                             key=jax.random.key(seed), progress=progress)
  draws = to_clr(draws, meta)
  preds = {"model": to_clr(mean, meta), **sample_rows(posterior, draws.mean(0), draws[0])}
  for name, (other, other_meta) in (points or {}).items():
    point = sample_cells(other, genes, len(meta["channels"]), key=jax.random.key(seed),
                         progress=progress)[1]
    preds[name] = to_clr(point, other_meta)
  if baselines:
    cells = source_cells(attrs, store_path)
    rna = log1p_cp10k(cells.rna)
    fit = store.in_splits(attrs, fit_splits(split))
    preds.update(cell_baselines(rna[fit], rna[idx], clr(cells.protein)[fit], seed=seed))
  scores = {name: {"r_p": metrics.r_p(p, truth), "r_c": metrics.r_c(p, truth),
                   "pearson": metrics.pearson(p, truth), "spearman": metrics.spearman(p, truth),
                   "rmse": metrics.rmse(p, truth)} for name, p in preds.items()}
  unc = metrics.uncertainty(draws.min(0), draws.max(0), draws.std(0), preds["model"], truth)
  calibration = metrics.DrawCalibration(len(draws), truth.shape[1])
  calibration.add(draws, truth)
  unc.update(calibration_rows(calibration))
  return {"channels": meta["channels"], "truth": truth, "preds": preds, "scores": scores,
          "uncertainty": {"draws": len(draws), **{k: v[None] for k, v in unc.items()}}}
