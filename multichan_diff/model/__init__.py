"""Pure Flax NNX model code: no files, flags or logging."""

from multichan_diff.model.config import ModelConfig
from multichan_diff.model.unet import ConditionalUNet, build_model

__all__ = ["ModelConfig", "ConditionalUNet", "build_model"]
