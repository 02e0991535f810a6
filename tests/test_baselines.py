"""evaluate.baselines on synthetic images and cells where the right answer is known."""

import numpy as np
import pytest
import scipy.ndimage
import scipy.sparse as sp

from multichan_diff.evaluate import baselines, metrics
from multichan_diff.evaluate.baselines import IMAGE_BASELINES, ImageBaselines


def _fovs(make, n_train=3, n_test=2, size=32, seed=0):
  rng = np.random.default_rng(seed)
  fovs = [make(rng, size) for _ in range(n_train + n_test)]
  return fovs[:n_train], fovs[n_train:]


def _linear(rng, size):
  x = rng.standard_normal((size, size, 3))
  return np.concatenate([x, (2 * x[..., :1] - x[..., 1:2] + 0.5 * x[..., 2:] + 1)], -1)


def test_ridge_recovers_an_exact_linear_relation():
  train, test = _fovs(_linear)
  observed = np.array([True, True, True, False])
  exact = ImageBaselines(train, test, alpha=1e-9).predict(observed)
  default = ImageBaselines(train, test).predict(observed)
  for name in ("ridge", "ridge_smoothed"):
    for p, t in zip(exact[name], test):
      np.testing.assert_allclose(p[..., 3], t[..., 3], atol=1e-4)
    for p, t in zip(default[name], test):  # alpha = 1 on 3000 pixels: barely shrunk
      np.testing.assert_allclose(p[..., 3], t[..., 3], atol=2e-2)


def test_ridge_equals_a_direct_fit_on_the_features():
  train, test = _fovs(lambda rng, s: rng.standard_normal((s, s, 4)), seed=1)
  observed = np.array([True, False, True, False])
  pred = ImageBaselines(train, test, sigmas=(1, 3), alpha=5.0).predict(observed)
  feats = [baselines.feature_stack(f, (1, 3)).reshape(-1, 12) for f in train]
  x = np.concatenate(feats)
  cols = [0, 2, 4, 6, 8, 10]  # channels 0 and 2 at every smoothing level
  w, b = baselines.ridge_fit(x[:, cols].astype(np.float64), x[:, [1, 3]], 5.0)
  want = baselines.feature_stack(test[0], (1, 3))[..., cols] @ w + b
  np.testing.assert_allclose(pred["ridge_smoothed"][0][..., [1, 3]], want, atol=1e-4)


def test_most_correlated_copies_the_noisy_copy_of_the_target():
  def make(rng, s):
    t = rng.standard_normal((s, s))
    return np.stack([t, rng.standard_normal((s, s)), t + 0.3 * rng.standard_normal((s, s)),
                     rng.standard_normal((s, s))], -1)
  train, test = _fovs(make)
  pred = ImageBaselines(train, test).predict(np.array([False, True, True, True]))
  for p, t in zip(pred["most_correlated"], test):
    np.testing.assert_array_equal(p[..., 0], t[..., 2].astype(np.float32))


def test_smoothed_variants_win_when_the_target_is_blurred():
  def make(rng, s):
    x = rng.standard_normal((s, s, 2))
    return np.concatenate([scipy.ndimage.gaussian_filter(x[..., :1], (2, 2, 0)), x], -1)
  train, test = _fovs(make, size=48)
  pred = ImageBaselines(train, test).predict(np.array([False, True, True]))
  r = {n: metrics.pearson(pred[n][0][..., :1], test[0][..., :1])[0] for n in IMAGE_BASELINES}
  assert r["most_correlated_smoothed"] > 0.999  # channel 1 at sigma 2 is the target itself
  assert r["most_correlated_smoothed"] > r["most_correlated"] + 0.3
  assert r["ridge_smoothed"] > 0.99 and r["ridge_smoothed"] > r["ridge"] + 0.3


def test_observed_channels_pass_through_and_shapes():
  train, test = _fovs(_linear, n_test=2)
  model = ImageBaselines(train, test, max_pixels=500, seed=3)
  for observed in ([True, False, True, False], [True] * 4, [False] * 4):
    observed = np.array(observed)
    pred = model.predict(observed)
    assert tuple(pred) == IMAGE_BASELINES
    for name in IMAGE_BASELINES:
      assert len(pred[name]) == 2
      for p, t in zip(pred[name], test):
        assert p.shape == t.shape and p.dtype == np.float32
        np.testing.assert_array_equal(p[..., observed], t[..., observed].astype(np.float32))
        if not observed.any():  # nothing to go on: the training mean
          np.testing.assert_allclose(p.mean((0, 1)), model.mean[:4], atol=1e-5)
  with pytest.raises(ValueError, match="observed"):
    model.predict(np.ones(3, bool))


def test_truncated_svd_exact_and_randomised_agree_with_numpy():
  rng = np.random.default_rng(0)
  x = rng.random((60, 5)) @ rng.random((5, 80)) + 1e-3 * rng.random((60, 80))
  want = np.linalg.svd(x)[2][:4]
  for vt in (baselines.truncated_svd(x, 4), baselines.truncated_svd(sp.csr_matrix(x), 4),
             baselines.truncated_svd(x, 4, exact_below=0)):
    assert vt.shape == (4, 80)
    np.testing.assert_allclose(np.abs(vt @ want.T), np.eye(4), atol=1e-6)


@pytest.mark.parametrize("p", [6, 9])
def test_cell_baselines_beat_the_training_mean(p):
  # Cells vary along 8 latent factors that the RNA shows (non-negative) and proteins follow.
  rng = np.random.default_rng(0)
  z = rng.standard_normal((250, 8))
  rna = np.maximum(z @ rng.standard_normal((8, 120)) + 1, 0) + 0.1 * rng.random((250, 120))
  prot = z @ rng.standard_normal((8, p)) + 0.1 * rng.standard_normal((250, p))
  tr, te = slice(0, 200), slice(200, None)
  kw = dict(n_components=40, target_components=6)  # p = 9: KRR fits 6 SVD components
  preds = baselines.cell_baselines(rna[tr], rna[te], prot[tr], **kw)
  assert tuple(preds) == baselines.CELL_BASELINES
  mean_mse = ((prot[tr].mean(0) - prot[te]) ** 2).mean()
  for name, pred in preds.items():
    assert pred.shape == (50, p)
    assert ((pred - prot[te]) ** 2).mean() < 0.5 * mean_mse, name
    assert metrics.r_p(pred, prot[te]) > 0.7, name
  sparse = baselines.cell_baselines(sp.csr_matrix(rna[tr]), sp.csr_matrix(rna[te]), prot[tr], **kw)
  for name in preds:
    np.testing.assert_allclose(sparse[name], preds[name], atol=1e-8)
  clipped = baselines.cell_baselines(rna[tr], rna[te], prot[tr], clip=True, **kw)["krr"]
  assert clipped.min() >= 0 and preds["krr"].min() < 0
