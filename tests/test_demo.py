"""`multichan-diff demo`: the whole path on the built-in synthetic tissue (a tiny budget)."""

import json

import numpy as np

from helpers import DATA, needs_data
from multichan_diff.cli import main
from multichan_diff.data import readers
from multichan_diff.demo import run_demo


def test_demo_writes_the_imputed_fov_and_the_report(tmp_path):
  out = tmp_path / "demo"
  result = run_demo(str(out), steps=4, samples=2, sampler_steps=2)
  assert result["held_out"] == ["SYN9", "SYN10", "SYN11"]
  for name in ("imputed/FOV5.ome.tif", "imputed/FOV5_std.ome.tif", "report/report.md",
               "report/per_channel.png", "report/examples.png", "model/model.json"):
    assert (out / name).stat().st_size > 0, name
  report = json.loads((out / "report" / "report.json").read_text())
  assert report["mode"] == "panel" and report["sets"] == [
      [c for c in report["channels"] if c not in result["held_out"]]]
  assert report["methods"]["ridge_smoothed"]["mean"]["pearson"] > 0.3  # structure to find


@needs_data
def test_demo_cli_runs_on_a_folder_of_real_fovs(tmp_path, capsys):
  out = tmp_path / "demo"
  assert main(["demo", "--data", str(DATA / "mibi_dcis"), "--out", str(out), "--steps", "2",
               "--tile", "16", "--bin", "8"]) == 0
  result = json.loads(capsys.readouterr().out)
  channels = readers.read_panel_csv(DATA / "mibi_dcis" / "panel.csv").kept
  report = json.loads((out / "report" / "report.json").read_text())
  assert report["channels"][-3:] == result["held_out"]
  assert set(report["channels"]) <= set(channels)
  assert (out / "imputed" / "Point2206.ome.tif").stat().st_size > 0  # the last FOV is test
  assert np.isfinite(report["methods"]["model"]["mean"]["pearson"])
  # Its own folder is not overwritten without --overwrite.
  assert main(["demo", "--data", str(DATA / "mibi_dcis"), "--out", str(out)]) == 2
  assert "--overwrite" in capsys.readouterr().err
