"""Conditional samplers: DDPM ancestral, DDIM and a distilled one-step generator, by name.

A sampler sees the network only as `denoise(x_t, t) -> eps_hat` (a closure over the
condition's features, which are computed once per run). Observed target channels are
clamped: at every step they are set to a forward-noised copy of their known values
(one noise draw per run), as the network saw them in training, and the returned x0
carries them unchanged.

`x0_range` (lo [C], hi [C]) clips each step's x0 estimate to the range the data can take
(normalised images are bounded: counts >= 0 and a clip percentile) and re-derives eps from
it. At large t the estimate divides the network's error by sqrt(alpha_bar) (about 0.006 at
t = 999 of the linear schedule), and without the clip a half-trained model's first steps
throw the chain far outside the data.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from multichan_diff.diffusion.schedules import Schedule, output_to_eps, predict_x0

Denoise = Callable[[jax.Array, jax.Array], jax.Array]


def timestep_pairs(num_train_steps: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Evenly spaced (t, t_prev) pairs from T-1 down to 0, then t_prev = -1 (clean data)."""
  if not 1 <= steps <= num_train_steps:
    raise ValueError(f"steps must be in [1, {num_train_steps}], got {steps}")
  # Spaced from the top, so one step is t = T - 1 (pure noise), not t = 0.
  ts = np.unique(np.round(np.linspace(num_train_steps - 1, 0, steps)).astype(np.int32))[::-1]
  return ts, np.append(ts[1:], -1).astype(np.int32)


def _clamp(x: jax.Array, known: jax.Array | None, value: jax.Array | None) -> jax.Array:
  if known is None:
    return x
  return jnp.where(known[:, None, None, :], value, x)


def _run(step_fn, schedule: Schedule, denoise: Denoise, key: jax.Array, shape, steps: int,
         x_known: jax.Array | None, known: jax.Array | None, x0_range=None) -> jax.Array:
  """The loop both samplers share: start from noise, clamp known channels, scan steps."""
  ts, ts_prev = timestep_pairs(schedule.num_steps, steps)
  k_init, k_known, k_steps = jax.random.split(key, 3)
  eps_known = jax.random.normal(k_known, shape)
  ab_all = jnp.concatenate([schedule.alpha_bars, jnp.ones((1,))])  # index -1 -> clean data

  def noisy_known(t):
    if known is None:
      return None
    ab = ab_all[t]
    return jnp.sqrt(ab) * x_known + jnp.sqrt(1.0 - ab) * eps_known

  x = _clamp(jax.random.normal(k_init, shape), known, noisy_known(ts[0]))

  def body(x, inp):
    t, t_prev, k = inp
    tb = jnp.full((shape[0],), t)
    eps = denoise(x, tb.astype(jnp.float32))
    x0 = predict_x0(schedule, x, tb, eps)
    if x0_range is not None:
      ab = ab_all[t]
      x0 = jnp.clip(x0, x0_range[0], x0_range[1])
      eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
    x = step_fn(x, x0, eps, ab_all[t], ab_all[t_prev], t_prev, k)
    return _clamp(x, known, noisy_known(t_prev)), None

  keys = jax.random.split(k_steps, len(ts))
  x, _ = jax.lax.scan(body, x, (jnp.asarray(ts), jnp.asarray(ts_prev), keys))
  return x


def _ddpm_step(x, x0, eps, ab, ab_prev, t_prev, key):
  """Ancestral step of the respaced chain: the Gaussian posterior q(x_prev | x_t, x0)."""
  beta = 1.0 - ab / ab_prev
  mean = (jnp.sqrt(ab_prev) * beta / (1.0 - ab)) * x0 + (
      jnp.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab)) * x
  var = beta * (1.0 - ab_prev) / (1.0 - ab)
  noise = jax.random.normal(key, x.shape)
  return mean + jnp.where(t_prev >= 0, jnp.sqrt(var), 0.0) * noise


def _ddim_step(x, x0, eps, ab, ab_prev, t_prev, key):
  """Deterministic DDIM (eta = 0): x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps."""
  return jnp.sqrt(ab_prev) * x0 + jnp.sqrt(1.0 - ab_prev) * eps


def ddpm_sample(schedule: Schedule, denoise: Denoise, key: jax.Array, shape, *, steps: int = 500,
                x_known: jax.Array | None = None, known: jax.Array | None = None,
                x0_range=None) -> jax.Array:
  """Ancestral sampling with `steps` evenly respaced steps (500 in the paper)."""
  return _run(_ddpm_step, schedule, denoise, key, shape, steps, x_known, known, x0_range)


