"""The shipped configs turn into a valid model at the boundary."""

import importlib.util
import pathlib

import chex
import jax
import jax.numpy as jnp

from multichan_diff.diffusion.schedules import get_schedule
from multichan_diff.model import ModelConfig, build_model
from multichan_diff.train.step import make_optimizer

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _load(name):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_default_config_builds_the_full_model():
  config = _load("default")
  cfg = ModelConfig.from_mapping(config.model.to_dict(), num_channels=39)
  assert (cfg.injection, cfg.channel_attention, cfg.output_attention) == ("se", "self", True)
  model = build_model(cfg)
  x = jnp.zeros((1, 16, 16, 39))
  chex.assert_shape(model(x, jnp.zeros((1,)), x, jnp.ones((1, 39), bool)), x.shape)
  get_schedule(config.diffusion.schedule, config.diffusion.num_steps)
  make_optimizer(**config.optim)
