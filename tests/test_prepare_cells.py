"""`prepare citeseq` on the real CITE-seq files, MuData, and bad input."""


import anndata
import numpy as np
import pytest
import pandas as pd

from helpers import DATA, needs_data
from multichan_diff.cli import main
from multichan_diff.data import store
from multichan_diff.data.pipeline import make_dataset, make_iterator
from multichan_diff.data.prepare_cells import clr, log1p_cp10k, prepare_citeseq

pytestmark = needs_data
TEA = DATA / "citeseq_teaseq_pbmc.h5ad"
SMALL = DATA / "citeseq_pbmc5k_200cells.h5ad"


def test_teaseq_prepares_with_train_only_statistics(tmp_path):
  out = tmp_path / "tea.zarr"
  s = prepare_citeseq(str(TEA), str(out), genes="hvg:500", seed=0)
  assert s["proteins"] == 46 and s["genes"] == 500
  assert sum(s["cells"].values()) == 1262 and s["cells"]["test"] == 252
  attrs = store.read_attributes(str(out))
  split = np.asarray(attrs["sample_split"])
  x0 = store.open_array(str(out), "x0").read().result()[:, 0, 0]
  cond = store.open_array(str(out), "cond").read().result()[:, 0, 0]
  assert x0.shape == (1262, 46) and cond.shape == (1262, 500)
  # Proteins z-scored with training statistics: mean 0 / std 1 on train, not on test.
  # Genes centred on train, one scale for all (--gene-scale global): unit mean square,
  # each gene keeping its own spread.
  np.testing.assert_allclose(x0[split == 0].mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(x0[split == 0].std(0), 1, atol=1e-3)
  assert np.abs(x0[split == 2].mean(0)).max() > 1e-3
  np.testing.assert_allclose(cond[split == 0].mean(0), 0, atol=1e-4)
  assert np.mean(cond[split == 0] ** 2) == pytest.approx(1, abs=1e-3)
  assert np.ptp(cond[split == 0].std(0)) > 0.1  # not each gene scaled to 1
  assert attrs["rna_norm"]["scale"] == "global" and len(set(attrs["rna_norm"]["std"])) == 1
  # Proteins are CLR of the raw counts, recoverable with the stored statistics.
  raw = anndata.read_h5ad(TEA).obsm["protein_counts"].to_numpy()
  pn = attrs["protein_norm"]
  np.testing.assert_allclose(x0 * pn["std"] + np.asarray(pn["mean"]), clr(raw), atol=1e-4)
  # HVGs chosen on training cells only: another split seed changes the choice.
  other = prepare_citeseq(str(TEA), str(tmp_path / "o.zarr"), genes="hvg:500", seed=1,
                          gene_scale="gene")
  genes_other = store.read_attributes(other["store"])["genes"]
  assert genes_other != attrs["genes"]
  # --gene-scale gene: each gene z-scored on the training cells
  o_split = np.asarray(store.read_attributes(other["store"])["sample_split"])
  o_cond = store.open_array(other["store"], "cond").read().result()[:, 0, 0]
  np.testing.assert_allclose(o_cond[o_split == 0].std(0), 1, atol=1e-3)
  batch = next(make_iterator(make_dataset(str(out), "train", global_batch_size=16)))
  assert batch["cond"].shape == (16, 1, 1, 500) and "observed" not in batch


def test_split_by_keeps_groups_whole(tmp_path):
  out = tmp_path / "tea.zarr"
  prepare_citeseq(str(TEA), str(out), genes="hvg:100", split_by="cell_type")
  attrs = store.read_attributes(str(out))
  split = np.asarray(attrs["sample_split"])
  types = anndata.read_h5ad(TEA).obs["cell_type"].astype(str).to_numpy()
  for t in np.unique(types):
    in_test = split[types == t] == 2
    assert in_test.all() or not in_test.any(), t


def test_mudata_and_array_layouts(tmp_path):
  import h5py
  a = anndata.read_h5ad(SMALL)
  prot = a.obsm["protein_counts"]
  # An array in obsm with names in uns.
  b = a.copy()
  b.obsm["adt"] = prot.to_numpy()
  b.uns["adt_names"] = np.asarray(prot.columns, dtype=str)
  del b.obsm["protein_counts"]
  b.write_h5ad(tmp_path / "arr.h5ad")
  s1 = prepare_citeseq(str(tmp_path / "arr.h5ad"), str(tmp_path / "a.zarr"), protein_key="adt",
                       genes="all")
  # A MuData file with 'rna' and 'prot' modalities.
  p = anndata.AnnData(prot.to_numpy(), obs=pd.DataFrame(index=a.obs_names),
                      var=pd.DataFrame(index=prot.columns))
  rna = anndata.AnnData(a.X, obs=pd.DataFrame(index=a.obs_names), var=a.var)
  with h5py.File(tmp_path / "x.h5mu", "w") as f:
    anndata.io.write_elem(f, "mod/rna", rna)
    anndata.io.write_elem(f, "mod/prot", p)
  s2 = prepare_citeseq(str(tmp_path / "x.h5mu"), str(tmp_path / "m.zarr"), genes="all")
  # The NeurIPS 2021 layout: genes and proteins side by side in var, counts in a layer.
  both = anndata.AnnData(
      np.zeros((a.n_obs, a.n_vars + prot.shape[1]), np.float32),
      obs=pd.DataFrame(index=a.obs_names),
      var=pd.DataFrame({"feature_types": ["GEX"] * a.n_vars + ["ADT"] * prot.shape[1]},
                       index=list(a.var_names) + list(prot.columns)))
  both.layers["counts"] = np.c_[np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X),
                                prot.to_numpy()].astype(np.float32)
  both.write_h5ad(tmp_path / "nips.h5ad")
  s3 = prepare_citeseq(str(tmp_path / "nips.h5ad"), str(tmp_path / "n.zarr"), genes="all",
                       protein_key="var:feature_types=ADT", layer="counts")
  x1 = store.open_array(s1["store"], "x0").read().result()
  for s in (s2, s3):
    np.testing.assert_allclose(store.open_array(s["store"], "x0").read().result(), x1, atol=1e-5)
    assert s["genes"] == s1["genes"] == a.n_vars


