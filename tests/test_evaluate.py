"""Evaluation: observed sets, FOV reassembly, report summaries, and `evaluate` end to end."""

import json
import os
import shutil

import html5lib
import jax
import numpy as np
import pytest

from helpers import DATA, needs_data
from multichan_diff.cli import main
from multichan_diff.data import readers, store
from multichan_diff.data.prepare import bin_image
from multichan_diff.data.transforms import Normalizer
from multichan_diff.evaluate import metrics
from multichan_diff.evaluate.images import observed_sets, read_fovs
from multichan_diff.evaluate.report import summarise

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")


def _regressor(root, config: str, store_path, *flags) -> str:
  """A masked regressor smoke-trained on the store and exported: its folder."""
  assert main(["train", "--config", f"{CONFIGS}/{config}", "--workdir", str(root / "run"),
               f"--config.data.store={store_path}", "--config.network=regressor",
               "--config.data.threads=2", *flags]) == 0
  assert main(["export", "--workdir", str(root / "run"), "--out", str(root / "reg")]) == 0
  return str(root / "reg")


def _check_calibration(report: dict, out) -> None:
  """The draws' PIT histogram and central-interval coverage, in report.json and the plot."""
  unc, k = report["uncertainty"], report["uncertainty"]["draws"]
  assert len(unc["pit"]) == k + 1 and sum(unc["pit"]) == pytest.approx(1)
  assert unc["pit"][0] >= unc["mean"]["below"] - 1e-9  # ties spread over ranks, never fewer
  cov = unc["coverage"]
  assert cov["levels"] == list(metrics.COVERAGE_LEVELS)
  assert cov["empirical"] == sorted(cov["empirical"]) and 0 <= cov["empirical"][0]
  assert cov["empirical"][-1] <= 1
  assert cov["empirical"] == [unc["mean"][metrics.coverage_key(p)] for p in cov["levels"]]
  np.testing.assert_allclose(cov["calibrated"], metrics.calibrated_coverage(k))
  assert (out / "calibration.png").stat().st_size > 0
  md = (out / "report.md").read_text().splitlines()
  below = report["methods"]["model"]["mean"][report["headline"]] < \
      report["methods"][report["best_baseline"]]["mean"][report["headline"]]
  assert report["below_best_baseline"] is below
  assert md[2].startswith("The model is " + ("below" if below else "at or above")
                          + f" the best baseline ({report['best_baseline']}, ")


def test_observed_sets_per_mode():
  chans = [f"c{i}" for i in range(6)]
  single = observed_sets("single", chans)
  assert len(single) == 6 and all((~s).sum() == 1 and not s[i] for i, s in enumerate(single))
  multi = observed_sets("multi", chans)
  assert len(multi) <= 10 and all(s.any() and not s.all() for s in multi)
  expected = [np.random.default_rng(100 + s).random(6) < 0.5 for s in range(10)]
  expected = [e for e in expected if e.any() and not e.all()]
  assert all((a == b).all() for a, b in zip(multi, expected))
  assert [(~s).nonzero()[0].tolist() for s in observed_sets("single", chans, held_out=[4, 1])] \
      == [[4], [1]]
  (panel,) = observed_sets("panel", chans, [0, 2])
  assert panel.tolist() == [True, False, True, False, False, False]
  with pytest.raises(ValueError, match="needs --panel"):
    observed_sets("panel", chans, None)
  with pytest.raises(ValueError, match="unknown mode"):
    observed_sets("half", chans)


def test_summary_pools_every_scored_pair_and_skips_nan():
  nan = np.nan
  result = {"channels": ["a", "b", "c"], "scores": {
      "model": {"pearson": np.array([[0.5, nan, nan], [nan, 0.2, 0.8]])},
      "ridge": {"pearson": np.array([[0.4, nan, nan], [nan, 0.1, nan]])},
      "most_correlated": {"pearson": np.array([[0.9, nan, nan], [nan, 0.9, nan]])}}}
  s = summarise(result, "images")
  assert s["methods"]["model"]["mean"]["pearson"] == pytest.approx(0.5)
  assert s["methods"]["ridge"]["per_channel"]["c"]["pearson"] is None
  assert s["best_baseline"] == "most_correlated"
  assert "uncertainty" not in s
  result["uncertainty"] = {"draws": 3, "below": np.array([[0.1, nan, nan], [nan, 0.3, 0.2]]),
                           "above": np.array([[0.2, nan, nan], [nan, 0.2, 0.2]]),
                           "std_error_spearman": np.array([[nan, nan, nan], [nan, 0.1, 0.3]]),
                           "relative_std": np.array([[0.9, nan, nan], [nan, 0.95, 0.5]])}
  u = summarise(result, "images")["uncertainty"]
  assert u["draws"] == 3 and u["calibrated_tail"] == pytest.approx(0.25)
  assert u["mean"]["below"] == pytest.approx(0.2) and u["mean"]["above"] == pytest.approx(0.2)
  assert u["per_channel"]["a"]["std_error_spearman"] is None
  assert u["per_channel"]["c"] == pytest.approx({"below": 0.2, "above": 0.2,
                                                 "std_error_spearman": 0.3,
                                                 "relative_std": 0.5})
  # Across channels the model's r is 0.5, 0.2, 0.8 and the spread 0.9, 0.95, 0.5.
  assert u["channels_spearman"] == pytest.approx(-1.0)  # ranks 2, 1, 3 against 2, 3, 1


