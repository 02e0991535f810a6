"""Noise schedules: closed forms and q_sample moments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multichan_diff.diffusion.schedules import (cosine_alpha_bar, get_schedule, predict_eps,
                                                predict_x0, q_sample)


def test_linear_closed_form():
  s = get_schedule("linear", 1000)
  betas = np.linspace(1e-4, 0.02, 1000)
  np.testing.assert_allclose(s.betas, betas, rtol=1e-5)
  np.testing.assert_allclose(s.alpha_bars, np.cumprod(1 - betas), rtol=1e-4)
  assert float(s.alpha_bars[-1]) < 1e-4  # the chain ends in (almost) pure noise


def test_cosine_closed_form():
  s = get_schedule("cosine", 1000)
  t = np.arange(1, 1001) / 1000
  expected = cosine_alpha_bar(t)
  # Identical except where beta hits its 0.999 cap at the very end.
  np.testing.assert_allclose(s.alpha_bars[:990], expected[:990], rtol=1e-4)
  assert np.all(np.diff(np.asarray(s.alpha_bars)) < 0)
  assert np.all((np.asarray(s.betas) > 0) & (np.asarray(s.betas) <= 0.999))


def test_unknown_schedule():
  with pytest.raises(ValueError, match="linear"):
    get_schedule("sigmoid")


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_moments(name):
  s = get_schedule(name)
  n = 200_000
  x0 = jnp.full((n, 1), 1.5)
  for t in [10, 500, 990]:
    tt = jnp.full((n,), t)
    xt = q_sample(s, x0, tt, jax.random.normal(jax.random.key(t), (n, 1)))
    ab = float(s.alpha_bars[t])
    assert abs(float(xt.mean()) - np.sqrt(ab) * 1.5) < 0.01
    assert abs(float(xt.var()) - (1 - ab)) < 0.01 * max(1 - ab, 0.1)


def test_predict_inverts_q_sample():
  s = get_schedule("linear")
  x0 = jax.random.normal(jax.random.key(0), (8, 3, 3, 2))
  eps = jax.random.normal(jax.random.key(1), x0.shape)
  t = jnp.arange(8) * 120
  xt = q_sample(s, x0, t, eps)
  np.testing.assert_allclose(predict_x0(s, xt, t, eps), x0, atol=2e-3)
  np.testing.assert_allclose(predict_eps(s, xt, t, x0), eps, atol=2e-3)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_v_prediction_converts_to_the_true_eps(name):
  from multichan_diff.diffusion.schedules import output_to_eps, v_target
  s = get_schedule(name)
  x0 = jax.random.normal(jax.random.key(0), (4, 3, 3, 2))
  eps = jax.random.normal(jax.random.key(1), x0.shape)
  t = jnp.array([0, 10, 500, 999])
  x_t = q_sample(s, x0, t, eps)
  v = v_target(s, x0, t, eps)
  np.testing.assert_allclose(output_to_eps("v", s, x_t, t, v), eps, atol=1e-4)
  np.testing.assert_array_equal(output_to_eps("eps", s, x_t, t, eps), eps)
  with pytest.raises(ValueError, match="unknown prediction"):
    output_to_eps("x1", s, x_t, t, v)
