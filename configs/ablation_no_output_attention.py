"""Table 3 ablation: no output channel attention y + Conv1x1(SE(y)).

    multichan-diff train --config configs/ablation_no_output_attention.py --workdir runs/ablation_no_output_attention \
      --config.data.store=stores/granuloma.zarr
"""

from multichan_diff.default_config import finish, get_config as default


def get_config(arg=None):
  config = default()
  config.model.output_attention = False
  return finish(config, arg)