@needs_data
def test_fovs_are_reassembled_from_tiles(store_path):
  attrs = store.read_attributes(store_path)
  (fov,) = read_fovs(store_path, "test")
  assert fov.name == "Point2206" and fov.covered.all()
  raw = readers.read_multichannel_tiff(str(DATA / "mibi_dcis" / "Point2206.ome.tiff"))
  keep = [raw.channels.index(c) for c in attrs["channels"]]
  want = Normalizer.from_dict(attrs["normalizer"]).forward(
      bin_image(np.moveaxis(raw.image[keep], 0, -1), attrs["bin"]))
  np.testing.assert_allclose(fov.image, want[:fov.image.shape[0], :fov.image.shape[1]],
                             rtol=1e-6, atol=1e-6)


@needs_data
def test_evaluate_images_end_to_end(tmp_path, store_path, image_model, capsys):
  out = tmp_path / "report"
  assert main(["evaluate", "--model", image_model, "--store", store_path, "--mode", "panel",
               "--panel", "CD45,PanKRT,HH3,VIM,SMA", "--out", str(out), "--samples", "2",
               "--steps", "2", "--views", "2"]) == 0
  summary = json.loads(capsys.readouterr().out)
  report = json.loads((out / "report.json").read_text())
  assert set(report["methods"]) == {"model", "model_1_sample", "model_samples_mean",
                                    "most_correlated",
                                    "most_correlated_smoothed", "ridge", "ridge_smoothed"}
  assert summary["best_baseline"] == report["best_baseline"]
  per = report["methods"]["ridge"]["per_channel"]
  assert per["CD45"]["pearson"] is None and per["CD3"]["pearson"] is not None
  assert report["methods"]["ridge"]["mean"]["pearson"] > 0.1  # real structure is found
  for method in report["methods"].values():  # every method has all three figures
    assert np.isfinite(method["mean"]["spearman"]) and method["mean"]["rmse"] > 0
  for name in ("report.md", "per_channel.png", "examples.png"):
    assert (out / name).stat().st_size > 0
  assert "| CD3 |" in (out / "report.md").read_text()
  page = html5lib.parse((out / "report.html").read_text(encoding="utf-8"),
                        namespaceHTMLElements=False)
  assert len(page.findall(".//table")) == 3 and len(page.findall(".//img")) == 3
  assert report["views"] == 2 and "2 orientations" in (out / "report.md").read_text()
  unc = report["uncertainty"]  # calibration of the 2 draws, on the scored channels only
  assert unc["draws"] == 2 and unc["calibrated_tail"] == pytest.approx(1 / 3)
  assert unc["per_channel"]["CD45"]["below"] is None
  assert 0 <= unc["per_channel"]["CD3"]["below"] <= 1
  assert 0 < unc["mean"]["below"] + unc["mean"]["above"] <= 1
  assert "from the model's 2 draws per entry" in (out / "report.md").read_text()
  assert unc["per_channel"]["CD45"]["coverage_95"] is None
  _check_calibration(report, out)
  # A channel the store does not have, and a model/store mismatch, are clear errors.
  assert main(["evaluate", "--model", image_model, "--store", store_path, "--mode", "panel",
               "--panel", "CD999", "--out", str(tmp_path / "r2")]) == 2
  assert "CD999" in capsys.readouterr().err and not (tmp_path / "r2").exists()
  # --channels: the other store channels are as if never measured, for the model and the
  # baselines alike (never observed, never scored).
  sub = ["CD45", "PanKRT", "CD3", "CD8", "VIM"]
  assert main(["evaluate", "--model", image_model, "--store", store_path, "--mode", "single",
               "--channels", ",".join(sub), "--out", str(tmp_path / "r3"), "--samples", "2",
               "--steps", "1", "--views", "1"]) == 0
  r3 = json.loads((tmp_path / "r3" / "report.json").read_text())
  assert r3["channels"] == sub and r3["sets"] == [[c for c in sub if c != x] for x in sub]
  assert set(r3["methods"]["ridge"]["per_channel"]) == set(sub)
  # --held-out: a part of that `single` run, with the same draws and scores.
  assert main(["evaluate", "--model", image_model, "--store", store_path, "--mode", "single",
               "--channels", ",".join(sub), "--held-out", "VIM,CD3", "--out",
               str(tmp_path / "r5"), "--samples", "2", "--steps", "1", "--views", "1"]) == 0
  r5 = json.loads((tmp_path / "r5" / "report.json").read_text())
  assert r5["held_out"] == ["VIM", "CD3"] and len(r5["sets"]) == 2
  for method, per in r5["methods"].items():
    for ch, figures in per["per_channel"].items():
      expected = r3["methods"][method]["per_channel"][ch] if ch in ("VIM", "CD3") else None
      assert figures == (expected or {k: None for k in figures}), (method, ch)
  assert "(held out: VIM, CD3)" in (tmp_path / "r5" / "report.md").read_text()
  assert main(["evaluate", "--model", image_model, "--store", store_path, "--mode", "multi",
               "--held-out", "CD3", "--out", str(tmp_path / "r6")]) == 2
  assert "--held-out is for --mode single" in capsys.readouterr().err
  assert not (tmp_path / "r6").exists()
  assert main(["evaluate", "--model", image_model, "--store", store_path, "--channels",
               "CD3,CD999", "--out", str(tmp_path / "r4")]) == 2
  assert "--channels" in capsys.readouterr().err and not (tmp_path / "r4").exists()


