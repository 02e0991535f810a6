"""evaluate.report on hand-made results: the baseline floor line, the calibration summary,
and the files written."""

import json

import numpy as np
import pytest

from multichan_diff.evaluate import metrics, report

NAN = np.nan
INFO = {"kind": "images", "split": "test", "mode": "single", "model": "/m", "store": "/s",
        "sampler": "ddim", "steps": 2, "samples": 2, "point": "denoiser", "views": 1}


def _images(model: float, ridge: float, regressor: float | None = None) -> dict:
  """Two sets over channels a, b, c; every method's mean Pearson r is the given figure."""
  def rows(r):
    return {"pearson": np.array([[r, NAN, NAN], [NAN, r, r]]),
            "rmse": np.array([[1.0, NAN, NAN], [NAN, 1.0, 1.0]])}
  scores = {"model": rows(model), "model_1_sample": rows(0.9), "ridge": rows(ridge),
            "most_correlated": rows(ridge - 0.1)}
  if regressor is not None:
    scores["masked_regressor"] = rows(regressor)
  return {"channels": ["a", "b", "c"], "scores": scores}


def _cells(model: float, krr: float) -> dict:
  def row(r):
    return {"r_p": r, "r_c": 0.5, **{k: np.full(2, r) for k in ("pearson", "spearman", "rmse")}}
  return {"channels": ["p", "q"], "scores": {"model": row(model), "krr": row(krr),
                                             "ridge_svd": row(krr - 0.01)}}


def _first_line(md: str) -> str:
  lines = md.splitlines()
  assert lines[0].startswith("# Evaluation") and lines[1] == ""
  return lines[2]


def test_below_the_best_baseline_is_the_first_line():
  s = report.summarise(_images(0.44, 0.452), "images")
  assert s["best_baseline"] == "ridge" and s["below_best_baseline"] is True
  assert _first_line(report.markdown(s, INFO)) == (
      "The model is below the best baseline (ridge, mean Pearson r 0.440 against 0.452) on "
      "this split.")
  # Figures equal to 3 decimals get the digits that tell them apart.
  s = report.summarise(_images(0.4501, 0.4504), "images")
  assert "0.4501 against 0.4504" in _first_line(report.markdown(s, INFO))
  cells = report.summarise(_cells(0.55, 0.57), "cells")
  assert cells["below_best_baseline"] is True
  line = _first_line(report.markdown(cells, {**INFO, "kind": "cells"}))
  assert line.startswith("The model is below the best baseline (krr, r_p 0.550 against 0.570)")


def test_at_or_above_the_best_baseline():
  for s, kind in ((report.summarise(_images(0.46, 0.452), "images"), "images"),
                  (report.summarise(_images(0.452, 0.452), "images"), "images"),
                  (report.summarise(_cells(0.58, 0.57), "cells"), "cells")):
    assert s["below_best_baseline"] is False
    md = report.markdown(s, {**INFO, "kind": kind})
    assert _first_line(md).startswith("The model is at or above the best baseline (")
    assert "below the best baseline" not in md
  # Nothing to compare (no baseline, or an undefined headline): no line, and None.
  only = {"channels": ["a"], "scores": {"model": {"pearson": np.array([[0.3]])}}}
  s = report.summarise(only, "images")
  assert s["below_best_baseline"] is None
  assert "best baseline (" not in report.markdown(s, INFO)


def test_masked_regressor_is_a_baseline_that_can_be_the_best():
  s = report.summarise(_images(0.46, 0.452, regressor=0.47), "images")
  assert s["best_baseline"] == "masked_regressor" and s["below_best_baseline"] is True
  md = report.markdown(s, {**INFO, "regressor": "/r"})
  assert _first_line(md).startswith("The model is below the best baseline (masked_regressor,")
  assert "`masked_regressor` the point estimate of the regressor `/r`" in md
  assert "| masked_regressor |" in md
  s = report.summarise(_images(0.46, 0.452, regressor=0.40), "images")
  assert s["best_baseline"] == "ridge" and s["below_best_baseline"] is False


def _with_calibration(result: dict, k: int = 3) -> dict:
  """Uncertainty rows of two sets, with the PIT [S, K + 1, C] NaN where observed."""
  pit = np.full((2, k + 1, 3), NAN)
  pit[0, :, 0] = [0.4, 0.1, 0.1, 0.4]
  pit[1, :, 1] = [0.25] * 4
  pit[1, :, 2] = [0.1, 0.4, 0.4, 0.1]
  cov = {metrics.coverage_key(p): np.array([[v, NAN, NAN], [NAN, v + 0.1, v + 0.2]])
         for p, v in zip(metrics.COVERAGE_LEVELS, (0.2, 0.4, 0.5))}
  unc = {"draws": k, "below": np.array([[0.4, NAN, NAN], [NAN, 0.25, 0.1]]),
         "above": np.array([[0.4, NAN, NAN], [NAN, 0.25, 0.1]]),
         "std_error_spearman": np.array([[0.1, NAN, NAN], [NAN, 0.2, 0.3]]),
         "relative_std": np.array([[0.5, NAN, NAN], [NAN, 0.6, 0.7]]), "pit": pit, **cov}
  return {**result, "uncertainty": unc, "examples": {}}


def test_calibration_summary_and_files(tmp_path):
  result = _with_calibration(_images(0.44, 0.452))
  u = report.summarise(result, "images")["uncertainty"]
  # The PIT pooled over the three scored (set, channel) pairs, as the other figures are.
  want = np.mean([[0.4, 0.1, 0.1, 0.4], [0.25] * 4, [0.1, 0.4, 0.4, 0.1]], 0)
  np.testing.assert_allclose(u["pit"], want)
  assert u["coverage"]["levels"] == list(metrics.COVERAGE_LEVELS)
  assert u["coverage"]["empirical"] == pytest.approx([0.3, 0.5, 0.6])
  np.testing.assert_allclose(u["coverage"]["calibrated"], metrics.calibrated_coverage(3))
  assert u["per_channel"]["c"]["coverage_95"] == pytest.approx(0.7)
  assert u["per_channel"]["a"]["coverage_50"] == pytest.approx(0.2)
  summary = report.write(str(tmp_path), result, INFO)
  saved = json.loads((tmp_path / "report.json").read_text())
  assert saved["below_best_baseline"] is True
  assert saved["uncertainty"]["coverage"] == summary["uncertainty"]["coverage"]
  assert (tmp_path / "calibration.png").stat().st_size > 0
  md = (tmp_path / "report.md").read_text()
  assert "held 0.300 / 0.500 / 0.600 of the measured values" in md
  assert "central 50 / 80 / 95 % intervals of the 3 draws (their empirical quantiles" in md
  # A result without the PIT (an older one) is summarised as before, with no plot.
  old = _with_calibration(_images(0.44, 0.452))
  for key in ["pit", *map(metrics.coverage_key, metrics.COVERAGE_LEVELS)]:
    del old["uncertainty"][key]
  (tmp_path / "old").mkdir()
  assert "coverage" not in report.write(str(tmp_path / "old"), old, INFO)["uncertainty"]
  assert not (tmp_path / "old" / "calibration.png").exists()
