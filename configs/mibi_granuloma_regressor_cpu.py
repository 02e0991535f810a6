"""The masked regressor on MIBI granuloma at bin 4 on a CPU budget: `mibi_granuloma_cpu.py`'s
network (condition and targets standardised per FOV) trained by MSE to the missing
channels; checkpoint chosen on validation FOV Point6 (mean r every 250 steps).

    multichan-diff train --config configs/mibi_granuloma_regressor_cpu.py \
      --workdir runs/granuloma_reg
    multichan-diff export --workdir runs/granuloma_reg --out models/granuloma_reg
    multichan-diff train --config configs/mibi_granuloma_cpu.py --workdir runs/granuloma_res \
      --config.diffusion.residual_of=models/granuloma_reg
"""

from multichan_diff.default_config import finish, sibling


def get_config(arg=None):
  config = sibling(__file__, "mibi_granuloma_cpu")
  config.network = "regressor"
  config.train.update(eval_every=250, checkpoint_every=500, patience=4)
  return finish(config, arg)
