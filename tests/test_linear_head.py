"""The regressor's linear head: the closed-form ridge it holds, how `regress` adds it, and
that training leaves it as set."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import perturb_params, tiny_model
from multichan_diff.diffusion.losses import get_regression_loss_fn, regress
from multichan_diff.train.ridge import RELATIVE_ALPHAS, cv_ridge
from multichan_diff.train.step import init_train_state, make_optimizer, make_train_step


def _data(n=40, g=12, c=3, noise=0.5, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, g)) * rng.uniform(0.2, 3, size=g)
  w = rng.normal(size=(g, c))
  return x, x @ w + 1.5 + noise * rng.normal(size=(n, c)), w


def _ridge(x, y, alpha):
  xm, ym = x.mean(0), y.mean(0)
  w = np.linalg.solve((x - xm).T @ (x - xm) + alpha * np.eye(x.shape[1]), (x - xm).T @ (y - ym))
  return w, ym - xm @ w


def test_cv_errors_are_brute_force_k_fold_errors_with_each_folds_own_components():
  x, y, _ = _data()
  fit = cv_ridge(x, y, ranks=(4, None), folds=4, seed=3)
  scale = np.mean(np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2)
  fold = np.random.default_rng(3).permutation(len(x)) % 4
  for rank, rel in [(4, RELATIVE_ALPHAS[0]), (4, RELATIVE_ALPHAS[6]), (12, RELATIVE_ALPHAS[3]),
                    (12, RELATIVE_ALPHAS[9])]:
    sq = 0.0
    for k in range(4):
      tr, te = fold != k, fold == k
      xm = x[tr].mean(0)
      vt = np.linalg.svd(x[tr] - xm, full_matrices=False)[2][:rank]
      w, b = _ridge((x[tr] - xm) @ vt.T, y[tr], rel * scale)
      sq += np.sum(((x[te] - xm) @ vt.T @ w + b - y[te]) ** 2)
    assert fit.cv_errors[(rank, rel)] == pytest.approx(sq / y.size, rel=1e-6)
  # the chosen pair is the least of them, and the fit is its ridge on all the cells
  rank, rel = min(fit.cv_errors, key=fit.cv_errors.get)
  assert (fit.rank, fit.alpha) == (rank, pytest.approx(rel * scale))
  xc = x - x.mean(0)
  vt = np.linalg.svd(xc, full_matrices=False)[2][:rank]
  w, b = _ridge(xc @ vt.T, y, fit.alpha)
  np.testing.assert_allclose(x @ fit.w + fit.b, xc @ vt.T @ w + b, atol=1e-8)


def test_noise_raises_the_penalty_or_cuts_the_components():
  x, clean, _ = _data(noise=0.01)
  _, noisy, _ = _data(noise=5.0)
  c, n = cv_ridge(x, clean), cv_ridge(x, noisy)
  assert n.alpha > 10 * c.alpha or n.rank < c.rank


def test_more_genes_than_cells_and_too_few_cells():
  x, y, _ = _data(n=12, g=50)
  fit = cv_ridge(x, y)
  assert fit.w.shape == (50, 3) and np.all(np.isfinite(fit.w))
  with pytest.raises(ValueError, match="at least 10"):
    cv_ridge(x[:9], y[:9])


def _cells_regressor(**kw):
  cfg, model = tiny_model(3, cond_channels=12, spatial=False, attention_levels=None,
                          linear_head=True, **kw)
  perturb_params(model)
  return model


def test_regress_adds_the_head_to_the_network():
  model = _cells_regressor()
  x, _, w = _data()
  model.linear_head.w[...] = jnp.asarray(w, jnp.float32)
  model.linear_head.b[...] = jnp.full((3,), 2.0)
  cond = jnp.asarray(x[:4, None, None, :], jnp.float32)
  mask = jnp.ones((4, 12), bool)
  net = model(jnp.zeros((4, 1, 1, 3)), jnp.zeros((4,)), cond, mask)
  np.testing.assert_allclose(regress(model, cond, mask, (4, 1, 1, 3)),
                             net + (x[:4] @ w + 2.0)[:, None, None, :], rtol=1e-5, atol=1e-4)


def test_training_moves_the_network_and_not_the_head():
  model = _cells_regressor()
  x, y, w = _data()
  model.linear_head.w[...] = jnp.asarray(w, jnp.float32)
  tx = make_optimizer(1e-2, weight_decay=0.5, fixed="linear_head")
  graphdef, rest, state = init_train_state(model, tx)
  step = jax.jit(make_train_step(graphdef, rest, tx, get_regression_loss_fn()))
  batch = {"x0": jnp.asarray(y[:16, None, None, :], jnp.float32),
           "cond": jnp.asarray(x[:16, None, None, :], jnp.float32)}
  before = state.params
  for _ in range(3):
    state, _ = step(state, batch, jax.random.key(0))
  for tree in (state.params, state.ema):  # the EMA of a constant, up to float32 rounding
    np.testing.assert_allclose(tree["linear_head"]["w"][...], before["linear_head"]["w"][...],
                               atol=1e-6)
  moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state.params["out_conv"]),
                                                        jax.tree.leaves(before["out_conv"]))]
  assert max(moved) > 1e-4


def test_a_linear_head_needs_another_modality():
  with pytest.raises(ValueError, match="another modality"):
    tiny_model(3, linear_head=True)
