"""`design_panel(...)`: which k markers to measure so that the model imputes the rest best.

Greedy forward selection on a split (validation by default): from the markers that are
measured anyway (`start`), each step tries every remaining marker, scores each observed set
by the mean Pearson r of the channels still missing, and adds the best. A set is scored by
the model's point estimate alone, not its sampling chains, on a fixed seeded subsample of
the split's tiles (images) or cells, so one step costs a forward pass per candidate.

The point estimate: a diffusion model's x0 estimate from pure noise (one DDIM step, the
"denoiser" estimate of `impute.posterior`), the mean of `samples` noise draws; a
regressor's output; a distilled generator's teacher's estimate. Every observed set sees the
same tiles in the same batches with the same noise (batch `lo` draws with
fold_in(key(seed), lo)), so candidates differ only by their mask: one compiled function
serves every candidate and step, and no candidate wins by its noise. Candidates are not
packed together into one batch for that reason: a batch row's noise depends on its place.

The baseline is refit for each observed set on the training split and scored on the same
tiles or cells: images `ridge_smoothed` (`ImageBaselines`: ridge on the observed channels
and their smoothed copies, a sub-solve of one Gram matrix; the tiles are cut from smoothed
whole FOVs), cells ridge on the RNA's SVD components (`ridge_svd` of `evaluate`) plus the
observed proteins. It follows the model's order, and its own greedy order beside it.

A cells model conditions on the genes alone (`Posterior.cells`: every protein is
sampled): measuring a protein leaves its predictions of the others as they are, so its
curve only drops the measured proteins from the score, and its order is the proteins it
imputes worst. The ridge does condition on the measured proteins.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import numpy as np

from multichan_diff.data import panels, store
from multichan_diff.data.pipeline import StoreSource
from multichan_diff.data.prepare_cells import clr, log1p_cp10k
from multichan_diff.data.transforms import FOV_NORMS
from multichan_diff.evaluate import metrics, report_html
from multichan_diff.evaluate.baselines import (ImageBaselines, feature_stack, ridge_coefs,
                                               truncated_svd)
from multichan_diff.evaluate.cells import source_cells
from multichan_diff.evaluate.report import md_table
from multichan_diff.evaluate.images import fit_fovs, fit_splits, read_fovs
from multichan_diff.impute import tiling
from multichan_diff.impute.cells import sample_cells, to_clr
from multichan_diff.impute.posterior import load_posterior, model_dirs
from multichan_diff.train.metrics import Progress
from multichan_diff.train.model_dir import read_meta

BASELINES = {"images": "ridge_smoothed", "cells": "ridge_svd_proteins"}
Score = Callable[[np.ndarray], np.ndarray]  # observed [C] bool -> r [C], NaN where observed


def greedy(score: Score, observed: np.ndarray, k: int,
           bar: Progress | None = None) -> list[dict]:
  """k steps of forward selection from `observed` [C] bool -> per step {"added": channel,
  "observed" [C], "r" [C] of that set, "candidates": {channel: mean r}}. Ties and NaN: the
  first finite best, in channel order."""
  obs, steps, done = np.asarray(observed, bool).copy(), [], 0
  for _ in range(k):
    rows = {}
    for c in np.flatnonzero(~obs):
      rows[int(c)] = score(_with(obs, c))
      done += 1
      if bar:
        bar.update(done)
    means = {c: metrics.nanmean_skip(r) for c, r in rows.items()}
    best = max(means, key=lambda c: -np.inf if np.isnan(means[c]) else means[c])
    obs = _with(obs, best)
    steps.append({"added": best, "observed": obs, "r": rows[best], "candidates": means})
  return steps


def follow(score: Score, observed: np.ndarray, order: list[int]) -> list[np.ndarray]:
  """r [C] of each set along a given order of additions to `observed`."""
  obs, rows = np.asarray(observed, bool).copy(), []
  for c in order:
    obs = _with(obs, c)
    rows.append(score(obs))
  return rows


def _with(observed: np.ndarray, c: int) -> np.ndarray:
  out = observed.copy()
  out[c] = True
  return out


def _missing_r(pred: np.ndarray, truth: np.ndarray, observed: np.ndarray) -> np.ndarray:
  """[..., C] pairs -> r [C] of the missing channels over all leading axes, NaN observed."""
  r = np.full(len(observed), np.nan)
  r[~observed] = metrics.pearson(pred[..., ~observed], truth[..., ~observed])
  return r


# --- the point estimate ------------------------------------------------------------------

def _point_posterior(model_dir: str, network: str, samples: int, views: int | None,
                     batch_size: int | None):
  """The cheapest point estimate of `evaluate` (see the module docstring)."""
  if network == "generator":
    how = dict(sampler="onestep", point="denoiser")
  elif network == "regressor":
    how = {}
  else:  # the chains' one DDIM step is the denoiser estimate: no second network call
    how = dict(sampler="ddim", steps=1, point="samples")
  return load_posterior(model_dir, samples=samples, views=views, batch_size=batch_size,
                        **how)[0], how


class _TileModel:
  """The model's point estimate of fixed tiles [N, T, T, C_model] per observed set."""

  def __init__(self, posterior, tiles: np.ndarray, context, index: np.ndarray, seed: int):
    self.posterior, self.tiles, self.context, self.index = posterior, tiles, context, index
    self.truth = tiles[..., index]  # [N, T, T, C] the store's channels
    self.key = jax.random.key(seed)

  def predict(self, observed: np.ndarray) -> np.ndarray:
    """observed [C] bool (the store's channels) -> [N, T, T, C]."""
    obs = np.zeros(self.tiles.shape[-1], bool)
    obs[self.index[observed]] = True
    b, parts = self.posterior.batch_size, []
    for lo in range(0, len(self.tiles), b):
      x = self.tiles[lo:lo + b]
      ctx = self.context and tuple(v[lo:lo + b] for v in self.context)
      point = self.posterior.images(jax.random.fold_in(self.key, lo), x,
                                    np.broadcast_to(obs, (len(x), len(obs))), ctx)[1]
      parts.append(point[..., self.index])
    pred = np.concatenate(parts)
    if self.posterior.x0_range is not None:  # as `sample_image` bounds its output
      floor, ceil = (np.asarray(a)[self.index] for a in self.posterior.x0_range)
      pred = np.clip(pred, floor, ceil)
    return pred

  def __call__(self, observed: np.ndarray) -> np.ndarray:
    return _missing_r(self.predict(observed), self.truth, observed)


