"""`quantify`: per-cell means of imputed images over a label mask, as an AnnData."""

from __future__ import annotations

import json
import os

import anndata
import numpy as np
import pytest
import tifffile
from helpers import DATA, needs_data

from multichan_diff.cli import main
from multichan_diff.data import readers
from multichan_diff.data.prepare import bin_image
from multichan_diff.impute import provenance, writers
from multichan_diff.quantify.segment import segment_nuclei
from multichan_diff.quantify.table import cell_means, quantify

NAMES = ["DNA", "CD3", "CD8", "PanCK"]
IMPUTED = np.array([False, True, True, False])
H, W = 30, 40


def _ome(path, image_cyx, names, imputed=None) -> None:
  """An OME-TIFF as `impute` writes it; `imputed` (names) adds its record of them."""
  extra = provenance.ome_metadata(imputed) if imputed is not None else {}
  tifffile.imwrite(path, image_cyx.astype(np.float32), ome=True,
                   metadata={"axes": "CYX", "Channel": {"Name": list(names)}, **extra})


def _labels(seed: int = 0, shape=(H, W), dtype=np.uint16) -> np.ndarray:
  """Rectangular cells of scattered ids (not 1..N), some touching, with background."""
  rng = np.random.default_rng(seed)
  labels = np.zeros(shape, dtype)
  ids = rng.choice(np.arange(1, 5000), size=12, replace=False)
  for i in ids:
    y, x = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
    labels[y:y + rng.integers(2, 7), x:x + rng.integers(2, 7)] = i
  return labels


def _fov(folder, name, seed=0, record=True, std=True, mask_name=None):
  """Writes <name>.ome.tif (+ _std) into folder and a mask; -> (mean, std, labels)."""
  rng = np.random.default_rng(seed)
  mean = rng.gamma(2.0, 3.0, (len(NAMES), H, W)).astype(np.float32)
  sd = np.where(IMPUTED[:, None, None], rng.uniform(0.1, 2.0, mean.shape), 0.0)
  recorded = [n for n, i in zip(NAMES, IMPUTED) if i] if record else None
  os.makedirs(folder, exist_ok=True)
  _ome(os.path.join(folder, f"{name}.ome.tif"), mean, NAMES, recorded)
  if std:
    _ome(os.path.join(folder, f"{name}_std.ome.tif"), sd, NAMES, recorded)
  labels = _labels(seed)
  if mask_name:
    os.makedirs(os.path.dirname(mask_name), exist_ok=True)
    tifffile.imwrite(mask_name, labels)
  return mean, sd.astype(np.float32), labels


def _brute(labels, image):
  """Per-cell means by a boolean mask per cell: the reference."""
  ids = [i for i in np.unique(labels) if i]
  return np.array([[plane[labels == i].mean() for plane in image] for i in ids])


def test_cell_means_match_brute_force_and_regionprops():
  from skimage.measure import regionprops_table
  labels = _labels(3, (50, 60), np.uint32)
  image = np.random.default_rng(1).random((5, 50, 60)).astype(np.float32)
  obs, means = cell_means(labels, image)
  np.testing.assert_allclose(means, _brute(labels, image), rtol=1e-5)
  ref = regionprops_table(labels.astype(np.int64), properties=("label", "area", "centroid"))
  np.testing.assert_array_equal(obs["label"], ref["label"])
  np.testing.assert_array_equal(obs["area"], ref["area"])
  np.testing.assert_allclose(obs["centroid_y"], ref["centroid-0"])
  np.testing.assert_allclose(obs["centroid_x"], ref["centroid-1"])


def test_quantify_one_fov_writes_the_table(tmp_path):
  mean, sd, labels = _fov(tmp_path / "imp", "P1", mask_name=str(tmp_path / "m" / "P1.tiff"))
  out = tmp_path / "cells.h5ad"
  summary = quantify(str(tmp_path / "imp" / "P1.ome.tif"), str(out),
                     mask=str(tmp_path / "m" / "P1.tiff"))
  assert summary["imputed"] == ["CD3", "CD8"] and summary["std"] and summary["fovs"] == ["P1"]
  a = anndata.read_h5ad(out)
  assert a.n_obs == summary["cells"] == len(np.unique(labels)) - 1
  assert list(a.var_names) == NAMES and a.var["imputed"].tolist() == IMPUTED.tolist()
  np.testing.assert_allclose(a.X, _brute(labels, mean), rtol=1e-5)
  std = a.layers["std"]
  assert np.isnan(std[:, ~IMPUTED]).all()  # observed: no posterior spread
  np.testing.assert_allclose(std[:, IMPUTED], _brute(labels, sd[IMPUTED]), rtol=1e-5)
  ys, xs = np.nonzero(labels == a.obs["label"].iloc[0])
  assert a.obs["centroid_y"].iloc[0] == pytest.approx(ys.mean())
  np.testing.assert_array_equal(a.obsm["spatial"], a.obs[["centroid_x", "centroid_y"]])
  assert a.obsm["spatial"][0, 0] == pytest.approx(xs.mean())  # x first, as squidpy
  assert (a.obs["fov"] == "P1").all() and a.obs_names.is_unique
  assert a.obs["area"].sum() == (labels > 0).sum()
  assert sorted(os.listdir(tmp_path)) == ["cells.h5ad", "imp", "m"]  # no temporary file left


