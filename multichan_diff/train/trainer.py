"""`train_and_evaluate(config, workdir)` (the diffusion model) and `train_autoencoder(config,
workdir)` (the per-channel tile autoencoder of latent diffusion), one loop for both.

Builds the model from the config and the store's panel, shards the step over the mesh,
streams batches through grain, writes metrics and orbax checkpoints, resumes from the
latest checkpoint in `workdir`, stops cleanly on SIGTERM / SIGINT (saving first) and on a
non-finite loss (keeping the last good checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal

import jax
import ml_collections
import numpy as np
from flax import nnx

from multichan_diff.data import store
from multichan_diff.data.pipeline import StoreSource, make_dataset, make_iterator, to_global
from multichan_diff.diffusion.losses import get_loss_fn, get_regression_loss_fn, regress
from multichan_diff.diffusion.schedules import get_schedule
from multichan_diff.model import ModelConfig, build_model
from multichan_diff.train.checkpoint import BEST, Checkpoints
from multichan_diff.train.metrics import MetricWriter, Progress
from multichan_diff.train.model_dir import load_model, load_prediction, load_schedule, read_meta
from multichan_diff.train.recipe import sized
from multichan_diff.train.ridge import fit_linear_head
from multichan_diff.train.sharding import batch_sharding, jit_train_step, make_mesh
from multichan_diff.train.selection import channel_r, get_point_fn
from multichan_diff.train.step import init_train_state, make_optimizer, make_train_step


class NonFiniteLoss(RuntimeError):
  pass


def maybe_initialize_distributed() -> None:
  """Multi-host: `jax.distributed.initialize()` when the environment describes a cluster
  (JAX_COORDINATOR_ADDRESS, a SLURM job with several tasks, or a multi-worker TPU VM)."""
  env = os.environ
  multi = (env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("SLURM_NTASKS", "1")) > 1
           or "," in env.get("TPU_WORKER_HOSTNAMES", ""))
  if multi and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def model_config(config: ml_collections.ConfigDict, attrs: dict) -> ModelConfig:
  """The model's config for this store: channel counts come from the store's panel (a
  latent store: k features per channel)."""
  k = attrs["latent"]["k"] if attrs.get("space") == "latent" else 1
  extra = {"num_channels": len(attrs["channels"]) * k}
  if attrs["kind"] == "cells":
    extra.update(cond_channels=len(attrs["genes"]), spatial=False, patch_size=1)
  return ModelConfig.from_mapping(config.model.to_dict(), **extra)


def context_norm(config: ml_collections.ConfigDict) -> str:
  """How images are standardised: global, fov (the condition per FOV) or fov_targets (the
  condition and the targets per FOV)."""
  return config.data.get("context_norm", "global")


@dataclasses.dataclass
class Setup:
  """Everything a run builds from (config, store), shared by training and export."""

  config: ml_collections.ConfigDict
  attrs: dict
  model_cfg: ModelConfig
  graphdef: object
  rest: object
  state: object
  tx: object
  run: dict
  step_fn: object = None  # its own train step (distillation); None: make_train_step's


def _store_attrs(config: ml_collections.ConfigDict) -> dict:
  if not config.data.store:
    raise ValueError("no store given: set --config.data.store=PATH (see `multichan-diff prepare`)")
  return store.read_attributes(config.data.store)


def _setup(config, attrs, mcfg, model, **run) -> Setup:
  fixed = "linear_head" if getattr(mcfg, "linear_head", False) else None
  tx = make_optimizer(**config.optim, total_steps=config.train.steps, fixed=fixed)
  graphdef, rest, state = init_train_state(model, tx)
  run = {"model": json.loads(json.dumps(dataclasses.asdict(mcfg))),
         "channels": attrs["channels"], "kind": attrs["kind"], **run, **_splits_key(config),
         "store": os.path.abspath(config.data.store), "config": json.loads(config.to_json())}
  return Setup(config, attrs, mcfg, graphdef, rest, state, tx, run)


NETWORKS = ("diffusion", "regressor")  # what `train` trains (the others have their verbs)


def setup(config: ml_collections.ConfigDict, fit_head: bool = True) -> Setup:
  """The diffusion model's or the regressor's run (or, for a run config of
  `autoencoder_config` or `distill_config`, the autoencoder's or the distillation's).
  fit_head: solve a linear head on the training cells (False where a checkpoint's
  parameters replace it anyway)."""
  network = config.get("network", "diffusion")
  if network == "autoencoder":
    return setup_autoencoder(config)
  if network == "generator":
    return setup_distill(config)
  if network not in NETWORKS:
    raise ValueError(f"unknown network {network!r}; `train` trains one of {NETWORKS}")
  attrs = _store_attrs(config)
  space = config.get("space", "pixel")
  if attrs.get("space", "pixel") != space:
    raise ValueError(f"{config.data.store}: a {attrs.get('space', 'pixel')}-space store, but "
                     f"the config says space = {space!r} (a latent store comes from "
                     "`multichan-diff prepare latent`)")
  if space == "latent" and context_norm(config) == "fov_targets":
    raise ValueError("context_norm 'fov_targets' is for pixel-space models; a latent model "
                     "takes 'fov' (the condition only) or 'global'")
  mcfg = model_config(config, attrs)
  run = {"space": space} if space != "pixel" else {}  # older runs have no key: pixel
  if (network == "regressor" or residual_of(config)) and space != "pixel":
    raise ValueError("the regressor and residual diffusion are for pixel-space and cell "
                     "models; a latent model is a plain diffusion model")
  if network == "regressor":
    if residual_of(config):
      raise ValueError("diffusion.residual_of is for a diffusion model, not a regressor")
    run["network"] = "regressor"
  elif residual_of(config):
    run["residual_of"] = check_regressor(residual_of(config), attrs, config)
  if mcfg.linear_head and network != "regressor":
    raise ValueError("model.linear_head is for a regressor (--config.network=regressor); a "
                     "diffusion model gets the same through diffusion.residual_of")
  model = build_model(mcfg, config.train.seed)
  if mcfg.linear_head and fit_head:
    fit_linear_head(model, config.data.store, train_splits(config))
  return _setup(config, attrs, mcfg, model,
                genes=attrs.get("genes"),
                context_norm=context_norm(config) if attrs["kind"] == "images" else None, **run)


def residual_of(config: ml_collections.ConfigDict) -> str:
  """The exported regressor whose mean a residual diffusion model adds to, or ''."""
  return config.diffusion.get("residual_of", "")


def check_regressor(path: str, attrs: dict, config: ml_collections.ConfigDict) -> str:
  """The absolute path of an exported regressor fit for this store and config."""
  meta = read_meta(path)
  if meta.get("network") != "regressor":
    raise ValueError(f"{path}: its network is '{meta.get('network', 'diffusion')}'; "
                     "diffusion.residual_of takes an exported regressor")
  norm = context_norm(config) if attrs["kind"] == "images" else None
  for key, ours in (("kind", attrs["kind"]), ("channels", attrs["channels"]),
                    ("genes", attrs.get("genes")), ("context_norm", norm)):
    if meta.get(key) != ours:
      raise ValueError(f"{path}: the regressor's {key} differ from this run's "
                       f"({config.data.store}, context_norm {norm!r}); train the regressor "
                       "on the same store and settings")
  return os.path.abspath(path)


def _section_config(config: ml_collections.ConfigDict, section: str,
                    network: str) -> ml_collections.ConfigDict:
  """The run config of another network: `config.<section>.train` / `.optim` in place of
  the diffusion model's `train` / `optim`, so one loop and one checkpoint layout serve."""
  if section not in config:
    raise ValueError(f"the config has no `{section}` section (the default config's has one)")
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.train.update(out[section].train)
    out.optim.update(out[section].optim)
    out.network = network
  return out


