"""The simple baselines a model must beat (measured.md), pure numpy / scipy.

Images (`ImageBaselines`): every prediction is linear in per-pixel features (the channels and
their Gaussian-smoothed copies), so one centred Gram matrix of all features over a fixed
training-pixel sample serves every observed set: ridge solves a sub-system of it, "most
correlated" reads correlations off it. Ridge has an unpenalised intercept, as
`sklearn.linear_model.Ridge(alpha)`.

Cells (`cell_baselines`): ridge on truncated-SVD components of the RNA, and the kernel ridge
recipe of the NeurIPS 2021 GEX -> ADT winner (Guanlab-dengkw).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.sparse as sp

IMAGE_BASELINES = ("most_correlated", "most_correlated_smoothed", "ridge", "ridge_smoothed")
CELL_BASELINES = ("ridge_svd", "krr")


# --- images ------------------------------------------------------------------------------

def feature_stack(image: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
  """[H, W, C] -> [H, W, C * (1 + len(sigmas))]: the channels, then their copies smoothed
  at each sigma in turn (feature k * C + c is channel c at smoothing level k)."""
  image = np.asarray(image, np.float32)
  parts = [image] + [scipy.ndimage.gaussian_filter(image, (s, s, 0)) for s in sigmas]
  return np.concatenate(parts, -1)


def _solve_pd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a x = b for symmetric positive definite a (Cholesky: faster than scipy's solve)."""
  return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a), b)


def ridge_coefs(gram: np.ndarray, mean: np.ndarray, sel: np.ndarray, targets: np.ndarray,
                alpha: float) -> tuple[np.ndarray, np.ndarray]:
  """Ridge of features `targets` on features `sel` from the centred Gram: -> W [S, M], b [M]."""
  if not len(sel):
    return np.zeros((0, len(targets))), mean[targets]
  a = gram[np.ix_(sel, sel)] + alpha * np.eye(len(sel))
  w = _solve_pd(a, gram[np.ix_(sel, targets)])
  return w, mean[targets] - mean[sel] @ w


