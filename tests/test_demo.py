"""`multichan-diff demo`: the whole path on the built-in synthetic tissue (a tiny budget)."""

import json

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
