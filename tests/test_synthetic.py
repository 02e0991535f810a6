"""The built-in synthetic tissue and cells: deterministic, structured, and preparable."""

import numpy as np

from multichan_diff.data import store
from multichan_diff.data.prepare import prepare_images
from multichan_diff.data.prepare_cells import prepare_citeseq
from multichan_diff.data.synthetic import (TissueModel, synthetic_cells, synthetic_fov,
                                           write_synthetic_tissue)

SMALL = TissueModel(num_channels=6, size=64)


def test_tissue_is_deterministic_and_has_cells():
  a, b, c = synthetic_fov(1, SMALL), synthetic_fov(1, SMALL), synthetic_fov(2, SMALL)
  assert a.shape == (6, 64, 64) and a.dtype == np.uint16
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  dna = a[0].astype(float)
  assert dna.mean() > 3 * SMALL.background  # nuclei stand out from the background
  # Channels are related: some pair correlates clearly across pixels.
  corr = np.corrcoef(a.reshape(6, -1).astype(float))
  assert np.abs(corr[np.triu_indices(6, 1)]).max() > 0.3


def test_synthetic_folder_prepares(tmp_path):
  fovs = write_synthetic_tissue(str(tmp_path / "syn"), num_fovs=3, model=SMALL)
  s = prepare_images(str(tmp_path / "syn"), str(tmp_path / "syn.zarr"), tile=32,
                     test_fovs=[fovs[2]], val_fovs=[fovs[1]])
  assert s["tiles"] == {"train": 4, "val": 4, "test": 4}
  assert s["channels"][0] == "DNA"


def test_synthetic_cells_prepare_and_link_genes_to_proteins(tmp_path):
  a = synthetic_cells(0, num_cells=300, num_genes=100, num_proteins=8)
  b = synthetic_cells(0, num_cells=300, num_genes=100, num_proteins=8)
  np.testing.assert_array_equal(a.X, b.X)
  a.write_h5ad(tmp_path / "cells.h5ad")
  s = prepare_citeseq(str(tmp_path / "cells.h5ad"), str(tmp_path / "c.zarr"), genes="all")
  assert s["proteins"] == 8 and s["genes"] == 100
  x = store.open_array(s["store"], "x0").read().result()[:, 0, 0]
  g = store.open_array(s["store"], "cond").read().result()[:, 0, 0]
  # Proteins are predictable from genes: a least-squares fit explains real variance.
  coef, *_ = np.linalg.lstsq(np.c_[g, np.ones(len(g))], x, rcond=None)
  resid = x - np.c_[g, np.ones(len(g))] @ coef
  assert resid.var() < 0.8 * x.var()
