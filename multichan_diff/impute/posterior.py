"""A loaded model as a jitted function: conditions in, K posterior samples out."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from multichan_diff.diffusion.masking import mask_condition
from multichan_diff.diffusion.samplers import DEFAULT_STEPS, get_sampler, sample_posterior
from multichan_diff.diffusion.schedules import Schedule


class Posterior:
  """K samples per condition; one compilation per batch shape.

  Images: the condition is the target itself on its observed channels, which are also
  clamped in every sample. Cells: the condition is the genes; every protein is sampled.
  Batches are padded to `batch_size` so the last, short one does not recompile.
  x0_range: the data's (lo [C], hi [C]) for the samplers' x0 clip (images).
  prediction: what the network outputs, "eps" or "v".
  """

  def __init__(self, model, schedule: Schedule, *, sampler: str = "ddim",
               steps: int | None = None, num_samples: int = 8, batch_size: int = 16,
               x0_range: tuple[np.ndarray, np.ndarray] | None = None,
               prediction: str = "eps"):
    get_sampler(sampler)
    self.steps = DEFAULT_STEPS[sampler] if steps is None else int(steps)
    self.num_samples, self.batch_size = int(num_samples), int(batch_size)
    if self.num_samples < 1 or self.batch_size < 1:
      raise ValueError("samples and batch size must be at least 1")
    graphdef, state = nnx.split(model)
    self._state = state

    def images(state, key, x, observed, shift, scale):
      m = nnx.merge(graphdef, state)
      cond = mask_condition(x, observed, shift, scale)
      out = sample_posterior(m, schedule, key, cond, observed, x.shape,
                             sampler=sampler, steps=self.steps, num_samples=self.num_samples,
                             x_known=x, known=observed, x0_range=x0_range,
                             prediction=prediction)
      return out["samples"]

    def cells(state, key, genes, num_proteins):
      m = nnx.merge(graphdef, state)
      mask = jnp.ones(genes.shape[:1] + genes.shape[-1:], bool)
      shape = genes.shape[:3] + (num_proteins,)
      return sample_posterior(m, schedule, key, genes, mask, shape, sampler=sampler,
                              steps=self.steps, num_samples=self.num_samples,
                              prediction=prediction)["samples"]

    self._images = jax.jit(images)
    self._cells = jax.jit(cells, static_argnums=3)

  def _padded(self, fn, key, first: np.ndarray, *rest) -> np.ndarray:
    n = len(first)
    if n > self.batch_size:
      raise ValueError(f"batch of {n} exceeds the batch size {self.batch_size}")
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], self.batch_size - n, 0)])
    args = [pad(first)] + [pad(a) if isinstance(a, np.ndarray) else a for a in rest]
    return np.asarray(fn(self._state, key, *args))[:, :n]

  def images(self, key: jax.Array, x: np.ndarray, observed: np.ndarray,
             context: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """x [B, H, W, C] normalised (any value on missing channels), observed [B, C] bool ->
    samples [K, B, H, W, C], observed channels equal to x. context: (shift, scale) [B, C]
    that standardise the condition (a model trained with context_norm 'fov'), or None."""
    b, c = observed.shape
    shift, scale = context or (np.zeros((b, c), np.float32), np.ones((b, c), np.float32))
    return self._padded(self._images, key, x.astype(np.float32), observed.astype(bool),
                        np.asarray(shift, np.float32), np.asarray(scale, np.float32))

  def cells(self, key: jax.Array, genes: np.ndarray, num_proteins: int) -> np.ndarray:
    """genes [B, G] normalised -> samples [K, B, P]."""
    out = self._padded(self._cells, key, genes.astype(np.float32)[:, None, None, :],
                       num_proteins)
    return out[:, :, 0, 0, :]
