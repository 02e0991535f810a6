"""`evaluate(...)`: an exported model on a prepared store's split, against the baselines
(and a masked regressor's point estimate, when one is given), written as a report folder
(atomically: a failed run leaves nothing)."""

from __future__ import annotations

import os

import numpy as np

from multichan_diff.data import panels, store
from multichan_diff.evaluate import report, report_html
from multichan_diff.impute.posterior import load_posterior, model_dirs
from multichan_diff.train.model_dir import read_meta

REGRESSOR_ROW = "masked_regressor"
# What the regressor must share with the model to be scored beside it: the panel and the
# data's units (its tile and condition norm are its own).
REGRESSOR_KEYS = ("kind", "channels", "genes", "normalizer", "rna_norm", "protein_norm", "bin",
                  "bin_how", "count_step")


def evaluate(model_dir: str, store_path: str, out: str, *, split: str = "test",
             mode: str = "single", panel: list[str] | None = None,
             channels: list[str] | None = None, held_out: list[str] | None = None,
             samples: int = 8, sampler: str = "ddim", steps: int | None = None, seed: int = 0,
             overlap: int | None = None, batch_size: int | None = None,
             name_map: str | None = None, point: str = "denoiser", views: int | None = None,
             continuous_draws: bool = False, regressor: str | None = None,
             masks: str | None = None, segment: str | None = None,
             nuclear_diameter: float | None = None, overwrite: bool = False) -> dict:
  """regressor: an exported masked regressor (`network` "regressor") of the model's panel,
  whose point estimate is scored as the baseline row `masked_regressor`. masks (a folder of
  label TIFFs named by FOV) or segment ("nuclear:CHANNEL"): cell-level scores too
  (`cell_level`)."""
  from multichan_diff.train.model_dir import load_model
  store.check_writable(out, overwrite)
  attrs = store.read_attributes(store_path)
  dirs = model_dirs(model_dir)  # several: an ensemble
  meta = read_meta(dirs[0])
  if regressor is not None:
    check_regressor(regressor, meta, dirs[0])
  if meta.get("network") == "autoencoder":
    if regressor is not None:
      raise ValueError(f"{model_dir}: an autoencoder reconstructs; --regressor is for a "
                       "model that imputes")
    if len(dirs) > 1:
      raise ValueError(f"{model_dir}: autoencoders are scored one at a time")
    model, meta = load_model(model_dir)
    return _reconstruction(model, meta, model_dir, store_path, out, split, overwrite)
  posterior, meta = load_posterior(model_dir, sampler=sampler, steps=steps, samples=samples,
                                   batch_size=batch_size, point=point, views=views,
                                   continuous_draws=continuous_draws)
  kind = meta["kind"]
  info = {"kind": kind, "split": split, "mode": mode if kind == "images" else "proteins",
          "model": ",".join(map(os.path.abspath, dirs)), "store": os.path.abspath(store_path),
          "sampler": sampler, "steps": posterior.steps, "samples": samples,
          "point": posterior.point, "views": posterior.views, "seed": seed,
          "members": len(dirs), "draws_zeroed_below": posterior.zero_below is not None,
          "regressor": os.path.abspath(regressor) if regressor is not None else None}
  other = None
  if regressor is not None:  # its draws: its output in each of the model's views
    other = load_posterior(regressor, samples=posterior.views, views=posterior.views,
                           batch_size=batch_size)
  cells = None
  if masks is not None or segment is not None:
    if kind == "cells":
      raise ValueError("--masks and --segment are for images: a cells model is already "
                       "scored per cell")
    cells = {"masks": masks, "segment": segment, "diameter": nuclear_diameter}
  if kind == "cells":
    if channels or held_out:
      raise ValueError("--channels and --held-out are for images; a cells model is scored "
                       "on every protein")
    from multichan_diff.evaluate.cells import evaluate_cells
    result = evaluate_cells(posterior, store_path, meta, split=split, seed=seed,
                            points={REGRESSOR_ROW: other} if other else None)
  else:
    from multichan_diff.evaluate.images import PointModel, evaluate_images
    if attrs["kind"] != "images":
      raise ValueError(f"{store_path}: a {attrs['kind']} store; this is an images model")
    nmap = panels.NameMap.read_csv(name_map) if name_map else None
    try:  # the store's channels kept (all, or --channels)
      keep = panels.match(channels, attrs["channels"], nmap) if channels else None
    except ValueError as e:
      raise ValueError(f"{store_path}: --channels: {e}") from e
    names = [attrs["channels"][k] for k in keep] if keep else attrs["channels"]
    try:  # those channels in the model's panel (a union model: one of its panels)
      index = np.asarray(panels.match(names, meta["channels"], nmap))
    except ValueError as e:
      raise ValueError(f"{store_path}: its panel does not fit the model's (--channels "
                       f"keeps a part of it): {e}") from e
    chosen = panels.match(panel, names, nmap) if panel else None
    held = panels.match(held_out, names, nmap) if held_out else None
    info["held_out"] = [names[k] for k in held] if held else None
    tile = meta["tile"]
    points = None
    if other:
      r_posterior, r_meta = other
      r_tile = r_meta["tile"]
      points = {REGRESSOR_ROW: PointModel(
          r_posterior, r_tile, r_tile // 4 if overlap is None else overlap,
          r_meta.get("context_norm"))}
    result = evaluate_images(posterior, store_path, split=split, mode=mode, panel=chosen,
                             keep=keep, held_out=held, channel_index=index,
                             model_channels=len(meta["channels"]),
                             tile=tile, overlap=tile // 4 if overlap is None else overlap,
                             context_norm=meta.get("context_norm"), points=points, seed=seed,
                             cells=cells)
    info["cells"] = result.get("cells")
  with store.atomic_dir(out, overwrite) as tmp:
    summary = report.write(tmp, result, info)
  heads = {m: v["mean"] for m, v in summary["methods"].items()}
  return {"out": os.path.abspath(out), "best_baseline": summary["best_baseline"],
          "below_best_baseline": summary["below_best_baseline"], **heads}


