"""Discrete-time DDPM noise schedules and their closed forms.

Index convention: t in {0, ..., T-1}; alpha_bar[t] = prod_{s <= t} (1 - beta_s), so
x_t = sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) eps.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Schedule:
  """betas, alphas, alpha_bars: [T] float32 arrays (a pytree, so it can enter jit)."""

  betas: jax.Array
  alphas: jax.Array
  alpha_bars: jax.Array

  @property
  def num_steps(self) -> int:
    return self.betas.shape[0]


def _from_betas(betas: np.ndarray) -> Schedule:
  betas = np.asarray(betas, np.float64)
  alphas = 1.0 - betas
  alpha_bars = np.cumprod(alphas)
  return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(alphas, jnp.float32),
                  jnp.asarray(alpha_bars, jnp.float32))


def linear_schedule(num_steps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> Schedule:
  """Ho et al. (2020): betas linear in t, rescaled so any T spans the same noise range."""
  scale = 1000.0 / num_steps
  return _from_betas(np.linspace(beta_start * scale, beta_end * scale, num_steps))


def cosine_alpha_bar(u: np.ndarray, s: float = 0.008) -> np.ndarray:
  """Nichol & Dhariwal (2021): f(u) / f(0), f(u) = cos^2((u + s) / (1 + s) * pi / 2)."""
  f = lambda v: np.cos((v + s) / (1 + s) * math.pi / 2) ** 2
  return f(u) / f(0.0)


def cosine_schedule(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
  u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  ab = cosine_alpha_bar(u, s)
  betas = np.clip(1.0 - ab[1:] / ab[:-1], 0.0, max_beta)
  return _from_betas(betas)


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "linear": linear_schedule,
    "cosine": cosine_schedule,
}


def get_schedule(name: str, num_steps: int = 1000) -> Schedule:
  if name not in SCHEDULES:
    raise ValueError(f"unknown noise schedule {name!r}; choose from {sorted(SCHEDULES)}")
  return SCHEDULES[name](num_steps)


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  """[B] -> [B, 1, ..., 1] to broadcast against x."""
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Draw from q(x_t | x_0): x0, noise [B, ...], t [B] int -> x_t [B, ...]."""
  ab = _bcast(schedule.alpha_bars[t], x0)
  return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise


def predict_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  """Invert q_sample given eps: x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)."""
  ab = _bcast(schedule.alpha_bars[t], x_t)
  return (x_t - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)


def predict_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
  """Invert q_sample given x0: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""
  ab = _bcast(schedule.alpha_bars[t], x_t)
  return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)


PREDICTIONS = ("eps", "v")


def v_target(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  """v = sqrt(ab) eps - sqrt(1 - ab) x0, so that x0 = sqrt(ab) x_t - sqrt(1 - ab) v."""
  ab = _bcast(schedule.alpha_bars[t], x0)
  return jnp.sqrt(ab) * eps - jnp.sqrt(1.0 - ab) * x0


def output_to_eps(prediction: str, schedule: Schedule, x_t: jax.Array, t: jax.Array,
                  out: jax.Array) -> jax.Array:
  """The network's output as an eps estimate, whatever it was trained to predict.

  `v`-prediction suits networks whose first layer folds p x p patches into fewer features
  than p * p * C (the default: 2 x 2 x 39 values into 64). Such a layer cannot carry white
  noise the size of x_t, and eps-prediction asks for exactly that at large t, where the x0
  estimate then divides its error by sqrt(ab) (x0 = x_t - ... over 0.006 at t = 999).
  With v, x0 = sqrt(ab) x_t - sqrt(1 - ab) v: near t = 0 the skip term carries x_t's
  detail and the network's error is scaled by sqrt(1 - ab); near t = T the network gives
  x0 itself, structured tissue rather than noise.
  """
  if prediction == "eps":
    return out
  if prediction == "v":
    ab = _bcast(schedule.alpha_bars[t], x_t)
    return jnp.sqrt(ab) * out + jnp.sqrt(1.0 - ab) * x_t
  raise ValueError(f"unknown prediction {prediction!r}; choose from {PREDICTIONS}")
