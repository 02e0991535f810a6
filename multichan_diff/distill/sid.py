"""SiD (score identity distillation) of a trained conditional diffusion model into a one-step
generator: the pure losses and the alternating train step.

Three networks of the teacher's architecture: the frozen teacher f_phi, a fake score network
f_psi and the generator G, both initialised from the teacher. G(z, c) is the network's x0
estimate at one fixed t_init from pure noise z (`samplers.onestep_sample`, so imputation
runs exactly what was trained); the condition (observed channels and mask, or genes) goes
to all three. t_init is 250, not the recipe's 625: there the estimate from pure noise
barely depends on z, and G stays a point estimator whose draws hardly vary (README). Each
step:
  1. f_psi takes one step of the diffusion loss on G's current samples (t in t_range);
  2. G takes one step of, with x_t the noised x_g and y = x0 estimates at x_t,
       (y_real - y_fake) * ((y_real - x_g) - alpha * (y_real - y_fake)) / w,
     w = stopgrad(mean |x_g - y_real|), averaged over the present, missing entries.
Both use Adam with beta1 = 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from multichan_diff.diffusion.losses import condition_of, get_loss_fn, loss_weight
from multichan_diff.diffusion.samplers import sample_posterior
from multichan_diff.diffusion.schedules import Schedule, output_to_eps, predict_x0, q_sample
from multichan_diff.train.step import ema_warmup


@dataclasses.dataclass(frozen=True)
class SiDConfig:
  alpha: float = 0.5                      # the recipe: 0.5 for regression-like tasks
  t_init: int = 250                       # G's fixed timestep (see the module doc)
  t_range: tuple[int, int] = (20, 980)    # t of both losses
  prediction: str = "eps"                 # what the teacher outputs
  loss_on: str = "all"                    # the fake network's diffusion loss


def generate(generator, schedule: Schedule, key: jax.Array, batch, cfg: SiDConfig) -> jax.Array:
  """x_g = G(z, c) [B, ...] for the batch's conditions, its observed channels the batch's."""
  cond, cond_mask, observed = condition_of(batch)
  x0 = batch["x0"]
  return sample_posterior(generator, schedule, key, cond, cond_mask, x0.shape,
                          sampler="onestep", x_known=x0, known=observed,
                          prediction=cfg.prediction, t_init=cfg.t_init)["samples"][0]


def x0_estimate(net, schedule: Schedule, prediction: str, x_t, t, cond, cond_mask):
  out = net(x_t, t.astype(jnp.float32), cond, cond_mask)
  return predict_x0(schedule, x_t, t, output_to_eps(prediction, schedule, x_t, t, out))


def _missing_weight(batch, observed) -> jax.Array:
  """[B, 1, 1, C] 1 on present channels that were not observed (what G generates)."""
  present = batch.get("present", jnp.ones(observed.shape, bool))
  return loss_weight(present, observed, "missing").astype(jnp.float32)[:, None, None, :]


def _weighted_mean(a: jax.Array, w: jax.Array, axis=None) -> jax.Array:
  full = jnp.broadcast_to(w, a.shape)
  return jnp.sum(a * full, axis) / jnp.maximum(jnp.sum(full, axis), 1.0)


def fake_loss_fn(schedule: Schedule, cfg: SiDConfig):
  """-> loss(fake, generator, batch, key): the diffusion loss of f_psi on G's samples."""
  diffusion = get_loss_fn(schedule, cfg.loss_on, cfg.prediction, t_range=cfg.t_range)

  def loss(fake, generator, batch, key):
    k_g, k_d = jax.random.split(key)
    x_g = jax.lax.stop_gradient(generate(generator, schedule, k_g, batch, cfg))
    return diffusion(fake, {**batch, "x0": x_g}, k_d)

  return loss