def autoencoder_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return _section_config(config, "autoencoder", "autoencoder")


def distill_config(config: ml_collections.ConfigDict, teacher: str) -> ml_collections.ConfigDict:
  """The distillation's run config: `config.distill`'s train / optim, and the teacher."""
  out = _section_config(config, "distill", "generator")
  out.distill.teacher = os.path.abspath(teacher)
  return out


def setup_autoencoder(config: ml_collections.ConfigDict) -> Setup:
  from multichan_diff.model.autoencoder import AutoencoderConfig, build_autoencoder
  attrs = _store_attrs(config)
  if attrs["kind"] != "images":
    raise ValueError(f"{config.data.store}: the tile autoencoder needs an image store, not "
                     f"{attrs['kind']}")
  acfg = AutoencoderConfig.from_mapping(config.autoencoder.model.to_dict())
  if attrs["tile"] % acfg.factor:
    raise ValueError(f"{config.data.store}: tile {attrs['tile']} is not a multiple of the "
                     f"autoencoder's reduction {acfg.factor}")
  return _setup(config, attrs, acfg, build_autoencoder(acfg, config.train.seed),
                network="autoencoder")


def setup_distill(config: ml_collections.ConfigDict) -> Setup:
  """SiD of the exported model `config.distill.teacher`, on the store it was trained on."""
  from multichan_diff.distill.sid import SiDConfig, init_sid_state, make_sid_step
  d = config.distill
  teacher, meta = load_model(d.teacher)
  if meta.get("network", "diffusion") != "diffusion":
    raise ValueError(f"{d.teacher}: its network is '{meta['network']}'; distillation needs "
                     f"an exported diffusion model")
  if meta.get("residual"):
    raise ValueError(f"{d.teacher}: a residual diffusion model; distillation takes a plain "
                     "diffusion model")
  attrs = _store_attrs(config)
  for key, default in (("channels", None), ("genes", None), ("space", "pixel")):
    if attrs.get(key, default) != meta.get(key, default):
      raise ValueError(f"{config.data.store}: its {key} differ from the teacher's "
                       f"({d.teacher}); distil on the store the teacher was trained on")
  cfg = SiDConfig(alpha=d.alpha, t_init=d.t_init, t_range=tuple(d.t_range),
                  prediction=load_prediction(meta), loss_on=config.diffusion.loss_on)
  tx_gen = make_optimizer(**config.optim)  # constant after warm-up, as SiD runs
  tx_fake = make_optimizer(**{**config.optim, "learning_rate": d.fake_learning_rate})
  graphdef, rest, state = init_sid_state(teacher, tx_gen, tx_fake)
  step_fn = make_sid_step(graphdef, rest, tx_gen, tx_fake, load_schedule(meta), cfg,
                          config.train.ema_decay)
  run = {"network": "generator", "model": meta["model"], "channels": meta["channels"],
         "kind": meta["kind"], "genes": meta.get("genes"), "space": meta.get("space"),
         "context_norm": meta.get("context_norm"), "teacher": d.teacher, **_splits_key(config),
         "store": os.path.abspath(config.data.store), "config": json.loads(config.to_json())}
  return Setup(config, attrs, ModelConfig.from_mapping(meta["model"]), graphdef, rest, state,
               tx_gen, run, step_fn)