def check_regressor(regressor: str, meta: dict, model_dir: str) -> None:
  """Refuses a --regressor that is not one exported regressor of the model's panel and
  units, naming what differs."""
  dirs = model_dirs(regressor)
  if len(dirs) > 1:
    raise ValueError(f"--regressor {regressor}: one exported regressor, not several")
  try:
    r_meta = read_meta(dirs[0])
  except ValueError as e:
    raise ValueError(f"--regressor: {e}") from e
  if r_meta.get("network") != "regressor":
    raise ValueError(f"--regressor {regressor}: a {r_meta.get('network', 'diffusion')} "
                     "model, not a regressor (train one with --config.network=regressor "
                     "and export it)")
  for key in REGRESSOR_KEYS:
    if r_meta.get(key) != meta.get(key):
      raise ValueError(f"--regressor {regressor}: its {key!r} differs from the model's "
                       f"({model_dir}); the regressor must be trained on the model's panel "
                       "and data")


def _reconstruction(model, meta, model_dir, store_path, out, split, overwrite) -> dict:
  """An autoencoder: how well it reconstructs the split's tiles, per channel."""
  from multichan_diff.evaluate.reconstruction import reconstruction_scores, write_report
  attrs = store.read_attributes(store_path)
  if attrs["kind"] != "images" or attrs["channels"] != meta["channels"]:
    raise ValueError(f"{store_path}: not the image panel the autoencoder was trained on")
  scores = reconstruction_scores(model, store_path, split)
  info = {"kind": "autoencoder", "split": split, "model": os.path.abspath(model_dir),
          "store": os.path.abspath(store_path)}
  with store.atomic_dir(out, overwrite) as tmp:
    report_html.write(tmp, report.reconstruction_html(write_report(tmp, scores, info)))
  return {"out": os.path.abspath(out), "mean_pearson": scores["mean_pearson"]}
