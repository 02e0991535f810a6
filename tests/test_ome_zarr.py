"""`impute`'s writers: OME-Zarr (NGFF) images the ome-zarr reader opens, equal to the
OME-TIFFs, which record their imputed channels."""

import json
import os

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from helpers import DATA, needs_data
from multichan_diff.cli import main
from multichan_diff.data import readers
from multichan_diff.impute import provenance, writers
from multichan_diff.train.model_dir import read_meta


def _read(path) -> tuple[dict, list[np.ndarray]]:
  """(metadata, pyramid levels) of the image at path, via the ome-zarr reader."""
  nodes = list(Reader(parse_url(str(path)))())
  assert nodes, f"{path}: not an OME-Zarr image"
  return nodes[0].metadata, [np.asarray(level) for level in nodes[0].data]


def _halve(image: np.ndarray) -> np.ndarray:
  """The 2x2 means of a [C, H, W] image (a trailing odd row or column dropped)."""
  c, h, w = image.shape
  return image[:, :h // 2 * 2, :w // 2 * 2].reshape(c, h // 2, 2, w // 2, 2).mean((2, 4))


@pytest.mark.parametrize("h, w, levels", [(20, 30, 1), (70, 129, 2), (128, 300, 3)])
def test_pyramid_levels_and_metadata(tmp_path, h, w, levels):
  rng = np.random.default_rng(0)
  mean = rng.uniform(0, 5, (h, w, 3)).astype(np.float32)
  std = np.zeros_like(mean)
  std[..., 1] = rng.uniform(0, 1, (h, w))
  names, imputed = ["DNA", "CD3", "CD8"], np.array([False, True, False])
  writers.get_writer("ome-zarr")(str(tmp_path), "f1", mean, std, names, imputed)
  assert sorted(os.listdir(tmp_path)) == ["f1.ome.zarr", "f1_std.ome.zarr"]
  for suffix, image in (("", mean), ("_std", std)):
    meta, data = _read(tmp_path / f"f1{suffix}.ome.zarr")
    assert meta["channel_names"] == names and [a["name"] for a in meta["axes"]] == list("cyx")
    assert [d.shape for d in data] == [(3, h >> i, w >> i) for i in range(levels)]
    np.testing.assert_array_equal(data[0], np.moveaxis(image, -1, 0))
    for fine, coarse in zip(data, data[1:]):
      np.testing.assert_allclose(coarse, _halve(fine), rtol=1e-5, atol=1e-6)
    lo, hi = np.array(meta["contrast_limits"]).T  # a display window for every channel
    assert (hi > lo).all()
    attrs = zarr.open_group(str(tmp_path / f"f1{suffix}.ome.zarr"), mode="r").attrs
    assert attrs["ome"]["version"] == "0.5"
    assert attrs["multichan_diff"]["image"] == ("std" if suffix else "mean")
    assert attrs["multichan_diff"]["imputed"] == ["CD3"]
    assert attrs["multichan_diff"]["observed"] == ["DNA", "CD8"]
  with pytest.raises(ValueError, match="unknown output format 'png'.*ome-tiff"):
    writers.get_writer("png")


@needs_data
def test_impute_ome_zarr_equals_the_ome_tiff(tmp_path, image_model, capsys):
  src = DATA / "mibi_dcis" / "Point2206.ome.tiff"
  args = ["impute", "--model", image_model, "--input", str(src), "--missing", "CD3,CD8",
          "--samples", "2", "--steps", "2", "--seed", "3"]
  assert main([*args, "--out", str(tmp_path / "tif")]) == 0
  capsys.readouterr()
  out = tmp_path / "zarr"
  assert main([*args, "--out", str(out), "--format", "ome-zarr"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["format"] == "ome-zarr" and summary["imputed"] == ["CD3", "CD8"]
  assert sorted(os.listdir(out)) == ["Point2206.ome.zarr", "Point2206_std.ome.zarr"]
  assert sorted(os.listdir(tmp_path)) == ["tif", "zarr"]  # no temporary left beside
  names = read_meta(image_model)["channels"]
  for suffix in ("", "_std"):
    tif = readers.read_multichannel_tiff(str(tmp_path / "tif" / f"Point2206{suffix}.ome.tif"))
    meta, data = _read(out / f"Point2206{suffix}.ome.zarr")
    assert meta["channel_names"] == names == tif.channels
    c, h, w = tif.image.shape
    assert [d.shape for d in data] == [(c, h >> i, w >> i) for i in range(3)]
    np.testing.assert_allclose(data[0], tif.image, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(data[1], _halve(data[0]), rtol=1e-5, atol=1e-5)
    attrs = zarr.open_group(str(out / f"Point2206{suffix}.ome.zarr"), mode="r").attrs
    assert attrs["multichan_diff"]["imputed"] == ["CD3", "CD8"]
    with tifffile.TiffFile(tmp_path / "tif" / f"Point2206{suffix}.ome.tif") as tf:
      assert provenance.read_imputed(tf.ome_metadata, "tif") == ["CD3", "CD8"]
  # An existing output is refused and left alone.
  before = sorted(os.listdir(out))
  assert main([*args, "--out", str(out), "--format", "ome-zarr"]) == 2
  assert "already exists" in capsys.readouterr().err and sorted(os.listdir(out)) == before
  # The newcomer's path on: the imputed OME-TIFF -> a per-cell table over a rough nuclear
  # segmentation -> AnnData, as scanpy reads it.
  import anndata
  cells = tmp_path / "cells.h5ad"
  assert main(["quantify", "--input", str(tmp_path / "tif" / "Point2206.ome.tif"), "--segment",
               "nuclear:HH3", "--nuclear-diameter", "3", "--out", str(cells)]) == 0
  a = anndata.read_h5ad(cells)
  assert list(a.var_names) == names and a.n_obs > 10
  assert a.var_names[a.var["imputed"].to_numpy()].tolist() == ["CD3", "CD8"]
  std = a.layers["std"]
  assert np.isfinite(std[:, a.var["imputed"].to_numpy()]).all()
  assert np.isnan(std[:, ~a.var["imputed"].to_numpy()]).all()
  assert a.obsm["spatial"].shape == (a.n_obs, 2)


@needs_data
def test_a_failed_write_leaves_no_output(tmp_path, image_model, monkeypatch):
  def fail(folder, fov, *rest):
    writers.write_ome_zarr(folder, fov, *rest)
    raise OSError("disk full")
  monkeypatch.setitem(writers.WRITERS, "ome-zarr", fail)
  with pytest.raises(OSError, match="disk full"):
    main(["impute", "--model", image_model, "--input",
          str(DATA / "mibi_dcis" / "Point2206.ome.tiff"), "--missing", "CD3,CD8", "--samples",
          "2", "--steps", "2", "--out", str(tmp_path / "out"), "--format", "ome-zarr"])
  assert os.listdir(tmp_path) == []


@needs_data
def test_cells_refuse_ome_zarr(tmp_path, cells_model, capsys):
  src, _, model = cells_model
  capsys.readouterr()
  assert main(["impute", "--model", str(model), "--input", str(src), "--out",
               str(tmp_path / "p.h5ad"), "--format", "ome-zarr"]) == 2
  assert "--format ome-zarr applies to images" in capsys.readouterr().err
  assert not (tmp_path / "p.h5ad").exists()
