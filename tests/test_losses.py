"""The epsilon loss with present / observed masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multichan_diff.diffusion.losses import get_loss_fn, loss_weight, masked_mse
from multichan_diff.diffusion.schedules import get_schedule


def test_masked_mse_ignores_unweighted_channels():
  pred = jnp.zeros((2, 3, 3, 4))
  target = jnp.ones((2, 3, 3, 4)).at[:, :, :, 2].set(100.0)
  w = jnp.ones((2, 4), bool).at[:, 2].set(False)
  assert float(masked_mse(pred, target, w)) == pytest.approx(1.0)
  assert float(masked_mse(pred, target, jnp.zeros((2, 4), bool))) == 0.0


def test_loss_weight_modes():
  present = jnp.array([[1, 1, 1, 0]], bool)
  observed = jnp.array([[1, 0, 0, 0]], bool)
  assert loss_weight(present, observed, "all").tolist() == [[True, True, True, False]]
  assert loss_weight(present, observed, "missing").tolist() == [[False, True, True, False]]
  with pytest.raises(ValueError):
    get_loss_fn(get_schedule("linear"), "some")


@pytest.mark.parametrize("loss_on", ["all", "missing"])
def test_absent_channels_contribute_nothing(loss_on):
  """Whatever the network predicts for an absent channel, the loss does not move."""
  loss_fn = get_loss_fn(get_schedule("linear"), loss_on)
  x0 = jax.random.normal(jax.random.key(0), (3, 8, 8, 5))
  present = jnp.ones((3, 5), bool).at[:, 4].set(False)
  observed = jnp.zeros((3, 5), bool).at[:, 0].set(True)
  batch = {"x0": x0, "present": present, "observed": observed}

  def fake_model(offset):
    return lambda x_t, t, cond, mask: jnp.zeros_like(x_t) + offset

  base = jnp.zeros((5,))
  l0, _ = loss_fn(fake_model(base), batch, jax.random.key(1))
  l_absent, _ = loss_fn(fake_model(base.at[4].set(100.0)), batch, jax.random.key(1))
  l_missing, _ = loss_fn(fake_model(base.at[2].set(1.0)), batch, jax.random.key(1))
  l_observed, _ = loss_fn(fake_model(base.at[0].set(1.0)), batch, jax.random.key(1))
  assert float(l_absent) == float(l0)
  assert float(l_missing) > float(l0) + 0.1
  if loss_on == "missing":
    assert float(l_observed) == float(l0)  # observed channels do not count either
  else:
    assert float(l_observed) > float(l0) + 0.1


def test_vector_batch_uses_its_own_condition():
  from multichan_diff.model import ModelConfig, build_model
  model = build_model(ModelConfig(num_channels=3, cond_channels=6, spatial=False, widths=(8,),
                                  blocks_per_level=1, norm_groups=4, num_heads=2, head_dim=4))
  loss_fn = get_loss_fn(get_schedule("cosine"), "missing")
  batch = {"x0": jnp.ones((4, 1, 1, 3)), "cond": jnp.ones((4, 1, 1, 6)),
           "present": jnp.ones((4, 3), bool)}
  loss, _ = loss_fn(model, batch, jax.random.key(0))
  # 'missing' with a separate condition: every target channel is missing, so it trains.
  assert float(loss) > 0


def test_fov_statistics_standardise_the_condition_but_not_the_target():
  from multichan_diff.diffusion.losses import condition_of
  x0 = jax.random.normal(jax.random.key(0), (2, 4, 4, 3)) + 7.0
  obs = jnp.array([[True, False, True], [True, True, False]])
  batch = {"x0": x0, "observed": obs, "cond_shift": jnp.full((2, 3), 7.0),
           "cond_scale": jnp.full((2, 3), 2.0)}
  cond, cond_mask, target_obs = condition_of(batch)
  plain, _, _ = condition_of({"x0": x0, "observed": obs})
  o = np.broadcast_to(np.asarray(obs)[:, None, None, :], x0.shape)
  np.testing.assert_allclose(np.asarray(cond)[o], (np.asarray(plain)[o] - 7.0) / 2.0, rtol=1e-5)
  assert (np.asarray(cond)[~o] == 0).all()
  np.testing.assert_array_equal(cond_mask, obs)
  np.testing.assert_array_equal(target_obs, obs)


def test_point_fraction_puts_that_share_of_the_batch_at_the_last_step():
  seen = []

  def spy(x_t, t, cond, mask):
    seen.append(t)
    return jnp.zeros_like(x_t)

  schedule = get_schedule("linear", 100)
  batch = {"x0": jnp.ones((4000, 1, 1, 2)), "observed": jnp.zeros((4000, 2), bool)}
  for fraction in (0.0, 0.25):
    get_loss_fn(schedule, prediction="v", point_fraction=fraction)(spy, batch, jax.random.key(0))
  plain, mixed = (np.asarray(t) for t in seen)
  last = mixed == 99
  # Uniform t alone visits t = 99 once in 100 draws; the rest keep their uniform draw.
  assert abs(last.mean() - (0.25 + 0.75 / 100)) < 0.03, last.mean()
  np.testing.assert_array_equal(mixed[~last], plain[~last])
  assert (plain == 99).mean() < 0.03
  with pytest.raises(ValueError, match="point_fraction"):
    get_loss_fn(schedule, point_fraction=1.0)
