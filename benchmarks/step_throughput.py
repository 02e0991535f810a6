"""Train-step throughput of the default model: samples/s, parameters, compile time, memory.

    python benchmarks/step_throughput.py            # all cases, each in its own process
    python benchmarks/step_throughput.py --case image64 --steps 10
    python benchmarks/step_throughput.py --case image16 --compute-dtype bfloat16
    python benchmarks/step_throughput.py --case latent16 --model '{"patch_size": 1}'

Cases: the image model at 39 channels on 64x64 and 16x16 tiles (batch 16), on 16x16
latents of 39 x 4 features (latent-space diffusion; --model '{"patch_size": 1}' runs its
first level at 16x16, as configs/mibi_granuloma_latent_cpu.py does), and the vector model
at 2000 genes -> 46 proteins (batch 256). A full step is forward, backward and AdamW,
jitted, on whatever devices JAX finds (the first one only). Peak memory is XLA's own
account of the compiled step (arguments + outputs + temporaries) and the process's peak
resident set size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

CASES = {
    "image64": dict(spatial=True, channels=39, size=64, batch=16),
    "image16": dict(spatial=True, channels=39, size=16, batch=16),
    "latent16": dict(spatial=True, channels=39 * 4, size=16, batch=16),  # k = 4 latents
    "vector": dict(spatial=False, channels=46, genes=2000, batch=256),
}


def run_case(name: str, steps: int, overrides: dict, compute_dtype: str = "float32") -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
  from configs import default
  from multichan_diff.diffusion.losses import get_loss_fn
  from multichan_diff.diffusion.masking import sample_observed
  from multichan_diff.diffusion.schedules import get_schedule
  from multichan_diff.model import ModelConfig, build_model
  from multichan_diff.train.step import init_train_state, make_optimizer, make_train_step

  case = CASES[name]
  config = default.get_config()
  model_kw = config.model.to_dict()
  if not case["spatial"]:
    model_kw.update(VECTOR_MODEL)
    model_kw["cond_channels"] = case["genes"]
  model_kw.update(overrides)
  cfg = ModelConfig.from_mapping(model_kw, num_channels=case["channels"])
  model = build_model(cfg)
  n_params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  tx = make_optimizer(**config.optim)
  graphdef, rest, state = init_train_state(model, tx)
  diff = config.diffusion
  loss_fn = get_loss_fn(get_schedule(diff.schedule, diff.num_steps), diff.loss_on,
                        diff.prediction)
  step = jax.jit(make_train_step(graphdef, rest, tx, loss_fn, compute_dtype=compute_dtype),
                 donate_argnums=0)

  b, c = case["batch"], case["channels"]
  k = jax.random.key(0)
  if case["spatial"]:
    s = case["size"]
    x0 = jax.random.normal(k, (b, s, s, c))
    batch = {"x0": x0, "present": jnp.ones((b, c), bool),
             "observed": sample_observed(jax.random.key(1), jnp.ones((b, c), bool),
                                         tuple(diff.mask_p))}
  else:
    batch = {"x0": jax.random.normal(k, (b, 1, 1, c)),
             "cond": jax.random.normal(jax.random.key(1), (b, 1, 1, case["genes"])),
             "present": jnp.ones((b, c), bool)}

  t0 = time.perf_counter()
  compiled = step.lower(state, batch, k).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  xla_bytes = None if mem is None else (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                         + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  state, m = compiled(state, batch, k)  # warm-up
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch, k)
  jax.block_until_ready(m)
  dt = time.perf_counter() - t0
  return {
      "case": name, "compute_dtype": compute_dtype, "batch": b, "params": int(n_params),
      "samples_per_s": round(b * steps / dt, 2), "step_s": round(dt / steps, 4),
      "compile_s": round(compile_s, 1),
      "xla_peak_mib": None if xla_bytes is None else round(xla_bytes / 2**20, 1),
      "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "device": str(jax.devices()[0].device_kind), "loss": float(m["loss"]),
  }


# The vector model (single cells): residual stages of one width, no resampling.
VECTOR_MODEL = dict(spatial=False, patch_size=1, widths=(512, 512, 512), blocks_per_level=1,
                    attention_levels=None, norm_groups=32)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process")
  parser.add_argument("--steps", type=int, default=None, help="timed steps (after warm-up)")
  parser.add_argument("--model", default="{}", help="JSON overrides of the model config")
  parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                      help="dtype of the forward / backward pass (parameters stay float32)")
  args = parser.parse_args()
  overrides = json.loads(args.model)
  if args.case:
    steps = args.steps or (5 if args.case == "image64" else 20)
    print(json.dumps(run_case(args.case, steps, overrides, args.compute_dtype)))
    return
  print(f"# host: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus; compute dtype {args.compute_dtype}")
  print(f"{'case':8} {'batch':>5} {'params':>11} {'samples/s':>10} {'step s':>8} "
        f"{'compile s':>9} {'xla MiB':>8} {'rss MiB':>8}  device")
  for name in CASES:
    cmd = [sys.executable, __file__, "--case", name, "--model", args.model,
           "--compute-dtype", args.compute_dtype]
    if args.steps:
      cmd += ["--steps", str(args.steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
      sys.exit(f"case {name} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{r['case']:8} {r['batch']:>5} {r['params']:>11,} {r['samples_per_s']:>10} "
          f"{r['step_s']:>8} {r['compile_s']:>9} {r['xla_peak_mib']!s:>8} "
          f"{r['max_rss_mib']:>8}  {r['device']}")


if __name__ == "__main__":
  main()