def test_reads_the_record_impute_writes(tmp_path):
  rng = np.random.default_rng(2)
  mean = rng.random((H, W, len(NAMES))).astype(np.float32)  # [H, W, C] as impute holds it
  std = np.where(IMPUTED, rng.random(mean.shape), 0.0).astype(np.float32)
  writers.get_writer("ome-tiff")(str(tmp_path), "F1", mean, std, NAMES, IMPUTED)
  labels = _labels(4)
  (tmp_path / "masks").mkdir()
  tifffile.imwrite(tmp_path / "masks" / "F1_whole_cell.tiff", labels)  # Mesmer's name
  out = tmp_path / "cells.h5ad"
  summary = quantify(str(tmp_path / "F1.ome.tif"), str(out), mask=str(tmp_path / "masks"))
  assert summary["imputed"] == ["CD3", "CD8"]
  a = anndata.read_h5ad(out)
  np.testing.assert_allclose(a.X, _brute(labels, np.moveaxis(mean, -1, 0)), rtol=1e-5)
  assert np.isnan(a.layers["std"][:, ~IMPUTED]).all()


def test_a_folder_of_fovs_is_one_table(tmp_path):
  m1, _, l1 = _fov(tmp_path / "imp", "P1", 0, std=False,
                   mask_name=str(tmp_path / "masks" / "P1.tiff"))  # steinbock
  m2, _, l2 = _fov(tmp_path / "imp", "P2", 1, std=False,
                   mask_name=str(tmp_path / "masks" / "P2_cp_masks.tif"))  # Cellpose
  tifffile.imwrite(tmp_path / "masks" / "P9.tiff", l1)  # a mask of no FOV: unused
  out = tmp_path / "t.h5ad"
  assert main(["quantify", "--input", str(tmp_path / "imp"), "--mask",
               str(tmp_path / "masks"), "--out", str(out)]) == 0
  a = anndata.read_h5ad(out)
  assert list(a.obs["fov"].cat.categories) == ["P1", "P2"]
  n1 = len(np.unique(l1)) - 1
  assert a.n_obs == n1 + len(np.unique(l2)) - 1
  np.testing.assert_allclose(a.X[:n1], _brute(l1, m1), rtol=1e-5)
  np.testing.assert_allclose(a.X[n1:], _brute(l2, m2), rtol=1e-5)
  assert "std" not in a.layers  # no std images beside these


def test_imputed_channels_from_flags_when_not_recorded(tmp_path):
  mask = str(tmp_path / "P1_mask.tif")
  _fov(tmp_path / "imp", "P1", record=False, mask_name=mask)
  image, out = str(tmp_path / "imp" / "P1.ome.tif"), str(tmp_path / "c.h5ad")
  with pytest.raises(ValueError, match="does not record which channels.*--missing"):
    quantify(image, out, mask=mask)
  with pytest.raises(ValueError, match=r"\['CD8'\] have a posterior spread"):
    quantify(image, out, mask=mask, missing=["cd3"])  # CD8 was imputed too
  quantify(image, out, mask=mask, observed=["dna", "PanCK"])  # names match loosely
  assert anndata.read_h5ad(out).var["imputed"].tolist() == IMPUTED.tolist()
  # A file that records its imputed channels: flags that disagree are refused.
  _fov(tmp_path / "rec", "P1", mask_name=mask)
  with pytest.raises(ValueError, match=r"records \['CD3', 'CD8'\] as imputed"):
    quantify(str(tmp_path / "rec" / "P1.ome.tif"), str(tmp_path / "d.h5ad"), mask=mask,
             missing=["CD3"])
  assert not (tmp_path / "d.h5ad").exists()


