"""`prepare images` on the real MIBI folders and on the other layouts, plus bad input."""

import json

import numpy as np
import pytest
import tifffile

from helpers import DATA, needs_data
from multichan_diff.cli import main
from multichan_diff.data import store
from multichan_diff.data.prepare import bin_image, prepare_images
from multichan_diff.data.readers import read_image_folder
from multichan_diff.data.transforms import Normalizer, fit_normalizer

pytestmark = needs_data
DCIS = DATA / "mibi_dcis"


@pytest.fixture(scope="module")
def dcis_fovs():
  return read_image_folder(str(DCIS))


def test_prepare_real_folder_splits_by_fov_and_fits_on_train(tmp_path, dcis_fovs):
  out = tmp_path / "dcis.zarr"
  summary = prepare_images(str(DCIS), str(out), tile=32, bin_size=8, test_fovs=["Point2206"],
                           val_fovs=["Point2204"])
  assert summary["tiles"] == {"train": 16, "val": 16, "test": 16}
  arr = store.open_array(str(out), "x0")
  attrs = store.read_attributes(str(out))
  assert arr.shape == (48, 32, 32, 40)
  assert len(attrs["channels"]) == 40 and "P" not in attrs["channels"]  # keep=0 dropped
  fovs, split = np.array(attrs["tile_fov"]), np.array(attrs["sample_split"])
  for f in range(3):  # every tile of a FOV in one split
    assert len(set(split[fovs == f])) == 1
  assert attrs["splits"] == {"train": ["Point2203"], "val": ["Point2204"], "test": ["Point2206"]}
  assert all(len(s["sha256"]) == 64 for s in attrs["sources"])
  assert attrs["count_step"] == 1 / 64  # whole counts, averaged over 8 x 8 pixels
  # Statistics come from the training FOV alone.
  train = bin_image(np.moveaxis(dcis_fovs[0].image, 0, -1), 8)
  expected = fit_normalizer([train])
  norm = Normalizer.from_dict(attrs["normalizer"])
  np.testing.assert_allclose(norm.mean, expected.mean, rtol=1e-5)
  # Tile 0 is FOV 0 at the origin, stored normalised; the inverse gives counts back.
  t0 = arr[0].read().result()
  np.testing.assert_allclose(t0, norm.forward(train[:32, :32]), rtol=1e-6)
  back = norm.inverse(t0)
  inside = train[:32, :32] <= np.sinh(np.asarray(norm.clip)) * norm.cofactor
  np.testing.assert_allclose(back[inside], train[:32, :32][inside], rtol=1e-3, atol=1e-3)


def test_tissue_filter_drops_empty_tiles(tmp_path):
  image = np.zeros((3, 64, 64), np.uint16)
  image[:, :32, :32] = 5  # tissue in the top-left tile only
  d = tmp_path / "in"
  d.mkdir()
  tifffile.imwrite(d / "A.ome.tiff", image, metadata={"axes": "CYX",
                                                      "Channel": {"Name": ["x", "y", "z"]}})
  s = prepare_images(str(d), str(tmp_path / "o.zarr"), tile=32, min_signal=0.5)
  assert s["tiles"]["train"] == 1
  # Counts summed over bins stay whole; intensities that are not counts have no step.
  prepare_images(str(d), str(tmp_path / "s.zarr"), tile=16, bin_size=2, bin_how="sum")
  assert store.read_attributes(str(tmp_path / "s.zarr"))["count_step"] == 1
  tifffile.imwrite(d / "A.ome.tiff", image * 0.3, metadata={
      "axes": "CYX", "Channel": {"Name": ["x", "y", "z"]}})
  prepare_images(str(d), str(tmp_path / "f.zarr"), tile=32)
  assert store.read_attributes(str(tmp_path / "f.zarr"))["count_step"] is None


def _write_layouts(root, fovs):
  """The same FOVs as multi-page TIFFs + panel.csv, and as folders of channel TIFFs."""
  multi, folders = root / "multi", root / "folders"
  multi.mkdir()
  folders.mkdir()
  for f in fovs:
    small = f.image[:, :128, :128].astype(np.uint16)
    tifffile.imwrite(multi / f"{f.name}.tif", small)
    (folders / f.name).mkdir()
    for c, plane in zip(f.channels, small):
      tifffile.imwrite(folders / f.name / f"{c}.tiff", plane)
  (multi / "panel.csv").write_text(
      "channel,name,keep\n" + "".join(f"{i},{c},1\n" for i, c in enumerate(fovs[0].channels)))
  return multi, folders


