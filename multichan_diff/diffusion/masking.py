"""Random channel masking (the paper's Algorithm 1), the one implementation of it.

Each *present* channel is observed with probability p. Whenever a sample has two or
more present channels, at least one is observed and at least one is missing: if the
Bernoulli draw observed none, the present channel with the smallest uniform is turned
on; if it observed all, the one with the largest uniform is turned off. Channels absent
from a sample's dataset (union panels) are never observed. Deterministic in the key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def observed_from_uniforms(u, prob, present, xp=jnp):
  """The rule itself, on given uniforms u [..., C] and probabilities prob [..., 1] or scalar.

  `xp` is `jax.numpy` or `numpy`, so the training step (JAX keys) and the data pipeline
  (numpy generators, one per record) share this one implementation.
  """
  present = present.astype(bool)
  observed = (u < prob) & present
  n_present = present.sum(-1, keepdims=True)
  ch = xp.arange(present.shape[-1])
  # Present channel with the smallest / largest uniform (absent ones pushed out of reach).
  first = xp.argmin(xp.where(present, u, 2.0), axis=-1)[..., None] == ch
  last = xp.argmax(xp.where(present, u, -1.0), axis=-1)[..., None] == ch
  n_obs = observed.sum(-1, keepdims=True)
  need_two = n_present >= 2
  observed = xp.where(need_two & (n_obs == 0), observed | first, observed)
  observed = xp.where(need_two & (n_obs == n_present), observed & ~last, observed)
  return observed


def sample_observed(key: jax.Array, present: jax.Array,
                    p: float | tuple[float, float] = 0.5) -> jax.Array:
  """present [..., C] bool -> observed [..., C] bool, from a JAX key.

  p: a fixed probability, or a (low, high) range from which each sample draws its own
  p uniformly (varying how much is observed across samples, as test-time users do).
  """
  k_p, k_u = jax.random.split(key)
  if isinstance(p, (tuple, list)):
    prob = jax.random.uniform(k_p, present.shape[:-1] + (1,), minval=p[0], maxval=p[1])
  else:
    prob = jnp.asarray(p, jnp.float32)
  return observed_from_uniforms(jax.random.uniform(k_u, present.shape), prob, present)


def sample_observed_np(rng: np.random.Generator, present: np.ndarray,
                       p: float | tuple[float, float] = 0.5) -> np.ndarray:
  """The same rule from a numpy generator (the data pipeline's per-record seed)."""
  present = np.asarray(present, bool)
  if isinstance(p, (tuple, list)):
    prob = rng.uniform(p[0], p[1], present.shape[:-1] + (1,))
  else:
    prob = p
  return observed_from_uniforms(rng.random(present.shape), prob, present, xp=np)


def mask_condition(x0: jax.Array, observed: jax.Array, shift: jax.Array | None = None,
                   scale: jax.Array | None = None) -> jax.Array:
  """c = x0 on observed channels, exactly 0 elsewhere: x0 [B, H, W, C], observed [B, C].

  With shift and scale [B, C] (a FOV's own channel mean and std), the observed channels
  are standardised first: c = (x0 - shift) / scale there, still 0 elsewhere.
  """
  if shift is not None:
    x0 = (x0 - shift[:, None, None, :].astype(x0.dtype)) / scale[:, None, None, :].astype(x0.dtype)
  return jnp.where(observed[:, None, None, :], x0, jnp.zeros_like(x0))
