"""`prepare union` of the two real MIBI panels."""

import pathlib

import numpy as np
import pytest

from helpers import DATA, needs_data
from multichan_diff.cli import main
from multichan_diff.data import store
from multichan_diff.data.pipeline import make_dataset, make_iterator

pytestmark = needs_data


def test_union_of_granuloma_and_dcis(tmp_path, capsys):
  for name, test in (("mibi_granuloma", "Point7"), ("mibi_dcis", "Point2206")):
    assert main(["prepare", "images", "--input", str(DATA / name), "--out",
                 str(tmp_path / f"{name}.zarr"), "--bin", "16", "--tile", "16",
                 "--test-fovs", test]) == 0
  names = pathlib.Path(__file__).resolve().parents[1] / "data_prep" / "mibi_name_map.csv"
  out = tmp_path / "union.zarr"
  capsys.readouterr()
  assert main(["prepare", "union", str(tmp_path / "mibi_granuloma.zarr"),
               str(tmp_path / "mibi_dcis.zarr"), "--out", str(out), "--name-map",
               str(names)]) == 0
  attrs = store.read_attributes(str(out))
  channels = attrs["channels"]
  shared = set(np.asarray(channels)[np.all(attrs["panel_present"], axis=0)])
  assert {"CD3", "CD4", "CD8", "CD20", "CD45", "CD68", "Ki67", "SMA", "E-cadherin",
          "Keratin-pan"} <= shared
  assert len(channels) == 39 + 40 - len(shared)
  x = store.open_array(str(out), "x0").read().result()
  assert x.shape == (6 * 16 + 3 * 16, 16, 16, len(channels))
  # Granuloma samples are zero on channels only DCIS measured, and the reverse.
  gran_only = [i for i, c in enumerate(channels) if not attrs["panel_present"][1][i]]
  dcis_only = [i for i, c in enumerate(channels) if not attrs["panel_present"][0][i]]
  assert (x[:96][..., dcis_only] == 0).all() and (x[96:][..., gran_only] == 0).all()
  # The pipeline carries each sample's panel and never observes an absent channel.
  batch = next(make_iterator(make_dataset(str(out), "train", global_batch_size=32)))
  assert not (batch["observed"] & ~batch["present"]).any()
  assert {tuple(p) for p in batch["present"].tolist()} <= {tuple(p) for p in attrs["panel_present"]}
  # Per-FOV statistics on the union's channels: each sample points at its own FOV's.
  assert len(attrs["fov_mean"]) == 6 + 3 and len(attrs["sample_fov"]) == len(x)
  g = store.read_attributes(str(tmp_path / "mibi_dcis.zarr"))
  k = 96 + 5  # the 6th DCIS sample
  dcis_idx = attrs["union_of"][1]["channel_index"]
  np.testing.assert_allclose(np.asarray(attrs["fov_mean"][attrs["sample_fov"][k]])[dcis_idx],
                             g["fov_mean"][g["tile_fov"][5]])
  assert (np.asarray(attrs["fov_std"][attrs["sample_fov"][k]])[gran_only] == 1).all()
  # Without the map, E-cadherin and ECAD stay two channels.
  assert main(["prepare", "union", str(tmp_path / "mibi_granuloma.zarr"),
               str(tmp_path / "mibi_dcis.zarr"), "--out", str(tmp_path / "u2.zarr")]) == 0
  assert "ECAD" in store.read_attributes(str(tmp_path / "u2.zarr"))["channels"]
