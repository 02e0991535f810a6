"""SE gating, channel self-attention equivariance, output attention."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from helpers import perturb_params
from multichan_diff.model.attention import (ChannelSelfAttention, SqueezeExcite,
                                           VectorChannelSelfAttention)
from multichan_diff.model.unet import OutputChannelAttention


def test_se_is_a_per_sample_per_channel_gate_in_unit_interval():
  se = SqueezeExcite(6, reduction=2, rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(0), (3, 5, 7, 6)) * 3.0
  w = se.gate(z)
  assert w.shape == (3, 1, 1, 6)
  assert bool(jnp.all((w > 0) & (w < 1)))
  np.testing.assert_allclose(se(z), w * z, rtol=1e-6)
  # The gate depends on the sample: different inputs give different weights.
  assert not jnp.allclose(w[0], w[1])


def test_channel_self_attention_is_permutation_equivariant_over_channels():
  attn = ChannelSelfAttention(12, num_heads=3, rngs=nnx.Rngs(0))
  perturb_params(attn, 0.5)  # head gates start at zero (identity); make the attention act
  z = jax.random.normal(jax.random.key(0), (2, 9, 11, 12))
  perm = jax.random.permutation(jax.random.key(3), 12)
  out = attn(z)
  assert not jnp.allclose(out, z, atol=1e-3)  # it does something
  np.testing.assert_allclose(attn(z[..., perm]), out[..., perm], rtol=1e-5, atol=1e-5)


def test_channel_self_attention_rows_are_distributions_and_size_free():
  attn = ChannelSelfAttention(8, num_heads=2, rngs=nnx.Rngs(0))
  for size in [(4, 4), (13, 6)]:
    a = attn.attention_weights(jax.random.normal(jax.random.key(0), (2, *size, 8)))
    assert a.shape == (2, 2, 8, 8)
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)


def test_channel_self_attention_starts_as_identity():
  attn = ChannelSelfAttention(8, num_heads=2, rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(0), (2, 5, 5, 8))
  np.testing.assert_array_equal(attn(z), z)


def test_vector_self_attention_mixes_channel_groups():
  attn = VectorChannelSelfAttention(12, num_heads=2, head_dim=4, rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(0), (3, 1, 1, 12))
  np.testing.assert_array_equal(attn(z), z)  # zero output projection: identity at init
  perturb_params(attn, 0.5)
  assert attn.attention_weights(z).shape == (3, 2, 3, 3)  # 12 channels -> 3 tokens of 4
  # Output channel 0 (token 0) depends on input channel 11 (token 2), and not only on
  # the other samples' values: the jacobian across samples is zero.
  jac = jax.jacobian(lambda v: attn(v)[0, 0, 0, 0])(z)
  assert float(jnp.abs(jac[0, 0, 0, 11])) > 0
  assert float(jnp.abs(jac[1:]).max()) == 0.0


def test_output_attention_formula():
  oa = OutputChannelAttention(5, se_reduction=2, rngs=nnx.Rngs(0))
  perturb_params(oa, 0.5)
  y = jax.random.normal(jax.random.key(0), (2, 4, 4, 5))
  expected = y + oa.proj(oa.se.gate(y) * y)
  np.testing.assert_allclose(oa(y), expected, rtol=1e-6)
