"""Default configuration: the paper's full model on multiplexed tissue tiles.

Lives in the package so that every file under `configs/` can import it. Dataset and
ablation files call `get_config()`, change only what differs, and end with
`finish(config, arg)`, which applies the `:smoke` argument. The model section
is turned into `multichan_diff.model.ModelConfig` at the boundary (the model never sees
this ConfigDict); `num_channels` (and, for cells, `cond_channels`) come from the store.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # diffusion: the conditional diffusion model; regressor: the same network trained by
  # masked MSE to the missing channels (deterministic; the baseline row of every report,
  # and the mean a residual diffusion model adds its samples to: diffusion.residual_of).
  config.network = "diffusion"
  # pixel: diffuse the tiles themselves; latent: a store of autoencoder latents from
  # `multichan-diff prepare latent` (k features per channel, 16x16 for 64x64 tiles).
  config.space = "pixel"

  config.data = ml_collections.ConfigDict(dict(
      store="",                   # a store written by `multichan-diff prepare`
      threads=8,                  # grain read threads (in-process)
      augment=True,               # random flips / right-angle rotations of image tiles
      context_norm="global",      # "fov": standardise the condition per FOV and channel;
                                  # "fov_targets": the targets too (pixel space)
      train_splits=("train",),    # ("train", "val"): the final fit, once the settings are
                                  # chosen on val (the baselines fit both for the test split)
  ))

  config.model = ml_collections.ConfigDict(dict(
      spatial=True,
      patch_size=2,               # 64x64 tiles run their first level at 32x32
      widths=(64, 128, 256),
      blocks_per_level=(1, 2, 2),
      context_blocks=1,
      injection="se",             # se | add | none
      channel_attention="self",   # self | se | none
      attention_levels=(0, 1),    # channel self-attention where widths are 64 and 128
      output_attention=True,
      use_mask_input=True,
      num_heads=2,
      head_dim=16,
      norm_groups=32,
      se_reduction=4,
      dropout=0.0,
      linear_head=False,          # cells regressor: + a ridge map of the genes (closed form)
  ))

  config.diffusion = ml_collections.ConfigDict(dict(
      schedule="linear",          # linear | cosine
      num_steps=1000,
      loss_on="all",              # all | missing
      prediction="v",             # v | eps: what the network outputs (see schedules.py)
      mask_p=(0.1, 0.9),          # per-sample p of observing each present channel
      point_fraction=0.0,         # share of each batch at t = T - 1 (the point estimate)
      residual_of="",             # an exported regressor: learn x0 - its mean (CorrDiff)
  ))

  config.optim = ml_collections.ConfigDict(dict(  # make_optimizer's arguments
      learning_rate=2e-4,
      weight_decay=0.0,
      warmup_steps=500,
      clip_norm=1.0,
  ))

  config.train = ml_collections.ConfigDict(dict(
      batch_size=16,              # global, over all hosts and devices
      steps=20_000,
      seed=0,
      ema_decay=0.999,
      log_every=50,
      eval_every=1000,
      eval_batches=8,
      checkpoint_every=1000,
      keep_checkpoints=3,
      compute_dtype="float32",    # or "bfloat16": forward / backward only, master weights f32
      # Validation: every eval_every steps the point estimate's mean r on the val batches
      # (train/selection.py); the best checkpoint is kept and exported by default.
      patience=0,                 # stop after this many evals without a better val r (0: off)
      steps_from="",              # an exported model chosen on val: train its chosen steps
                                  # (the final fit on train + val)
      sized=False,                # cells: batch, steps, evaluations and patience from the
                                  # number of training cells (train/recipe.py)
  ))

  # The per-channel tile autoencoder (`multichan-diff train-autoencoder`): its `train` and
  # `optim` replace the diffusion model's for its own run; everything else is shared.
  config.autoencoder = ml_collections.ConfigDict(dict(
      model=dict(latent_channels=4, widths=(32, 64), blocks=1, norm_groups=8),  # 64 -> 16
      beta=1e-3,                  # weight of mean(z^2): latents near unit scale
      channels_per_tile=4,        # channels of each tile a training step reconstructs
      train=dict(steps=3000, batch_size=32, eval_every=500, checkpoint_every=500),
      optim=dict(learning_rate=1e-3, warmup_steps=100),
  ))

  # SiD distillation into a one-step generator (`multichan-diff distill --model TEACHER`):
  # its `train` and `optim` replace the diffusion model's for its own run.
  config.distill = ml_collections.ConfigDict(dict(
      teacher="",                 # set by `distill --model`
      alpha=0.5,                  # the recipe: 0.5 for regression-like tasks (1.0, 1.2)
      t_init=250,                 # the generator's fixed timestep, from pure noise (README)
      t_range=(20, 980),          # t of the fake network's and the generator's losses
      fake_learning_rate=1e-5,    # the fake score network's (the generator's is optim's)
      train=dict(steps=2000, eval_every=500, checkpoint_every=500),
      optim=dict(learning_rate=1e-5, warmup_steps=0, b1=0.0),  # Adam with beta1 = 0
  ))

  config.mesh = ml_collections.ConfigDict(dict(
      data=-1,                    # -1: every device not used by fsdp
      fsdp=1,                     # > 1 splits parameters over this many devices
  ))

  return finish(config, arg)


def sibling(config_file: str, name: str) -> ml_collections.ConfigDict:
  """`get_config()` of the config file `name`.py beside `config_file` (loaded by path:
  config files are not a package), for a file that changes another's settings."""
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def finish(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies the config-file argument: none, or 'smoke'."""
  if arg == "smoke":
    shrink(config)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; the only one is 'smoke'")
  return config


def shrink(config: ml_collections.ConfigDict) -> None:
  """A sub-minute CPU run of any config: tiny widths, few steps."""
  config.model.widths = (16, 32)
  config.model.blocks_per_level = (1, 1)
  config.model.attention_levels = None
  config.model.norm_groups = 8
  config.model.num_heads = 2
  config.train.update(batch_size=8, steps=20, log_every=5, eval_every=10, eval_batches=2,
                      checkpoint_every=10, sized=False)
  config.optim.warmup_steps = 5
  config.autoencoder.model.widths = (8, 16)
  config.autoencoder.train.update(steps=20, batch_size=8, eval_every=10, checkpoint_every=10)
  config.autoencoder.optim.warmup_steps = 5
  config.distill.train.update(steps=6, eval_every=3, checkpoint_every=3)