def _bad_inputs(tmp_path):
  """(name, quantify kwargs, error pattern) of inputs that must be refused."""
  imp = tmp_path / "imp"
  _, _, labels = _fov(imp, "P1")
  _fov(imp, "P2", 1)
  masks = tmp_path / "masks"
  masks.mkdir()
  tifffile.imwrite(masks / "P1.tiff", labels)
  tifffile.imwrite(masks / "P3.tiff", labels)  # P2 has none
  def mask(name, array):
    tifffile.imwrite(tmp_path / name, array)
    return str(tmp_path / name)
  one = str(imp / "P1.ome.tif")
  return [
      ("float", dict(input_path=one, mask=mask("f.tif", labels.astype(np.float32))),
       "f.tif: the mask's pixels are float32, not integers"),
      ("bool", dict(input_path=one, mask=mask("b.tif", labels > 0)), "b.tif: a binary"),
      ("shape", dict(input_path=one, mask=mask("s.tif", np.repeat(np.repeat(labels, 2, 0), 2,
                                                                    1))),
       r"s.tif: the mask is 60 x 80 pixels but the image is 30 x 40.*binned.*by 2"),
      ("empty", dict(input_path=one, mask=mask("e.tif", np.zeros_like(labels))),
       "e.tif: the mask holds no cells"),
      ("negative", dict(input_path=one, mask=mask("n.tif", -labels.astype(np.int32))),
       "n.tif: .* negative label"),
      ("fov name", dict(input_path=str(imp), mask=str(masks)),
       r"masks: no mask for the FOV 'P2'.*holds: P1, P3"),
      ("one mask, many fovs", dict(input_path=str(imp), mask=str(masks / "P1.tiff")),
       "one mask file for a folder of 2 FOVs"),
      ("segment channel", dict(input_path=one, segment="nuclear:dsDNA"),
       r"P1.ome.tif: --segment nuclear:dsDNA: unknown channel.*DNA, CD3"),
      ("segment spec", dict(input_path=one, segment="membrane:CD3"), "nuclear:CHANNEL"),
      ("diameter", dict(input_path=one, segment="nuclear:DNA", nuclear_diameter=1),
       "--nuclear-diameter must be at least 2"),
      ("mask and segment", dict(input_path=one, mask=str(masks / "P1.tiff"),
                                segment="nuclear:DNA"), "give one of --mask"),
      ("std image", dict(input_path=str(imp / "P1_std.ome.tif"), mask=str(masks / "P1.tiff")),
       "a std image"),
      ("no image", dict(input_path=str(imp / "P7.ome.tif"), mask=str(masks / "P1.tiff")),
       "no such file"),
  ]


def test_bad_input_is_refused_and_nothing_written(tmp_path):
  cases = _bad_inputs(tmp_path)
  before = sorted(p for p in tmp_path.rglob("*"))
  for name, kwargs, pattern in cases:
    out = tmp_path / "out" / "cells.h5ad"
    with pytest.raises(ValueError, match=pattern):
      quantify(out=str(out), **kwargs)
    assert sorted(p for p in tmp_path.rglob("*")) == before, name  # not even a folder
  with pytest.raises(ValueError, match="name it <name>.h5ad"):
    quantify(str(tmp_path / "imp" / "P1.ome.tif"), str(tmp_path / "cells"),
             mask=str(tmp_path / "f.tif"))


def test_cli_reports_bad_input_with_exit_2(tmp_path, capsys):
  _, _, labels = _fov(tmp_path / "imp", "P1")
  tifffile.imwrite(tmp_path / "m.tif", labels.astype(np.float64))
  out = tmp_path / "c.h5ad"
  assert main(["quantify", "--input", str(tmp_path / "imp" / "P1.ome.tif"), "--mask",
               str(tmp_path / "m.tif"), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("multichan-diff quantify: error: ") and "float64" in err
  assert not out.exists()
  tifffile.imwrite(tmp_path / "m.tif", labels)
  assert main(["quantify", "--input", str(tmp_path / "imp" / "P1.ome.tif"), "--mask",
               str(tmp_path / "m.tif"), "--out", str(out)]) == 0
  assert json.loads(capsys.readouterr().out)["imputed"] == ["CD3", "CD8"]
  assert main(["quantify", "--input", str(tmp_path / "imp"), "--mask", str(tmp_path / "m.tif"),
               "--out", str(out)]) == 2  # exists, no --overwrite
  assert "already exists" in capsys.readouterr().err


def test_segment_nuclei_splits_touching_disks():
  yy, xx = np.mgrid[:64, :64]
  centres = [(16, 16), (16, 26), (45, 40), (50, 12)]  # the first two touch
  image = np.zeros((64, 64), np.float32)
  for cy, cx in centres:
    image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = 20.0
  labels = segment_nuclei(image, diameter=10)
  assert labels.max() == 4
  assert len({labels[c] for c in centres}) == 4 and all(labels[c] for c in centres)
  grown = segment_nuclei(image, diameter=10, expand=2)
  assert (grown > 0).sum() > (labels > 0).sum()
  assert not segment_nuclei(np.zeros((8, 8)), diameter=4).any()


@needs_data
def test_segment_a_real_fov(tmp_path):
  src = DATA / "mibi_dcis" / "Point2206.ome.tiff"
  fov = readers.read_multichannel_tiff(str(src))
  keep = [fov.channels.index(n) for n in ("Nuc", "CD45", "PanKRT")]
  binned = bin_image(np.moveaxis(fov.image[keep], 0, -1), 2)  # [512, 512, 3]
  image = tmp_path / "Point2206.ome.tif"
  _ome(image, np.moveaxis(binned, -1, 0), ["Nuc", "CD45", "PanKRT"], ["CD45"])
  out = tmp_path / "cells.h5ad"
  summary = quantify(str(image), str(out), segment="nuclear:nuc", nuclear_diameter=8,
                     expand=1)
  a = anndata.read_h5ad(out)
  assert 100 < a.n_obs == summary["cells"] < 5000, a.n_obs
  assert a.var["imputed"].tolist() == [False, True, False]
  assert "nuclear:nuc" in a.uns["quantify"]["masks"][0]
  nuc = a.X[:, 0]
  assert np.median(nuc) > np.median(binned[..., 0])  # nuclei are bright in the nuclear channel
