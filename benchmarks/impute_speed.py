"""Imputation speed: seconds per whole FOV and per 1000 cells, DDPM-500, DDIM-50, one-step.

    python benchmarks/impute_speed.py                                   # all measured (GPU)
    python benchmarks/impute_speed.py --tile-batches 2 --time-steps 5   # CPU: time a part
    python benchmarks/impute_speed.py --samples 8 --samplers ddim --cases images
    python benchmarks/impute_speed.py --samples 8 --samplers ddpm ddim onestep --cases cells
    python benchmarks/impute_speed.py --config configs/mibi_granuloma_latent_cpu.py \
      --cases images --samplers ddim --fov-size 256

Times the real imputation path with random weights: `Posterior` (jitted, K samples per
condition, batches padded to one shape) driven like `sample_image` drives it for a FOV
(1024x1024, 39 channels, 64-px tiles overlapping by 16: tile, sample, blend) and by
`sample_cells` for cells (2000 genes -> 46 proteins, batches of 256). The image model is
the default config's, or --config's (a latent-space config times its autoencoder's encode
and decode too); the vector model is configs/citeseq_teaseq.py's.

A full DDPM-500 FOV takes hours on a CPU, so a part can be timed and projected. Every tile
batch (the last one is padded) and every sampler step runs the same compiled computation,
so the time is linear in both: the projection is
    full = per_call * calls_total * steps_total / steps_run.
Work done once per call (E(c), tiling, transfers, blending) would be scaled by the step ratio
too, so the same calls are also timed at 1 step, to split per-call from per-step time:
    full = calls_total * (fixed + per_step * steps_total).
(--no-split-fixed skips that and its extra compile, giving the plain ratio as an upper bound.)
The first call of each case compiles and is not in the timed figure.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "onestep": "one-step"}


def load_config(path: str | None):
  """A config file's config (default: the default config)."""
  import importlib.util
  from multichan_diff.default_config import get_config
  if path is None:
    return get_config()
  spec = importlib.util.spec_from_file_location("timed_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def build_models(config, channels: int, genes: int, proteins: int):
  """(image model, its LatentCodec or None, vector model), random weights: the image model
  of `config` (a latent-space one with its autoencoder) and configs/citeseq_teaseq.py's."""
  from configs import citeseq_teaseq
  from multichan_diff.model import ModelConfig, build_model
  codec, features = None, channels
  if config.get("space", "pixel") == "latent":
    from multichan_diff.model.autoencoder import AutoencoderConfig, build_autoencoder
    from multichan_diff.model.latent import LatentCodec, LatentStats
    ae = build_autoencoder(AutoencoderConfig.from_mapping(config.autoencoder.model.to_dict()))
    features = channels * ae.cfg.latent_channels
    ones = np.ones(features, np.float32)
    codec = LatentCodec(ae, LatentStats(0 * ones, ones, -5 * ones, 5 * ones))
  image_cfg = ModelConfig.from_mapping(config.model.to_dict(), num_channels=features)
  cell_cfg = ModelConfig.from_mapping(citeseq_teaseq.get_config().model.to_dict(),
                                      num_channels=proteins, cond_channels=genes)
  return build_model(image_cfg, 0), codec, build_model(cell_cfg, 0)


def num_params(model) -> int:
  import jax
  from flax import nnx
  return int(sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))))


def teacher(model, sampler: str):
  """A generator's teacher, for its denoiser point estimate: a network of the same
  architecture, so the model itself times it."""
  return model if sampler == "onestep" else None


def tile_loop(posterior, padded: np.ndarray, starts, observed: np.ndarray, tile: int,
              n_batches: int, key, blend) -> None:
  """The first n_batches of `sample_image`'s loop (same tiles, keys and blending)."""
  import jax
  b = posterior.batch_size
  obs = np.broadcast_to(observed, (b, observed.size))
  for lo in range(0, min(n_batches * b, len(starts)), b):
    chunk = starts[lo:lo + b]
    tiles = np.stack([padded[y:y + tile, x:x + tile] for y, x in chunk])
    samples, _ = posterior.images(jax.random.fold_in(key, lo), tiles, obs[:len(chunk)])
    for i, origin in enumerate(chunk):
      blend.add(samples[:, i], origin)