class ImageBaselines:
  """Per-pixel baselines for imputing missing channels of FOVs [H, W, C] (normalised).

  Construction smooths every FOV once and builds the Gram matrix of all features over
  `max_pixels` random training pixels (one fixed sample); `predict` is then cheap per
  observed set.
  """

  def __init__(self, train_fovs: Sequence[np.ndarray], test_fovs: Sequence[np.ndarray], *,
               sigmas: Sequence[float] = (1, 2, 4), alpha: float = 1.0,
               max_pixels: int = 200_000, seed: int = 0):
    c = train_fovs[0].shape[-1]
    if any(f.ndim != 3 or f.shape[-1] != c for f in (*train_fovs, *test_fovs)):
      raise ValueError(f"every FOV must be [H, W, {c}]; got "
                       f"{[f.shape for f in (*train_fovs, *test_fovs)]}")
    self.num_channels, self.sigmas, self.alpha = c, tuple(sigmas), float(alpha)
    nf = c * (1 + len(self.sigmas))
    sizes = np.array([f.shape[0] * f.shape[1] for f in train_fovs])
    total = int(sizes.sum())
    rng = np.random.default_rng(seed)
    idx = (np.sort(rng.choice(total, max_pixels, replace=False)) if total > max_pixels
           else np.arange(total))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    x = np.concatenate([
        feature_stack(f, self.sigmas).reshape(-1, nf)[idx[(idx >= a) & (idx < b)] - a]
        for f, a, b in zip(train_fovs, starts[:-1], starts[1:])])  # [N, F]
    self.mean = x.mean(0, dtype=np.float64)  # [F]
    self.gram = np.zeros((nf, nf))  # centred sums, as Ridge's normal equations
    for i in range(0, len(x), 65536):
      xc = x[i:i + 65536].astype(np.float64) - self.mean
      self.gram += xc.T @ xc
    d = np.sqrt(np.diag(self.gram))
    with np.errstate(invalid="ignore", divide="ignore"):
      corr = self.gram / np.outer(d, d)
    self.corr = np.where(np.isfinite(corr), corr, -np.inf)  # constant features never win
    self.test_features = [feature_stack(f, self.sigmas) for f in test_fovs]  # [H, W, F]

  def _features(self, observed: np.ndarray, smoothed: bool) -> np.ndarray:
    obs = np.flatnonzero(observed)
    levels = range(1 + len(self.sigmas)) if smoothed else range(1)
    return np.concatenate([k * self.num_channels + obs for k in levels])

  def _coefs(self, name: str, observed: np.ndarray, missing: np.ndarray):
    """-> W [F, M], b [M]: the baseline's prediction of the missing channels is X @ W + b."""
    sel = self._features(observed, name.endswith("smoothed"))
    w = np.zeros((self.gram.shape[0], len(missing)))
    if name.startswith("ridge"):
      w[sel], b = ridge_coefs(self.gram, self.mean, sel, missing, self.alpha)
      return w, b
    if not len(sel):  # nothing observed: the training mean
      return w, self.mean[missing]
    best = sel[np.argmax(self.corr[np.ix_(sel, missing)], axis=0)]
    w[best, np.arange(len(missing))] = 1.0
    return w, np.zeros(len(missing))

  def predict(self, observed) -> dict[str, list[np.ndarray]]:
    """observed bool [C] -> {baseline: [prediction [H, W, C] per test FOV]}; observed
    channels are the test FOV's own values."""
    observed = np.asarray(observed, bool)
    if observed.shape != (self.num_channels,):
      raise ValueError(f"observed must be bool [{self.num_channels}], got {observed.shape}")
    return {name: self.predict_features(name, self.test_features, observed)
            for name in IMAGE_BASELINES}

  def predict_features(self, name: str, features: Sequence[np.ndarray],
                       observed) -> list[np.ndarray]:
    """One baseline on `feature_stack`s [..., F] of whole FOVs or of crops of them (tiles
    cut after smoothing, so their borders see the FOV) -> [prediction [..., C] each]."""
    observed = np.asarray(observed, bool)
    missing = np.flatnonzero(~observed)
    c = self.num_channels
    w, b = self._coefs(name, observed, missing)
    w, b = w.astype(np.float32), b.astype(np.float32)
    preds = []
    for x in features:
      p = x[..., :c].copy()
      if len(missing):
        p[..., missing] = x @ w + b
      preds.append(p)
    return preds


# --- cells -------------------------------------------------------------------------------

