"""`multichan-diff demo`: the whole path on the built-in synthetic tissue (or on a folder of
the user's images) in a few CPU minutes: prepare, train, export, impute held-out markers,
evaluate against the baselines, write the report with its pictures.

OUT/data (synthetic images), OUT/store.zarr, OUT/run (checkpoints, metrics), OUT/model,
OUT/test_fov (a link to the test FOV), OUT/imputed (the test FOV with the held-out markers imputed, and their uncertainty),
OUT/report (report.md, report.json, per_channel.png, examples.png).
"""

from __future__ import annotations

import os
import shutil
import sys

import ml_collections

from multichan_diff.data import readers

HELD_OUT = 3  # markers the demo hides and imputes


def demo_config(store_path: str, steps: int) -> ml_collections.ConfigDict:
  """The default model, narrowed so a CPU trains it in minutes on 32 x 32 tiles."""
  from multichan_diff.default_config import get_config
  config = get_config()
  config.data.store = store_path
  config.model.update(widths=(32, 64), blocks_per_level=(1, 1), attention_levels=(0,),
                      norm_groups=8)
  config.optim.update(learning_rate=1e-3, warmup_steps=min(100, steps // 5))
  config.train.update(batch_size=16, steps=steps, log_every=25,
                      eval_every=max(steps // 4, 1), eval_batches=4,
                      checkpoint_every=max(steps // 2, 1), ema_decay=0.99)
  return config


def _say(msg: str) -> None:
  print(f"[demo] {msg}", file=sys.stderr, flush=True)


def run_demo(out: str = "demo_out", *, data: str | None = None, panel: str | None = None,
             steps: int = 400, tile: int = 32, bin_size: int = 1, samples: int = 4,
             sampler_steps: int = 20, overwrite: bool = False) -> dict:
  from multichan_diff.data import store
  from multichan_diff.data.prepare import prepare_images
  from multichan_diff.data.synthetic import write_synthetic_tissue
  from multichan_diff.evaluate.run import evaluate
  from multichan_diff.impute.images import impute_images
  from multichan_diff.train.export import export_model
  from multichan_diff.train.trainer import train_and_evaluate
  store.check_writable(out, overwrite)
  if os.path.exists(out):
    shutil.rmtree(out)
  os.makedirs(out)
  if data is None:
    data = os.path.join(out, "data")
    write_synthetic_tissue(data, num_fovs=6, seed=0)
    panel = os.path.join(data, "panel.csv")
    _say(f"wrote 6 synthetic FOVs to {data}")
  elif panel is None and os.path.isfile(os.path.join(data, "panel.csv")):
    panel = os.path.join(data, "panel.csv")
  fovs = sorted(readers.find_fovs(data)[1])
  if len(fovs) < 3:
    raise ValueError(f"{data}: the demo needs at least 3 FOVs (train, validation, test); "
                     f"found {len(fovs)}")
  fov_names = [readers.fov_name(f) for f in fovs]
  test_fov, val_fov = fov_names[-1], fov_names[-2]
  store_path = os.path.join(out, "store.zarr")
  prep = prepare_images(data, store_path, panel_csv=panel, tile=tile, stride=tile // 2,
                        bin_size=bin_size, test_fovs=[test_fov], val_fovs=[val_fov])
  channels = prep["channels"]
  _say(f"prepared {prep['tiles']} tiles of {len(channels)} channels; test FOV {test_fov}")
  run_dir = os.path.join(out, "run")
  trained = train_and_evaluate(demo_config(store_path, steps), run_dir)
  _say(f"trained {steps} steps: {trained}")
  model = os.path.join(out, "model")
  export_model(run_dir, model)
  held_out = channels[-HELD_OUT:]
  test_input = os.path.join(out, "test_fov")  # a folder holding only the test FOV
  os.makedirs(test_input)
  test_path = next(f for f, n in zip(fovs, fov_names) if n == test_fov)
  os.symlink(os.path.abspath(test_path), os.path.join(test_input, os.path.basename(test_path)))
  imputed = impute_images(model, test_input, os.path.join(out, "imputed"), missing=held_out,
                          samples=samples, steps=sampler_steps, panel_csv=panel)
  _say(f"imputed {held_out} on {test_fov} -> {imputed['out']}")
  observed = [c for c in channels if c not in held_out]
  result = evaluate(model, store_path, os.path.join(out, "report"), mode="panel",
                    panel=observed, samples=samples, steps=sampler_steps)
  _say(f"report: {os.path.join(out, 'report', 'report.md')}")
  return {"out": os.path.abspath(out), "held_out": held_out, "train": trained,
          "evaluation": result}
