"""The cells schedule sized to the data set (`train.sized`)."""

import math

import pytest

from multichan_diff.default_config import get_config
from multichan_diff.train.recipe import cells_schedule, sized


@pytest.mark.parametrize("n", [40, 144, 432, 909, 20_000])
@pytest.mark.parametrize("devices", [1, 8])
def test_schedule_is_a_quarter_batch_an_evaluation_an_epoch_and_a_step_cap(n, devices):
  r = cells_schedule(n, devices)
  assert r["batch_size"] % devices == 0 and devices <= r["batch_size"] <= 256
  assert r["batch_size"] <= max(devices, n // 4)
  epoch = math.ceil(n / r["batch_size"])
  assert r["eval_every"] == max(5, epoch) and r["warmup_steps"] == 2 * epoch
  assert r["patience"] * r["eval_every"] >= 5 * epoch  # five epochs without a gain
  assert r["steps"] >= 100 * epoch and r["steps"] >= 4 * r["eval_every"]


def test_small_sets_get_small_batches_and_large_ones_the_cap():
  assert cells_schedule(144, 8)["batch_size"] == 32
  assert cells_schedule(20_000, 8)["batch_size"] == 256


def _cells(train=144, val=16):
  return {"kind": "cells", "splits": {"train": train, "val": val, "test": 40}}


def test_sized_applies_the_rule_and_only_when_asked():
  config = get_config()
  assert sized(config, _cells(), 8) is config  # off by default
  config.train.sized = True
  out = sized(config, _cells(), 8)
  rule = cells_schedule(144, 8)
  assert out.train.batch_size == rule["batch_size"] and out.train.steps == rule["steps"]
  assert out.optim.warmup_steps == rule["warmup_steps"]
  assert config.train.batch_size == 16  # the input is not changed
  # the final fit on train + val keeps the validation run's batch (its steps come from it)
  config.data.train_splits = ("train", "val")
  assert sized(config, _cells(), 8).train.batch_size == rule["batch_size"]
  with pytest.raises(ValueError, match="cells"):
    sized(config, {"kind": "images", "splits": {"train": 100}}, 8)
