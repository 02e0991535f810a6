"""Imputation metrics, pure numpy / scipy, so they can score any model's output.

Images: per-channel scores over all pixels (arrays [..., C], optional pixel mask [...]);
a channel constant on either side has no correlation and gives NaN, which `nanmean_skip`
leaves out of the mean. Cells: r_p and r_c as the openproblems correlation metric, where a
non-finite correlation counts as 0. Uncertainty: whether the truth falls among the
posterior draws as often as a draw would (its tails, its rank among the draws, the coverage
of the draws' central intervals), and whether the draws' spread ranks the errors.
"""

from __future__ import annotations

import numpy as np
import scipy.stats


def _pixels(pred, true, mask=None) -> tuple[np.ndarray, np.ndarray]:
  """[..., C] pairs (and mask [...]) -> two float64 [N, C] matrices of the used pixels."""
  pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
  if pred.shape != true.shape:
    raise ValueError(f"pred {pred.shape} and true {true.shape} differ in shape")
  if mask is not None:
    mask = np.asarray(mask, bool)
    if mask.shape != pred.shape[:-1]:
      raise ValueError(f"mask {mask.shape} must match the leading axes {pred.shape[:-1]}")
    return pred[mask], true[mask]
  c = pred.shape[-1]
  return pred.reshape(-1, c), true.reshape(-1, c)