def ddim_sample(schedule: Schedule, denoise: Denoise, key: jax.Array, shape, *, steps: int = 50,
                x_known: jax.Array | None = None, known: jax.Array | None = None,
                x0_range=None) -> jax.Array:
  """Deterministic DDIM with any number of steps."""
  return _run(_ddim_step, schedule, denoise, key, shape, steps, x_known, known, x0_range)


def onestep_sample(schedule: Schedule, denoise: Denoise, key: jax.Array, shape, *,
                   t_init: int, steps: int = 1, x_known: jax.Array | None = None,
                   known: jax.Array | None = None, x0_range=None) -> jax.Array:
  """A distilled one-step generator (SiD): x0 = G(z), the network's x0 estimate at t_init
  from pure noise z (known channels at their t_init-noised values). `steps` must be 1."""
  if steps != 1:
    raise ValueError(f"the one-step sampler takes 1 step, not {steps}")
  k_init, k_known = jax.random.split(key)
  ab = schedule.alpha_bars[t_init]
  x = jax.random.normal(k_init, shape)
  if known is not None:
    noisy = jnp.sqrt(ab) * x_known + jnp.sqrt(1.0 - ab) * jax.random.normal(k_known, shape)
    x = _clamp(x, known, noisy)
  tb = jnp.full((shape[0],), t_init)
  x0 = predict_x0(schedule, x, tb, denoise(x, tb.astype(jnp.float32)))
  if x0_range is not None:
    x0 = jnp.clip(x0, x0_range[0], x0_range[1])
  return _clamp(x0, known, x_known)


SAMPLERS: dict[str, Callable[..., jax.Array]] = {"ddpm": ddpm_sample, "ddim": ddim_sample,
                                                 "onestep": onestep_sample}
DEFAULT_STEPS = {"ddpm": 500, "ddim": 50, "onestep": 1}


def get_sampler(name: str) -> Callable[..., jax.Array]:
  if name not in SAMPLERS:
    raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
  return SAMPLERS[name]


def sample_posterior(model, schedule: Schedule, key: jax.Array, cond: jax.Array,
                     cond_mask: jax.Array, target_shape, *, sampler: str = "ddim",
                     steps: int | None = None, num_samples: int = 1,
                     x_known: jax.Array | None = None,
                     known: jax.Array | None = None, x0_range=None,
                     prediction: str = "eps", **sampler_kw) -> dict[str, jax.Array]:
  """K samples per condition in one batched call -> samples [K, B, ...], mean, std.

  model: has `encode_condition(cond, cond_mask)` and `denoise(x_t, t, ctx)`; E(c) is
  computed once for the B conditions and tiled K times. target_shape: [B, H, W, C].
  x_known / known [B, C]: target channels to clamp (images: the observed ones).
  x0_range: optional (lo, hi) bounds of the data (see the module docstring), [C] or one
  per condition [B, 1, 1, C].
  prediction: what the network outputs ("eps" or "v"); samplers see it as eps.
  sampler_kw: the sampler's own settings (onestep: t_init).
  """
  fn = get_sampler(sampler)
  steps = DEFAULT_STEPS[sampler] if steps is None else steps
  k = num_samples
  b = target_shape[0]
  ctx = model.encode_condition(cond, cond_mask)
  tile = lambda a: None if a is None else jnp.tile(a, (k,) + (1,) * (a.ndim - 1))
  ctx = jax.tree.map(tile, ctx)
  if x0_range is not None and jnp.ndim(x0_range[0]) == len(target_shape):
    x0_range = tuple(tile(jnp.asarray(a)) for a in x0_range)
  denoise = lambda x_t, t: output_to_eps(prediction, schedule, x_t, t.astype(jnp.int32),
                                        model.denoise(x_t, t, ctx))
  shape = (k * b,) + tuple(target_shape[1:])
  x = fn(schedule, denoise, key, shape, steps=steps, x_known=tile(x_known), known=tile(known),
         x0_range=x0_range, **sampler_kw)
  samples = x.reshape((k, b) + tuple(target_shape[1:]))
  # Known channels are exact in every sample; say so exactly (no rounding in mean / std).
  mean = _clamp(samples.mean(0), known, x_known)
  std = _clamp(samples.std(0), known, jnp.zeros_like(mean))
  return {"samples": samples, "mean": mean, "std": std}
