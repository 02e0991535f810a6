"""The objectives: the diffusion loss (the paper's eq. 5, eps or v) and the masked
regression loss, both with present / observed masks.

A batch is a dict of arrays. Images: `x0` [B, H, W, C], `present` [B, C] (channels the
sample's dataset measured), `observed` [B, C] (the random mask; the condition is x0 on
those channels) and optionally `cond_shift`, `cond_scale` [B, C] (the sample's FOV's
channel mean and std, which standardise the condition; the target stays as it is). The
vector variant brings its own condition instead: `cond` [B, 1, 1, G] (genes, always
observed) and optionally `cond_mask` [B, G].
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from multichan_diff.diffusion.masking import mask_condition
from multichan_diff.diffusion.schedules import PREDICTIONS, Schedule, q_sample, v_target

Batch = dict[str, jax.Array]
LOSS_ON = ("all", "missing")


def condition_of(batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """-> (cond [B, H, W, Cc], cond_mask [B, Cc], target_observed [B, C]) of a batch."""
  x0 = batch["x0"]
  if "cond" in batch:
    cond = batch["cond"]
    cond_mask = batch.get("cond_mask", jnp.ones(cond.shape[:1] + cond.shape[-1:], bool))
    return cond, cond_mask, jnp.zeros(x0.shape[:1] + x0.shape[-1:], bool)
  observed = batch["observed"].astype(bool)
  cond = mask_condition(x0, observed, batch.get("cond_shift"), batch.get("cond_scale"))
  return cond, observed, observed


def masked_mse(pred: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
  """Mean squared error over the [B, C] entries with weight 1 (and all their pixels).

  pred, target [B, H, W, C]; weight [B, C] in {0, 1}. Zero when nothing is weighted.
  """
  se = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=(1, 2))
  w = weight.astype(jnp.float32)
  return jnp.sum(se * w) / jnp.maximum(jnp.sum(w), 1.0)


def loss_weight(present: jax.Array, observed: jax.Array, loss_on: str) -> jax.Array:
  """[B, C] weights: all present channels, or only the present and missing ones."""
  if loss_on not in LOSS_ON:
    raise ValueError(f"unknown loss_on {loss_on!r}; choose from {LOSS_ON}")
  w = present.astype(bool)
  if loss_on == "missing":
    w = w & ~observed.astype(bool)
  return w


def regress(model, cond: jax.Array, cond_mask: jax.Array, shape) -> jax.Array:
  """A regressor's x0 [B, H, W, C] from the condition alone, one call at t = 0.

  Where the condition is the target panel itself (images), D reads it as its input, so the
  UNet sees the observed channels directly (a masked U-Net regressor) and E beside it;
  where the condition is another modality (cells: genes), D's input is zeros. A model with
  a linear head adds it: the network's output is then a correction to a ridge fit.
  """
  own_panel = model.cfg.cond_channels is None
  x_in = cond if own_panel else jnp.zeros(shape, cond.dtype)
  out = model(x_in, jnp.zeros(shape[:1], jnp.float32), cond, cond_mask)
  if getattr(model, "linear_head", None) is not None:
    out = out + model.linear_head(cond).astype(out.dtype)
  return out


def get_regression_loss_fn() -> Callable[..., Any]:
  """-> loss_fn(model, batch, key) -> (loss, metrics): the MSE of `regress` to x0 on the
  present, missing channels (observed ones are the input, returned as they are)."""

  def loss_fn(model, batch: Batch, key: jax.Array):
    del key  # deterministic
    x0 = batch["x0"]
    cond, cond_mask, observed = condition_of(batch)
    present = batch.get("present", jnp.ones(observed.shape, bool))
    loss = masked_mse(regress(model, cond, cond_mask, x0.shape), x0,
                      loss_weight(present, observed, "missing"))
    return loss, {"loss": loss}

  return loss_fn


def get_loss_fn(schedule: Schedule, loss_on: str = "all", prediction: str = "eps",
                t_range: tuple[int, int] | None = None,
                point_fraction: float = 0.0,
                mean_fn: Callable[..., jax.Array] | None = None) -> Callable[..., Any]:
  """-> loss_fn(model, batch, key) -> (loss, metrics).

  `model(x_t, t, cond, cond_mask)` predicts eps or v (`prediction`, see
  `schedules.output_to_eps`); the loss is the MSE to that target. In x0 terms the v-loss
  weighs errors by 1 + SNR(t), so large t, where x0 comes from the condition alone, keeps
  weight 1 (the eps loss gives it SNR(t), nearly 0). t is uniform over the steps.
  (An EDM-style objective would be a sibling factory with its own noise sampling and
  weighting; the model and the masks stay as they are.)
  t_range: (lo, hi) to draw t from [lo, hi) instead (SiD's fake score network).
  point_fraction: the expected share of the batch put at t = T - 1 instead, where x_t is
  pure noise and the v-loss is the MSE of the point estimate (`impute.posterior`) to x0:
  uniform t visits that step once in T draws.
  mean_fn: (cond, cond_mask, shape) -> mu [B, H, W, C], a frozen regressor's mean: the
  model then learns the residual x0 - mu (CorrDiff's residual diffusion), a sample being
  mu + a residual sample.
  """
  if not 0.0 <= point_fraction < 1.0:
    raise ValueError(f"point_fraction must be in [0, 1), got {point_fraction}")
  loss_weight(jnp.ones((1, 1)), jnp.zeros((1, 1)), loss_on)  # validate early
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction {prediction!r}; choose from {PREDICTIONS}")
  t_lo_hi = (0, schedule.num_steps) if t_range is None else tuple(t_range)

  def loss_fn(model, batch: Batch, key: jax.Array):
    x0 = batch["x0"]
    cond, cond_mask, observed = condition_of(batch)
    if mean_fn is not None:
      x0 = x0 - jax.lax.stop_gradient(mean_fn(cond, cond_mask, x0.shape))
    k_t, k_eps = jax.random.split(key)
    t = jax.random.randint(k_t, (x0.shape[0],), *t_lo_hi)
    if point_fraction:
      t = jnp.where(jax.random.uniform(jax.random.fold_in(k_t, 1), t.shape) < point_fraction,
                    schedule.num_steps - 1, t)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t = q_sample(schedule, x0, t, eps)
    out = model(x_t, t.astype(jnp.float32), cond, cond_mask)
    present = batch.get("present", jnp.ones(observed.shape, bool))
    weight = loss_weight(present, observed, loss_on)
    target = eps if prediction == "eps" else v_target(schedule, x0, t, eps)
    loss = masked_mse(out, target, weight)
    return loss, {"loss": loss}

  return loss_fn
