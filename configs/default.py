"""Default configuration: the paper's full model on multiplexed tissue tiles.

Dataset and ablation files import this and change only what differs. The model section
is turned into `multichan_diff.model.ModelConfig` at the boundary (the model never sees
this ConfigDict); `num_channels` comes from the data's panel.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict(dict(
      spatial=True,
      patch_size=2,               # 64x64 tiles run their first level at 32x32
      widths=(64, 128, 256),
      blocks_per_level=(1, 2, 2),
      context_blocks=1,
      injection="se",             # se | add | none
      channel_attention="self",   # self | se | none
      attention_levels=(0, 1),    # channel self-attention where widths are 64 and 128
      output_attention=True,
      use_mask_input=True,
      num_heads=2,
      head_dim=16,
      norm_groups=32,
      se_reduction=4,
      dropout=0.0,
  ))

  config.diffusion = ml_collections.ConfigDict(dict(
      schedule="linear",          # linear | cosine
      num_steps=1000,
      loss_on="all",              # all | missing
      mask_p=(0.1, 0.9),          # per-sample p of observing each present channel
  ))

  config.optim = ml_collections.ConfigDict(dict(  # make_optimizer's arguments
      learning_rate=2e-4,
      weight_decay=0.0,
      warmup_steps=500,
      clip_norm=1.0,
  ))

  return config
