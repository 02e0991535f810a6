"""Ablation: the contextual network sees the zeroed condition without the 0/1 mask, so a
measured zero and a missing channel look alike.

    multichan-diff train --config configs/ablation_no_mask_input.py --workdir runs/ablation_no_mask_input \
      --config.data.store=stores/granuloma.zarr
"""

from multichan_diff.default_config import finish, get_config as default


def get_config(arg=None):
  config = default()
  config.model.use_mask_input = False
  return finish(config, arg)
