"""Small shared builders for the tests."""

import pathlib

import jax
import pytest
from flax import nnx

from multichan_diff.model import ModelConfig, build_model

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")

TINY = dict(widths=(8, 16), blocks_per_level=1, context_blocks=1, norm_groups=4, num_heads=2,
            head_dim=4)


def tiny_model(num_channels: int, seed: int = 0, **overrides):
  cfg = ModelConfig(num_channels=num_channels, **{**TINY, **overrides})
  return cfg, build_model(cfg, seed)


def perturb_params(module, scale: float = 0.2, seed: int = 1):
  """Adds Gaussian noise to every parameter: fresh blocks start as the identity (zero-
  initialised last layers), which would hide what a test wants to see."""
  state = nnx.state(module, nnx.Param)
  leaves, tdef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  nnx.update(module, jax.tree.unflatten(
      tdef, [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]))
  return module