def project(per_call: float, per_call_1step: float | None, calls: int, steps_run: int,
            steps: int) -> tuple[float, str]:
  """Seconds for `calls` calls of `steps` steps, from calls of `steps_run` steps."""
  if steps_run == steps:
    return per_call * calls, "linear in calls"
  if per_call_1step is not None:
    per_step = (per_call - per_call_1step) / (steps_run - 1)
    fixed = per_call_1step - per_step
    if per_step > 0 and fixed >= 0:
      return calls * (fixed + per_step * steps), f"fixed {fixed:.3g} s/call split off"
    return per_call * calls * steps / steps_run, (
        f"upper bound; split not above noise: {per_call_1step:.3g} s/call at 1 step, "
        f"{per_call:.3g} at {steps_run}")
  return per_call * calls * steps / steps_run, "upper bound"


def time_images(model, codec, schedule, args, sampler: str, steps: int, steps_run: int,
                t_init: int | None) -> dict:
  import jax
  from multichan_diff.impute import tiling
  from multichan_diff.impute.images import sample_image
  from multichan_diff.impute.posterior import Posterior
  size, c, tile, b = args.fov_size, args.channels, args.tile, args.batch_size
  image = np.random.default_rng(0).standard_normal((size, size, c), np.float32)
  observed = np.arange(c) % 2 == 0  # half observed; cost does not depend on which
  padded = tiling.pad_to_tile(image, tile)
  starts = tiling.origins(padded.shape[0], padded.shape[1], tile, args.overlap)
  calls = math.ceil(len(starts) / b)
  n = calls if args.tile_batches is None else min(args.tile_batches, calls)
  key = jax.random.key(0)
  blender = lambda: tiling.Blender((args.samples,) + padded.shape, tile)

  def timed(run_steps: int) -> tuple[float, float]:
    """(warm-up s, timed s over n calls) for a posterior running `run_steps` steps."""
    post = Posterior(model, schedule, sampler=sampler, steps=run_steps,
                     num_samples=args.samples, batch_size=b, x0_range=None, point=args.point,
                     codec=codec, t_init=t_init, teacher=teacher(model, sampler))
    t0 = time.perf_counter()
    # Compiles. Other pixels: a latent Posterior remembers the latents of tiles it encoded.
    tile_loop(post, padded + 1.0, starts, observed, tile, 1, key, blender())
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    if n == calls and run_steps == steps:
      jax.block_until_ready(sample_image(post, image, observed, tile=tile,
                                         overlap=args.overlap, key=key)[0])
    else:
      tile_loop(post, padded, starts, observed, tile, n, key, blender())
    return warm, time.perf_counter() - t0

  warm, dt = timed(steps_run)
  one = None
  if args.split_fixed and 2 <= steps_run < steps:
    one = timed(1)[1] / n
  total, how = project(dt / n, one, calls, steps_run, steps)
  return {"case": f"FOV {size}x{size}x{c}", "batch": b,
          "part": f"{n} of {calls} batches x {steps_run} of {steps} steps",
          "compile_s": max(warm - dt / n, 0.0), "timed_s": dt, "result": total,
          "unit": "s / FOV", "measured": n == calls and steps_run == steps, "how": how}


