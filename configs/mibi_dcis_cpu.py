"""The granuloma CPU recipe (`mibi_granuloma_cpu.py`) on MIBI DCIS at bin 4: 40 kept
channels, one training FOV (Point2203), validation Point2204, test Point2206.

    multichan-diff prepare images --input ../shared/data/mibi_dcis \
      --panel ../shared/data/mibi_dcis/panel.csv --out stores/dcis_b4.zarr \
      --bin 4 --tile 64 --stride 16 --test-fovs Point2206 --val-fovs Point2204
    multichan-diff train --config configs/mibi_dcis_cpu.py --workdir runs/dcis_cpu
"""

from multichan_diff.default_config import finish, get_config as default


def get_config(arg=None):
  config = default()
  config.data.store = "stores/dcis_b4.zarr"
  config.data.context_norm = "fov_targets"
  config.model.update(widths=(32, 64, 128), norm_groups=16)
  config.optim.update(learning_rate=4e-4, warmup_steps=200)
  config.diffusion.point_fraction = 0.5
  config.train.update(steps=3000, eval_every=250, checkpoint_every=250, log_every=50,
                      keep_checkpoints=12)
  return finish(config, arg)
