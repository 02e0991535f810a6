"""design-panel: greedy marker selection on the session fixtures, each recorded score
recomputed by a path of its own."""

import json
import os

import html5lib
import jax
import numpy as np
import pytest

from multichan_diff.cli import main
from multichan_diff.data import store
from multichan_diff.data.pipeline import StoreSource
from multichan_diff.data.prepare_cells import clr, log1p_cp10k
from multichan_diff.data.transforms import fov_stats
from multichan_diff.evaluate import metrics
from multichan_diff.evaluate.baselines import ImageBaselines, ridge_fit, truncated_svd
from multichan_diff.evaluate.cells import source_cells, evaluate_cells
from multichan_diff.evaluate.images import read_fovs
from multichan_diff.evaluate.panel_design import design_panel
from multichan_diff.impute.posterior import load_posterior

START = 30  # the first 30 of the 40 image channels measured anyway: 10 candidates


def _read(out):
  with open(os.path.join(out, "panel.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def image_run(image_model, store_path, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("pd") / "panel")
  start = store.read_attributes(store_path)["channels"][:START]
  summary = design_panel(image_model, store_path, out, k=3, start=start, tiles=6,
                         progress=False)
  return out, _read(out), summary


@pytest.fixture(scope="module")
def cells_run(cells_model, tmp_path_factory):
  _, cstore, model = cells_model
  out = str(tmp_path_factory.mktemp("pd") / "cells")
  design_panel(str(model), str(cstore), out, k=2, progress=False)
  return out, _read(out)


def test_image_order_and_greedy_choice(image_run):
  _check_order(*image_run[:2])


def test_cells_order_and_greedy_choice(cells_run):
  _check_order(*cells_run)


def _check_order(out, res):
  assert sorted(os.listdir(out)) == ["panel.html", "panel.json", "panel.md", "panel.png"]
  k, start = res["k"], res["start"]["channels"]
  assert len(res["order"]) == len(res["steps"]) == k
  assert len(set(res["order"])) == k and not set(res["order"]) & set(start)
  n = len(start) + len(res["steps"][0]["candidates"])  # the panel
  for key, curve in (("model", res["steps"]), ("baseline", res["baseline_greedy"]["steps"])):
    for j, step in enumerate(curve):  # the chosen marker: the step's best candidate
      cands = step["candidates"]
      assert len(cands) == n - len(start) - j and not set(cands) & set(start)
      assert step[key] == cands[step["added"]] == max(v for v in cands.values()
                                                      if v is not None)
  for j, step in enumerate(res["steps"]):  # each set: the start plus the order so far
    assert step["observed"] == [c for c in step["observed"]
                                if c in start or c in res["order"][:j + 1]]
    assert len(step["observed"]) == len(start) + j + 1
    assert step["baseline"] is not None and -1 <= step["baseline"] <= 1
  assert len(res["baseline_greedy"]["order"]) == k
  with open(os.path.join(out, "panel.md")) as f:
    assert res["order"][0] in f.read()
  with open(os.path.join(out, "panel.html"), encoding="utf-8") as f:
    doc = html5lib.parse(f.read(), namespaceHTMLElements=False)
  rows = doc.findall(".//tbody/tr")
  assert [r.findall("td")[1].text for r in rows] == res["order"]
  (img,) = doc.findall(".//img")
  assert img.get("src").startswith("data:image/png;base64,")


def test_image_scores_recomputed(image_run, image_model, store_path):
  """The last step's model score from the posterior's own batched call on the recorded
  tiles (read from the store directly), and its baseline score from `ImageBaselines.predict`
  on whole FOVs as `evaluate` runs it, cropped to those tiles."""
  _, res, summary = image_run
  attrs = store.read_attributes(store_path)
  names = attrs["channels"]
  point = res["point"]
  posterior, _ = load_posterior(image_model, sampler=point["sampler"], steps=point["steps"],
                                point=point["point"], samples=point["samples"],
                                batch_size=point["batch_size"])
  source = StoreSource(store_path, "val")
  row = {int(j): i for i, j in enumerate(source.indices)}
  tiles = np.stack([source[row[j]]["x0"] for j in res["tiles"]])  # [N, T, T, C]
  fovs = {f.name: f for f in read_fovs(store_path, "val")}
  fov_of = [attrs["fovs"][attrs["tile_fov"][j]] for j in res["tiles"]]
  shift, scale = (np.stack(v) for v in zip(*(fov_stats(fovs[f].image) for f in fov_of)))
  step = res["steps"][-1]
  observed = np.isin(names, step["observed"])
  b, preds = posterior.batch_size, []
  for lo in range(0, len(tiles), b):
    obs = np.broadcast_to(observed, (len(tiles[lo:lo + b]), len(names)))
    preds.append(posterior.images(jax.random.fold_in(jax.random.key(res["seed"]), lo),
                                  tiles[lo:lo + b], obs,
                                  (shift[lo:lo + b], scale[lo:lo + b]))[1])
  pred = np.clip(np.concatenate(preds), *posterior.x0_range)
  r = metrics.pearson(pred[..., ~observed], tiles[..., ~observed])
  assert metrics.nanmean_skip(r) == pytest.approx(step["model"], abs=1e-6)
  assert summary["model"][-1] == step["model"]
  assert len(set(step["candidates"].values())) > 1  # the mask matters

  train = read_fovs(store_path, "train")
  val = list(fovs.values())
  full = ImageBaselines([f.image for f in train], [f.image for f in val]).predict(observed)
  by_name = dict(zip([f.name for f in val], full["ridge_smoothed"]))
  crops = np.stack([by_name[f][y:y + 16, x:x + 16] for f, (y, x) in
                    zip(fov_of, np.asarray(attrs["tile_origin"])[res["tiles"]])])
  r = metrics.pearson(crops[..., ~observed], tiles[..., ~observed])
  assert metrics.nanmean_skip(r) == pytest.approx(step["baseline"], abs=1e-5)


def test_cells_scores_recomputed(cells_run, cells_model):
  """The model's scores from `evaluate_cells` on the whole split (a genes-only model: the
  measured proteins only leave the score); the ridge refit directly with `ridge_fit`."""
  _, res = cells_run
  src, cstore, model = cells_model
  assert res["model_conditions_on_proteins"] is False
  point = res["point"]
  posterior, meta = load_posterior(str(model), sampler=point["sampler"],
                                   steps=point["steps"], point=point["point"],
                                   samples=point["samples"])
  ev = evaluate_cells(posterior, str(cstore), meta, split="val", seed=res["seed"],
                      progress=False)["scores"]
  names = meta["channels"]
  attrs = store.read_attributes(str(cstore))
  assert res["cells"] == int(store.in_splits(attrs, ("val",)).sum())
  # nothing measured: the model and ridge_svd rows of `evaluate`
  assert res["start"]["model"] == pytest.approx(metrics.nanmean_skip(ev["model"]["pearson"]),
                                                abs=1e-6)
  assert res["start"]["baseline"] == pytest.approx(
      metrics.nanmean_skip(ev["ridge_svd"]["pearson"]), abs=1e-5)
  cells = source_cells(attrs, str(cstore))
  rna, protein = log1p_cp10k(cells.rna), clr(cells.protein)
  fit = store.in_splits(attrs, ("train",))
  test = store.in_splits(attrs, ("val",))
  vt = truncated_svd(rna[fit], 300, seed=res["seed"])
  z_fit, z_test = np.asarray(rna[fit] @ vt.T), np.asarray(rna[test] @ vt.T)
  for step in res["steps"]:
    observed = np.isin(names, step["observed"])
    r = ev["model"]["pearson"][~observed]
    assert metrics.nanmean_skip(r) == pytest.approx(step["model"], abs=1e-6)
    w, b = ridge_fit(np.concatenate([z_fit, protein[fit][:, observed]], 1),
                     protein[fit][:, ~observed], 1.0)
    pred = np.concatenate([z_test, protein[test][:, observed]], 1) @ w + b
    r = metrics.pearson(pred, protein[test][:, ~observed])
    assert metrics.nanmean_skip(r) == pytest.approx(step["baseline"], abs=1e-4)
  # a genes-only model's greedy pick is the protein it imputes worst
  left = [n for n in names if n not in res["start"]["channels"]]
  worst = min(left, key=lambda n: ev["model"]["pearson"][names.index(n)])
  assert res["order"][0] == worst


def test_bad_input_writes_nothing(image_model, store_path, cells_model, tmp_path):
  out = tmp_path / "out"
  channels = store.read_attributes(store_path)["channels"]
  bad = [(dict(k=2, start=["NotAMarker"]), "NotAMarker"), (dict(k=0), "at least 1"),
         (dict(k=40), "up to 39"), (dict(k=10, start=channels[:30]), "up to 9"),
         (dict(k=1, split="nope"), "unknown split")]
  for kw, msg in bad:
    with pytest.raises(ValueError, match=msg):
      design_panel(image_model, store_path, str(out), progress=False, **kw)
  with pytest.raises(ValueError, match="cells store"):
    design_panel(image_model, str(cells_model[1]), str(out), k=1, progress=False)
  with pytest.raises(ValueError, match="genes are always observed"):
    design_panel(str(cells_model[2]), str(cells_model[1]), str(out), k=1, start=["CD3"],
                 progress=False)
  assert os.listdir(tmp_path) == []
  out.mkdir()
  with pytest.raises(FileExistsError):
    design_panel(image_model, store_path, str(out), k=1, progress=False)


def test_cli(cells_model, tmp_path, capsys):
  _, cstore, model = cells_model
  out = tmp_path / "p"
  base = ["design-panel", "--model", str(model), "--store", str(cstore), "--out", str(out)]
  assert main(base + ["--k", "0"]) == 2
  assert main(base + ["--k", "1", "--start", "CD3_TotalSeqB,Nope"]) == 2
  assert not out.exists()
  assert main(base + ["--k", "1", "--cells", "10"]) == 0
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert len(printed["order"]) == 1 and _read(out)["cells"] == 10
