"""Random channel masking (Algorithm 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multichan_diff.diffusion.masking import mask_condition, sample_observed, sample_observed_np


def _present(seed, b=512, c=9):
  rng = np.random.default_rng(seed)
  present = rng.random((b, c)) < 0.7
  present[:8] = False  # no channel
  present[8:16, :] = False
  present[8:16, 3] = True  # exactly one channel
  present[16:24] = True  # all channels
  return jnp.asarray(present)


def _jax(present, p, seed=1):
  return np.asarray(sample_observed(jax.random.key(seed), jnp.asarray(present), p))


def _numpy(present, p, seed=1):
  return sample_observed_np(np.random.default_rng(seed), np.asarray(present), p)


@pytest.mark.parametrize("draw", [_jax, _numpy])
@pytest.mark.parametrize("p", [0.5, 0.02, 0.98, (0.1, 0.9)])
def test_observed_count_bounds_and_absent_never_observed(p, draw):
  present = _present(0)
  obs = draw(present, p)
  pres = np.asarray(present)
  assert not (obs & ~pres).any()  # absent channels never count as observed
  n_pres, n_obs = pres.sum(1), obs.sum(1)
  many = n_pres >= 2
  assert (n_obs[many] >= 1).all() and (n_obs[many] <= n_pres[many] - 1).all()
  assert (n_obs[n_pres == 0] == 0).all()


@pytest.mark.parametrize("draw", [_jax, _numpy])
def test_observation_rate_follows_p(draw):
  present = np.ones((4000, 20), bool)
  for p in [0.2, 0.5, 0.8]:
    rate = float(draw(present, p).mean())
    assert abs(rate - p) < 0.02, (p, rate)
  # A per-sample range: the per-sample rates spread over it.
  rates = draw(present, (0.1, 0.9)).mean(1)
  assert rates.min() < 0.25 and rates.max() > 0.75


def test_same_key_same_mask_and_keys_differ():
  present = _present(2)
  a = sample_observed(jax.random.key(7), present, 0.5)
  b = sample_observed(jax.random.key(7), present, 0.5)
  c = sample_observed(jax.random.key(8), present, 0.5)
  assert jnp.array_equal(a, b) and not jnp.array_equal(a, c)
  present = np.asarray(present)
  assert np.array_equal(_numpy(present, 0.5, 7), _numpy(present, 0.5, 7))
  assert not np.array_equal(_numpy(present, 0.5, 7), _numpy(present, 0.5, 8))


def test_masked_channels_are_exactly_zero_and_observed_pass_through():
  x0 = jax.random.normal(jax.random.key(0), (4, 6, 5, 7)) + 10.0
  obs = sample_observed(jax.random.key(1), jnp.ones((4, 7), bool), 0.5)
  c = mask_condition(x0, obs)
  o = np.asarray(obs)[:, None, None, :]
  assert (np.asarray(c)[np.broadcast_to(~o, c.shape)] == 0).all()
  np.testing.assert_array_equal(np.asarray(c)[np.broadcast_to(o, c.shape)],
                                np.asarray(x0)[np.broadcast_to(o, c.shape)])


def test_condition_is_standardised_with_the_given_shift_and_scale():
  x0 = jax.random.normal(jax.random.key(0), (2, 4, 4, 3)) * 3.0 + 5.0
  obs = jnp.array([[True, False, True], [False, True, True]])
  shift = jnp.array([[5.0, 1.0, -2.0], [0.0, 4.0, 2.0]])
  scale = jnp.array([[3.0, 2.0, 0.5], [1.0, 3.0, 4.0]])
  c = np.asarray(mask_condition(x0, obs, shift, scale))
  want = (np.asarray(x0) - np.asarray(shift)[:, None, None]) / np.asarray(scale)[:, None, None]
  o = np.broadcast_to(np.asarray(obs)[:, None, None, :], c.shape)
  np.testing.assert_allclose(c[o], want[o], rtol=1e-6)
  assert (c[~o] == 0).all()
