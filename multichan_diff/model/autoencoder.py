"""A per-channel tile autoencoder: each protein channel is encoded alone, with shared weights.

[B, H, W, C] -> latents [B, H/f, W/f, C*k] -> [B, H, W, C], f = 2^len(widths). Channel c's
k latent features sit at positions c*k .. c*k + k - 1, and the networks see every channel as
a separate one-channel image (the channel axis folded into the batch), so a channel's latent
depends on that channel's pixels only: masking a channel in pixel space masks exactly its k
latent features, and any panel size C works with the same weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from multichan_diff.model.blocks import Downsample, ResBlock, Upsample, conv, make_norm
from multichan_diff.model.config import from_mapping


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """latent_channels: k per protein channel; widths: one stride-2 stage each (64 -> 16
  with two); blocks: residual blocks per stage; norm_groups: GroupNorm groups."""

  latent_channels: int = 4
  widths: tuple[int, ...] = (32, 64)
  blocks: int = 1
  norm_groups: int = 8

  def __post_init__(self):
    if self.latent_channels < 1 or not self.widths or self.blocks < 1:
      raise ValueError(f"bad autoencoder config {self}: latent_channels and blocks must be "
                       ">= 1 and widths must name at least one stage")

  @property
  def factor(self) -> int:
    return 2 ** len(self.widths)

  @classmethod
  def from_mapping(cls, mapping: Mapping[str, Any]) -> "AutoencoderConfig":
    return from_mapping(cls, mapping, "autoencoder config")


def _fold(x: jax.Array, k: int = 1) -> jax.Array:
  """[B, H, W, C*k] -> [B*C, H, W, k]: every channel its own image of k features."""
  b, h, w, ck = x.shape
  return x.reshape(b, h, w, ck // k, k).transpose(0, 3, 1, 2, 4).reshape(-1, h, w, k)


def _unfold(y: jax.Array, b: int) -> jax.Array:
  """[B*C, h, w, k] -> [B, h, w, C*k], channel c's k features adjacent."""
  bc, h, w, k = y.shape
  return y.reshape(b, bc // b, h, w, k).transpose(0, 2, 3, 1, 4).reshape(b, h, w, -1)


class ChannelAutoencoder(nnx.Module):
  """encode [B, H, W, C] -> [B, H/f, W/f, C*k]; decode back; H, W multiples of f."""

  def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    w, g, k = cfg.widths, cfg.norm_groups, cfg.latent_channels
    block = lambda a, b: ResBlock(a, b, temb_dim=None, groups=g, spatial=True, dropout=0.0,
                                  rngs=rngs)
    self.enc_in = conv(1, w[0], spatial=True, rngs=rngs)
    self.enc = nnx.List()
    for i, width in enumerate(w):
      prev = w[max(i - 1, 0)]
      self.enc.append(nnx.List([block(prev if j == 0 else width, width)
                                for j in range(cfg.blocks)] + [Downsample(width, rngs=rngs)]))
    self.enc_norm = make_norm("group", w[-1], g, rngs)
    self.enc_out = conv(w[-1], k, spatial=True, kernel=1, rngs=rngs)
    self.dec_in = conv(k, w[-1], spatial=True, rngs=rngs)
    self.dec = nnx.List()
    for i in reversed(range(len(w))):
      nxt = w[max(i - 1, 0)]
      self.dec.append(nnx.List([Upsample(w[i], rngs=rngs)] + [
          block(w[i], nxt if j == cfg.blocks - 1 else w[i]) for j in range(cfg.blocks)]))
    self.dec_norm = make_norm("group", w[0], g, rngs)
    self.dec_out = conv(w[0], 1, spatial=True, rngs=rngs)

  def encode(self, x: jax.Array) -> jax.Array:
    """x [B, H, W, C] -> z [B, H/f, W/f, C*k]."""
    f = self.cfg.factor
    if x.ndim != 4 or x.shape[1] % f or x.shape[2] % f:
      raise ValueError(f"tiles of shape {x.shape}: need [B, H, W, C] with H and W multiples "
                       f"of {f}")
    h = self.enc_in(_fold(x))
    for stage in self.enc:
      for layer in stage:
        h = layer(h)
    return _unfold(self.enc_out(nnx.silu(self.enc_norm(h))), x.shape[0])

  def decode(self, z: jax.Array) -> jax.Array:
    """z [B, h, w, C*k] -> x [B, h*f, w*f, C]."""
    b, hh, ww, ck = z.shape
    k = self.cfg.latent_channels
    if ck % k:
      raise ValueError(f"latents of shape {z.shape}: the last axis must be C * {k}")
    h = self.dec_in(_fold(z, k))
    for stage in self.dec:
      up, *blocks = stage
      h = up(h, (h.shape[1] * 2, h.shape[2] * 2))
      for blk in blocks:
        h = blk(h)
    y = self.dec_out(nnx.silu(self.dec_norm(h)))  # [B*C, H, W, 1]
    return _unfold(y, b)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """-> (reconstruction [B, H, W, C], latents [B, H/f, W/f, C*k])."""
    z = self.encode(x)
    return self.decode(z), z


def build_autoencoder(cfg: AutoencoderConfig, seed: int = 0) -> ChannelAutoencoder:
  return ChannelAutoencoder(cfg, rngs=nnx.Rngs(params=seed))


def reconstruction_loss(beta: float = 1e-3, channels_per_tile: int | None = 4):
  """-> loss_fn(model, batch, key) -> (loss, metrics) for the train step: the MSE of the
  reconstruction plus beta * mean(z^2), which keeps the latents near unit scale (the
  diffusion model's noise scale) without a KL's sampling noise.

  The networks see one channel at a time, so a step needs no tile's whole panel: each tile
  contributes `channels_per_tile` of its present channels, drawn at random (None: all),
  which makes a step about C / channels_per_tile times cheaper at the same batch of tiles.
  """

  def loss_fn(model, batch, key):
    x = batch["x0"]
    b, h, w, c = x.shape
    present = batch.get("present", jnp.ones((b, c), bool)).astype(bool)
    if channels_per_tile is not None and channels_per_tile < c:
      # Random present channels first (absent ones get -1), the first m of each row kept.
      u = jnp.where(present, jax.random.uniform(key, (b, c)), -1.0)
      idx = jnp.argsort(-u, axis=-1)[:, :channels_per_tile]  # [B, m]
      x = jnp.take_along_axis(x, idx[:, None, None, :], axis=-1)
      present = jnp.take_along_axis(present, idx, axis=-1)
    rec, z = model(x)
    wgt = present.astype(jnp.float32)[:, None, None, :]  # union stores: absent channels
    mse = jnp.sum(jnp.square(rec - x) * wgt) / (jnp.maximum(jnp.sum(wgt), 1.0) * h * w)
    reg = jnp.mean(jnp.square(z))
    loss = mse + beta * reg
    return loss, {"loss": loss, "mse": mse, "latent_sq": reg}

  return loss_fn
