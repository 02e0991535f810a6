"""Building blocks of D and E: timestep embedding, residual block, resampling."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding of a (possibly continuous) noise level t [B] -> [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def group_count(width: int, groups: int) -> int:
  """Largest divisor of `width` not above `groups` (GroupNorm needs width % groups == 0)."""
  g = max(1, min(groups, width))
  while width % g:
    g -= 1
  return g


def conv(in_f: int, out_f: int, *, spatial: bool, rngs: nnx.Rngs, kernel: int = 3,
         stride: int = 1, zero_init: bool = False, dtype=jnp.float32) -> nnx.Conv:
  """A SAME-padded conv; the vector variant (H = W = 1) uses 1x1 kernels throughout."""
  k = kernel if spatial else 1
  extra = {"kernel_init": nnx.initializers.zeros_init()} if zero_init else {}
  return nnx.Conv(in_f, out_f, kernel_size=(k, k), strides=(stride, stride), padding="SAME",
                  dtype=dtype, rngs=rngs, **extra)


def make_norm(kind: str, features: int, groups: int, rngs: nnx.Rngs) -> nnx.Module:
  """'group': GroupNorm over (H, W, channel group); 'pixel': LayerNorm over channels."""
  if kind == "group":
    return nnx.GroupNorm(features, num_groups=group_count(features, groups), rngs=rngs)
  if kind == "pixel":
    return nnx.LayerNorm(features, rngs=rngs)
  raise ValueError(f"unknown norm {kind!r}; choose 'group' or 'pixel'")


class ResBlock(nnx.Module):
  """Norm-SiLU-Conv twice, timestep added in between, 1x1 skip when widths differ.

  [B, H, W, in_f] -> [B, H, W, out_f]. Without `temb_dim` (the contextual network) the
  block is time-independent, so E(c) can be computed once per sampling run.
  norm='group' is GroupNorm (statistics over the whole map); norm='pixel' normalises
  each pixel over its channels (LayerNorm), which keeps the block a *local* function of
  its input: E uses it so that E_l(c) at a pixel depends only on c near that pixel.
  """

  def __init__(self, in_f: int, out_f: int, *, temb_dim: int | None, groups: int,
               spatial: bool, dropout: float, rngs: nnx.Rngs, norm: str = "group",
               dtype=jnp.float32):
    self.norm1 = make_norm(norm, in_f, groups, rngs)
    self.conv1 = conv(in_f, out_f, spatial=spatial, rngs=rngs, dtype=dtype)
    self.temb = nnx.Linear(temb_dim, out_f, rngs=rngs, dtype=dtype) if temb_dim else None
    self.norm2 = make_norm(norm, out_f, groups, rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
    # Zero-initialised last conv: every block starts as the identity (skip) map.
    self.conv2 = conv(out_f, out_f, spatial=spatial, rngs=rngs, zero_init=True, dtype=dtype)
    self.skip = (conv(in_f, out_f, spatial=spatial, kernel=1, rngs=rngs, dtype=dtype)
                 if in_f != out_f else None)

  def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
    h = self.conv1(nnx.silu(self.norm1(x)))
    if self.temb is not None:
      h = h + self.temb(nnx.silu(temb))[:, None, None, :]
    h = nnx.silu(self.norm2(h))
    if self.dropout is not None:
      h = self.dropout(h)
    h = self.conv2(h)
    return h + (self.skip(x) if self.skip is not None else x)


class Downsample(nnx.Module):
  """Strided 3x3 conv: [B, H, W, F] -> [B, ceil(H/2), ceil(W/2), F] (odd sizes welcome)."""

  def __init__(self, features: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.conv = conv(features, features, spatial=True, stride=2, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(x)


class Upsample(nnx.Module):
  """Nearest x2, cropped to the skip's size, then a 3x3 conv: [B, h, w, F] -> [B, H, W, F]."""

  def __init__(self, features: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.conv = conv(features, features, spatial=True, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, size: tuple[int, int]) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)[:, : size[0], : size[1]]
    return self.conv(x)