def test_three_layouts_give_the_same_store(tmp_path, dcis_fovs):
  multi, folders = _write_layouts(tmp_path, dcis_fovs)
  ome = tmp_path / "ome"
  ome.mkdir()
  for f in dcis_fovs:
    tifffile.imwrite(ome / f"{f.name}.ome.tiff", f.image[:, :128, :128].astype(np.uint16),
                     metadata={"axes": "CYX", "Channel": {"Name": f.channels}})
  arrays = []
  for d in (ome, multi, folders):
    out = tmp_path / f"{d.name}.zarr"
    prepare_images(str(d), str(out), tile=64, test_fovs=["Point2206"])
    arrays.append(store.open_array(str(out), "x0").read().result())
    assert store.read_attributes(str(out))["channels"] == dcis_fovs[0].channels
  np.testing.assert_array_equal(arrays[0], arrays[1])
  np.testing.assert_array_equal(arrays[0], arrays[2])


def _cli_fails(args, capsys, match):
  rc = main(args)
  err = capsys.readouterr().err
  assert rc != 0 and match in err, err
  return err


def _ome(path, image, names):
  tifffile.imwrite(path, image, metadata={"axes": "CYX", "Channel": {"Name": names}})


def test_bad_input_is_named_and_leaves_nothing(tmp_path, capsys):
  d = tmp_path / "in"
  d.mkdir()
  out = tmp_path / "out.zarr"
  base = ["prepare", "images", "--input", str(d), "--out", str(out), "--tile", "16"]
  img = np.ones((3, 32, 32), np.float32)

  _ome(d / "A.ome.tiff", img, ["CD3", "CD4", "CD8"])
  (d / "panel.csv").write_text("channel,name,keep\n0,CD3,1\n1,CD4,1\n")
  _cli_fails(base, capsys, "A.ome.tiff: the panel lists 2 channels but the image has 3")
  (d / "panel.csv").unlink()

  _ome(d / "A.ome.tiff", img, ["CD3", "CD3", "CD8"])
  _cli_fails(base, capsys, "A.ome.tiff: two channels are named 'CD3'")
  _cli_fails(base + ["--drop-channels", "CD20"], capsys,
             "A.ome.tiff: --drop-channels ['CD20'] not in the panel; the panel is: CD3, CD3, CD8")
  _ome(d / "A.ome.tiff", img, ["CD3", "CD4", "CD8"])
  for stride in ("0", "-2", "17"):
    _cli_fails(base + ["--stride", stride], capsys,
               f"--stride {stride}: a stride must be >= 1 and <= the tile size (16)")

  nan = img.copy()
  nan[1, 4, 5] = np.nan
  _ome(d / "A.ome.tiff", nan, ["CD3", "CD4", "CD8"])
  _cli_fails(base, capsys, "1 NaN or Inf pixel(s), the first at channel 1, y 4, x 5")
  assert main(base + ["--zero-nonfinite", "--dtype", "bfloat16"]) == 0  # the opt-in repair
  capsys.readouterr()
  fixed = store.open_array(str(out), "x0")
  assert fixed.dtype.name == "bfloat16"
  assert np.isfinite(fixed.read().result().astype(np.float32)).all()
  import shutil
  shutil.rmtree(out)

  neg = img.copy()
  neg[0, 0, 0] = -1
  _ome(d / "A.ome.tiff", neg, ["CD3", "CD4", "CD8"])
  _cli_fails(base, capsys, "negative pixel")

  tifffile.imwrite(d / "A.ome.tiff", np.ones((2, 3, 8, 8), np.float32),
                   metadata={"axes": "ZCYX"})
  _cli_fails(base, capsys, "A.ome.tiff: expected axes CYX")

  _ome(d / "A.ome.tiff", img, ["CD3", "CD4", "CD8"])
  _ome(d / "B.ome.tiff", img, ["CD3", "CD4", "CD20"])
  _cli_fails(base, capsys, "B.ome.tiff: its channels differ from")
  (d / "B.ome.tiff").unlink()

  _cli_fails(base[:-1] + ["64"], capsys, "tile 64 is larger than the image (32 x 32")

  (d / "C.ome.tiff").write_bytes(b"not a tiff")
  _cli_fails(base, capsys, "C.ome.tiff: cannot read as TIFF")
  (d / "C.ome.tiff").unlink()

  _cli_fails(base + ["--test-fovs", "Z"], capsys, "unknown test FOV(s) ['Z']")

  empty = tmp_path / "empty"
  empty.mkdir()
  _cli_fails(["prepare", "images", "--input", str(empty), "--out", str(out)], capsys,
             "no TIFF files or FOV folders found")

  # Nothing was left behind by any failure.
  assert not out.exists()
  assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []

  # A good run, then a refusal to overwrite without --overwrite, then a replacement.
  assert main(base) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["tiles"]["train"] == 4
  _cli_fails(base, capsys, "already exists; pass --overwrite")
  assert main(base + ["--overwrite", "--tile", "32"]) == 0
  assert store.open_array(str(out), "x0").shape == (1, 32, 32, 3)


