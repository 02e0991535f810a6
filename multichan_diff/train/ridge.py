"""The closed-form ridge map of a regressor's linear head (`ModelConfig.linear_head`).

Fitted once, before training, on the cells the run trains on: ridge on the leading
principal components of the genes (as the baselines' SVD features), the number of
components and the penalty those of a fixed grid with the least 5-fold cross-validated
error on those cells. That needs no validation split (the final fit on train + val chooses
the same way) and costs six SVDs. Each fold computes its own components: components taken
from all the cells (a closed-form leave-one-out) favour too few of them on small data sets.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from multichan_diff.data import store

# Penalties tried, relative to the mean squared singular value of the centred genes (so
# the grid does not depend on how the genes are scaled or how many cells there are).
RELATIVE_ALPHAS = tuple(np.logspace(-4, 1, 11))
# Principal components kept (None: all): on a thousand TEA-seq cells few do best, on 150
# cells all of them.
RANKS = (25, 50, 100, 200, 300, 500, None)
FOLDS = 5


class RidgeFit(NamedTuple):
  w: np.ndarray        # [G, C]
  b: np.ndarray        # [C]
  rank: int            # the principal components kept
  alpha: float         # the chosen penalty
  cv_errors: dict      # {(rank, relative alpha): mean squared cross-validated error}


def _svd_ridge(x: np.ndarray, y: np.ndarray):
  """-> (mean of x, mean of y, singular values, V^T, U^T (y - mean)) of the centred x."""
  xm, ym = x.mean(0), y.mean(0)
  u, s, vt = np.linalg.svd(x - xm, full_matrices=False)
  return xm, ym, s, vt, u.T @ (y - ym)


def _coef(s, vt, uty, rank: int, alpha: float) -> np.ndarray:
  """Ridge coefficients [G, C] on the leading `rank` components with penalty `alpha`."""
  g = np.zeros_like(s)
  g[:rank] = s[:rank] / (s[:rank] ** 2 + alpha)
  return vt.T @ (g[:, None] * uty)


def cv_ridge(x: np.ndarray, y: np.ndarray, alphas=RELATIVE_ALPHAS, ranks=RANKS,
             folds: int = FOLDS, seed: int = 0) -> RidgeFit:
  """x [N, G], y [N, C] -> ridge with an unpenalised intercept on the leading `rank`
  principal components of x, (rank, penalty) the pair of `ranks` x `alphas` (times the mean
  squared singular value of the centred x) with the least `folds`-fold cross-validated
  squared error, each fold's components and means from its own training cells."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n = len(x)
  if n < 2 * folds:
    raise ValueError(f"a linear head needs at least {2 * folds} training cells, got {n}")
  xm, ym, s, vt, uty = _svd_ridge(x, y)
  scale = float(np.mean(s ** 2)) or 1.0
  grid = [(r, float(a)) for r in sorted({len(s) if r is None else min(r, len(s)) for r in ranks})
          for a in alphas]
  errors = dict.fromkeys(grid, 0.0)
  fold = np.random.default_rng(seed).permutation(n) % folds
  for k in range(folds):
    fit, held = fold != k, fold == k
    f_xm, f_ym, f_s, f_vt, f_uty = _svd_ridge(x[fit], y[fit])
    z = (x[held] - f_xm) @ f_vt.T  # the held-out cells' components [n_k, R]
    for rank, rel in grid:
      g = np.zeros_like(f_s)
      r = min(rank, len(f_s))
      g[:r] = f_s[:r] / (f_s[:r] ** 2 + rel * scale)
      pred = z @ (g[:, None] * f_uty) + f_ym
      errors[(rank, rel)] += float(np.sum((pred - y[held]) ** 2)) / y.size
  rank, rel = min(errors, key=errors.get)
  w = _coef(s, vt, uty, rank, rel * scale)
  return RidgeFit(w, ym - xm @ w, rank, rel * scale, errors)


def fit_linear_head(model, store_path: str, splits) -> RidgeFit:
  """Sets `model.linear_head` to the ridge map genes -> targets of the store's `splits`
  cells; returns the fit."""
  attrs = store.read_attributes(store_path)
  idx = np.flatnonzero(store.in_splits(attrs, splits))
  x = np.asarray(store.open_array(store_path, "cond").read().result())[idx, 0, 0]
  y = np.asarray(store.open_array(store_path, "x0").read().result())[idx, 0, 0]
  fit = cv_ridge(x, y)
  model.linear_head.w[...] = np.asarray(fit.w, np.float32)
  model.linear_head.b[...] = np.asarray(fit.b, np.float32)
  return fit
