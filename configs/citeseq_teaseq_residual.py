"""Residual diffusion on TEA-seq (CorrDiff): `citeseq_teaseq.py`'s diffusion model learns the
proteins minus an exported regressor's mean (`citeseq_teaseq_regressor.py`); a sample is
the mean plus a residual sample. Checkpoint chosen on the validation cells (r_p of the
point estimate every 50 steps, stopped 3 evaluations after the best).

    multichan-diff train --config configs/citeseq_teaseq_residual.py --workdir runs/tea_res \
      --config.data.store=stores/tea0.zarr --config.diffusion.residual_of=models/tea_reg
    multichan-diff export --workdir runs/tea_res --out models/tea_res
"""

from multichan_diff.default_config import finish, sibling


def get_config(arg=None):
  config = sibling(__file__, "citeseq_teaseq")
  config.diffusion.residual_of = "models/tea_reg"
  config.optim.warmup_steps = 50
  config.train.update(steps=400, eval_every=50, log_every=25, checkpoint_every=400,
                      patience=3)
  return finish(config, arg)