def _columns_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pearson r of matching columns of [N, C]; NaN where a column is constant (or N < 2)."""
  if len(a) < 2:
    return np.full(a.shape[1], np.nan)
  # Exact constancy test: after centring, rounding leaves tiny non-zero values that would
  # give a meaningless r.
  const = (np.ptp(a, 0) == 0) | (np.ptp(b, 0) == 0)
  a, b = a - a.mean(0), b - b.mean(0)
  den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
  with np.errstate(invalid="ignore", divide="ignore"):
    r = (a * b).sum(0) / den
  return np.where(const, np.nan, np.clip(r, -1.0, 1.0))


def pearson(pred, true, mask=None) -> np.ndarray:
  """[..., C] x [..., C] -> [C] Pearson r per channel over all leading axes."""
  return _columns_r(*_pixels(pred, true, mask))


def spearman(pred, true, mask=None) -> np.ndarray:
  """[..., C] x [..., C] -> [C] Spearman rho (average ranks for ties) per channel."""
  p, t = _pixels(pred, true, mask)
  if len(p) == 0:
    return np.full(p.shape[1], np.nan)
  return _columns_r(scipy.stats.rankdata(p, axis=0), scipy.stats.rankdata(t, axis=0))


def rmse(pred, true, mask=None) -> np.ndarray:
  """[..., C] x [..., C] -> [C] root mean squared error per channel (in the inputs' units)."""
  p, t = _pixels(pred, true, mask)
  return np.sqrt(((p - t) ** 2).mean(0))


# Ties within this distance (in the data's units) are ties: a draw at the data's floor comes
# back from the per-FOV back-transform and the tile blending a few 1e-8 off it.
TIE_ATOL = 1e-5


def range_tails(lo, hi, true, mask=None,
                atol: float = TIE_ATOL) -> tuple[np.ndarray, np.ndarray]:
  """The K draws' per-entry minimum lo and maximum hi [..., C] x true [..., C] -> ([C],
  [C]) fractions of entries below every draw and above every draw (by more than atol).
  Were the truth one more draw from the same posterior, its rank among the K + 1 would be
  uniform: each tail 1 / (K + 1) (`calibrated_tail`). Wider tails: the draws are too
  narrow, or biased."""
  lo, t = _pixels(lo, true, mask)
  hi, _ = _pixels(hi, true, mask)
  return (t < lo - atol).mean(0), (t > hi + atol).mean(0)


def calibrated_tail(k: int) -> float:
  """Each tail's fraction for a calibrated posterior with k draws."""
  return 1.0 / (k + 1)


def uncertainty(lo, hi, std, point, true, mask=None) -> dict[str, np.ndarray]:
  """The draws' minimum, maximum and std, the point estimate and the truth, all [..., C] ->
  per channel "below" and "above" (`range_tails`); "std_error_spearman", Spearman rho of
  the std against the point estimate's absolute error, above 0 when the uncertainty says
  where the errors are; and "relative_std", the mean std over the measured values' std (a
  calibrated posterior's is about sqrt(1 - r^2): wider draws where less is predictable)."""
  below, above = range_tails(lo, hi, true, mask)
  err = np.abs(np.asarray(point, np.float64) - np.asarray(true, np.float64))
  s, t = _pixels(std, true, mask)
  with np.errstate(invalid="ignore", divide="ignore"):
    relative = s.mean(0) / t.std(0)
  return {"below": below, "above": above, "std_error_spearman": spearman(std, err, mask),
          "relative_std": np.where(np.isfinite(relative), relative, np.nan)}


# The central intervals whose coverage every report gives.
COVERAGE_LEVELS = (0.5, 0.8, 0.95)


def draw_ranks(draws, true, atol: float = TIE_ATOL) -> np.ndarray:
  """draws [K, N, C] x true [N, C] -> [K + 1, C] the share of entries at each rank of the
  truth among the K draws (how many draws lie below it by more than atol): the PIT
  histogram, flat at 1 / (K + 1) when the truth is one more draw. A truth tied with e draws
  is spread evenly over the e + 1 ranks it spans (the randomised PIT), so data piled on a
  floor, drawn there too, stay flat; untied, rank 0 is `range_tails`' below, rank K above."""
  draws, true = np.asarray(draws), np.asarray(true)
  k, n, c = draws.shape
  below = (draws < true - atol).sum(0)  # [N, C]
  ties = (np.abs(draws - true) <= atol).sum(0)
  # weight 1 / (e + 1) on ranks b .. b + e: + at b, - at b + e + 1, summed over ranks
  w, col = (1.0 / (ties + 1)).ravel(), np.broadcast_to(np.arange(c), (n, c)).ravel()
  size = (k + 2) * c
  step = (np.bincount((below.ravel() * c + col), w, size)
          - np.bincount(((below + ties + 1).ravel() * c + col), w, size))
  return np.cumsum(step.reshape(k + 2, c), 0)[:k + 1] / max(n, 1)


def interval_coverage(draws, true, levels=COVERAGE_LEVELS,
                      atol: float = TIE_ATOL) -> np.ndarray:
  """draws [K, N, C] x true [N, C] -> [L, C] share of entries inside the draws' central
  interval at each level: the draws' own empirical quantiles over K (np.quantile, linear),
  so with few draws narrower than nominal, even for a calibrated posterior
  (`calibrated_coverage`)."""
  levels = np.asarray(levels, np.float64)
  q = np.quantile(np.asarray(draws), np.concatenate([(1 - levels) / 2, (1 + levels) / 2]),
                  axis=0)  # [2L, N, C]
  lo, hi = q[:len(levels)], q[len(levels):]
  true = np.asarray(true)
  return ((true >= lo - atol) & (true <= hi + atol)).mean(1)


def calibrated_coverage(k: int, levels=COVERAGE_LEVELS) -> np.ndarray:
  """[L] the coverage of k draws' central intervals (`interval_coverage`) when the truth is
  one more draw: p (k - 1) / (k + 1), exact for uniform draws and close for smooth ones
  (within 0.03 for Gaussian draws up to k = 16); it reaches p only as k grows."""
  return np.asarray(levels, np.float64) * (k - 1) / (k + 1)


class DrawCalibration:
  """`draw_ranks` and `interval_coverage` pooled over batches of entries (an evaluation set's
  FOVs one at a time, so no more than one FOV's draws are held), each batch taken `chunk`
  entries at a time (the quantiles' sorted copy stays small)."""

  def __init__(self, k: int, channels: int, levels=COVERAGE_LEVELS, chunk: int = 1 << 16):
    self.levels = tuple(levels)
    self.ranks = np.zeros((k + 1, channels))
    self.inside = np.zeros((len(self.levels), channels))
    self.count, self.chunk = 0, chunk

  def add(self, draws, true) -> None:
    """draws [K, N, C], true [N, C]."""
    for lo in range(0, len(true), self.chunk):
      d, t = draws[:, lo:lo + self.chunk], true[lo:lo + self.chunk]
      self.ranks += len(t) * draw_ranks(d, t)
      self.inside += len(t) * interval_coverage(d, t, self.levels)
      self.count += len(t)

  def result(self) -> dict[str, np.ndarray]:
    """{"pit": [K + 1, C], "coverage": [L, C]} shares of the entries added."""
    n = max(self.count, 1)
    return {"pit": self.ranks / n, "coverage": self.inside / n}


def coverage_key(level: float) -> str:
  """The name of a level's coverage among the uncertainty metrics: 0.95 -> "coverage_95"."""
  return f"coverage_{round(100 * level)}"


def nanmean_skip(values) -> float:
  """Mean skipping NaN (channels with undefined r); NaN, silently, if nothing is left."""
  v = np.asarray(values, np.float64).ravel()
  v = v[~np.isnan(v)]
  return float(v.mean()) if len(v) else float("nan")


def _finite_or_zero(r: np.ndarray) -> np.ndarray:
  return np.where(np.isfinite(r), r, 0.0)


def _cells(pred, true) -> tuple[np.ndarray, np.ndarray]:
  p, t = _pixels(pred, true)
  if np.ndim(pred) != 2:
    raise ValueError(f"expected cells x proteins [N, P], got shape {np.shape(pred)}")
  return p, t


def r_p(pred, true) -> float:
  """Cells [N, P]: mean over proteins of Pearson r across cells (non-finite -> 0)."""
  p, t = _cells(pred, true)
  return float(_finite_or_zero(_columns_r(p, t)).mean())


def r_c(pred, true) -> float:
  """Cells [N, P]: mean over cells of Pearson r across proteins (non-finite -> 0)."""
  p, t = _cells(pred, true)
  return float(_finite_or_zero(_columns_r(p.T, t.T)).mean())
