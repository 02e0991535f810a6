"""`prepare union` of the two real MIBI panels, and a model of the union scored on one."""

import json
import pathlib

import numpy as np
import pytest
import tifffile

from helpers import DATA, needs_data
from multichan_diff.cli import main
from multichan_diff.data import store
from multichan_diff.data.pipeline import make_dataset, make_iterator
from multichan_diff.data.transforms import typical_fov_stats
from multichan_diff.evaluate.images import observed_sets

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
  assert attrs["count_step"] == 1 / 256  # both panels whole counts, binned alike
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
  # The intersection: only the shared channels, in the union's order, values unchanged.
  inter = tmp_path / "inter.zarr"
  assert main(["prepare", "union", str(tmp_path / "mibi_granuloma.zarr"),
               str(tmp_path / "mibi_dcis.zarr"), "--out", str(inter), "--name-map",
               str(names), "--intersection"]) == 0
  ia = store.read_attributes(str(inter))
  cols = [channels.index(c) for c in ia["channels"]]
  assert set(ia["channels"]) == shared and cols == sorted(cols)
  assert np.all(ia["panel_present"])
  np.testing.assert_array_equal(store.open_array(str(inter), "x0").read().result(),
                                x[..., cols])
  np.testing.assert_array_equal(np.asarray(ia["fov_mean"]), np.asarray(attrs["fov_mean"])[:, cols])
  gran_idx = ia["union_of"][0]["channel_index"]  # -1: a granuloma channel not kept
  assert sum(i >= 0 for i in gran_idx) == len(shared) and -1 in gran_idx
  # A union model trained on per-FOV targets goes back to units with the average of the FOVs
  # that measured each channel, not of FOVs that never did (mean 0, std 1 there).
  mean, std = typical_fov_stats(attrs)
  train_fovs = sorted({f for f, s in zip(attrs["sample_fov"], attrs["sample_split"]) if s == 0})
  fm, fs = np.asarray(attrs["fov_mean"]), np.asarray(attrs["fov_std"])
  gran_fovs = [f for f in train_fovs if f < 6]
  c = gran_only[0]
  assert mean[c] == pytest.approx(fm[gran_fovs, c].mean(), rel=1e-5)
  assert std[c] == pytest.approx(fs[gran_fovs, c].mean(), rel=1e-5)
  s = channels.index("CD3")
  assert mean[s] == pytest.approx(fm[train_fovs, s].mean(), rel=1e-5)
  # Without the map, E-cadherin and ECAD stay two channels.
  assert main(["prepare", "union", str(tmp_path / "mibi_granuloma.zarr"),
               str(tmp_path / "mibi_dcis.zarr"), "--out", str(tmp_path / "u2.zarr")]) == 0
  assert "ECAD" in store.read_attributes(str(tmp_path / "u2.zarr"))["channels"]
  # A model of the union is scored on one panel's channels, matched by name: the order in
  # which --channels names them changes nothing.
  configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
  assert main(["train", "--config", f"{configs}/default.py:smoke", "--workdir",
               str(tmp_path / "run"), f"--config.data.store={out}", "--config.train.steps=2",
               "--config.data.threads=2"]) == 0
  assert main(["export", "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 0
  kept = ["CD3", "CD8", "E-cadherin", "Ki67", "SMA", "CD45"]
  reports = []
  for order in (kept, kept[::-1]):
    rep = tmp_path / f"rep_{order[0]}"
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--store",
                 str(tmp_path / "mibi_dcis.zarr"), "--name-map", str(names), "--channels",
                 ",".join(order), "--mode", "panel", "--panel", "CD3,CD8,CD45", "--samples",
                 "2", "--steps", "1", "--views", "1", "--out", str(rep)]) == 0
    reports.append(json.loads((rep / "report.json").read_text()))
  first, second = (r["methods"]["model"]["per_channel"] for r in reports)
  assert reports[0]["channels"] == reports[1]["channels"][::-1]  # the store's names (ECAD)
  assert [c for c in first if first[c]["pearson"] is not None] == ["ECAD", "Ki67", "SMA"]
  for ch in ("ECAD", "Ki67", "SMA"):
    assert np.isfinite(first[ch]["pearson"]) and first[ch] == pytest.approx(second[ch],
                                                                          abs=1e-6), ch
  # `multi` end to end: the fixed subsets of the kept channels, each scored where missing.
  assert main(["evaluate", "--model", str(tmp_path / "m"), "--store",
               str(tmp_path / "mibi_dcis.zarr"), "--name-map", str(names), "--channels",
               ",".join(kept), "--mode", "multi", "--samples", "1", "--steps", "1",
               "--views", "1", "--out", str(tmp_path / "multi")]) == 0
  multi = json.loads((tmp_path / "multi" / "report.json").read_text())
  got = multi["channels"]  # the store's names, in --channels' order
  expected = [[c for c, o in zip(got, s) if o] for s in observed_sets("multi", got)]
  assert multi["sets"] == expected and multi["mode"] == "multi"
  assert np.isfinite(multi["methods"]["model"]["mean"]["pearson"])


def test_two_spellings_in_one_store_are_refused_when_joined(tmp_path, capsys):
  """One file may hold `CD3` and `CD-3` (both kept); joined to another panel they would
  meet as one channel, so the union names both and the option that chooses."""
  image = np.random.default_rng(0).poisson(3.0, (3, 32, 32)).astype(np.uint16)
  for name, channels in (("a", ["CD3", "CD-3", "CD8"]), ("b", ["CD3", "CD4", "CD8"])):
    (tmp_path / name).mkdir()
    tifffile.imwrite(tmp_path / name / "F.ome.tiff", image,
                     metadata={"axes": "CYX", "Channel": {"Name": channels}})
    assert main(["prepare", "images", "--input", str(tmp_path / name), "--out",
                 str(tmp_path / f"{name}.zarr"), "--tile", "16"]) == 0
  assert store.read_attributes(str(tmp_path / "a.zarr"))["channels"] == ["CD3", "CD-3", "CD8"]
  capsys.readouterr()
  union = ["prepare", "union", str(tmp_path / "b.zarr"), str(tmp_path / "a.zarr"), "--out",
           str(tmp_path / "u.zarr")]
  assert main(union) == 2
  err = capsys.readouterr().err
  assert "a.zarr: channels 'CD3' and 'CD-3' match one marker; keep one of them (prepare " \
         "with --drop-channels 'CD-3', or the other)" in err, err
  assert not (tmp_path / "u.zarr").exists()
  assert main(["prepare", "images", "--input", str(tmp_path / "a"), "--out",
               str(tmp_path / "a.zarr"), "--tile", "16", "--drop-channels", "CD-3",
               "--overwrite"]) == 0
  assert main(union) == 0
  assert store.read_attributes(str(tmp_path / "u.zarr"))["channels"] == ["CD3", "CD4", "CD8"]
