"""Channel attention: squeeze-and-excitation and channel self-attention, chosen by name."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx


class SqueezeExcite(nnx.Module):
  """SE gate: a = GAP(z); w = sigmoid(W2 relu(W1 a)); z' = w * z, w in (0, 1) per sample and channel.

  [B, H, W, D] -> [B, H, W, D].
  """

  def __init__(self, features: int, *, reduction: int = 4, rngs: nnx.Rngs):
    hidden = max(features // reduction, 4)
    self.fc1 = nnx.Linear(features, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, features, rngs=rngs)

  def gate(self, z: jax.Array) -> jax.Array:
    """The per-sample, per-channel weights w [B, 1, 1, D]."""
    a = jnp.mean(z.astype(jnp.float32), axis=(1, 2)).astype(z.dtype)  # [B, D], summed in f32
    w = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(a))))
    return w[:, None, None, :].astype(z.dtype)

  def __call__(self, z: jax.Array) -> jax.Array:
    return self.gate(z) * z


class ChannelSelfAttention(nnx.Module):
  """Self-attention whose tokens are the D feature channels (the paper's eq. 8), residual.

  Each channel's flattened H*W map is its feature vector. Queries and keys are those maps
  standardised per channel, scaled per head, so head h attends with logits
  tau_h * corr(z_i, z_j) * sqrt(H*W) (scaled dot product of the standardised maps).
  No parameter depends on H*W (a [H*W, d] projection would tie the model to one tile
  size) and none mixes channels, so the module is permutation-equivariant over channels.
  It costs two [D, D, H*W] matrix products per call: the Gram matrix, shared by all
  heads, and the mixing of the values. Heads are combined by learned weights g (zero at
  init, so the block starts as the identity) and act on the raw channel maps:
  z' = z + sum_h g_h A_h z. [B, H, W, D] -> [B, H, W, D].
  """

  def __init__(self, features: int, *, num_heads: int = 4, rngs: nnx.Rngs):
    # Temperatures spread over [0.5, 4] so heads start out from sharp to smooth.
    self.temperature = nnx.Param(jnp.geomspace(0.5, 4.0, num_heads))
    self.head_gate = nnx.Param(jnp.zeros((num_heads,)))

  def attention_weights(self, z: jax.Array) -> jax.Array:
    """A [B, heads, D, D]: row i is how channel i attends over channels j."""
    b, h, w, d = z.shape
    zf = z.reshape(b, h * w, d).astype(jnp.float32)
    zn = (zf - zf.mean(1, keepdims=True)) * jax.lax.rsqrt(zf.var(1, keepdims=True) + 1e-5)
    gram = jnp.einsum("bni,bnj->bij", zn.astype(z.dtype), zn.astype(z.dtype))
    logits = gram.astype(jnp.float32)[:, None] / math.sqrt(h * w)  # [B, 1, D, D]
    return jax.nn.softmax(logits * self.temperature[...][None, :, None, None], axis=-1)

  def __call__(self, z: jax.Array) -> jax.Array:
    b, h, w, d = z.shape
    a = self.attention_weights(z)
    # [B, D, D]; softmax in float32, mixing in z's dtype (float32 `a` would promote it).
    mix = jnp.einsum("bhij,h->bij", a.astype(z.dtype), self.head_gate[...].astype(z.dtype))
    out = jnp.einsum("bij,bnj->bni", mix, z.reshape(b, h * w, d))
    return z + out.reshape(b, h, w, d)


class VectorChannelSelfAttention(nnx.Module):
  """Channel self-attention for the vector variant (H = W = 1), residual.

  A single cell has one value per channel: too little for a token to attend with, and
  D x D attention over every hidden unit of every cell costs B * D^2 memory per layer.
  So tokens are the D / head_dim consecutive groups of `head_dim` channels, each with
  its values plus a learned token embedding (channel identity matters once there is no
  spatial map) as features; standard multi-head attention over those tokens, with a
  zero-initialised output projection. [B, 1, 1, D] -> [B, 1, 1, D].
  """

  def __init__(self, features: int, *, num_heads: int = 4, head_dim: int = 16,
               rngs: nnx.Rngs):
    f = math.gcd(features, head_dim)
    self.token_dim = f
    self.num_heads = num_heads
    n = features // f
    init = nnx.initializers.lecun_normal()
    self.embed = nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (n, f)))
    self.qkv = nnx.Param(init(rngs.params(), (f, 3, num_heads, f)))
    self.out = nnx.Param(jnp.zeros((num_heads, f, f)))

  def attention_weights(self, z: jax.Array) -> jax.Array:
    """A [B, heads, T, T] over the T = D / token_dim channel-group tokens."""
    q, k, _ = self._qkv(z)
    logits = jnp.einsum("bihf,bjhf->bhij", q, k).astype(jnp.float32)
    return jax.nn.softmax(logits / math.sqrt(self.token_dim), axis=-1)

  def _qkv(self, z: jax.Array):
    b = z.shape[0]
    tokens = z.reshape(b, -1, self.token_dim)  # [B, T, F]
    qkv = jnp.einsum("btf,fchg->cbthg", tokens + self.embed[...].astype(z.dtype),
                     self.qkv[...].astype(z.dtype))
    return qkv[0], qkv[1], qkv[2]

  def __call__(self, z: jax.Array) -> jax.Array:
    q, k, v = self._qkv(z)
    a = self.attention_weights(z).astype(z.dtype)
    out = jnp.einsum("bhij,bjhf,hfg->big", a, v, self.out[...].astype(z.dtype))
    return z + out.reshape(z.shape)


class Identity(nnx.Module):

  def __call__(self, z: jax.Array) -> jax.Array:
    return z


def _self(features, *, num_heads, spatial, head_dim, se_reduction, rngs):
  if spatial:
    return ChannelSelfAttention(features, num_heads=num_heads, rngs=rngs)
  return VectorChannelSelfAttention(features, num_heads=num_heads, head_dim=head_dim, rngs=rngs)


def _se(features, *, num_heads, spatial, head_dim, se_reduction, rngs):
  return SqueezeExcite(features, reduction=se_reduction, rngs=rngs)


def _none(features, **_):
  return Identity()


CHANNEL_ATTENTION: dict[str, Callable[..., nnx.Module]] = {
    "self": _self,
    "se": _se,
    "none": _none,
}


def make_channel_attention(kind: str, features: int, *, num_heads: int = 4, spatial: bool = True,
                           head_dim: int = 16, se_reduction: int = 4,
                           rngs: nnx.Rngs) -> nnx.Module:
  """Channel attention of the named kind, [B, H, W, D] -> [B, H, W, D]."""
  if kind not in CHANNEL_ATTENTION:
    raise ValueError(f"unknown channel attention {kind!r}; choose from {sorted(CHANNEL_ATTENTION)}")
  return CHANNEL_ATTENTION[kind](features, num_heads=num_heads, spatial=spatial,
                                 head_dim=head_dim, se_reduction=se_reduction, rngs=rngs)
