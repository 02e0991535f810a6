"""evaluate.metrics against scipy.stats and hand computations."""

import numpy as np
import pytest
import scipy.stats

from multichan_diff.evaluate import metrics


def _pair(seed=0, shape=(2, 6, 5, 3)):
  rng = np.random.default_rng(seed)
  true = rng.standard_normal(shape)
  return true + rng.standard_normal(shape), true


def test_pearson_and_spearman_match_scipy_per_channel():
  pred, true = _pair()
  p, t = pred.reshape(-1, 3), true.reshape(-1, 3)
  want_r = [scipy.stats.pearsonr(p[:, c], t[:, c])[0] for c in range(3)]
  np.testing.assert_allclose(metrics.pearson(pred, true), want_r, rtol=1e-10)
  # Integer values: many ties, ranked by their average, as spearmanr does.
  pi, ti = np.round(pred * 2), np.round(true * 2)
  want_rho = [scipy.stats.spearmanr(pi.reshape(-1, 3)[:, c], ti.reshape(-1, 3)[:, c])[0]
              for c in range(3)]
  np.testing.assert_allclose(metrics.spearman(pi, ti), want_rho, rtol=1e-10)


def test_mask_selects_pixels():
  pred, true = _pair(1)
  mask = np.random.default_rng(2).random(pred.shape[:-1]) < 0.5
  for fn in (metrics.pearson, metrics.spearman, metrics.rmse):
    np.testing.assert_allclose(fn(pred, true, mask), fn(pred[mask], true[mask]))
    assert not np.allclose(fn(pred, true, mask), fn(pred, true))
  with pytest.raises(ValueError, match="mask"):
    metrics.pearson(pred, true, mask[0])


def test_constant_channel_is_nan_and_skipped():
  pred, true = _pair(3)
  true[..., 1] = 0.7
  pred[..., 2] = -1.0
  for fn in (metrics.pearson, metrics.spearman):
    r = fn(pred, true)
    assert np.isfinite(r[0]) and np.isnan(r[1]) and np.isnan(r[2])
  r = metrics.pearson(pred, true)
  assert metrics.nanmean_skip(r) == pytest.approx(r[0])
  assert metrics.nanmean_skip([0.5, np.nan, 0.3]) == pytest.approx(0.4)
  assert np.isnan(metrics.nanmean_skip([np.nan, np.nan]))


def test_rmse_by_hand():
  pred = np.array([[1.0, 0.0], [3.0, 2.0]])
  true = np.array([[0.0, 0.0], [1.0, 2.0]])
  np.testing.assert_allclose(metrics.rmse(pred, true), [np.sqrt(2.5), 0.0])
  with pytest.raises(ValueError, match="shape"):
    metrics.rmse(pred, true[:1])


def test_r_p_and_r_c_by_hand_with_nonfinite_as_zero():
  pred = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [3.0, 5.0, 0.0]])
  true = np.array([[1.0, 1.0, 3.0], [2.0, 3.0, 1.0], [4.0, 2.0, 2.0]])
  # Proteins (columns): r of col 0, col 1, and 0 for the constant col 2.
  want_p = np.mean([np.corrcoef(pred[:, 0], true[:, 0])[0, 1],
                    np.corrcoef(pred[:, 1], true[:, 1])[0, 1], 0.0])
  want_c = np.mean([np.corrcoef(pred[i], true[i])[0, 1] for i in range(3)])
  assert metrics.r_p(pred, true) == pytest.approx(want_p)
  assert metrics.r_c(pred, true) == pytest.approx(want_c)
  pred[1] = 4.0  # a constant cell: its r is undefined and counts as 0
  want_c = np.mean([np.corrcoef(pred[i], true[i])[0, 1] for i in (0, 2)] + [0.0])
  assert metrics.r_c(pred, true) == pytest.approx(want_c)
  with pytest.raises(ValueError, match=r"\[N, P\]"):
    metrics.r_p(pred[None], true[None])


def test_range_tails_by_hand():
  lo = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
  hi = lo + 1.0
  true = np.array([[-1.0, 1.5], [0.5, 3.0], [2.0, 1.0]])  # on a bound counts as inside
  below, above = metrics.range_tails(lo, hi, true)
  np.testing.assert_allclose(below, [1 / 3, 0.0])
  np.testing.assert_allclose(above, [1 / 3, 1 / 3])
  mask = np.array([True, True, False])
  np.testing.assert_allclose(metrics.range_tails(lo, hi, true, mask)[0], [0.5, 0.0])
  # A draw a rounding step off the measured value ties with it.
  below, above = metrics.range_tails(lo + 3e-8, hi - 3e-8, np.stack([lo[0], hi[1], lo[2]]))
  np.testing.assert_array_equal(below + above, [0.0, 0.0])
  assert metrics.range_tails(lo + 1e-3, hi, lo)[0].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("k", [2, 8])
