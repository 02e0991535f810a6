"""The model's own configuration: a small frozen dataclass, never the ConfigDict."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of the conditional diffusion model.

  Attributes:
    num_channels: C, channels of the target x (proteins of the panel).
    cond_channels: channels of the condition c. `None` means the condition is the
      observed subset of the target panel itself (images); the vector variant sets
      it to the gene count (genes condition, proteins are the target).
    spatial: True for images [B, H, W, C]; False for the vector variant (H = W = 1).
    patch_size: p; D and E start by folding each p x p patch of pixels into one position
      (space-to-depth) and D ends by unfolding it, so level 0 runs at H/p x W/p. Costs
      p^2 times less compute per level; 1 keeps full resolution.
    widths: feature width per resolution level of D and E (len = number of levels).
    blocks_per_level: residual blocks per level of D (an int, or one per level).
    context_blocks: residual blocks per level of the contextual network E.
    injection: how E_l(c) enters D_l: 'se', 'add' or 'none' (unconditional).
    channel_attention: inside UNet blocks: 'self', 'se' or 'none'.
    attention_levels: levels that get channel attention (None: every level).
    output_attention: y + Conv1x1(SE(y)) on the C output channels.
    use_mask_input: feed the 0/1 observation mask to E beside the zeroed condition.
    num_heads: heads of channel self-attention.
    head_dim: token feature size of channel self-attention in the vector variant.
    norm_groups: GroupNorm groups (capped to a divisor of each width).
    se_reduction: SE bottleneck ratio.
    dropout: dropout rate inside residual blocks.
    linear_head: a regressor of another modality (cells: genes -> proteins) adds a linear
      map of the condition to its output, solved in closed form (`train.ridge`) on the training
      cells and held fixed; the network learns what the linear map misses. On a few
      hundred cells a network alone loses to ridge; with the head it starts from it.
  """

  num_channels: int
  cond_channels: int | None = None
  spatial: bool = True
  patch_size: int = 1
  widths: tuple[int, ...] = (64, 128, 256)
  blocks_per_level: int | tuple[int, ...] = 2
  context_blocks: int = 1
  injection: str = "se"
  channel_attention: str = "self"
  attention_levels: tuple[int, ...] | None = None
  output_attention: bool = True
  use_mask_input: bool = True
  num_heads: int = 4
  head_dim: int = 16
  norm_groups: int = 32
  se_reduction: int = 4
  dropout: float = 0.0
  linear_head: bool = False

  def __post_init__(self):
    if self.num_channels < 1:
      raise ValueError(f"num_channels must be >= 1, got {self.num_channels}")
    if self.patch_size < 1 or (not self.spatial and self.patch_size != 1):
      raise ValueError(f"patch_size must be >= 1 (and 1 for the vector variant), "
                       f"got {self.patch_size}")
    if not self.widths:
      raise ValueError("widths must name at least one level")
    if not self.spatial and self.cond_channels is None:
      raise ValueError("the vector variant needs cond_channels (the gene count)")
    if self.linear_head and self.cond_channels is None:
      raise ValueError("linear_head maps another modality's condition (cells: genes) to the "
                       "target; an image model's condition is its own panel")
    if isinstance(self.blocks_per_level, tuple) and len(self.blocks_per_level) != len(self.widths):
      raise ValueError(
          f"blocks_per_level {self.blocks_per_level} must give one count per level of widths {self.widths}")

  @property
  def condition_channels(self) -> int:
    return self.num_channels if self.cond_channels is None else self.cond_channels

  def level_blocks(self, level: int) -> int:
    b = self.blocks_per_level
    return b[level] if isinstance(b, tuple) else b

  def has_attention(self, level: int) -> bool:
    return self.attention_levels is None or level in self.attention_levels

  @classmethod
  def from_mapping(cls, mapping: Mapping[str, Any], **overrides) -> "ModelConfig":
    return from_mapping(cls, mapping, "model config", **overrides)


def from_mapping(cls, mapping: Mapping[str, Any], what: str, **overrides):
  """A frozen config dataclass from a plain mapping (e.g. `config.model.to_dict()`) plus
  overrides; unknown keys are an error, lists become tuples."""
  fields = {f.name for f in dataclasses.fields(cls)}
  kwargs = {**dict(mapping), **overrides}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"unknown {what} keys {unknown}; known: {sorted(fields)}")
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
