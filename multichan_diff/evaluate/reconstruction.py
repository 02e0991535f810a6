"""How well the tile autoencoder reconstructs a store's tiles: per-channel Pearson r and RMSE
over every pixel of the split's tiles (normalised units), written as report.json / .md."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from multichan_diff.data.pipeline import StoreSource
from multichan_diff.evaluate import metrics


def reconstruction_scores(model, store_path: str, split: str, batch_size: int = 4) -> dict:
  """-> {"channels", "pearson" [C], "rmse" [C], "mean_pearson", "tiles"}; channels absent
  from a union panel, or constant over the split, get NaN and are left out of the mean.
  A batch of B tiles is B * C one-channel images to the networks, hence the small batch."""
  source = StoreSource(store_path, split)
  graphdef, state = nnx.split(model)
  rec = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x)[0])
  truth, pred, present = [], [], []
  for lo in range(0, len(source), batch_size):
    recs = [source[i] for i in range(lo, min(lo + batch_size, len(source)))]
    x = np.stack([r["x0"] for r in recs])
    pad = batch_size - len(x)  # one compiled shape
    out = np.asarray(rec(state, np.concatenate([x, np.repeat(x[-1:], pad, 0)])))[:len(x)]
    truth.append(x)
    pred.append(out)
    present.append(np.stack([r["present"] for r in recs]))
  t, p, m = np.concatenate(truth), np.concatenate(pred), np.concatenate(present)  # m [N, C]
  c = t.shape[-1]
  pearson, rmse = np.full(c, np.nan), np.full(c, np.nan)
  for j in range(c):  # over the tiles whose panel measured channel j
    if m[:, j].any():
      pj, tj = p[m[:, j]][..., j:j + 1], t[m[:, j]][..., j:j + 1]
      pearson[j], rmse[j] = metrics.pearson(pj, tj)[0], metrics.rmse(pj, tj)[0]
  return {"channels": source.channels, "pearson": pearson, "rmse": rmse,
          "mean_pearson": float(np.nanmean(pearson)), "tiles": len(source)}


def write_report(out_dir: str, scores: dict, info: dict) -> dict:
  """report.json and report.md (per channel and mean) into `out_dir`; returns the JSON."""
  num = lambda v: None if not np.isfinite(v) else float(v)
  report = {**info, "mean_pearson": scores["mean_pearson"], "tiles": scores["tiles"],
            "per_channel": {ch: {"pearson": num(r), "rmse": num(e)} for ch, r, e in
                            zip(scores["channels"], scores["pearson"], scores["rmse"])}}
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
  lines = [f"# Autoencoder reconstruction, split `{info['split']}`", "",
           f"Model `{info['model']}` on `{info['store']}`, {scores['tiles']} tiles: mean "
           f"Pearson r {scores['mean_pearson']:.3f}.", "", "| channel | Pearson r | RMSE |",
           "|---|---|---|"]
  lines += [f"| {ch} | {v['pearson']:.3f} | {v['rmse']:.3f} |"
            for ch, v in report["per_channel"].items() if v["pearson"] is not None]
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return report
