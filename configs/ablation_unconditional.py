"""Table 3 ablation: unconditional (no contextual network, no injection).

    multichan-diff train --config configs/ablation_unconditional.py --workdir runs/ablation_unconditional \
      --config.data.store=stores/granuloma.zarr
"""

from multichan_diff.default_config import finish, get_config as default


def get_config(arg=None):
  config = default()
  config.model.injection = "none"
  return finish(config, arg)