def check_compatible(saved: dict, run: dict, workdir: str) -> None:
  """A checkpoint from another model or panel is a clear error, not a shape crash."""
  for key, what in (("network", "network"), ("space", "space"), ("model", "model config"),
                    ("residual_of", "regressor (diffusion.residual_of)"),
                    ("channels", "channel panel"), ("genes", "gene list"),
                    ("context_norm", "context_norm"), ("teacher", "teacher"),
                    ("train_splits", "set of training splits")):
    if saved.get(key) != run.get(key):
      diff = saved.get(key), run.get(key)
      if isinstance(diff[0], dict) and isinstance(diff[1], dict):
        diff = {k: (diff[0].get(k), diff[1].get(k)) for k in set(diff[0]) | set(diff[1])
                if diff[0].get(k) != diff[1].get(k)}
      raise ValueError(f"{workdir}: its checkpoint was made with another {what} "
                       f"(checkpoint vs now: {diff}); use a new --workdir")


def train_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The store splits a run trains on (older configs have no key: the training split)."""
  return tuple(config.data.get("train_splits", ("train",)))


def _splits_key(config: ml_collections.ConfigDict) -> dict:
  """The run's training splits, recorded when not the default (older runs have no key)."""
  splits = train_splits(config)
  return {} if splits == ("train",) else {"train_splits": list(splits)}


