"""The conditional diffusion network: contextual network E beside diffusion UNet D.

One module family serves both data kinds, selected by `ModelConfig.spatial`:

* images: x_t, c [B, H, W, C], a UNet with stride-2 down/up-sampling;
* single cells (the vector variant): x_t [B, 1, 1, C_protein], c [B, 1, 1, C_gene]. Same
  blocks with 1x1 kernels and no resampling: each "level" is a residual stage of its own
  width, so the UNet becomes a residual MLP with long skips, E injects at every stage
  through the same `se` / `add` / `none` injections, and channel attention (`self` with
  learned channel embeddings, `se`, `none`) and the output attention are the same classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from multichan_diff.model.attention import SqueezeExcite, make_channel_attention
from multichan_diff.model.blocks import (Conv, Downsample, ResBlock, Upsample, conv, depth_to_space,
                                         group_count, space_to_depth, timestep_embedding)
from multichan_diff.model.config import ModelConfig
from multichan_diff.model.injection import make_injection

Context = list[jax.Array] | None  # E_l(c), one [B, H_l, W_l, widths[l]] per level


def _check_channels(name: str, x: jax.Array, expected: int):
  if x.ndim != 4 or x.shape[-1] != expected:
    raise ValueError(f"{name} has shape {x.shape}; the model expects [B, H, W, {expected}]")


class OutputChannelAttention(nnx.Module):
  """y_attn = y + Conv1x1(SE(y)) over the C semantic output channels (eq. 9)."""

  def __init__(self, channels: int, *, se_reduction: int, rngs: nnx.Rngs):
    self.se = SqueezeExcite(channels, reduction=se_reduction, rngs=rngs)
    self.proj = Conv(channels, channels, kernel=1, zero_init=True, rngs=rngs)

  def __call__(self, y: jax.Array) -> jax.Array:
    return y + self.proj(self.se(y))


class LinearHead(nnx.Module):
  """c [B, 1, 1, Cc] -> c @ w + b [B, 1, 1, C]. Its parameters are set in closed form
  (`train.ridge`) and receive no gradient: the optimiser and EMA leave them as set."""

  def __init__(self, in_channels: int, out_channels: int):
    self.w = nnx.Param(jnp.zeros((in_channels, out_channels), jnp.float32))
    self.b = nnx.Param(jnp.zeros((out_channels,), jnp.float32))

  def __call__(self, cond: jax.Array) -> jax.Array:
    w, b = jax.lax.stop_gradient(self.w[...]), jax.lax.stop_gradient(self.b[...])
    return jnp.asarray(cond, jnp.float32) @ w + b


class ContextNet(nnx.Module):
  """E: [B, H, W, Cc (+ Cc mask)] -> [E_l(c)] with E_l the size and width of D_l.

  No pooling beyond the same stride-2 steps D takes, so E_l stays pixel-aligned with D_l,
  and per-pixel normalisation, so E_l(c) at a pixel is a function of c within its
  receptive field only. Time-independent: computed once per condition, reused at every
  sampling step.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    in_f = cfg.condition_channels * (2 if cfg.use_mask_input else 1) * cfg.patch_size ** 2
    w = cfg.widths
    self.patch_size = cfg.patch_size
    self.stem = conv(in_f, w[0], spatial=cfg.spatial, rngs=rngs)
    self.levels = nnx.List()
    self.downs = nnx.List()
    for lvl, width in enumerate(w):
      prev = w[max(lvl - 1, 0)]
      blocks = nnx.List([
          ResBlock(prev if i == 0 else width, width, temb_dim=None, groups=cfg.norm_groups,
                   spatial=cfg.spatial, dropout=cfg.dropout, norm="pixel", rngs=rngs)
          for i in range(cfg.context_blocks)])
      self.levels.append(blocks)
      self.downs.append(Downsample(width, rngs=rngs)
                        if cfg.spatial and lvl < len(w) - 1 else None)
    self.use_mask_input = cfg.use_mask_input

  def __call__(self, cond: jax.Array, observed: jax.Array) -> list[jax.Array]:
    # cond [B, H, W, Cc] with missing channels zeroed; observed [B, Cc] in {0, 1}.
    if self.use_mask_input:
      m = jnp.broadcast_to(observed[:, None, None, :].astype(cond.dtype), cond.shape)
      cond = jnp.concatenate([cond, m], axis=-1)
    h = self.stem(space_to_depth(cond, self.patch_size))
    feats = []
    for blocks, down in zip(self.levels, self.downs):
      for block in blocks:
        h = block(h)
      feats.append(h)
      if down is not None:
        h = down(h)
    return feats


class _Stage(nnx.Module):
  """Residual blocks of one level, each followed by channel attention."""

  def __init__(self, in_f: int, out_f: int, n: int, *, attention: str, cfg: ModelConfig,
               temb_dim: int, rngs: nnx.Rngs):
    self.blocks = nnx.List()
    self.attn = nnx.List()
    for i in range(n):
      self.blocks.append(ResBlock(in_f if i == 0 else out_f, out_f, temb_dim=temb_dim,
                                  groups=cfg.norm_groups, spatial=cfg.spatial,
                                  dropout=cfg.dropout, rngs=rngs))
      self.attn.append(make_channel_attention(
          attention, out_f, num_heads=cfg.num_heads, spatial=cfg.spatial,
          head_dim=cfg.head_dim, se_reduction=cfg.se_reduction, rngs=rngs))

  def __call__(self, h: jax.Array, temb: jax.Array) -> jax.Array:
    for block, attn in zip(self.blocks, self.attn):
      h = attn(block(h, temb))
    return h


