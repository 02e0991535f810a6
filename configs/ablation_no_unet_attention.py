"""Table 3 ablation: no channel attention inside the UNet blocks.

    multichan-diff train --config configs/ablation_no_unet_attention.py --workdir runs/ablation_no_unet_attention \
      --config.data.store=stores/granuloma.zarr
"""

from multichan_diff.default_config import finish, get_config as default


def get_config(arg=None):
  config = default()
  config.model.channel_attention = "none"
  return finish(config, arg)
