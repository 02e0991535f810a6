"""Metrics as JSON lines and TensorBoard event files, and a one-line progress bar."""

from __future__ import annotations

import json
import os
import sys
import time

import jax


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and `workdir/tensorboard/` (process 0 only)."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    from tensorboardX import SummaryWriter
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.active:
      return
    self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self.jsonl.flush()
    for k, v in scalars.items():
      self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.active:
      self.jsonl.close()
      self.tb.close()


class Progress:
  """`step/total [bar] loss rate` on one line of stderr (training steps, tiles, cells)."""

  def __init__(self, total: int, start: int = 0, width: int = 24, unit: str = "steps"):
    self.total, self.start, self.width, self.unit = total, start, width, unit
    self.t0 = time.perf_counter()

  def update(self, step: int, loss: float | None = None) -> None:
    done = step / max(self.total, 1)
    bar = "#" * int(done * self.width)
    rate = (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)
    text = f" loss {loss:.4f}" if loss is not None else ""
    sys.stderr.write(f"\r{step}/{self.total} [{bar:<{self.width}}]{text} {rate:.2f} "
                     f"{self.unit}/s")
    sys.stderr.flush()

  def close(self) -> None:
    sys.stderr.write("\n")
