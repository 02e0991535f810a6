"""Training settings sized to the data set (`config.train.sized`), so that one config file
serves 200 cells and 20,000: a fixed batch and step count that suit a thousand cells run a
few hundred through too many epochs before validation gets a say."""

from __future__ import annotations

import math

import ml_collections

MAX_BATCH = 256
MAX_EPOCHS = 100
PATIENCE_EPOCHS = 5


def cells_schedule(n_train: int, devices: int) -> dict[str, int]:
  """The batch, evaluation interval, patience, step cap and warm-up for `n_train` cells.

  The batch is a quarter of the training cells (at most 256), a multiple of the devices;
  validation scores the model once an epoch (or every 5 steps, if an epoch is shorter) and
  stops it 5 epochs after its best; the run is at most 100 epochs, warmed up over 2.
  """
  batch = max(devices, min(MAX_BATCH, n_train // 4) // devices * devices)
  epoch = max(1, math.ceil(n_train / batch))
  every = max(5, epoch)
  return {"batch_size": batch, "eval_every": every, "log_every": every,
          "patience": max(2, math.ceil(PATIENCE_EPOCHS * epoch / every)),
          "steps": max(MAX_EPOCHS * epoch, 4 * every), "warmup_steps": 2 * epoch}


def sized(config: ml_collections.ConfigDict, attrs: dict,
          devices: int) -> ml_collections.ConfigDict:
  """`config` with its schedule sized to the store's training cells when
  `config.train.sized` is set (cells stores only), else as it is. Sized by the `train`
  split alone, also for the final fit on train + val, whose step count comes from the
  validation run (`train.steps_from`) and so needs that run's batch."""
  if not config.train.get("sized", False):
    return config
  if attrs["kind"] != "cells":
    raise ValueError("train.sized sizes a cells run by its number of training cells; an "
                     "image run takes its steps from the config")
  rule = cells_schedule(attrs["splits"]["train"], devices)
  out = config.copy_and_resolve_references()
  out.optim.warmup_steps = rule.pop("warmup_steps")
  out.train.update(checkpoint_every=rule["steps"], **rule)
  return out
