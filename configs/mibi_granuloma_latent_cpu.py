"""Latent-space diffusion on MIBI granuloma at bin 4, on a CPU budget: the tile autoencoder
(64x64 -> 16x16, k = 4 per channel), then `configs/mibi_granuloma_cpu.py`'s UNet on the
[16, 16, 39 * 4] latents with no patching (its first level at 16x16, a quarter of the
pixel model's 32x32 positions).

    multichan-diff train-autoencoder --config configs/mibi_granuloma_latent_cpu.py \
      --workdir runs/ae
    multichan-diff export --workdir runs/ae --out models/ae
    multichan-diff prepare latent --autoencoder models/ae --store stores/granuloma_b4.zarr \
      --out stores/granuloma_b4_latent.zarr
    multichan-diff train --config configs/mibi_granuloma_latent_cpu.py --workdir runs/latent
"""

from multichan_diff.default_config import finish, sibling


def get_config(arg=None):
  config = sibling(__file__, "mibi_granuloma_cpu")
  config.space = "latent"
  config.data.store = "stores/granuloma_b4_latent.zarr"  # the autoencoder: the pixel store
  config.data.augment = False  # flips of latents are not latents of flips
  config.data.context_norm = "fov"  # the condition only: latent targets stay as encoded
  config.model.patch_size = 1
  # 2 cores: 8 tiles x 2 channels a step (the default 32 x 4 needs ~10 GB and ~8x longer).
  config.autoencoder.channels_per_tile = 2
  config.autoencoder.train.update(steps=1200, batch_size=8, eval_every=300,
                                  checkpoint_every=300)
  return finish(config, arg)