def test_uncertainty_tells_calibrated_from_narrow_draws(k):
  """Truth exchangeable with the draws puts 1/(K+1) in each tail; draws half as wide as
  the posterior put far more; a std that tracks the noise ranks the errors."""
  rng = np.random.default_rng(4)
  n = 20000
  centre = rng.standard_normal((n, 2))
  scale = np.exp(rng.standard_normal((n, 2)))  # heteroscedastic: some entries far noisier
  true = centre + scale * rng.standard_normal((n, 2))
  draws = centre + scale * rng.standard_normal((k, n, 2))
  got = metrics.uncertainty(draws.min(0), draws.max(0), draws.std(0), centre, true)
  tail = metrics.calibrated_tail(k)
  np.testing.assert_allclose(got["below"], tail, atol=0.015)
  np.testing.assert_allclose(got["above"], tail, atol=0.015)
  assert (got["std_error_spearman"] > 0.2).all()
  narrow = centre + 0.5 * (draws - centre)
  got = metrics.uncertainty(narrow.min(0), narrow.max(0), narrow.std(0), centre, true)
  assert (got["below"] > tail + 0.05).all() and (got["above"] > tail + 0.05).all()
  # The spread relative to the measured values': by hand, and undefined for a constant one.
  std = rng.random((n, 2))
  const = true.copy()
  const[:, 1] = 3.0
  rel = metrics.uncertainty(draws.min(0), draws.max(0), std, centre, const)["relative_std"]
  assert rel[0] == pytest.approx(std[:, 0].mean() / true[:, 0].std()) and np.isnan(rel[1])
  # A std unrelated to the errors ranks nothing.
  flat = metrics.uncertainty(draws.min(0), draws.max(0), rng.random((n, 2)), centre, true)
  assert (np.abs(flat["std_error_spearman"]) < 0.05).all()


def test_draw_ranks_by_hand_with_ties_spread():
  draws = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])[:, None, :]  # K = 3, N = 1, C = 2
  true = np.array([[1.5, 0.0]])  # channel 0: 2 draws below; channel 1: tied with all 3
  np.testing.assert_allclose(metrics.draw_ranks(draws, true)[:, 0], [0, 0, 1, 0])
  np.testing.assert_allclose(metrics.draw_ranks(draws, true)[:, 1], [0.25] * 4)
  # A tie with one draw among others spans two ranks; below and above every draw agree
  # with `range_tails`.
  draws = np.array([[0.0, 1.0, 2.0]]).T[:, :, None].repeat(4, 1)  # [3, 4, 1]
  true = np.array([[1.0], [-1.0], [3.0], [0.5]])
  hist = metrics.draw_ranks(draws, true)[:, 0]
  np.testing.assert_allclose(hist, [1 / 4, (1 + 0.5) / 4, 0.5 / 4, 1 / 4])
  below, above = metrics.range_tails(draws.min(0), draws.max(0), true)
  assert hist[0] == pytest.approx(below[0]) and hist[-1] == pytest.approx(above[0])


def test_interval_coverage_by_hand():
  draws = np.arange(5.0)[:, None, None].repeat(3, 1)  # draws 0..4 for each of 3 entries
  true = np.array([[2.0], [0.5], [4.0]])
  # np.quantile of 0..4: the central 50 % interval is [1, 3], the 95 % one [0.1, 3.9].
  got = metrics.interval_coverage(draws, true, levels=(0.5, 0.95))[:, 0]
  np.testing.assert_allclose(got, [1 / 3, 2 / 3])
  assert metrics.interval_coverage(draws, true + 1e-7, levels=(0.5,))[0, 0] == pytest.approx(1 / 3)


@pytest.mark.parametrize("k", [4, 8])
def test_calibration_of_exchangeable_and_narrow_draws(k):
  """A truth exchangeable with the draws: a flat PIT histogram and the coverage
  `calibrated_coverage` says (exactly for uniform draws); draws too narrow: a U-shaped
  histogram and less coverage. Pooling batches gives the figures of all entries at once."""
  rng = np.random.default_rng(5)
  n = 40000
  draws, true = rng.random((k, n, 2)), rng.random((n, 2))
  flat = np.full((k + 1, 2), 1 / (k + 1))
  np.testing.assert_allclose(metrics.draw_ranks(draws, true), flat, atol=0.012)
  cov = metrics.interval_coverage(draws, true)
  want = metrics.calibrated_coverage(k)
  np.testing.assert_allclose(cov, np.repeat(want[:, None], 2, 1), atol=0.012)
  assert (want < np.asarray(metrics.COVERAGE_LEVELS)).all()
  gauss = rng.standard_normal((k + 1, n, 2))  # smooth draws: close, as the docstring says
  np.testing.assert_allclose(metrics.interval_coverage(gauss[1:], gauss[0]),
                             np.repeat(want[:, None], 2, 1), atol=0.035)
  narrow = 0.5 + 0.5 * (draws - 0.5)
  hist = metrics.draw_ranks(narrow, true)
  assert (hist[[0, -1]] > flat[[0, -1]] + 0.05).all() and (hist[1:-1] < flat[1:-1]).all()
  assert (metrics.interval_coverage(narrow, true) < want[:, None] - 0.05).all()
  pooled = metrics.DrawCalibration(k, 2, chunk=3000)
  for part in (slice(0, 1000), slice(1000, n)):
    pooled.add(narrow[:, part], true[part])
  res = pooled.result()
  np.testing.assert_allclose(res["pit"], hist)
  np.testing.assert_allclose(res["coverage"], metrics.interval_coverage(narrow, true))
  assert metrics.coverage_key(0.95) == "coverage_95"