def test_drop_channels_before_anything_else(tmp_path, capsys):
  from multichan_diff.data.synthetic import TissueModel, write_synthetic_tissue
  d = tmp_path / "syn"
  write_synthetic_tissue(str(d), num_fovs=2, model=TissueModel(num_channels=4, size=48))
  base = ["prepare", "images", "--input", str(d), "--tile", "16", "--test-fovs", "FOV1"]
  assert main([*base, "--out", str(tmp_path / "all.zarr")]) == 0
  # An empty channel with NaNs would be refused; dropped, it is never read.
  for f in ("FOV0", "FOV1"):
    image = tifffile.imread(d / f"{f}.ome.tiff").astype(np.float32)
    image[2] = np.nan
    _ome(d / f"{f}.ome.tiff", image, ["DNA", "SYN1", "SYN2", "SYN3"])
  (d / "panel.csv").unlink()
  _cli_fails([*base, "--out", str(tmp_path / "x.zarr")], capsys, "NaN or Inf pixel(s)")
  assert main([*base, "--out", str(tmp_path / "less.zarr"), "--drop-channels", "SYN2"]) == 0
  attrs = store.read_attributes(str(tmp_path / "less.zarr"))
  assert attrs["channels"] == ["DNA", "SYN1", "SYN3"] and attrs["dropped_channels"] == ["SYN2"]
  full = store.open_array(str(tmp_path / "all.zarr"), "x0").read().result()
  less = store.open_array(str(tmp_path / "less.zarr"), "x0").read().result()
  np.testing.assert_allclose(less, full[..., [0, 1, 3]], rtol=1e-6)
  # Folders of channel TIFFs: a dropped channel needs no file.
  folders = tmp_path / "folders"
  for f in ("FOV0", "FOV1"):
    (folders / f).mkdir(parents=True)
    for c, plane in zip(["DNA", "SYN1", "SYN3"], _but_third(d / f"{f}.ome.tiff")):
      tifffile.imwrite(folders / f / f"{c}.tiff", plane)
  (folders / "panel.csv").write_text("channel,name,keep\n0,DNA,1\n1,SYN1,1\n2,SYN2,1\n"
                                     "3,SYN3,1\n")
  _cli_fails([*base[:3], str(folders), *base[4:], "--out", str(tmp_path / "y.zarr")], capsys,
             "no TIFF for panel channel(s) ['SYN2']")
  assert main([*base[:3], str(folders), *base[4:], "--out", str(tmp_path / "f.zarr"),
               "--drop-channels", "SYN2"]) == 0
  np.testing.assert_allclose(store.open_array(str(tmp_path / "f.zarr"), "x0").read().result(),
                             less, rtol=1e-6)
  _cli_fails([*base, "--out", str(tmp_path / "z.zarr"), "--drop-channels", "SYN9"], capsys,
             "FOV0.ome.tiff: --drop-channels ['SYN9'] not in the panel; the panel is: DNA, SYN1")
  assert {p.name for p in tmp_path.iterdir()} == {"syn", "folders", "all.zarr", "less.zarr",
                                                  "f.zarr"}


def _but_third(path):
  """The planes of an OME-TIFF but its third."""
  image = tifffile.imread(path)
  return [image[0], image[1], image[3]]
