"""The latent space of diffusion: a frozen per-channel autoencoder plus the standardisation of
its latents, so the diffusion model sees [B, h, w, C*k] features of unit scale.

Channel c owns features c*k .. c*k + k - 1 (see `model.autoencoder`), so a per-channel
mask [..., C] becomes a per-feature one by repeating each entry k times (`expand`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
  from multichan_diff.model.autoencoder import ChannelAutoencoder


@dataclasses.dataclass(frozen=True)
class LatentStats:
  """Per-feature mean and std [C*k] of the training tiles' raw latents; lo, hi [C*k] the
  range of the standardised ones (the samplers' x0 clip)."""

  mean: np.ndarray
  std: np.ndarray
  lo: np.ndarray
  hi: np.ndarray

  def to_dict(self) -> dict:
    return {f: np.asarray(getattr(self, f)).tolist() for f in ("mean", "std", "lo", "hi")}

  @classmethod
  def from_dict(cls, d: dict) -> "LatentStats":
    return cls(*(np.asarray(d[f], np.float32) for f in ("mean", "std", "lo", "hi")))


def expand(mask: jax.Array | np.ndarray, k: int, xp=jnp):
  """[..., C] -> [..., C*k]: each channel's entry for each of its k latent features."""
  return xp.repeat(mask, k, axis=-1)


class LatentCodec:
  """Pixels [B, H, W, C] (normalised) <-> standardised latents [B, H/f, W/f, C*k]."""

  def __init__(self, autoencoder: "ChannelAutoencoder", stats: LatentStats):
    self.autoencoder = autoencoder
    self.k = autoencoder.cfg.latent_channels
    self.factor = autoencoder.cfg.factor
    self.stats = stats
    self._mean = jnp.asarray(stats.mean, jnp.float32)
    self._std = jnp.asarray(stats.std, jnp.float32)

  def encode(self, x: jax.Array) -> jax.Array:
    return (self.autoencoder.encode(x) - self._mean) / self._std

  def decode(self, z: jax.Array, features: jax.Array | None = None) -> jax.Array:
    """z [B, h, w, m*k] -> [B, H, W, m]: all channels, or those whose latent features
    (indices into C*k) `features` lists (decoding only the channels one needs)."""
    mean, std = ((self._mean, self._std) if features is None
                 else (self._mean[features], self._std[features]))
    return self.autoencoder.decode(z * std + mean)

  def expand(self, mask: jax.Array) -> jax.Array:
    return expand(mask, self.k)
