"""Small shared builders for the tests."""

from multichan_diff.model import ModelConfig, build_model

TINY = dict(widths=(8, 16), blocks_per_level=1, context_blocks=1, norm_groups=4, num_heads=2,
            head_dim=4)


def tiny_model(num_channels: int, seed: int = 0, **overrides):
  cfg = ModelConfig(num_channels=num_channels, **{**TINY, **overrides})
  return cfg, build_model(cfg, seed)
