"""Cells of any CITE-seq data set (genes -> proteins), sized to it: the masked regressor of
`citeseq_teaseq.py` with a linear head (ridge on the genes' principal components, solved
on the training cells, the network learning what it misses), its batch, evaluations, patience and step cap set
from the number of training cells (`train.sized`), its checkpoint chosen on the validation
cells. The recipe for a data set this project has not seen; docs/results/sized.md.

    multichan-diff prepare citeseq --input cells.h5ad --out stores/cells.zarr --genes all
    multichan-diff train --config configs/citeseq.py --workdir runs/cells \\
      --config.data.store=stores/cells.zarr
    multichan-diff export --workdir runs/cells --out models/cells
"""

from multichan_diff.default_config import finish, sibling


def get_config(arg=None):
  config = sibling(__file__, "citeseq_teaseq")
  config.network = "regressor"
  config.model.linear_head = True
  config.train.sized = True
  return finish(config, arg)
