"""Every shipped config turns into a valid model at the boundary; the ablations switch what
their names say."""

import importlib.util
import pathlib

import chex
import jax.numpy as jnp
import pytest

from multichan_diff.diffusion.schedules import get_schedule
from multichan_diff.model import build_model
from multichan_diff.train.step import make_optimizer
from multichan_diff.train.trainer import model_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
NAMES = sorted(p.stem for p in CONFIGS.glob("*.py"))


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_all_expected_configs_exist():
  assert {"default", "mibi_granuloma", "mibi_dcis", "union_mibi", "citeseq_teaseq",
          "ablation_add_injection", "ablation_no_unet_attention", "ablation_no_output_attention",
          "ablation_no_mask_input", "ablation_unconditional"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_builds_a_model(name, arg):
  config = load(name, arg)
  cells = not config.model.spatial
  attrs = ({"kind": "cells", "channels": ["p"] * 5, "genes": ["g"] * 7} if cells
           else {"kind": "images", "channels": ["c"] * 5})
  cfg = model_config(config, attrs)
  get_schedule(config.diffusion.schedule, config.diffusion.num_steps)
  make_optimizer(**config.optim, total_steps=config.train.steps)
  if arg == "smoke":
    assert config.train.steps <= 50 and max(cfg.widths) <= 32
    model = build_model(cfg)
    x = jnp.zeros((1, 1, 1, 5) if cells else (1, 8, 8, 5))
    c = jnp.zeros((1, 1, 1, 7)) if cells else x
    chex.assert_shape(model(x, jnp.zeros((1,)), c, jnp.ones((1, c.shape[-1]), bool)), x.shape)


def test_ablations_switch_one_thing():
  base = load("default").model
  expected = {"ablation_add_injection": ("injection", "add"),
              "ablation_no_unet_attention": ("channel_attention", "none"),
              "ablation_no_output_attention": ("output_attention", False),
              "ablation_no_mask_input": ("use_mask_input", False),
              "ablation_unconditional": ("injection", "none")}
  for name, (field, value) in expected.items():
    model = load(name).model
    assert model[field] == value
    assert {k for k in base if base[k] != model[k]} == {field}


def test_bad_config_argument():
  with pytest.raises(ValueError, match="smoke"):
    load("default", "tiny")