def time_cells(model, schedule, args, sampler: str, steps: int, steps_run: int,
               t_init: int | None) -> dict:
  import jax
  from multichan_diff.impute.cells import sample_cells
  from multichan_diff.impute.posterior import Posterior
  genes = np.random.default_rng(1).standard_normal((args.cells, args.genes), np.float32)
  b = args.cell_batch_size
  calls = math.ceil(args.cells / b)
  key = jax.random.key(0)

  def timed(run_steps: int) -> tuple[float, float]:
    post = Posterior(model, schedule, sampler=sampler, steps=run_steps,
                     num_samples=args.samples, batch_size=b, point=args.point,
                     t_init=t_init, teacher=teacher(model, sampler))
    t0 = time.perf_counter()
    post.cells(key, genes[:b], args.proteins)  # compiles
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(sample_cells(post, genes, args.proteins, key=key)[0])
    return warm, time.perf_counter() - t0

  warm, dt = timed(steps_run)
  one = None
  if args.split_fixed and 2 <= steps_run < steps:
    one = timed(1)[1] / calls
  total, how = project(dt / calls, one, calls, steps_run, steps)
  return {"case": f"{args.cells} cells {args.genes}->{args.proteins}", "batch": b,
          "part": f"{calls} of {calls} batches x {steps_run} of {steps} steps",
          "compile_s": max(warm - dt / calls, 0.0), "timed_s": dt,
          "result": total * 1000 / args.cells, "unit": "s / 1000 cells",
          "measured": steps_run == steps, "how": how}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n".join(__doc__.splitlines()[1:]))
  parser.add_argument("--cases", nargs="+", choices=("images", "cells"),
                      default=["images", "cells"])
  parser.add_argument("--samplers", nargs="+", choices=sorted(SAMPLER_NAMES),
                      default=["ddpm", "ddim"], help="at their default steps (500, 50, 1)")
  parser.add_argument("--samples", type=int, default=1, help="K posterior samples per input")
  parser.add_argument("--point", choices=("samples", "denoiser"), default="samples",
                      help="'denoiser' adds the one-step point estimate (K more network "
                           "calls) to the chains, as `impute` does by default")
  parser.add_argument("--time-steps", type=int, default=None,
                      help="sampler steps actually run (default: the sampler's full count)")
  parser.add_argument("--tile-batches", type=int, default=None,
                      help="tile batches actually run (default: the whole FOV)")
  parser.add_argument("--split-fixed", action=argparse.BooleanOptionalAction, default=True,
                      help="when projecting steps, also time 1-step calls, so that per-call "
                           "work is not scaled by steps (one more compile per case)")
  parser.add_argument("--config", help="a config file whose image model is timed (default: "
                      "the default config); a latent-space one with its autoencoder")
  parser.add_argument("--fov-size", type=int, default=1024)
  parser.add_argument("--channels", type=int, default=39)
  parser.add_argument("--tile", type=int, default=64)
  parser.add_argument("--overlap", type=int, default=16)
  parser.add_argument("--batch-size", type=int, default=16, help="tiles per call")
  parser.add_argument("--cells", type=int, default=1000)
  parser.add_argument("--genes", type=int, default=2000)
  parser.add_argument("--proteins", type=int, default=46)
  parser.add_argument("--cell-batch-size", type=int, default=256)
  args = parser.parse_args()
  if args.time_steps is not None and args.time_steps < 1:
    parser.error("--time-steps must be at least 1")
  if args.tile_batches is not None and args.tile_batches < 1:
    parser.error("--tile-batches must be at least 1")

  import jax
  from multichan_diff.diffusion.samplers import DEFAULT_STEPS
  from multichan_diff.diffusion.schedules import get_schedule

  dev = jax.devices()[0]
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print(f"# jax {jax.__version__}, {dev.platform} ({dev.device_kind}); host "
        f"{platform.node()} {os.cpu_count()} cpus, load average {load}")
  config = load_config(args.config)
  image_model, codec, cell_model = build_models(config, args.channels, args.genes,
                                                args.proteins)
  space = config.get("space", "pixel")
  extra = f" + autoencoder {num_params(codec.autoencoder):,}" if codec else ""
  print(f"# image model {num_params(image_model):,} params{extra} "
        f"({args.config or 'default config'}, {space} space); vector model "
        f"{num_params(cell_model):,} params (configs/citeseq_teaseq.py); random weights; "
        f"K = {args.samples}; linear schedule, 1000 steps\n")
  schedule = get_schedule("linear", 1000)

  rows = []
  for name in args.samplers:
    steps = DEFAULT_STEPS[name]
    steps_run = steps if args.time_steps is None else min(args.time_steps, steps)
    label = f"{SAMPLER_NAMES[name]}-{steps}"
    # A SiD generator has the teacher's architecture, so a random teacher times it too.
    t_init = config.distill.t_init if name == "onestep" else None
    if "images" in args.cases:
      rows.append((label, time_images(image_model, codec, schedule, args, name, steps,
                                      steps_run, t_init)))
    if "cells" in args.cases:
      rows.append((label, time_cells(cell_model, schedule, args, name, steps, steps_run,
                                     t_init)))

  print("| case | sampler | K | batch | timed part | compile s | timed s | result |")
  print("|---|---|---|---|---|---|---|---|")
  for label, r in rows:
    kind = "measured" if r["measured"] else f"projected, {r['how']}"
    print(f"| {r['case']} | {label} | {args.samples} | {r['batch']} | {r['part']} | "
          f"{r['compile_s']:.1f} | {r['timed_s']:.2f} | "
          f"**{r['result']:.4g} {r['unit']}** ({kind}) |")
  print("\ncompile s: the first call (not timed) minus one timed call. timed s: wall time of "
        "the timed part, after the first call.\nprojected: calls in the whole FOV or cell set "
        "x (fixed + per step x full steps), fixed and per step from the same calls timed at "
        "the steps run and at 1 step;\n'upper bound': timed s / calls run x calls x full "
        "steps / steps run, which also scales once-per-call work by the steps.")


if __name__ == "__main__":
  main()
