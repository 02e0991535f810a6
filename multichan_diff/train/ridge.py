"""The closed-form ridge map of a regressor's linear head (`ModelConfig.linear_head`).

Fitted once, before training, on the cells the run trains on: ridge on the leading
principal components of the genes (as the baselines' SVD features), the number of
components and the penalty those of a fixed grid with the least leave-one-out error. That
needs no validation split (the final fit on train + val chooses the same way) and costs one
SVD. The components are those of all the training cells (unsupervised, as the KRR recipe's
SVD); the leave-one-out error is that of the ridge on them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from multichan_diff.data import store

# Penalties tried, relative to the mean squared singular value of the centred genes (so
# the grid does not depend on how the genes are scaled or how many cells there are).
RELATIVE_ALPHAS = tuple(np.logspace(-4, 1, 11))
# Principal components kept (None: all). On a thousand TEA-seq cells 25 do best, on 150 all
# (10 as well made pbmc10k's validation r_p 0.707 against 0.743).
RANKS = (25, 50, 100, 200, 300, 500, None)


class RidgeFit(NamedTuple):
  w: np.ndarray        # [G, C]
  b: np.ndarray        # [C]
  rank: int            # the principal components kept
  alpha: float         # the chosen penalty
  loo_errors: dict     # {(rank, relative alpha): mean squared leave-one-out error}


def loo_ridge(x: np.ndarray, y: np.ndarray, alphas=RELATIVE_ALPHAS,
              ranks=RANKS) -> RidgeFit:
  """x [N, G], y [N, C] -> ridge with an unpenalised intercept on the leading `rank`
  principal components of x, (rank, penalty) the pair of `ranks` x `alphas` (times the mean
  squared singular value of the centred x) with the least leave-one-out squared error, in
  closed form: the residual over 1 - the leverage, the hat matrix of the centred design
  plus the intercept's 1 / N."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n = len(x)
  if n < 3:
    raise ValueError(f"a linear head needs at least 3 training cells, got {n}")
  xm, ym = x.mean(0), y.mean(0)
  u, s, vt = np.linalg.svd(x - xm, full_matrices=False)
  uty = u.T @ (y - ym)
  scale = float(np.mean(s ** 2)) or 1.0
  errors = {}
  for rank in sorted({len(s) if r is None else min(r, len(s)) for r in ranks}):
    for rel in alphas:
      f = np.zeros_like(s)
      f[:rank] = s[:rank] ** 2 / (s[:rank] ** 2 + rel * scale)
      leverage = np.minimum((u ** 2) @ f + 1.0 / n, 1.0 - 1e-9)
      loo = ((y - ym) - u @ (f[:, None] * uty)) / (1.0 - leverage)[:, None]
      errors[(rank, float(rel))] = float(np.mean(loo ** 2))
  rank, rel = min(errors, key=errors.get)
  alpha = rel * scale
  g = np.zeros_like(s)
  g[:rank] = s[:rank] / (s[:rank] ** 2 + alpha)
  w = vt.T @ (g[:, None] * uty)
  return RidgeFit(w, ym - xm @ w, rank, alpha, errors)


def fit_linear_head(model, store_path: str, splits) -> RidgeFit:
  """Sets `model.linear_head` to the ridge map genes -> targets of the store's `splits`
  cells; returns the fit."""
  attrs = store.read_attributes(store_path)
  idx = np.flatnonzero(store.in_splits(attrs, splits))
  x = np.asarray(store.open_array(store_path, "cond").read().result())[idx, 0, 0]
  y = np.asarray(store.open_array(store_path, "x0").read().result())[idx, 0, 0]
  fit = loo_ridge(x, y)
  model.linear_head.w[...] = np.asarray(fit.w, np.float32)
  model.linear_head.b[...] = np.asarray(fit.b, np.float32)
  return fit
