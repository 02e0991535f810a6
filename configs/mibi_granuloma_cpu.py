"""A CPU-budget model on MIBI granuloma at bin 4 (256 x 256 FOVs, the baselines' setting in
the README): the default UNet narrowed to widths 32-64-128, 3000 steps at a higher learning
rate, condition and targets standardised per FOV; test FOV Point7, validation Point6.

    multichan-diff prepare images --input ../shared/data/mibi_granuloma \
      --panel ../shared/data/mibi_granuloma/panel.csv --out stores/granuloma_b4.zarr \
      --bin 4 --tile 64 --stride 16 --test-fovs Point7 --val-fovs Point6
    multichan-diff train --config configs/mibi_granuloma_cpu.py --workdir runs/granuloma_cpu
"""

from multichan_diff.default_config import finish, get_config as default


def get_config(arg=None):
  config = default()
  config.data.store = "stores/granuloma_b4.zarr"
  # FOVs differ in intensity: condition and targets standardised per FOV (see the README)
  config.data.context_norm = "fov_targets"
  config.model.update(widths=(32, 64, 128), norm_groups=16)
  config.optim.update(learning_rate=4e-4, warmup_steps=200)
  config.train.update(steps=3000, eval_every=500, checkpoint_every=500, log_every=50)
  return finish(config, arg)
