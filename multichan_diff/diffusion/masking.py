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


def sample_observed(key: jax.Array, present: jax.Array,
                    p: float | tuple[float, float] = 0.5) -> jax.Array:
  """present [..., C] bool -> observed [..., C] bool.

  p: a fixed probability, or a (low, high) range from which each sample draws its own
  p uniformly (varying how much is observed across samples, as test-time users do).
  """
  present = present.astype(bool)
  k_p, k_u = jax.random.split(key)
  if isinstance(p, (tuple, list)):
    lo, hi = p
    prob = jax.random.uniform(k_p, present.shape[:-1] + (1,), minval=lo, maxval=hi)
  else:
    prob = jnp.asarray(p, jnp.float32)
  u = jax.random.uniform(k_u, present.shape)
  observed = (u < prob) & present
  n_present = present.sum(-1, keepdims=True)
  C = present.shape[-1]
  ch = jnp.arange(C)
  # Present channel with the smallest / largest uniform (absent ones pushed out of reach).
  first = jnp.argmin(jnp.where(present, u, 2.0), axis=-1)[..., None] == ch
  last = jnp.argmax(jnp.where(present, u, -1.0), axis=-1)[..., None] == ch
  n_obs = observed.sum(-1, keepdims=True)
  need_two = n_present >= 2
  observed = jnp.where(need_two & (n_obs == 0), observed | first, observed)
  observed = jnp.where(need_two & (n_obs == n_present), observed & ~last, observed)
  return observed


def mask_condition(x0: jax.Array, observed: jax.Array) -> jax.Array:
  """c = x0 on observed channels, exactly 0 elsewhere: x0 [B, H, W, C], observed [B, C]."""
  return jnp.where(observed[:, None, None, :], x0, jnp.zeros_like(x0))