class ConditionalUNet(nnx.Module):
  """eps_theta(x_t, t, c, mask): D over x_t, E over (c, mask), injection at every level.

  `t` is a float noise-level input [B] (the DDPM step index here); the network does not
  know the schedule, so another parameterisation (e.g. EDM's c_noise) can feed it later.
  It computes in its parameters' dtype: inputs (and the float32 timestep sinusoids) are
  cast to it on entry and eps back to x_t's dtype, so bfloat16 parameters (the train
  step's bfloat16 compute) make every matmul bfloat16; norm statistics and softmaxes
  stay float32.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    w = cfg.widths
    L = len(w)
    temb_dim = 4 * w[0]
    self.temb1 = nnx.Linear(w[0], temb_dim, rngs=rngs)
    self.temb2 = nnx.Linear(temb_dim, temb_dim, rngs=rngs)
    p2 = cfg.patch_size ** 2
    self.stem = conv(cfg.num_channels * p2, w[0], spatial=cfg.spatial, rngs=rngs)

    conditional = cfg.injection != "none"
    self.context = ContextNet(cfg, rngs=rngs) if conditional else None
    self.inject = nnx.List([make_injection(cfg.injection, width, se_reduction=cfg.se_reduction,
                                           rngs=rngs) for width in w])

    def attention(level):
      return cfg.channel_attention if cfg.has_attention(level) else "none"

    self.down_stages = nnx.List()
    self.downs = nnx.List()
    for lvl in range(L):
      self.down_stages.append(_Stage(w[max(lvl - 1, 0)], w[lvl], cfg.level_blocks(lvl),
                                     attention=attention(lvl), cfg=cfg, temb_dim=temb_dim,
                                     rngs=rngs))
      self.downs.append(Downsample(w[lvl], rngs=rngs) if cfg.spatial and lvl < L - 1 else None)
    self.middle = _Stage(w[-1], w[-1], 2, attention=attention(L - 1), cfg=cfg,
                         temb_dim=temb_dim, rngs=rngs)
    self.up_stages = nnx.List()
    self.ups = nnx.List()
    for lvl in reversed(range(L)):
      in_f = (w[lvl + 1] if lvl < L - 1 else w[-1]) + w[lvl]
      self.up_stages.append(_Stage(in_f, w[lvl], cfg.level_blocks(lvl), attention=attention(lvl),
                                   cfg=cfg, temb_dim=temb_dim, rngs=rngs))
      self.ups.append(Upsample(w[lvl], rngs=rngs) if cfg.spatial and lvl > 0 else None)
    self.out_norm = nnx.GroupNorm(w[0], num_groups=group_count(w[0], cfg.norm_groups), rngs=rngs)
    self.out_conv = conv(w[0], cfg.num_channels * p2, spatial=cfg.spatial, rngs=rngs,
                         zero_init=True)
    self.out_attn = (OutputChannelAttention(cfg.num_channels, se_reduction=cfg.se_reduction,
                                            rngs=rngs) if cfg.output_attention else None)
    self.linear_head = (LinearHead(cfg.cond_channels, cfg.num_channels)
                        if cfg.linear_head else None)

  @property
  def compute_dtype(self):
    return self.stem.kernel.dtype

  def encode_condition(self, cond: jax.Array, observed: jax.Array) -> Context:
    """E(c): cond [B, H, W, Cc] (missing zeroed), observed [B, Cc] -> one map per level."""
    if self.context is None:
      return None
    _check_channels("condition", cond, self.cfg.condition_channels)
    if observed.shape != cond.shape[:1] + cond.shape[-1:]:
      raise ValueError(f"observation mask has shape {observed.shape}, expected "
                       f"{cond.shape[:1] + cond.shape[-1:]} (batch, condition channels)")
    return self.context(jnp.asarray(cond, self.compute_dtype), observed)

  def denoise(self, x_t: jax.Array, t: jax.Array, ctx: Context) -> jax.Array:
    """x_t [B, H, W, C], t [B], ctx from `encode_condition` -> eps [B, H, W, C]."""
    _check_channels("x_t", x_t, self.cfg.num_channels)
    dtype = self.compute_dtype
    # Sinusoids of t up to 1000 need float32; the MLP after them runs in `dtype`.
    temb = timestep_embedding(t, self.cfg.widths[0]).astype(dtype)
    temb = self.temb2(nnx.silu(self.temb1(temb)))  # [B, 4 * widths[0]]
    p = self.cfg.patch_size
    h = self.stem(space_to_depth(jnp.asarray(x_t, dtype), p))  # [B, H/p, W/p, widths[0]]
    skips = []
    for lvl, (stage, down) in enumerate(zip(self.down_stages, self.downs)):
      h = stage(h, temb)
      if ctx is not None:
        h = self.inject[lvl](h, ctx[lvl])  # z_l = D_l(x_t) + SE(E_l(c))
      skips.append(h)
      if down is not None:
        h = down(h)
    h = self.middle(h, temb)
    for i, (stage, up) in enumerate(zip(self.up_stages, self.ups)):
      lvl = len(skips) - 1 - i
      h = stage(jnp.concatenate([h, skips[lvl]], axis=-1), temb)
      if up is not None:
        h = up(h, skips[lvl - 1].shape[1:3])
    y = depth_to_space(self.out_conv(nnx.silu(self.out_norm(h))), p, x_t.shape[1:3])
    if self.out_attn is not None:
      y = self.out_attn(y)
    return y.astype(jnp.result_type(x_t))

  def __call__(self, x_t: jax.Array, t: jax.Array, cond: jax.Array,
               observed: jax.Array) -> jax.Array:
    return self.denoise(x_t, t, self.encode_condition(cond, observed))


def build_model(cfg: ModelConfig, seed: int = 0) -> ConditionalUNet:
  return ConditionalUNet(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
