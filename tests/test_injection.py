"""Injection keeps spatial alignment: a local change of c changes E_1(c) only locally."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import perturb_params, tiny_model


def _outside(radius, center, size):
  yy, xx = np.mgrid[: size[0], : size[1]]
  return (np.abs(yy - center[0]) > radius) | (np.abs(xx - center[1]) > radius)


@pytest.mark.parametrize("context_blocks", [1, 2])
def test_condition_change_at_one_pixel_stays_in_receptive_field(context_blocks):
  _, model = tiny_model(4, context_blocks=context_blocks, injection="add")
  perturb_params(model)
  size, center = (21, 19), (10, 7)
  c = jax.random.normal(jax.random.key(0), (1, *size, 4))
  c2 = c.at[0, center[0], center[1], :].add(3.0)
  obs = jnp.ones((1, 4), bool)
  e1, e2 = model.encode_condition(c, obs)[0], model.encode_condition(c2, obs)[0]
  radius = 1 + 2 * context_blocks  # stem 3x3, then two 3x3 convs per block
  diff = np.abs(np.asarray(e2 - e1)).max(-1)[0]
  out = _outside(radius, center, size)
  assert diff[center] > 1e-3  # the change is felt at the pixel ...
  assert diff[out].max() == 0.0  # ... and nowhere outside its receptive field
  assert diff[~out].max() > 0


def test_injected_features_are_aligned_for_add_and_se():
  size, center = (16, 16), (5, 9)
  c = jax.random.normal(jax.random.key(0), (1, *size, 4))
  c2 = c.at[0, center[0], center[1], :].add(3.0)
  obs = jnp.ones((1, 4), bool)
  d = jax.random.normal(jax.random.key(3), (1, *size, 8))
  out = _outside(3, center, size)
  # add: z = D + E, so the injected term changes only inside the receptive field.
  _, add = tiny_model(4, injection="add")
  perturb_params(add)
  za = add.inject[0](d, add.encode_condition(c, obs)[0])
  zb = add.inject[0](d, add.encode_condition(c2, obs)[0])
  assert np.abs(np.asarray(zb - za)).max(-1)[0][out].max() == 0.0
  # se: z = D + w * E with a per-channel gate w; outside the receptive field E is
  # unchanged, so the injected term changes only by the gate's per-channel rescale.
  _, se = tiny_model(4, injection="se")
  perturb_params(se)
  e1, e2 = se.encode_condition(c, obs)[0], se.encode_condition(c2, obs)[0]
  gate = se.inject[0].se.gate
  inj2 = se.inject[0](d, e2) - d
  expected = gate(e2) * e1  # E unchanged there, only w moved
  np.testing.assert_allclose(np.asarray(inj2)[0][out], np.asarray(expected)[0][out],
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(inj2)[0][~out], np.asarray(expected)[0][~out])
