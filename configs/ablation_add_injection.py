"""Table 3 ablation: element-wise addition injection z_l = D_l(x_t) + E_l(c) instead of SE.

    multichan-diff train --config configs/ablation_add_injection.py --workdir runs/ablation_add_injection \
      --config.data.store=stores/granuloma.zarr
"""

from multichan_diff.default_config import finish, get_config as default


def get_config(arg=None):
  config = default()
  config.model.injection = "add"
  return finish(config, arg)