def generator_loss_fn(schedule: Schedule, cfg: SiDConfig):
  """-> loss(generator, teacher, fake, batch, key): the SiD generator loss (module doc)."""

  def loss(generator, teacher, fake, batch, key):
    k_g, k_t, k_eps = jax.random.split(key, 3)
    x_g = generate(generator, schedule, k_g, batch, cfg)
    b = x_g.shape[0]
    t = jax.random.randint(k_t, (b,), *cfg.t_range)
    x_t = q_sample(schedule, x_g, t, jax.random.normal(k_eps, x_g.shape))
    cond, cond_mask, observed = condition_of(batch)
    y_real = x0_estimate(teacher, schedule, cfg.prediction, x_t, t, cond, cond_mask)
    y_fake = x0_estimate(fake, schedule, cfg.prediction, x_t, t, cond, cond_mask)
    w8 = _missing_weight(batch, observed)
    scale = jax.lax.stop_gradient(_weighted_mean(jnp.abs(x_g - y_real), w8, (1, 2, 3)))
    diff = y_real - y_fake
    per = diff * ((y_real - x_g) - cfg.alpha * diff) / jnp.maximum(scale, 1e-6)[:, None, None,
                                                                               None]
    value = _weighted_mean(per, w8)
    return value, {"loss": value, "teacher_gap": _weighted_mean(jnp.abs(diff), w8)}

  return loss


def generator_mse_fn(schedule: Schedule, cfg: SiDConfig):
  """-> loss(generator, batch, key): the MSE of one G sample to the data on the missing
  entries (the validation figure of a distillation run)."""

  def loss(generator, batch, key):
    _, _, observed = condition_of(batch)
    x_g = generate(generator, schedule, key, batch, cfg)
    mse = _weighted_mean(jnp.square(x_g - batch["x0"]), _missing_weight(batch, observed))
    return mse, {"loss": mse}

  return loss


@flax.struct.dataclass
class SiDState:
  step: jax.Array
  params: Any     # {"generator": nnx.State, "fake": nnx.State}
  opt_state: Any  # the same keys
  ema: Any        # EMA of the generator's parameters: what export writes
  teacher: Any    # the frozen teacher's parameters


def init_sid_state(teacher: nnx.Module, tx_gen: optax.GradientTransformation,
                   tx_fake: optax.GradientTransformation):
  """-> (graphdef, rest, SiDState); the three networks share the teacher's graphdef."""
  graphdef, params, rest = nnx.split(teacher, nnx.Param, ...)
  copy = lambda: jax.tree.map(jnp.copy, params)
  state = SiDState(step=jnp.zeros((), jnp.int32),
                   params={"generator": copy(), "fake": copy()},
                   opt_state={"generator": tx_gen.init(params), "fake": tx_fake.init(params)},
                   ema=copy(), teacher=params)
  return graphdef, rest, state


def make_sid_step(graphdef, rest, tx_gen, tx_fake, schedule: Schedule, cfg: SiDConfig,
                  ema_decay: float = 0.999):
  """-> step(state, batch, key) -> (state, metrics): f_psi's update, then G's against the
  updated f_psi, in one jitted call."""
  fake_loss, gen_loss = fake_loss_fn(schedule, cfg), generator_loss_fn(schedule, cfg)
  net = lambda p: nnx.merge(graphdef, p, rest, copy=True)

  def update(tx, grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def step(state: SiDState, batch, key: jax.Array):
    k_fake, k_gen = jax.random.split(jax.random.fold_in(key, state.step))
    gen_p, fake_p = state.params["generator"], state.params["fake"]
    (f_loss, _), f_grads = jax.value_and_grad(
        lambda p: fake_loss(net(p), net(gen_p), batch, k_fake), has_aux=True)(fake_p)
    fake_p, fake_opt = update(tx_fake, f_grads, state.opt_state["fake"], fake_p)
    teacher, fake = net(state.teacher), net(fake_p)
    (_, metrics), g_grads = jax.value_and_grad(
        lambda p: gen_loss(net(p), teacher, fake, batch, k_gen), has_aux=True)(gen_p)
    gen_p, gen_opt = update(tx_gen, g_grads, state.opt_state["generator"], gen_p)
    decay = ema_warmup(ema_decay, state.step)
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, gen_p)
    metrics = {**metrics, "fake_loss": f_loss, "grad_norm": optax.tree.norm(g_grads)}
    return SiDState(step=state.step + 1, params={"generator": gen_p, "fake": fake_p},
                    opt_state={"generator": gen_opt, "fake": fake_opt}, ema=ema,
                    teacher=state.teacher), metrics

  return step