@needs_data
def test_evaluate_images_cell_level_scores(tmp_path, store_path, image_model, capsys):
  import tifffile
  run = ["evaluate", "--model", image_model, "--store", store_path, "--mode", "panel",
         "--panel", "CD45,PanKRT,HH3,VIM,SMA", "--samples", "2", "--steps", "1", "--views", "1"]
  # A source-resolution mask (the store bins by 8) whose cells are the store's pixels: each
  # cell's mean is its pixel, so the cell-level r is the pixel r.
  (fov,) = read_fovs(store_path, "test")
  h, w = fov.image.shape[:2]
  masks = tmp_path / "masks"
  masks.mkdir()
  cells = np.arange(1, h * w + 1, dtype=np.int32).reshape(h, w)
  tifffile.imwrite(masks / "Point2206.tif", np.kron(cells, np.ones((8, 8), np.int32)))
  assert main([*run, "--masks", str(masks), "--out", str(tmp_path / "r")]) == 0
  report = json.loads((tmp_path / "r" / "report.json").read_text())
  assert report["cells"]["count"] == h * w
  for method in report["methods"].values():
    for figures in method["per_channel"].values():
      if figures["pearson"] is None:
        assert figures["cell_pearson"] is None
      else:
        assert figures["cell_pearson"] == pytest.approx(figures["pearson"], abs=1e-5)
  assert f"over {h * w} cells (masks in" in (tmp_path / "r" / "report.md").read_text()
  # The rough segmentation: fewer, larger cells, every method scored on them.
  assert main([*run, "--segment", "nuclear:HH3", "--out", str(tmp_path / "s")]) == 0
  report = json.loads((tmp_path / "s" / "report.json").read_text())
  assert 0 < report["cells"]["count"] < h * w
  for method in report["methods"].values():
    assert -1 <= method["mean"]["cell_pearson"] <= 1
    assert method["per_channel"]["CD3"]["cell_pearson"] is not None
    assert method["per_channel"]["CD45"]["cell_pearson"] is None
  page = html5lib.parse((tmp_path / "s" / "report.html").read_text(encoding="utf-8"),
                        namespaceHTMLElements=False)
  assert "cell_pearson" in [th.text for th in page.findall(".//table")[0].iter("th")]
  capsys.readouterr()
  # No mask for the FOV, a float mask, a mask too small: clear errors, nothing written.
  (masks / "Point2206.tif").rename(masks / "Other.tif")
  assert main([*run, "--masks", str(masks), "--out", str(tmp_path / "e1")]) == 2
  assert "no mask for the FOV 'Point2206'" in capsys.readouterr().err
  tifffile.imwrite(masks / "Point2206.tif", np.ones((h, w), np.float32))
  assert main([*run, "--masks", str(masks), "--out", str(tmp_path / "e2")]) == 2
  assert "not integers" in capsys.readouterr().err
  tifffile.imwrite(masks / "Point2206.tif", cells[: h // 2])
  assert main([*run, "--masks", str(masks), "--out", str(tmp_path / "e3")]) == 2
  assert "smaller than the FOV" in capsys.readouterr().err
  assert not any((tmp_path / e).exists() for e in ("e1", "e2", "e3"))


@needs_data
def test_evaluate_cells_end_to_end(tmp_path, cells_model, capsys):
  _, st, model = cells_model
  capsys.readouterr()
  out = tmp_path / "report"
  assert main(["evaluate", "--model", str(model), "--store", str(st), "--out", str(out),
               "--samples", "2", "--steps", "2"]) == 0
  report = json.loads((out / "report.json").read_text())
  assert set(report["methods"]) == {"model", "model_1_sample", "model_samples_mean",
                                    "ridge_svd", "krr"}
  krr = report["methods"]["krr"]["mean"]
  assert 0 < krr["r_p"] < 1 and 0 < krr["r_c"] <= 1
  assert len(report["methods"]["model"]["per_channel"]) == 29
  assert (out / "cells.png").stat().st_size > 0 and (out / "per_channel.png").stat().st_size > 0
  unc = report["uncertainty"]
  assert unc["draws"] == 2 and len(unc["per_channel"]) == 29
  assert 0 < unc["mean"]["below"] + unc["mean"]["above"] <= 1
  assert -1 <= unc["mean"]["std_error_spearman"] <= 1
  _check_calibration(report, out)
  # Orientations are for images, and a cells model says so, leaving nothing behind.
  assert main(["evaluate", "--model", str(model), "--store", str(st), "--out",
               str(tmp_path / "r2"), "--samples", "2", "--views", "2"]) == 2
  assert "a cell has none" in capsys.readouterr().err and not (tmp_path / "r2").exists()
  # An existing report is left alone.
  assert main(["evaluate", "--model", str(model), "--store", str(st), "--out",
               str(out)]) == 2
  assert "already exists" in capsys.readouterr().err
  # Several models, comma-separated: an ensemble, scored as one model.
  twin = tmp_path / "twin"
  shutil.copytree(model, twin)
  both = f"{model},{twin}"
  assert main(["evaluate", "--model", both, "--store", str(st), "--out",
               str(tmp_path / "ens"), "--samples", "2", "--steps", "2"]) == 0
  ens = json.loads((tmp_path / "ens" / "report.json").read_text())
  assert ens["model"] == f"{model},{twin}" and ens["members"] == 2
  assert 0 < ens["methods"]["model"]["mean"]["r_c"] <= 1
  assert ens["uncertainty"]["draws"] == 4  # every member's draws
  # A member with another protein panel is refused, naming both folders and the key.
  meta = json.loads((twin / "model.json").read_text())
  (twin / "model.json").write_text(json.dumps({**meta, "channels": meta["channels"][::-1]}))
  assert main(["evaluate", "--model", both, "--store", str(st), "--out",
               str(tmp_path / "ens2")]) == 2
  err = capsys.readouterr().err
  assert f"{twin} and {model} cannot form an ensemble" in err and "'channels'" in err
  assert not (tmp_path / "ens2").exists()


@pytest.fixture(scope="module")
def image_regressor(store_path, tmp_path_factory):
  return _regressor(tmp_path_factory.mktemp("r"), "default.py:smoke", store_path,
                    "--config.train.steps=4")


@needs_data
def test_evaluate_images_with_a_regressor(tmp_path, store_path, image_model, image_regressor,
                                          capsys):
  """The regressor's point estimate is a baseline row on the same observed channels; a
  folder that is not a regressor of the model's panel is refused, writing nothing."""
  from multichan_diff.impute.images import sample_image
  from multichan_diff.impute.posterior import load_posterior
  panel = ["CD45", "PanKRT", "HH3", "VIM", "SMA"]
  out = tmp_path / "report"
  assert main(["evaluate", "--model", image_model, "--store", store_path, "--mode", "panel",
               "--panel", ",".join(panel), "--out", str(out), "--samples", "2", "--steps",
               "1", "--views", "2", "--regressor", image_regressor]) == 0
  printed = json.loads(capsys.readouterr().out)
  report = json.loads((out / "report.json").read_text())
  assert report["regressor"] == os.path.abspath(image_regressor)
  row = report["methods"]["masked_regressor"]
  assert printed["masked_regressor"] == row["mean"]
  best = max((m for m in report["methods"] if not m.startswith("model")),
             key=lambda m: report["methods"][m]["mean"]["pearson"])
  assert report["best_baseline"] == best  # the regressor is among the baselines
  # Its figures: its point estimate (over the model's 2 views) on the test FOV, the panel
  # observed, scored on the other channels.
  posterior, meta = load_posterior(image_regressor, samples=2, views=2)
  (fov,) = read_fovs(store_path, "test")
  observed = np.isin(report["channels"], panel)
  _, point = sample_image(posterior, fov.image, observed, tile=meta["tile"],
                          overlap=meta["tile"] // 4,
                          key=jax.random.fold_in(jax.random.key(0), 0),
                          context_norm=meta.get("context_norm"))
  r = metrics.pearson(point[fov.covered][:, ~observed], fov.image[fov.covered][:, ~observed])
  assert row["mean"]["pearson"] == pytest.approx(metrics.nanmean_skip(r), abs=1e-6)
  assert row["per_channel"]["CD45"]["pearson"] is None
  assert "`masked_regressor` the point estimate of the regressor" in (out / "report.md").read_text()
  # Refused: a diffusion model, and a regressor of another panel or kind.
  other = tmp_path / "other"
  shutil.copytree(image_regressor, other)
  meta = json.loads((other / "model.json").read_text())
  for folder, edit, words in ((image_model, None, "not a regressor"),
                              (other, {"channels": meta["channels"][::-1]}, "'channels'"),
                              (other, {"kind": "cells"}, "'kind'")):
    if edit:
      (other / "model.json").write_text(json.dumps({**meta, **edit}))
    assert main(["evaluate", "--model", image_model, "--store", store_path, "--out",
                 str(tmp_path / "r2"), "--regressor", str(folder)]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "r2").exists()


@needs_data
def test_evaluate_cells_with_a_regressor(tmp_path, cells_model, capsys):
  from multichan_diff.impute.cells import sample_cells, to_clr
  from multichan_diff.impute.posterior import load_posterior
  _, st, model = cells_model
  from multichan_diff.train.model_dir import load_model
  from multichan_diff.train.ridge import cv_ridge
  reg = _regressor(tmp_path, "citeseq_teaseq.py:smoke", st, "--config.train.steps=3",
                   "--config.train.batch_size=16", "--config.model.linear_head=True",
                   "--config.optim.weight_decay=0.1")
  capsys.readouterr()
  # The exported linear head is the ridge fit on the training cells, untouched by training
  # (no gradient, no weight decay).
  attrs = store.read_attributes(str(st))
  split = np.asarray(attrs["sample_split"])
  train = split == store.SPLITS.index("train")
  fit = cv_ridge(np.asarray(store.open_array(str(st), "cond").read().result())[train, 0, 0],
                  np.asarray(store.open_array(str(st), "x0").read().result())[train, 0, 0])
  head = load_model(reg)[0].linear_head
  np.testing.assert_allclose(np.asarray(head.w[...]), fit.w, atol=1e-5)
  np.testing.assert_allclose(np.asarray(head.b[...]), fit.b, atol=1e-5)
  out = tmp_path / "report"
  assert main(["evaluate", "--model", str(model), "--store", str(st), "--out", str(out),
               "--samples", "2", "--steps", "1", "--regressor", reg]) == 0
  report = json.loads((out / "report.json").read_text())
  assert {"masked_regressor", "krr", "ridge_svd"} <= set(report["methods"])
  # Its r_p: its point estimate on the test cells, in CLR units.
  idx = np.flatnonzero(split == store.SPLITS.index("test"))
  genes = np.asarray(store.open_array(str(st), "cond")[idx].read().result())[:, 0, 0]
  truth = np.asarray(store.open_array(str(st), "x0")[idx].read().result())[:, 0, 0]
  posterior, meta = load_posterior(reg, samples=1, views=1)
  point = sample_cells(posterior, genes, len(meta["channels"]), key=jax.random.key(0))[1]
  want = metrics.r_p(to_clr(point, meta), to_clr(truth, meta))
  assert report["methods"]["masked_regressor"]["mean"]["r_p"] == pytest.approx(want, abs=1e-6)
  _check_calibration(report, out)
