"""DDPM and DDIM: exactness with an oracle, clamped observed channels, K samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_model
from multichan_diff.diffusion.masking import mask_condition
from multichan_diff.diffusion.samplers import (ddim_sample, ddpm_sample, get_sampler,
                                               sample_posterior, timestep_pairs)
from multichan_diff.diffusion.schedules import get_schedule, predict_eps


def _oracle(schedule, x0):
  return lambda x_t, t: predict_eps(schedule, x_t, t.astype(jnp.int32), x0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_ddim_with_oracle_epsilon_returns_x0(name, steps):
  s = get_schedule(name)
  x0 = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
  out = ddim_sample(s, _oracle(s, x0), jax.random.key(1), x0.shape, steps=steps)
  # One cosine step divides float32 rounding by sqrt(alpha_bar_999) = 5e-5.
  np.testing.assert_allclose(out, x0, atol=5e-3 if (name, steps) == ("cosine", 1) else 1e-3)


def test_ddpm_with_oracle_epsilon_returns_x0():
  s = get_schedule("linear")
  x0 = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  out = ddpm_sample(s, _oracle(s, x0), jax.random.key(1), x0.shape, steps=100)
  np.testing.assert_allclose(out, x0, atol=1e-3)


def test_ddpm_is_stochastic_and_ddim_is_not():
  s = get_schedule("linear")
  denoise = lambda x_t, t: 0.5 * x_t  # any non-oracle network
  shape = (1, 3, 3, 2)
  d1 = ddim_sample(s, denoise, jax.random.key(0), shape, steps=10)
  d2 = ddim_sample(s, denoise, jax.random.key(0), shape, steps=10)
  np.testing.assert_array_equal(d1, d2)
  p1 = ddpm_sample(s, denoise, jax.random.key(0), shape, steps=10)
  p2 = ddpm_sample(s, denoise, jax.random.key(0), shape, steps=10)
  p3 = ddpm_sample(s, denoise, jax.random.key(5), shape, steps=10)
  np.testing.assert_array_equal(p1, p2)
  assert not np.allclose(p1, p3)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_keep_observed_channels(sampler):
  s = get_schedule("linear")
  x0 = jax.random.normal(jax.random.key(0), (2, 6, 6, 4)) * 3 + 1
  known = jnp.array([[True, False, True, False], [False, False, False, True]])
  denoise = lambda x_t, t: jnp.tanh(x_t)
  out = get_sampler(sampler)(s, denoise, jax.random.key(1), x0.shape, steps=20,
                             x_known=x0, known=known)
  k = np.broadcast_to(np.asarray(known)[:, None, None, :], x0.shape)
  np.testing.assert_array_equal(np.asarray(out)[k], np.asarray(x0)[k])
  assert not np.allclose(np.asarray(out)[~k], np.asarray(x0)[~k])


def test_timestep_pairs():
  ts, prev = timestep_pairs(1000, 500)
  assert ts[0] == 999 and prev[-1] == -1 and len(ts) == 500
  assert (np.diff(ts) < 0).all() and (prev[:-1] == ts[1:]).all()
  for steps in (1, 2, 50):  # every chain starts from pure noise
    ts, prev = timestep_pairs(1000, steps)
    assert ts[0] == 999 and prev[-1] == -1 and len(ts) == steps
  with pytest.raises(ValueError):
    timestep_pairs(1000, 0)


def test_sample_posterior_k_samples_mean_and_std():
  _, model = tiny_model(4)
  s = get_schedule("linear")
  b, k = 2, 3
  x0 = jax.random.normal(jax.random.key(0), (b, 8, 8, 4))
  obs = jnp.array([[True, True, False, False], [True, False, False, False]])
  cond = mask_condition(x0, obs)
  out = sample_posterior(model, s, jax.random.key(1), cond, obs, x0.shape, sampler="ddpm",
                         steps=5, num_samples=k, x_known=x0, known=obs)
  assert out["samples"].shape == (k, b, 8, 8, 4)
  np.testing.assert_allclose(out["mean"], out["samples"].mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["std"], out["samples"].std(0), rtol=1e-5, atol=1e-6)
  o = np.broadcast_to(np.asarray(obs)[:, None, None, :], x0.shape)
  assert np.asarray(out["std"])[o].max() == 0.0  # observed channels: no uncertainty
  assert np.asarray(out["std"])[~o].min() > 0.0  # the K draws differ on missing ones
  np.testing.assert_array_equal(np.asarray(out["mean"])[o], np.asarray(x0)[o])


def test_v_predicting_oracle_model_returns_x0_through_sample_posterior():
  """sample_posterior converts a v-predicting network's output to eps for the sampler."""
  from multichan_diff.diffusion.schedules import v_target
  s = get_schedule("linear")
  x0 = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))

  class VOracle:
    def encode_condition(self, cond, mask):
      return None

    def denoise(self, x_t, t, ctx):
      ti = t.astype(jnp.int32)
      eps = predict_eps(s, x_t, ti, jnp.tile(x0, (x_t.shape[0] // 2, 1, 1, 1)))
      return v_target(s, jnp.tile(x0, (x_t.shape[0] // 2, 1, 1, 1)), ti, eps)

  out = sample_posterior(VOracle(), s, jax.random.key(1), x0, jnp.ones((2, 3), bool), x0.shape,
                         sampler="ddim", steps=20, num_samples=2, prediction="v")
  np.testing.assert_allclose(out["samples"], jnp.stack([x0, x0]), atol=1e-3)
