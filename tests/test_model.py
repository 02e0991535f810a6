"""Shapes and construction of the spatial and vector variants."""

import chex
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from helpers import perturb_params, tiny_model
from multichan_diff.model import ModelConfig, build_model
from multichan_diff.model.blocks import timestep_embedding


@pytest.mark.parametrize("channels", [1, 5, 39])
@pytest.mark.parametrize("size", [(16, 16), (17, 23), (9, 4)])
def test_spatial_shapes(channels, size):
  cfg, model = tiny_model(channels, widths=(8, 16, 16))
  b = 2
  x = jnp.ones((b, *size, channels))
  obs = jnp.zeros((b, channels), bool).at[:, 0].set(True)
  ctx = model.encode_condition(x, obs)
  assert len(ctx) == 3
  chex.assert_shape(ctx[0], (b, *size, 8))
  chex.assert_shape(ctx[1], (b, (size[0] + 1) // 2, (size[1] + 1) // 2, 16))
  eps = model(x, jnp.full((b,), 3.0), x, obs)
  chex.assert_shape(eps, (b, *size, channels))
  chex.assert_tree_all_finite(eps)


@pytest.mark.parametrize("channels", [1, 5, 39])
@pytest.mark.parametrize("attention", ["self", "se", "none"])
def test_vector_shapes(channels, attention):
  genes = 7
  cfg = ModelConfig(num_channels=channels, cond_channels=genes, spatial=False,
                    widths=(16, 16), blocks_per_level=1, norm_groups=4, num_heads=2,
                    head_dim=4, channel_attention=attention)
  model = build_model(cfg)
  b = 3
  eps = model(jnp.ones((b, 1, 1, channels)), jnp.arange(b, dtype=jnp.float32),
              jnp.ones((b, 1, 1, genes)), jnp.ones((b, genes), bool))
  chex.assert_shape(eps, (b, 1, 1, channels))
  chex.assert_tree_all_finite(eps)


@pytest.mark.parametrize("injection", ["se", "add", "none"])
@pytest.mark.parametrize("mask_input", [True, False])
def test_ablation_switches_build_and_run(injection, mask_input):
  cfg, model = tiny_model(5, injection=injection, use_mask_input=mask_input,
                          output_attention=False)
  x = jnp.ones((2, 8, 8, 5))
  chex.assert_shape(model(x, jnp.zeros((2,)), x, jnp.ones((2, 5), bool)), (2, 8, 8, 5))
  assert (model.context is None) == (injection == "none")


def test_unconditional_ignores_condition_and_conditional_does_not():
  key = jax.random.key(0)
  x = jax.random.normal(key, (2, 8, 8, 5))
  c1, c2 = jax.random.normal(jax.random.key(1), (2, 2, 8, 8, 5))
  obs = jnp.ones((2, 5), bool)
  t = jnp.full((2,), 100.0)
  _, uncond = tiny_model(5, injection="none")
  assert jnp.array_equal(uncond(x, t, c1, obs), uncond(x, t, c2, obs))
  _, cond = tiny_model(5, injection="add")
  perturb_params(cond, 0.1, seed=2)  # a fresh model's output is blind to its inputs
  assert not jnp.allclose(cond(x, t, c1, obs), cond(x, t, c2, obs))


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="num_channels"):
    ModelConfig(num_channels=0)
  with pytest.raises(ValueError, match="cond_channels"):
    ModelConfig(num_channels=3, spatial=False)
  with pytest.raises(ValueError, match="unknown model config keys"):
    ModelConfig.from_mapping({"num_channels": 3, "widht": (8,)})
  with pytest.raises(ValueError, match="injection"):
    tiny_model(3, injection="film")
  with pytest.raises(ValueError, match="channel attention"):
    tiny_model(3, channel_attention="cross")


def test_wrong_channel_count_is_a_clear_error():
  _, model = tiny_model(5)
  x = jnp.ones((2, 8, 8, 5))
  with pytest.raises(ValueError, match=r"expects \[B, H, W, 5\]"):
    model(jnp.ones((2, 8, 8, 4)), jnp.zeros((2,)), x, jnp.ones((2, 5), bool))
  with pytest.raises(ValueError, match="observation mask"):
    model(x, jnp.zeros((2,)), x, jnp.ones((2, 4), bool))


def test_from_mapping_turns_lists_into_tuples():
  cfg = ModelConfig.from_mapping({"widths": [8, 16], "blocks_per_level": [1, 2]}, num_channels=4)
  assert cfg.widths == (8, 16) and cfg.blocks_per_level == (1, 2)
  hash(cfg)  # frozen and hashable, so it can be a static jit argument


def test_timestep_embedding_distinguishes_steps():
  e = timestep_embedding(jnp.array([0.0, 1.0, 999.0]), 33)
  chex.assert_shape(e, (3, 33))
  assert not jnp.allclose(e[0], e[1]) and not jnp.allclose(e[1], e[2])


@pytest.mark.parametrize("size", [(16, 16), (17, 23)])
def test_patchified_model_keeps_pixel_shapes(size):
  cfg, model = tiny_model(39, patch_size=2)
  x = jnp.ones((2, *size, 39))
  obs = jnp.ones((2, 39), bool)
  chex.assert_shape(model.encode_condition(x, obs)[0],
                    (2, (size[0] + 1) // 2, (size[1] + 1) // 2, 8))
  chex.assert_shape(model(x, jnp.zeros((2,)), x, obs), (2, *size, 39))


def test_space_to_depth_round_trip():
  from multichan_diff.model.blocks import depth_to_space, space_to_depth
  x = jax.random.normal(jax.random.key(0), (2, 7, 5, 3))
  y = space_to_depth(x, 2)
  chex.assert_shape(y, (2, 4, 3, 12))
  np.testing.assert_array_equal(depth_to_space(y, 2, (7, 5)), x)
  # Position (i, j) holds exactly the pixels of patch (i, j).
  np.testing.assert_array_equal(y[0, 1, 2].reshape(2, 2, 3)[0, 0], x[0, 2, 4])


@pytest.mark.parametrize("h,w,stride,kernel", [(7, 5, 1, 3), (7, 5, 2, 3), (8, 8, 2, 3),
                                               (6, 9, 1, 1), (5, 5, 2, 1), (9, 12, 1, 3),
                                               (11, 9, 2, 3)])
def test_conv_matches_xla_convolution(h, w, stride, kernel):
  # Both routes (the matmul form below CONVOLVE_FROM pixels a side, XLA's convolution from
  # there) against XLA's convolution, and the layer on the route its map size picks.
  from flax import nnx
  from multichan_diff.model.blocks import Conv, _conv_im2col
  c = Conv(3, 4, kernel=kernel, stride=stride, rngs=nnx.Rngs(0))
  c.bias[...] = jnp.arange(4.0)
  x = jax.random.normal(jax.random.key(0), (2, h, w, 3))
  conv = jax.lax.conv_general_dilated(x, c.kernel[...], (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(_conv_im2col(x, c.kernel[...], stride), conv, atol=1e-5)
  np.testing.assert_allclose(c(x), conv + c.bias[...], atol=1e-5)
