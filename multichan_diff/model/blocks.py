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


# XLA's CPU convolution is pathologically slow on small maps with many channels (2 x 2 x 384:
# 14x the matmul form, forward and backward). On large maps the matmul form (im2col) holds
# k*k shifted copies (2-2.6x a 64 x 64 train step's peak memory) and is no faster (up to 3x
# slower with the cores shared). Maps at least this many pixels on a side convolve.
CONVOLVE_FROM = 8


def _conv_im2col(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """SAME conv as one matrix product over the k*k shifted copies (memory for speed)."""
  k, _, in_f, out_f = kernel.shape
  s = stride
  _, h, w, _ = x.shape
  ho, wo = -(-h // s), -(-w // s)
  if k > 1:
    # SAME padding as XLA computes it for this stride.
    ph, pw = max((ho - 1) * s + k - h, 0), max((wo - 1) * s + k - w, 0)
    x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    x = jnp.concatenate([x[:, dy:dy + (ho - 1) * s + 1:s, dx:dx + (wo - 1) * s + 1:s]
                         for dy in range(k) for dx in range(k)], axis=-1)
  elif s > 1:
    x = x[:, ::s, ::s]
  return x @ kernel.reshape(k * k * in_f, out_f)


def _conv_xla(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv(nnx.Module):
  """A SAME-padded k x k convolution, NHWC: XLA's convolution on maps of `CONVOLVE_FROM`
  pixels a side or more, one matrix product (im2col) on smaller ones and for 1x1 kernels.

  `dtype` None computes in the promotion of the input's and the kernel's dtypes (bfloat16
  when both are), as flax layers do; a fixed float32 would silently undo bfloat16 compute.
  """

  def __init__(self, in_f: int, out_f: int, *, kernel: int = 3, stride: int = 1,
               zero_init: bool = False, rngs: nnx.Rngs, dtype=None):
    init = (nnx.initializers.zeros_init() if zero_init
            else nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"))
    self.kernel = nnx.Param(init(rngs.params(), (kernel, kernel, in_f, out_f)))
    self.bias = nnx.Param(jnp.zeros((out_f,)))
    self.stride = stride
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = jnp.result_type(x, self.kernel[...]) if self.dtype is None else self.dtype
    x, kern = x.astype(dtype), self.kernel[...].astype(dtype)
    large = kern.shape[0] > 1 and min(x.shape[1:3]) >= CONVOLVE_FROM
    y = (_conv_xla if large else _conv_im2col)(x, kern, self.stride)
    return y + self.bias[...].astype(dtype)


def conv(in_f: int, out_f: int, *, spatial: bool, rngs: nnx.Rngs, kernel: int = 3,
         stride: int = 1, zero_init: bool = False, dtype=None) -> Conv:
  """A SAME-padded conv; the vector variant (H = W = 1) uses 1x1 kernels throughout."""
  return Conv(in_f, out_f, kernel=kernel if spatial else 1, stride=stride, zero_init=zero_init,
              rngs=rngs, dtype=dtype)


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
               dtype=None):
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


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, ceil(H/p), ceil(W/p), p*p*C]: each p x p patch becomes one position.

  Zero-pads H and W up to multiples of p. Patch contents stay in place, so features at a
  position are still aligned with the same pixels of x and c.
  """
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
  hp, wp = x.shape[1] // p, x.shape[2] // p
  x = x.reshape(b, hp, p, wp, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, hp, wp, p * p * c)


def depth_to_space(x: jax.Array, p: int, size: tuple[int, int]) -> jax.Array:
  """Inverse of `space_to_depth`, cropped to `size`: [B, h, w, p*p*C] -> [B, H, W, C]."""
  if p == 1:
    return x
  b, hp, wp, pc = x.shape
  c = pc // (p * p)
  x = x.reshape(b, hp, wp, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, hp * p, wp * p, c)[:, : size[0], : size[1]]


class Downsample(nnx.Module):
  """Strided 3x3 conv: [B, H, W, F] -> [B, ceil(H/2), ceil(W/2), F] (odd sizes welcome)."""

  def __init__(self, features: int, *, rngs: nnx.Rngs, dtype=None):
    self.conv = conv(features, features, spatial=True, stride=2, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(x)


class Upsample(nnx.Module):
  """Nearest x2, cropped to the skip's size, then a 3x3 conv: [B, h, w, F] -> [B, H, W, F]."""

  def __init__(self, features: int, *, rngs: nnx.Rngs, dtype=None):
    self.conv = conv(features, features, spatial=True, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, size: tuple[int, int]) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)[:, : size[0], : size[1]]
    return self.conv(x)