class _TileBaseline:
  """`ridge_smoothed`, refit per observed set, on the tiles' features [N, T, T, F]."""

  def __init__(self, baselines: ImageBaselines, features: np.ndarray, truth: np.ndarray):
    self.baselines, self.features, self.truth = baselines, features, truth

  def __call__(self, observed: np.ndarray) -> np.ndarray:
    pred = self.baselines.predict_features(BASELINES["images"], [self.features], observed)[0]
    return _missing_r(pred, self.truth, observed)


class _CellModel:
  """A genes-only cells model: one prediction [N, P]; a set only changes what is scored."""

  def __init__(self, pred: np.ndarray, truth: np.ndarray):
    self.r = metrics.pearson(pred, truth)  # [P]

  def __call__(self, observed: np.ndarray) -> np.ndarray:
    return np.where(observed, np.nan, self.r)


class _CellRidge:
  """Ridge of the missing proteins on the RNA's components z [N, D] and the observed
  proteins, refit per set as a sub-solve of one centred Gram matrix of the training cells."""

  def __init__(self, z_fit, p_fit, z_test, p_test, alpha: float = 1.0):
    x = np.concatenate([z_fit, p_fit], 1).astype(np.float64)
    self.mean = x.mean(0)
    xc = x - self.mean
    self.gram, self.alpha, self.d = xc.T @ xc, alpha, z_fit.shape[1]
    self.test = np.concatenate([z_test, p_test], 1)
    self.truth = p_test

  def __call__(self, observed: np.ndarray) -> np.ndarray:
    sel = np.concatenate([np.arange(self.d), self.d + np.flatnonzero(observed)])
    targets = self.d + np.flatnonzero(~observed)
    w, b = ridge_coefs(self.gram, self.mean, sel, targets, self.alpha)
    pred = np.zeros_like(self.truth)
    pred[:, ~observed] = self.test[:, sel] @ w + b
    return _missing_r(pred, self.truth, observed)


# --- the two kinds of data ---------------------------------------------------------------

def _image_channels(meta: dict, attrs: dict, store_path: str, nmap) -> tuple[list, np.ndarray]:
  """The store's channels and their indices in the model's panel, as `evaluate` matches them."""
  if attrs["kind"] != "images":
    raise ValueError(f"{store_path}: a {attrs['kind']} store; this is an images model")
  names = attrs["channels"]
  try:
    index = np.asarray(panels.match(names, meta["channels"], nmap))
  except ValueError as e:
    raise ValueError(f"{store_path}: its panel does not fit the model's: {e}") from e
  if attrs.get("tile") != meta["tile"]:
    raise ValueError(f"{store_path}: tiles of {attrs.get('tile')} pixels; the model's are "
                     f"{meta['tile']} (prepare the store with --tile {meta['tile']})")
  return names, index


