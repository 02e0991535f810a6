"""The vector variant on TEA-seq: 2000 highly variable genes condition, 46 proteins are the
target (H = W = 1); genes are always observed, proteins always predicted.

    multichan-diff prepare citeseq --input ../shared/data/citeseq_teaseq_pbmc.h5ad \
      --out stores/teaseq.zarr --genes hvg:2000 --test-fraction 0.2 --seed 0
    multichan-diff train --config configs/citeseq_teaseq.py --workdir runs/teaseq
    multichan-diff export --workdir runs/teaseq --out models/teaseq
    multichan-diff distill --model models/teaseq --config configs/citeseq_teaseq.py \
      --workdir runs/teaseq_sid
"""

from multichan_diff.default_config import finish, get_config as default


def get_config(arg=None):
  config = default()
  config.data.store = "stores/teaseq.zarr"
  config.model.update(spatial=False, patch_size=1, widths=(512, 512, 512),
                      blocks_per_level=(1, 1, 1), attention_levels=None)
  config.train.update(batch_size=256, steps=20_000)
  # SiD, chosen on the validation cells (README): lr 1e-4 for both networks, 200 steps,
  # t_init 250 (the default).
  config.distill.update(fake_learning_rate=1e-4)
  config.distill.optim.update(learning_rate=1e-4)
  config.distill.train.update(steps=200, eval_every=100, checkpoint_every=100)
  return finish(config, arg)
