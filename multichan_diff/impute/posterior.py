"""A loaded model as a jitted function: conditions in, K posterior samples and a point
estimate out.

The point estimate is the posterior mean E[x0 | c], by one of two routes:
  * "denoiser": the network's own x0 estimate at t = T - 1, where x_t is pure noise,
    averaged over the K noise draws. Trained with the MSE to x0 there (the v-loss weighs
    it by 1 + SNR, about 1), the network regresses exactly E[x0 | c], in one evaluation.
  * "samples": the average of the K sampled chains, which approaches the same mean as K
    grows, but slowly: each sample carries the posterior's full spread.
Either way the K chains give the uncertainty (their standard deviation). A distilled
generator's draws are one network call each, but their mean approaches the posterior mean
as slowly as any samples do; its "denoiser" estimate is its teacher's, exported beside it
(the generator itself is no denoiser: SiD trained it at t_init only).

Images can be seen in several orientations (`views` of the 8 flips / right-angle
rotations; tissue has none): the K draws are shared out among the views, each view's
output turned back, so the point estimate averages over orientations at no extra cost.

A model trained on per-FOV standardised targets (`context_norm = fov_targets`) runs its
chains in those units: observed channels are standardised with their FOV's own statistics,
and the missing channels come back to the dataset's units with the training FOVs' average
(`target_stats`; see `data.transforms.typical_fov_stats`).

A residual diffusion model (CorrDiff's) runs its chains on x0 minus its regressor's mean
mu(c): each sample is mu + a residual sample, the point estimate mu + the residual's. A
regressor alone is a posterior with no spread: every draw is its output mu(c).

A latent-space model (a `LatentCodec`) takes and returns pixels all the same: tiles are
encoded, the chains and the point estimate run on the latents (k per channel, the observed
channels' clamped), and everything is decoded, observed channels then set to their input.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from multichan_diff.diffusion.losses import regress
from multichan_diff.diffusion.masking import mask_condition
from multichan_diff.diffusion.samplers import DEFAULT_STEPS, get_sampler, sample_posterior
from multichan_diff.diffusion.schedules import Schedule
from multichan_diff.data.transforms import dihedral, fov_stats
from multichan_diff.impute.ensemble import Ensemble, check_members
from multichan_diff.model.latent import LatentCodec
from multichan_diff.train.model_dir import (load_codec, load_model, load_prediction,
                                            load_regressor, load_schedule, load_teacher,
                                            model_normalizer, read_meta, zero_below)


POINT_ESTIMATES = ("denoiser", "samples")
VIEWS = (1, 2, 4, 8)


def _pad_rows(a: np.ndarray, n: int) -> np.ndarray:
  """a [m, ...] -> [n, ...], repeating the last row: every batch has one shape."""
  return np.concatenate([a, np.repeat(a[-1:], n - len(a), 0)])


class Posterior:
  """K samples and the point estimate per condition; one compilation per batch shape.

  Images: the condition is the target itself on its observed channels, which are also
  clamped in every sample. Cells: the condition is the genes; every protein is sampled.
  Batches are padded to `batch_size` so the last, short one does not recompile.
  x0_range: the data's (lo [C], hi [C]) for the samplers' x0 clip (images).
  prediction: what the network outputs, "eps" or "v".
  point: how the point estimate is made (see the module docstring).
  codec: a latent-space model's autoencoder and latent standardisation, or None.
  t_init: a distilled generator's timestep (sampler "onestep").
  teacher: the network whose x0 estimate is the "denoiser" point estimate when it is not
  `model`'s own: a distilled generator's teacher.
  zero_below: images of counts: [C] normalised values under which a blended draw is zero
  counts (see `impute.images.sample_image`), or None.
  target_stats: (mean [C], std [C]) of the training FOVs for a model trained on per-FOV
  standardised targets, or None.
  views: 1, 2, 4 or 8 orientations of each image tile, num_samples / views draws each.
  regressor: a residual model's regressor, whose mean the chains are added to; or, with
  `model` None, the model itself (every draw its output).
  spread_scale: [C] factors that widen each channel's draws about the point estimate,
  fitted on validation (`evaluate.calibrate`), or None.
  """

  def __init__(self, model, schedule: Schedule, *, sampler: str = "ddim",
               steps: int | None = None, num_samples: int = 8, batch_size: int = 16,
               x0_range: tuple[np.ndarray, np.ndarray] | None = None,
               prediction: str = "eps", point: str = "denoiser",
               codec: LatentCodec | None = None, t_init: int | None = None,
               teacher=None, target_stats: tuple[np.ndarray, np.ndarray] | None = None,
               views: int = 1, zero_below: np.ndarray | None = None, regressor=None,
               spread_scale: np.ndarray | None = None):
    get_sampler(sampler)
    if model is None and (regressor is None or codec is not None):
      raise ValueError("a posterior needs a diffusion model, or a pixel-space regressor")
    if zero_below is not None and x0_range is None:
      raise ValueError("zero_below needs the data's floor (x0_range)")
    self.zero_below = zero_below
    self.spread_scale = None if spread_scale is None else np.asarray(spread_scale, np.float32)
    if target_stats is not None and codec is not None:
      raise ValueError("per-FOV standardised targets are for pixel-space models only")
    if point not in POINT_ESTIMATES:
      raise ValueError(f"unknown point estimate {point!r}; choose from {POINT_ESTIMATES}")
    sampler_kw = {}
    if sampler == "onestep":  # a distilled generator
      if t_init is None:
        raise ValueError("the one-step sampler needs the generator's t_init")
      if point == "denoiser" and teacher is None:
        raise ValueError("a generator's denoiser point estimate is its teacher's; "
                         "give the teacher, or take the mean of the draws (point 'samples')")
      sampler_kw = {"t_init": int(t_init)}
    self.point = point
    self.steps = (0 if model is None else
                  DEFAULT_STEPS[sampler] if steps is None else int(steps))
    if sampler == "onestep" and self.steps != 1:
      raise ValueError(f"the one-step sampler takes 1 step, not {self.steps}")
    self.num_samples, self.batch_size = int(num_samples), int(batch_size)
    if self.num_samples < 1 or self.batch_size < 1:
      raise ValueError("samples and batch size must be at least 1")
    if views not in VIEWS or self.num_samples % views:
      raise ValueError(f"views must be one of {VIEWS} and divide the samples "
                       f"({self.num_samples}), got {views}")
    self.views = views
    draws = self.num_samples // views  # per view
    graphdef, state = nnx.split(model) if model is not None else (None, None)
    t_graphdef, t_state = nnx.split(teacher) if teacher is not None else (None, None)
    r_graphdef, r_state = nnx.split(regressor) if regressor is not None else (None, None)
    self.codec = codec
    ae_state = None
    if codec is not None:
      ae_graphdef, ae_state = nnx.split(codec.autoencoder)
      stats = codec.stats
      latent_codec = lambda ae_state: LatentCodec(nnx.merge(ae_graphdef, ae_state), stats)
      latent_range = (jnp.asarray(stats.lo), jnp.asarray(stats.hi))
    # the sampled network, autoencoder, teacher, regressor
    self._state = (state, ae_state, t_state, r_state)

    def clamp(x, x_known, known):
      return x if known is None else jnp.where(known[:, None, None, :], x_known, x)

    def chains(states, key, cond, cond_mask, shape, **known):
      m = nnx.merge(graphdef, states[0])
      k_chain, k_point = jax.random.split(key)
      common = dict(num_samples=draws, prediction=prediction, **known)
      out = sample_posterior(m, schedule, k_chain, cond, cond_mask, shape, sampler=sampler,
                             steps=self.steps, **sampler_kw, **common)
      if point == "samples":
        return out["samples"], out["mean"]
      denoiser = m if states[2] is None else nnx.merge(t_graphdef, states[2])
      one = sample_posterior(denoiser, schedule, k_point, cond, cond_mask, shape,
                             sampler="ddim", steps=1, **common)
      return out["samples"], one["mean"]

    def run(states, key, cond, cond_mask, shape, x_known=None, known=None, x0_range=None):
      if states[3] is None:
        return chains(states, key, cond, cond_mask, shape, x_known=x_known, known=known,
                      x0_range=x0_range)
      mu = regress(nnx.merge(r_graphdef, states[3]), cond, cond_mask, shape)  # [B, H, W, C]
      if states[0] is None:  # the regressor alone
        mu = clamp(mu, x_known, known)
        return jnp.broadcast_to(mu, (draws,) + mu.shape), mu
      residual_known = None if known is None else x_known - mu
      bounds = None if x0_range is None else tuple(jnp.asarray(b) - mu for b in x0_range)
      samples, mean = chains(states, key, cond, cond_mask, shape, x_known=residual_known,
                             known=known, x0_range=bounds)
      return clamp(samples + mu, x_known, known), clamp(mean + mu, x_known, known)

    def images(states, key, x, observed, shift, scale):
      if codec is None and target_stats is None:
        return run(states, key, mask_condition(x, observed, shift, scale), observed, x.shape,
                   x_known=x, known=observed, x0_range=x0_range)
      if codec is None:  # targets standardised per FOV: the chains run in those units
        sh = jnp.where(observed, shift, jnp.asarray(target_stats[0]))[:, None, None, :]
        sc = jnp.where(observed, scale, jnp.asarray(target_stats[1]))[:, None, None, :]
        xs = (x - sh) / sc
        bounds = None if x0_range is None else tuple((jnp.asarray(a) - sh) / sc
                                                     for a in x0_range)
        samples, point = run(states, key, mask_condition(xs, observed), observed, x.shape,
                             x_known=xs, known=observed, x0_range=bounds)
        keep = observed[:, None, None, :]
        return jnp.where(keep, x, samples * sc + sh), jnp.where(keep, x, point * sc + sh)
      obs = latent_codec(states[1]).expand(observed)  # x: the tiles' latents, from `_padded`
      return run(states, key, mask_condition(x, obs, shift, scale), obs, x.shape,
                 x_known=x, known=obs, x0_range=latent_range)  # decoded by `_decoded`

    def cells(states, key, genes, num_proteins):
      mask = jnp.ones(genes.shape[:1] + genes.shape[-1:], bool)
      return run(states, key, genes, mask, genes.shape[:3] + (num_proteins,))

    def encode(states, x):
      return latent_codec(states[1]).encode(x)

    def decode(states, z, features):
      return latent_codec(states[1]).decode(z, features)

    self._images = jax.jit(images)
    self._cells = jax.jit(cells, static_argnums=3)
    self._encode_jit = jax.jit(encode) if codec is not None else None
    self._encoded: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()
    self._decode = jax.jit(decode) if codec is not None else None
    self.x0_range = x0_range

  def _encode(self, x: np.ndarray) -> np.ndarray:
    """Latents of a padded tile batch, remembered by content (the last 64 batches): the
    encoder sees each channel alone, so a batch's latents do not depend on the mask, and
    `fov_context`, then every observed set that `evaluate` imputes, reuse them."""
    x = np.ascontiguousarray(x, np.float32)
    digest = hashlib.blake2b(repr(x.shape).encode(), digest_size=16)
    digest.update(x.data)
    key = digest.digest()
    if key in self._encoded:
      self._encoded.move_to_end(key)
    else:
      self._encoded[key] = np.asarray(self._encode_jit(self._state, x))
      if len(self._encoded) > 64:
        self._encoded.popitem(last=False)
    return self._encoded[key]

  def _padded(self, fn, key, first: np.ndarray, *rest) -> tuple[np.ndarray, np.ndarray]:
    n = len(first)
    if n > self.batch_size:
      raise ValueError(f"batch of {n} exceeds the batch size {self.batch_size}")
    pad = lambda a: _pad_rows(a, self.batch_size)
    args = [pad(first)] + [pad(a) if isinstance(a, np.ndarray) else a for a in rest]
    if self.codec is None:
      samples, mean = fn(self._state, key, *args)
    else:  # the tiles are encoded in a jit of their own, outside the sampler's
      z = self._encode(args[0])
      samples, mean = fn(self._state, key, z, *args[1:])
      samples, mean = self._decoded(samples, mean, args[0], args[1])
    return np.asarray(samples)[:, :n], np.asarray(mean)[:n]

  def _decoded(self, z_samples, z_point, x: np.ndarray, observed: np.ndarray):
    """Latent draws [K', B, h, w, C*k] (K' = K / views) and point [B, h, w, C*k] -> pixels,
    decoding only the channels some tile misses (the rest are the input's), padded to 1, 2,
    4 or a multiple of 8 channels so that few decoder shapes compile, one tile batch of rows
    at a time (K + 1 batches of up to C channels at once would need tens of GB)."""
    k, c = self.codec.k, observed.shape[1]
    missing = np.flatnonzero(~observed.all(0))
    samples = np.broadcast_to(x, (len(z_samples),) + x.shape).copy()
    if len(missing):
      n = len(missing)
      m = min(c, 1 << (n - 1).bit_length() if n <= 8 else -(-n // 8) * 8)
      feat = (_pad_rows(missing, m)[:, None] * k + np.arange(k)).ravel()
      kb = len(z_samples) * len(x)
      z = z_samples.reshape((kb,) + z_samples.shape[2:])[..., feat]
      if self.point == "denoiser":
        z = jnp.concatenate([z, z_point[..., feat]])
      b = len(x)  # a tile batch per call: one shape, and the memory of one batch
      dec = np.concatenate([np.asarray(self._decode(self._state, z[i:i + b], feat))
                            for i in range(0, len(z), b)])[..., :n]
      if self.x0_range is not None:  # the data's bounds, in pixels
        lo, hi = (np.asarray(a)[missing] for a in self.x0_range)
        dec = np.clip(dec, lo, hi)
      samples[..., missing] = dec[:kb].reshape(samples.shape[:-1] + (n,))
    obs = observed[:, None, None, :]
    samples = np.where(obs, x, samples)  # observed channels exact, not decoded
    if self.point == "samples" or not len(missing):
      return samples, np.where(obs, x, samples.mean(0))
    mean = x.copy()
    mean[..., missing] = dec[kb:]
    return samples, np.where(obs, x, mean)

  def images(self, key: jax.Array, x: np.ndarray, observed: np.ndarray,
             context: tuple[np.ndarray, np.ndarray] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """x [B, H, W, C] normalised (any value on missing channels), observed [B, C] bool ->
    (samples [K, B, H, W, C], point estimate [B, H, W, C]), observed channels equal to x.
    context: (shift, scale) [B, C] (a latent model: [B, C*k]) that standardise the
    condition (a model trained with context_norm 'fov' or 'fov_targets'), or None."""
    b, c = observed.shape
    c *= 1 if self.codec is None else self.codec.k
    shift, scale = context or (np.zeros((b, c), np.float32), np.ones((b, c), np.float32))
    rest = observed.astype(bool), np.asarray(shift, np.float32), np.asarray(scale, np.float32)
    x = x.astype(np.float32)
    draws, points = [], []
    for v in range(self.views):  # view 0, the tiles as given, keeps the key
      samples, point = self._padded(self._images, jax.random.fold_in(key, v) if v else key,
                                    dihedral(x, v), *rest)
      draws.append(dihedral(samples, v, inverse=True))
      points.append(dihedral(point, v, inverse=True))
    point = np.mean(points, 0)
    return self._widened(np.concatenate(draws), point), point

  def _widened(self, draws: np.ndarray, point: np.ndarray) -> np.ndarray:
    """draws [K, ..., C] widened about the point estimate by `spread_scale` (observed
    channels, equal to the point, stay as they are)."""
    if self.spread_scale is None:
      return draws
    return point + self.spread_scale * (draws - point)

  def fov_context(self, image: np.ndarray, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The FOV's (mean, std) [C_model] that standardise its condition (context_norm fov*):
    over the image's pixels, or for a latent model over its tiles' latents [N, T, T, C]."""
    if self.codec is None:
      return fov_stats(image)
    zs = []
    for lo in range(0, len(tiles), self.batch_size):
      chunk = tiles[lo:lo + self.batch_size].astype(np.float32)
      # Padded as `_padded` pads: one compilation, and the sampler finds these latents.
      zs.append(self._encode(_pad_rows(chunk, self.batch_size))[:len(chunk)])
    z = np.concatenate(zs)
    return fov_stats(z.reshape((-1,) + z.shape[2:]))

  def cells(self, key: jax.Array, genes: np.ndarray,
            num_proteins: int) -> tuple[np.ndarray, np.ndarray]:
    """genes [B, G] normalised -> (samples [K, B, P], point estimate [B, P])."""
    if self.views > 1:
      raise ValueError("views (orientations) are for images; a cell has none")
    samples, mean = self._padded(self._cells, key, genes.astype(np.float32)[:, None, None, :],
                                 num_proteins)
    return self._widened(samples[:, :, 0, 0, :], mean[:, 0, 0, :]), mean[:, 0, 0, :]


def model_dirs(model: str | Sequence[str]) -> list[str]:
  """`--model`: one exported model's folder, or several, comma-separated (an ensemble)."""
  parts = model.split(",") if isinstance(model, str) else list(model)
  dirs = [p.strip() for p in parts if p.strip()]
  if not dirs:
    raise ValueError("no model folder given")
  return dirs


def load_posterior(model: str | Sequence[str], *, sampler: str = "ddim",
                   steps: int | None = None, samples: int = 8, batch_size: int | None = None,
                   point: str = "denoiser", views: int | None = None,
                   continuous_draws: bool = False) -> tuple[Posterior | Ensemble, dict]:
  """-> (Posterior, model.json) of an exported diffusion model or distilled generator
  (which needs sampler "onestep", and the reverse); several folders (see `model_dirs`)
  -> (Ensemble of them, the first's model.json). views=None: a pixel-space images model
  sees as many orientations as share the samples evenly (the largest of 1, 2, 4, 8 that
  divides them), others one. continuous_draws: images of whole counts keep draws under half
  a count as sampled (see `impute.images.sample_image`)."""
  dirs = model_dirs(model)
  if len(dirs) > 1:
    check_members([read_meta(d) for d in dirs], dirs)
  loaded = [_load_one(d, sampler=sampler, steps=steps, samples=samples,
                      batch_size=batch_size, point=point, views=views,
                      continuous_draws=continuous_draws) for d in dirs]
  if len(loaded) == 1:
    return loaded[0]
  return Ensemble([p for p, _ in loaded]), loaded[0][1]


def _load_one(model_dir: str, *, sampler, steps, samples, batch_size, point, views,
              continuous_draws) -> tuple[Posterior, dict]:
  model, meta = load_model(model_dir)
  network = meta.get("network", "diffusion")
  if network == "autoencoder":
    raise ValueError(f"{model_dir}: an autoencoder, not a model that imputes")
  if (network == "generator") != (sampler == "onestep"):
    raise ValueError(f"{model_dir}: a {network} model; " + (
        "sample it with --sampler onestep" if network == "generator" else
        "--sampler onestep needs a distilled generator (`multichan-diff distill`)"))
  teacher = load_teacher(model_dir, meta)
  if network == "generator" and point == "denoiser" and teacher is None:
    raise ValueError(f"{model_dir}: this generator was exported without its teacher, whose "
                     "x0 estimate is the denoiser point estimate; export it again, or take "
                     "the mean of the draws with --point samples")
  cells = meta["kind"] == "cells"
  if views is None:
    views = 1 if cells or meta.get("space") == "latent" else max(
        v for v in VIEWS if samples % v == 0)
  regression = network == "regressor"
  posterior = Posterior(
      None if regression else model, None if regression else load_schedule(meta),
      sampler=sampler, steps=steps, num_samples=samples,
      batch_size=batch_size or (256 if cells else 16),
      x0_range=None if cells else model_normalizer(meta).bounds(),
      prediction="eps" if regression else load_prediction(meta), point=point,
      codec=load_codec(model_dir, meta), t_init=meta.get("t_init"), teacher=teacher,
      target_stats=meta.get("target_stats"), views=views,
      zero_below=None if cells or continuous_draws else zero_below(meta),
      regressor=model if regression else load_regressor(model_dir, meta),
      spread_scale=meta.get("spread_scale"))
  return posterior, meta
