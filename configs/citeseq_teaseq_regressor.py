"""The masked regressor on TEA-seq: the vector network of `citeseq_teaseq.py` trained by MSE
to the proteins, its checkpoint chosen on the validation cells (r_p every 25 steps, stopped
4 evaluations after the best). The baseline row of every cells report, and the mean that
`citeseq_teaseq_residual.py` adds its samples to.

    multichan-diff train --config configs/citeseq_teaseq_regressor.py --workdir runs/tea_reg \
      --config.data.store=stores/tea0.zarr
    multichan-diff export --workdir runs/tea_reg --out models/tea_reg
"""

from multichan_diff.default_config import finish, sibling


def get_config(arg=None):
  config = sibling(__file__, "citeseq_teaseq")
  config.network = "regressor"
  config.optim.warmup_steps = 50
  config.train.update(steps=300, eval_every=25, log_every=25, checkpoint_every=300,
                      patience=4)
  return finish(config, arg)