def truncated_svd(x, k: int, *, seed: int = 0, exact_below: int = 4096) -> np.ndarray:
  """x [N, G] (dense or sparse), uncentred, as sklearn's TruncatedSVD -> the top right
  singular vectors Vt [k', G] (k' <= k: null directions dropped); components are x @ Vt.T.

  Exact, from the eigenvectors of the smaller Gram matrix, when N or G is below
  `exact_below` (seconds for TEA-seq); otherwise randomised (5 power iterations, 10 extra
  vectors, as TruncatedSVD's default).
  """
  x = x.astype(np.float64)
  k = min(k, *x.shape)
  if min(x.shape) < exact_below:
    small = x.shape[0] <= x.shape[1]
    g = x @ x.T if small else x.T @ x
    ev, vec = np.linalg.eigh(g.toarray() if sp.issparse(g) else g)
    order = np.argsort(-ev)[:k]
    s = np.sqrt(np.maximum(ev[order], 0))
    order, s = order[s > 1e-6 * s[0]], s[s > 1e-6 * s[0]]
    return np.asarray(vec[:, order].T @ x) / s[:, None] if small else vec[:, order].T
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(np.asarray(x @ rng.standard_normal((x.shape[1], k + 10))))
  for _ in range(5):  # power iterations, re-orthonormalised for stability
    q, _ = np.linalg.qr(np.asarray(x.T @ q))
    q, _ = np.linalg.qr(np.asarray(x @ q))
  _, _, vt = np.linalg.svd(np.asarray((x.T @ q).T), full_matrices=False)
  return vt[:k]


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
  """Ridge with an unpenalised intercept: x [N, D], y [N, P] -> W [D, P], b [P]."""
  xm, ym = x.mean(0), y.mean(0)
  xc = x - xm
  w = _solve_pd(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
  return w, ym - xm @ w


def _rbf(a: np.ndarray, b: np.ndarray, length_scale: float) -> np.ndarray:
  d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
  return np.exp(-np.maximum(d2, 0) / (2 * length_scale ** 2))


def _zscore_rows(z: np.ndarray) -> np.ndarray:
  sd = z.std(1, keepdims=True)
  return (z - z.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def _stack(a, b):
  return sp.vstack([a, b], format="csr") if sp.issparse(a) or sp.issparse(b) else np.vstack([a, b])


def cell_baselines(rna_train, rna_test, protein_train: np.ndarray, *, seed: int = 0,
                   n_components: int = 300, alpha: float = 1.0, length_scale: float = 10.0,
                   krr_alpha: float = 0.2, n_models: int = 10, target_components: int = 70,
                   clip: bool = False) -> dict[str, np.ndarray]:
  """RNA [N, G] (log1p_cp10k, all genes, dense or sparse), protein_train [N_train, P] (CLR)
  -> {baseline: predicted proteins [N_test, P]}.

  `ridge_svd`: Ridge(alpha) on `n_components` SVD components of the RNA (SVD fit on the
  training cells). `krr`: SVD fit on train + test RNA, each cell's SVD vector z-scored,
  targets the proteins (or their `target_components` SVD when P is larger), RBF kernel ridge
  without intercept (sklearn KernelRidge), averaged over `n_models` models each fit on a random
  half of the training cells (pairs of complementary halves, as the winner's two-fold batch
  split). The winner clipped predictions at 0; on CLR proteins that only hurts (`clip`).
  """
  protein_train = np.asarray(protein_train, np.float64)
  n_train = protein_train.shape[0]
  if rna_train.shape[0] != n_train or rna_train.shape[1] != rna_test.shape[1]:
    raise ValueError(f"rna_train {rna_train.shape}, rna_test {rna_test.shape} and "
                     f"protein_train {protein_train.shape} do not agree")
  out = {}

  vt = truncated_svd(rna_train, n_components, seed=seed)
  z_train, z_test = np.asarray(rna_train @ vt.T), np.asarray(rna_test @ vt.T)
  w, b = ridge_fit(z_train, protein_train, alpha)
  out["ridge_svd"] = z_test @ w + b

  both = _stack(rna_train, rna_test)
  z = _zscore_rows(np.asarray(both @ truncated_svd(both, n_components, seed=seed).T))
  z_train, z_test = z[:n_train], z[n_train:]
  p = protein_train.shape[1]
  if p > target_components:
    t_vt = truncated_svd(protein_train, target_components, seed=seed)  # [T, P]
    y = protein_train @ t_vt.T
  else:
    t_vt, y = None, protein_train
  rng = np.random.default_rng(seed)
  pred = np.zeros((z_test.shape[0], y.shape[1]))
  for i in range(n_models):
    if i % 2 == 0:
      perm = rng.permutation(n_train)
    half = perm[: n_train // 2] if i % 2 == 0 else perm[n_train // 2:]
    k = _rbf(z_train[half], z_train[half], length_scale)
    coef = _solve_pd(k + krr_alpha * np.eye(len(half)), y[half])
    pred += _rbf(z_test, z_train[half], length_scale) @ coef
  pred /= n_models
  if t_vt is not None:
    pred = pred @ t_vt
  out["krr"] = np.maximum(pred, 0.0) if clip else pred
  return out