def _eval_batches(config, sharding, data_kw):
  """Up to `eval_batches` fixed validation batches (smaller than training ones when the
  split is small, a multiple of the device count); none without a held-out validation
  split."""
  if "val" in train_splits(config):
    return []  # trained on: its loss would not measure generalisation
  try:
    n_val = len(StoreSource(config.data.store, "val"))
  except ValueError:
    return []  # no validation split
  unit = jax.device_count()
  batch = min(config.train.batch_size, n_val // unit * unit)
  if batch == 0:
    return []
  ds = make_dataset(config.data.store, "val", global_batch_size=batch,
                    seed=config.train.seed, shuffle=False, num_epochs=1, **data_kw)
  it = iter(ds)
  return [to_global(b, sharding) for _, b in zip(range(config.train.eval_batches), it)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the diffusion model (or the regressor) to `config.train.steps`, resuming from
  `workdir`; returns the last metrics."""
  maybe_initialize_distributed()
  config = sized(config, _store_attrs(config), jax.device_count())
  s = setup(steps_from(config))
  diff = config.diffusion
  data_kw = dict(mask_p=diff.mask_p, context_norm=context_norm(config))
  if s.run.get("network") == "regressor":
    return fit(s, workdir, get_regression_loss_fn(), data_kw, get_point_fn("regressor"))
  schedule = get_schedule(diff.schedule, diff.num_steps)
  prediction = diff.get("prediction", "eps")
  mean_fn = _mean_fn(s.run["residual_of"]) if "residual_of" in s.run else None
  loss_fn = get_loss_fn(schedule, diff.loss_on, prediction,
                        point_fraction=diff.get("point_fraction", 0.0), mean_fn=mean_fn)
  return fit(s, workdir, loss_fn, data_kw,
             get_point_fn("diffusion", schedule, prediction, mean_fn))


def steps_from(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with `train.steps` set to the step chosen on validation by the exported model
  `train.steps_from` (the final fit on train + val), or as it is."""
  source = config.train.get("steps_from", "")
  if not source:
    return config
  chosen = read_meta(source).get("selection", {}).get("step")
  if not chosen:
    raise ValueError(f"{source}: its export records no step chosen on validation (it was "
                     "trained without a validation split); set --config.train.steps")
  out = config.copy_and_resolve_references()
  out.train.steps = int(chosen)
  return out


def _mean_fn(regressor_dir: str):
  """(cond, cond_mask, shape) -> the frozen regressor's mean, for the residual loss. Its
  parameters enter the jitted step as host constants, so they take any mesh's sharding."""
  model, _ = load_model(regressor_dir)
  graphdef, state = nnx.split(model)
  state = jax.tree.map(np.asarray, state)

  def mean_fn(cond, cond_mask, shape):
    return regress(nnx.merge(graphdef, state), cond, cond_mask, shape)

  return mean_fn


def train_autoencoder(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the per-channel tile autoencoder (`config.autoencoder`) on the store's tiles."""
  from multichan_diff.model.autoencoder import reconstruction_loss
  maybe_initialize_distributed()
  s = setup_autoencoder(autoencoder_config(config))
  ae = config.autoencoder
  return fit(s, workdir, reconstruction_loss(ae.beta, ae.get("channels_per_tile")), {})


def distill(config: ml_collections.ConfigDict, teacher: str, workdir: str) -> dict:
  """Distils the exported diffusion model `teacher` into a one-step generator (SiD)."""
  from multichan_diff.distill.sid import SiDConfig, generator_mse_fn
  maybe_initialize_distributed()
  s = setup_distill(distill_config(config, teacher))
  meta = read_meta(teacher)
  val_loss = generator_mse_fn(load_schedule(meta), SiDConfig(
      t_init=s.config.distill.t_init, prediction=load_prediction(meta)))
  return fit(s, workdir, val_loss, dict(mask_p=config.diffusion.mask_p,
                                        context_norm=meta.get("context_norm") or "global"))


def fit(s: Setup, workdir: str, loss_fn, data_kw: dict, point_fn=None) -> dict:
  """The loop: `loss_fn(model, batch, key)` over the store's training batches
  (`make_dataset(..., **data_kw)`), to `s.config.train.steps`; the step is `s.step_fn`
  when the setup brings one (then `loss_fn` gives the validation loss only).
  point_fn: `selection.get_point_fn`'s, to score validation batches by mean r, keep the
  best checkpoint and stop after `patience` evaluations without a gain; None: no choice."""
  config = s.config
  os.makedirs(workdir, exist_ok=True)
  tc = config.train
  mesh = make_mesh(config.mesh.data, config.mesh.fsdp)
  step_fn = s.step_fn or make_train_step(s.graphdef, s.rest, s.tx, loss_fn, tc.ema_decay,
                                         compute_dtype=tc.compute_dtype)
  train_step, state_sh = jit_train_step(step_fn, mesh, s.state, fsdp=config.mesh.fsdp > 1)
  state = jax.device_put(s.state, state_sh)
  bsh = batch_sharding(mesh)

  it = make_iterator(make_dataset(config.data.store, train_splits(config),
                                  global_batch_size=tc.batch_size,
                                  seed=tc.seed, augment=config.data.get("augment", False),
                                  **data_kw),
                     num_threads=config.data.threads)
  ckpts = Checkpoints(workdir, tc.keep_checkpoints)
  start = ckpts.latest_step() or 0
  if start:
    check_compatible(ckpts.run_info(start), s.run, workdir)
    try:
      state = ckpts.restore(start, state, it)
    except ValueError as e:
      raise ValueError(f"{workdir}: the checkpoint's optimiser state does not match this "
                       f"config's optimiser (was `optim` changed?); use a new --workdir. "
                       f"orbax said: {str(e)[:300]}") from e

  @jax.jit
  def eval_loss(ema, batch):
    model = nnx.merge(s.graphdef, ema, s.rest)
    model.eval()  # dropout off
    return loss_fn(model, batch, jax.random.key(tc.seed + 1))[0]

  val = _eval_batches(config, bsh, data_kw)
  best = Checkpoints(workdir, 1, BEST) if val and point_fn is not None else None
  best_step = best and best.latest_step()
  best_r = best.run_info(best_step)["val_r"] if best_step else -math.inf

  @jax.jit
  def val_point(ema, batch):
    model = nnx.merge(s.graphdef, ema, s.rest)
    model.eval()
    return point_fn(model, batch)

  def val_r(ema) -> float:
    preds, scored = zip(*(val_point(ema, b) for b in val))
    return channel_r(preds, [b["x0"] for b in val], scored)

  key = jax.random.key(tc.seed)
  stop = {"signal": None}

  def on_signal(signum, _frame):
    stop["signal"] = signum

  old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
  writer = MetricWriter(workdir)
  progress = Progress(tc.steps, start)
  last = {}
  try:
    for step in range(start, tc.steps):
      state, m = train_step(state, to_global(next(it), bsh), key)
      loss = float(m["loss"])
      if not math.isfinite(loss):
        raise NonFiniteLoss(
            f"loss became {loss} at step {step + 1}; stopped without saving, the last good "
            f"checkpoint in {ckpts.directory} is step {ckpts.latest_step()}")
      done = step + 1
      if done % tc.log_every == 0 or done == tc.steps:
        last = {k: float(v) for k, v in m.items()}  # SiD's: also fake_loss, teacher_gap
        progress.update(done, loss)
      patience_out = False
      if val and (done % tc.eval_every == 0 or done == tc.steps):
        last["val_loss"] = float(np.mean([float(eval_loss(state.ema, b)) for b in val]))
        if best is not None:
          last["val_r"] = r = val_r(state.ema)
          if r > best_r:
            best_r, best_step = r, done
            best.save(done, state, it, {**s.run, "val_r": r})
          patience = tc.get("patience", 0)
          patience_out = bool(patience) and done - best_step >= patience * tc.eval_every
      if done % tc.log_every == 0 or done == tc.steps or patience_out:
        writer.write(done, last)
      if (done % tc.checkpoint_every == 0 or done == tc.steps or stop["signal"]
          or patience_out):
        ckpts.save(done, state, it, s.run)
      if stop["signal"] or patience_out:
        last["stopped_early"] = patience_out
        break
  finally:
    progress.close()
    writer.close()
    ckpts.close()
    if best is not None:
      best.close()
    for sig, handler in old.items():
      signal.signal(sig, handler)
  return {"step": int(state.step), **last,
          **({"best_step": best_step, "best_val_r": best_r} if best_step else {})}