def test_bad_cells_input(tmp_path, capsys):
  out = str(tmp_path / "o.zarr")

  def fails(args, text):
    assert main(["prepare", "citeseq", *args, "--out", out]) != 0
    err = capsys.readouterr().err
    assert text in err, err

  fails(["--input", str(SMALL), "--protein-key", "adt"],
        "no obsm['adt'] with protein counts; obsm has ['protein_counts']")
  a = anndata.read_h5ad(SMALL)
  neg = a.copy()
  neg.obsm["protein_counts"].iloc[0, 0] = -3
  neg.write_h5ad(tmp_path / "neg.h5ad")
  fails(["--input", str(tmp_path / "neg.h5ad")], "neg.h5ad: 1 negative protein count(s)")
  a[:0].copy().write_h5ad(tmp_path / "empty.h5ad")
  fails(["--input", str(tmp_path / "empty.h5ad")], "empty.h5ad: the file has zero cells")
  (tmp_path / "junk.h5ad").write_bytes(b"junk")
  fails(["--input", str(tmp_path / "junk.h5ad")], "junk.h5ad: cannot read")
  fails(["--input", str(SMALL), "--split-by", "batch"], "no such obs column")
  fails(["--input", str(SMALL), "--genes", "hvg:x"], "expected hvg:N")
  fails(["--input", str(SMALL), "--layer", "counts"], "no layers['counts']")
  assert not (tmp_path / "o.zarr").exists()
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_log1p_cp10k_closed_form():
  x = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
  y = log1p_cp10k(x).toarray()
  np.testing.assert_allclose(y[0], np.log1p(x[0] / 4 * 1e4), rtol=1e-6)
  assert (y[1] == 0).all()


def test_two_clones_of_one_marker_prepare_and_one_can_be_dropped(tmp_path, capsys):
  a = anndata.read_h5ad(SMALL)
  prot = a.obsm["protein_counts"].copy()
  prot["PD1_TotalSeqB"] = prot["PD-1_TotalSeqB"] + 1  # a second clone, matched as PD-1
  a.obsm["protein_counts"] = prot
  path = tmp_path / "clones.h5ad"
  a.write_h5ad(path)
  base = ["prepare", "citeseq", "--input", str(path), "--genes", "hvg:50"]
  assert main([*base, "--out", str(tmp_path / "both.zarr")]) == 0
  both = store.read_attributes(str(tmp_path / "both.zarr"))["channels"]
  assert both == list(prot.columns) and len(both) == 30  # each under its own name
  x0 = store.open_array(str(tmp_path / "both.zarr"), "x0").read().result()[:, 0, 0]
  raw = clr(prot.to_numpy())
  for name in ("PD-1_TotalSeqB", "PD1_TotalSeqB"):
    j = both.index(name)
    assert np.corrcoef(x0[:, j], raw[:, j])[0, 1] > 0.999, name
  assert main([*base, "--out", str(tmp_path / "one.zarr"), "--drop-channels",
               "PD1_TotalSeqB,TIGIT_TotalSeqB"]) == 0
  attrs = store.read_attributes(str(tmp_path / "one.zarr"))
  assert attrs["channels"] == both[:28]  # PD-1 kept, its other clone and TIGIT not
  assert attrs["dropped_channels"] == ["PD1_TotalSeqB", "TIGIT_TotalSeqB"]
  assert store.open_array(str(tmp_path / "one.zarr"), "x0").shape == (200, 1, 1, 28)
  # evaluate's baselines re-read the source file without the dropped proteins too
  from multichan_diff.evaluate.cells import source_cells
  assert source_cells(attrs, str(tmp_path / "one.zarr")).protein.shape == (200, 28)
  capsys.readouterr()
  assert main([*base, "--out", str(tmp_path / "bad.zarr"), "--drop-channels", "PD2"]) == 2
  err = capsys.readouterr().err
  assert "clones.h5ad (proteins): --drop-channels ['PD2'] not in the panel; the panel is: " \
         "CD3_TotalSeqB, CD4_TotalSeqB" in err, err
  assert not (tmp_path / "bad.zarr").exists()
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
