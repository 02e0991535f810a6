"""The default model on the MIBI granuloma panel (39 kept channels; test FOV Point7, validation Point6).

    multichan-diff prepare images --input ../shared/data/mibi_granuloma --out stores/granuloma.zarr \
      --tile 64 --test-fovs Point7 --val-fovs Point6
    multichan-diff train --config configs/mibi_granuloma.py --workdir runs/granuloma
"""

from multichan_diff.default_config import finish, get_config as default


def get_config(arg=None):
  config = default()
  config.data.store = "stores/granuloma.zarr"
  config.data.context_norm = "fov"  # FOVs differ in intensity: see the README
  return finish(config, arg)