def _fov_context(posterior, full: np.ndarray, tile: int):
  """The (shift, scale) `sample_image` standardises this FOV's condition with."""
  tiles = None
  if posterior.codec is not None:  # a latent model: over the latents of its tiles
    padded = tiling.pad_to_tile(full, tile)
    tiles = np.stack([padded[y:y + tile, x:x + tile]
                      for y, x in tiling.origins(*padded.shape[:2], tile, tile // 4)])
  return posterior.fov_context(full, tiles)


def _image_scores(posterior, meta: dict, attrs: dict, store_path: str, split: str,
                  index: np.ndarray, tiles: int, seed: int) -> tuple[Score, Score, dict]:
  """(model score, baseline score, {"tiles": the store's tile indices}) on a seeded
  subsample of the split's tiles."""
  source = StoreSource(store_path, split)
  n = len(source.indices)
  fov_of, origin = np.asarray(attrs["tile_fov"]), np.asarray(attrs["tile_origin"])
  picked = source.indices[np.random.default_rng(seed).choice(n, min(tiles, n), replace=False)]
  picked = sorted(map(int, picked), key=lambda j: (fov_of[j], j))  # FOV by FOV
  fovs = {f.name: f for f in read_fovs(store_path, split)}
  baselines = ImageBaselines([f.image for f in fit_fovs(store_path, split)], [])
  t, c_model = meta["tile"], len(meta["channels"])
  norm = meta.get("context_norm") in FOV_NORMS
  x, feats, shift, scale, fov = [], [], [], [], None
  for j in picked:
    if fov_of[j] != fov:  # a FOV's features and condition stats, once
      fov = fov_of[j]
      image = fovs[attrs["fovs"][fov]].image
      full = np.zeros(image.shape[:2] + (c_model,), np.float32)  # in the model's panel
      full[..., index] = image
      stats = _fov_context(posterior, full, t) if norm else None
      features = feature_stack(image, baselines.sigmas)
    y0, x0 = origin[j]
    x.append(full[y0:y0 + t, x0:x0 + t])
    feats.append(features[y0:y0 + t, x0:x0 + t])
    if norm:
      shift.append(stats[0])
      scale.append(stats[1])
  context = (np.stack(shift), np.stack(scale)) if norm else None
  model = _TileModel(posterior, np.stack(x), context, index, seed)  # [N, T, T, C_model]
  return model, _TileBaseline(baselines, np.stack(feats), model.truth), {"tiles": picked}


def _cell_scores(posterior, meta: dict, attrs: dict, store_path: str, split: str,
                 cells: int | None, seed: int) -> tuple[Score, Score, dict]:
  """(model score, ridge score, {"cells": how many}) on the split's cells, or a seeded
  subsample of them; everything in CLR units, as `evaluate_cells` scores."""
  idx = np.flatnonzero(store.in_splits(attrs, (split,)))
  if cells is not None and cells < len(idx):
    idx = np.sort(np.random.default_rng(seed).choice(idx, cells, replace=False))
  read = lambda name: np.asarray(store.open_array(store_path, name)[idx].read().result())
  genes, truth = read("cond")[:, 0, 0], to_clr(read("x0")[:, 0, 0], meta)  # [N, G], [N, P]
  point = sample_cells(posterior, genes, len(meta["channels"]), key=jax.random.key(seed))[1]
  source = source_cells(attrs, store_path)
  rna = log1p_cp10k(source.rna)
  fit = store.in_splits(attrs, fit_splits(split))
  vt = truncated_svd(rna[fit], 300, seed=seed)  # as `cell_baselines`' ridge_svd
  z_fit, z_test = np.asarray(rna[fit] @ vt.T), np.asarray(rna[idx] @ vt.T)
  ridge = _CellRidge(z_fit, clr(source.protein)[fit], z_test, truth)
  return _CellModel(to_clr(point, meta), truth), ridge, {"cells": int(len(idx))}


# --- the command -------------------------------------------------------------------------

def design_panel(model_dir: str, store_path: str, out: str, *, k: int,
                 start: list[str] | None = None, split: str = "val", tiles: int = 32,
                 cells: int | None = None, samples: int = 1, views: int | None = None,
                 batch_size: int | None = None, seed: int = 0, name_map: str | None = None,
                 overwrite: bool = False, progress: bool = True) -> dict:
  """Writes OUT/panel.json, panel.png, panel.md and panel.html (atomically): the k markers to measure
  beyond `start`, in the order greedy selection adds them, with the mean r of the rest
  after each, for the model and its baseline. tiles (images) / cells: how many of the
  split's are scored (cells None: all). samples: noise draws averaged into the point
  estimate. Bad input raises ValueError before anything is computed or written."""
  store.check_writable(out, overwrite)
  if k < 1:
    raise ValueError(f"--k must be at least 1, got {k}")
  if tiles < 1 or (cells is not None and cells < 1):
    raise ValueError("--tiles and --cells must be at least 1")
  dirs = model_dirs(model_dir)
  meta = read_meta(dirs[0])
  network = meta.get("network", "diffusion")
  if network == "autoencoder":
    raise ValueError(f"{model_dir}: an autoencoder reconstructs; design-panel needs a model "
                     "that imputes")
  attrs = store.read_attributes(store_path)
  kind = meta["kind"]
  nmap = panels.NameMap.read_csv(name_map) if name_map else None
  if kind == "cells":
    if attrs["kind"] != "cells":
      raise ValueError(f"{store_path}: a {attrs['kind']} store; this is a cells model")
    if attrs["channels"] != meta["channels"] or attrs["genes"] != meta["genes"]:
      raise ValueError(f"{store_path}: its proteins or genes differ from the model's")
    names = meta["channels"]
  else:
    names, index = _image_channels(meta, attrs, store_path, nmap)
  try:
    first = panels.match(start or [], names, nmap)
  except ValueError as e:
    raise ValueError(f"--start: {e}" + (" (the genes are always observed; --start names "
                                        "proteins)" if kind == "cells" else "")) from e
  observed = np.zeros(len(names), bool)
  observed[first] = True
  left = int((~observed).sum())
  if k > left - 1:
    raise ValueError(f"--k {k}: there are {left} candidate markers ({len(names)} channels, "
                     f"{int(observed.sum())} in --start) and one at least must stay "
                     f"unmeasured to be imputed; choose --k up to {left - 1}")
  if split not in store.SPLITS:
    raise ValueError(f"unknown split {split!r}; choose from {store.SPLITS}")
  available = int(store.in_splits(attrs, (split,)).sum())
  if not available:
    raise ValueError(f"{store_path}: the {split} split is empty")
  posterior, how = _point_posterior(
      dirs, network, samples, views,
      None if kind == "cells" else batch_size or min(tiles, available, 16))
  if kind == "cells":
    model, baseline, subsample = _cell_scores(posterior, meta, attrs, store_path, split,
                                              cells, seed)
  else:
    model, baseline, subsample = _image_scores(posterior, meta, attrs, store_path, split,
                                               index, tiles, seed)
  sets = sum(left - j for j in range(k))
  bar = Progress(sets, unit="sets") if progress else None
  steps = greedy(model, observed, k, bar)
  if bar:
    bar.close()
  order = [s["added"] for s in steps]
  along = follow(baseline, observed, order)
  own = greedy(baseline, observed, k)
  result = {"kind": kind, "model_dir": ",".join(map(os.path.abspath, dirs)),
            "store": os.path.abspath(store_path), "split": split, "seed": seed, "k": k,
            **subsample, "baseline": BASELINES[kind],
            "point": {"network": network, **how, "samples": posterior.num_samples,
                      "views": posterior.views, "batch_size": posterior.batch_size},
            "model_conditions_on_proteins": None if kind == "images" else False,
            **_result(names, observed, steps, along, own, model(observed),
                      baseline(observed))}
  with store.atomic_dir(out, overwrite) as tmp:
    with open(os.path.join(tmp, "panel.json"), "w") as f:
      json.dump(result, f, indent=1, allow_nan=False)
    _plot(result, os.path.join(tmp, "panel.png"))
    with open(os.path.join(tmp, "panel.md"), "w") as f:
      f.write(_markdown(result))
    with open(os.path.join(tmp, "panel.html"), "w", encoding="utf-8") as f:
      f.write(_html(result, os.path.join(tmp, "panel.png")))
  return {"out": os.path.abspath(out), "order": result["order"],
          "model": [s["model"] for s in result["steps"]],
          "baseline": [s["baseline"] for s in result["steps"]]}


def _num(v) -> float | None:
  return None if v is None or not np.isfinite(v) else float(v)


def _per_channel(r: np.ndarray, names: list[str]) -> dict:
  return {names[c]: _num(r[c]) for c in np.flatnonzero(~np.isnan(r))}


def _result(names, observed, steps, along, own, start_model, start_baseline) -> dict:
  """panel.json's scores, by channel name; NaN (no defined r) as null."""
  mean = lambda r: _num(metrics.nanmean_skip(r))
  return {
      "start": {"channels": [names[c] for c in np.flatnonzero(observed)],
                "model": mean(start_model), "baseline": mean(start_baseline)},
      "order": [names[s["added"]] for s in steps],
      "steps": [{"k": j + 1, "added": names[s["added"]],
                 "observed": [names[c] for c in np.flatnonzero(s["observed"])],
                 "model": mean(s["r"]), "baseline": mean(b),
                 "candidates": {names[c]: _num(v) for c, v in s["candidates"].items()},
                 "model_per_channel": _per_channel(s["r"], names),
                 "baseline_per_channel": _per_channel(b, names)}
                for j, (s, b) in enumerate(zip(steps, along))],
      "baseline_greedy": {
          "order": [names[s["added"]] for s in own],
          "steps": [{"k": j + 1, "added": names[s["added"]], "baseline": mean(s["r"]),
                     "candidates": {names[c]: _num(v) for c, v in s["candidates"].items()}}
                    for j, s in enumerate(own)]}}


def _plot(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n0, k = len(result["start"]["channels"]), result["k"]
  xs = np.arange(n0, n0 + k + 1)
  nan = lambda v: np.nan if v is None else v
  line = lambda first, steps, key: [nan(first)] + [nan(s[key]) for s in steps]
  fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * k + 3), 3.6))
  ax.plot(xs, line(result["start"]["model"], result["steps"], "model"), "o-", label="model")
  ax.plot(xs, line(result["start"]["baseline"], result["steps"], "baseline"), "s-",
          label=f"{result['baseline']} (model's order)")
  ax.plot(xs, line(result["start"]["baseline"], result["baseline_greedy"]["steps"],
                   "baseline"), "s--", alpha=0.6, label=f"{result['baseline']} (own order)")
  ax.set_xticks(xs, ["start" if n0 else "none"] + [f"+{a}" for a in result["order"]],
                rotation=45, ha="right", fontsize=8)
  ax.set_xlabel("markers measured (the model's order)")
  ax.set_ylabel("mean Pearson r of the rest")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _prose(result: dict) -> list[str]:
  """panel.md's and panel.html's paragraphs (Markdown backquotes for code)."""
  f = lambda v: "n/a" if v is None else f"{v:.3f}"
  units = (f"{len(result['tiles'])} tiles" if result["kind"] == "images"
           else f"{result['cells']} cells")
  start = result["start"]
  lines = [f"Greedy forward selection on the {result['split']} split ({units}, seed "
           f"{result['seed']}). Score: the mean Pearson r of the channels still imputed, by "
           f"the model's point estimate and by `{result['baseline']}` refit for each set on "
           "the training split.",
           f"Measured anyway: {', '.join(start['channels']) or 'none'} (model r "
           f"{f(start['model'])}, baseline r {f(start['baseline'])})."]
  if result["kind"] == "cells":
    lines.append("This cells model conditions on the genes alone: measuring a protein does "
                 "not change its predictions of the others, so its order is the proteins it "
                 "imputes worst. The ridge does condition on the measured proteins.")
  return lines


def _table(result: dict) -> tuple[list[str], list[list[str]]]:
  f = lambda v: "n/a" if v is None else f"{v:.3f}"
  head = ["k", "measure next", "model r", "baseline r (same panel)", "baseline's own pick",
          "its r"]
  rows = [[str(s["k"]), s["added"], f(s["model"]), f(s["baseline"]), b["added"],
           f(b["baseline"])]
          for s, b in zip(result["steps"], result["baseline_greedy"]["steps"])]
  return head, rows


def _title(result: dict) -> str:
  return f"Panel design: {result['k']} markers to measure"


def _closing(result: dict) -> str:
  return f"Panel of {result['k']} for the model: {', '.join(result['order'])}."


def _markdown(result: dict) -> str:
  head, rows = _table(result)
  lines = [f"# {_title(result)}", ""]
  for para in _prose(result):
    lines += [para, ""]
  lines += [*md_table(head, rows), "", _closing(result), ""]
  return "\n".join(lines)


def _html(result: dict, png_path: str) -> str:
  blocks = [report_html.Para(t) for t in _prose(result)]
  blocks += [report_html.Table(*_table(result)), report_html.Para(_closing(result)),
             report_html.Image.read(png_path, "mean Pearson r of the channels still imputed "
                                    "against the markers measured")]
  return report_html.page(_title(result), [report_html.Section(None, blocks)])
