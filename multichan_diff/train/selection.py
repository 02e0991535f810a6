"""Checkpoint choice on the validation split by the imputation metric itself.

Every `eval_every` steps the run scores its EMA network's point estimate on fixed validation
batches: the mean over channels of the Pearson r, over the batches' entries where the channel
was present and missing (images: mean r over channels, as `evaluate` reports it; cells: r_p).
The best checkpoint is kept beside the latest, `export` takes it by default, and `patience`
stops a run whose score has not risen for that many evaluations. Scores are in the units
the network trains in (per-FOV standardised targets stay so); they rank checkpoints of one
run, and are not the test figures `evaluate` reports.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from multichan_diff.diffusion.losses import Batch, condition_of, regress
from multichan_diff.diffusion.samplers import sample_posterior
from multichan_diff.diffusion.schedules import Schedule


def get_point_fn(network: str, schedule: Schedule | None = None, prediction: str = "eps",
                 mean_fn: Callable[..., jax.Array] | None = None) -> Callable[..., tuple]:
  """-> point_fn(model, batch) -> (x0 estimate [B, H, W, C], scored [B, C] bool).

  A regressor's output; a diffusion model's x0 estimate from pure noise at t = T - 1 (the
  "denoiser" point estimate of `impute.posterior`), plus the regressor's mean for a
  residual model. Observed channels are clamped and not scored.
  """

  def point_fn(model, batch: Batch):
    x0 = batch["x0"]
    cond, cond_mask, observed = condition_of(batch)
    scored = batch.get("present", jnp.ones(observed.shape, bool)).astype(bool) & ~observed
    if network == "regressor":
      return regress(model, cond, cond_mask, x0.shape), scored
    mu = 0.0 if mean_fn is None else mean_fn(cond, cond_mask, x0.shape)
    out = sample_posterior(model, schedule, jax.random.key(0), cond, cond_mask, x0.shape,
                           sampler="ddim", steps=1, x_known=x0 - mu, known=observed,
                           prediction=prediction)
    return out["mean"] + mu, scored

  return point_fn


def channel_r(preds: list[np.ndarray], truths: list[np.ndarray],
              scored: list[np.ndarray]) -> float:
  """Mean over channels of Pearson r over the scored entries: preds / truths [B, H, W, C]
  per batch, scored [B, C]. Channels scored nowhere, or constant there, are skipped."""
  c = preds[0].shape[-1]
  n, s_p, s_t, s_pp, s_tt, s_pt = (np.zeros(c) for _ in range(6))
  for p, t, w in zip(preds, truths, scored):
    p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
    w = np.broadcast_to(np.asarray(w, np.float64)[:, None, None, :], p.shape)
    n += w.sum((0, 1, 2))
    s_p += (w * p).sum((0, 1, 2))
    s_t += (w * t).sum((0, 1, 2))
    s_pp += (w * p * p).sum((0, 1, 2))
    s_tt += (w * t * t).sum((0, 1, 2))
    s_pt += (w * p * t).sum((0, 1, 2))
  with np.errstate(divide="ignore", invalid="ignore"):
    cov = s_pt / n - s_p * s_t / n ** 2
    var = (s_pp / n - (s_p / n) ** 2) * (s_tt / n - (s_t / n) ** 2)
    r = cov / np.sqrt(var)
  ok = (n > 1) & (var > 1e-12)
  return float(np.mean(r[ok])) if ok.any() else float("nan")
