"""The default configuration: the paper's full model on multiplexed tissue tiles.

    multichan-diff train --config configs/default.py --workdir runs/default \
      --config.data.store=stores/granuloma.zarr
    multichan-diff train --config configs/default.py:smoke ...   # a sub-minute CPU run

The settings are in `multichan_diff/default_config.py`, shared by every config here.
"""

from multichan_diff.default_config import get_config  # noqa: F401
