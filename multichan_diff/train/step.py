"""The pure train step: (state, batch, key) -> (state, metrics), for jit on a mesh.

The model is split once into (graphdef, params, rest); the step merges them, takes the
gradient of the loss with respect to the parameters only, and applies AdamW. Non-
parameter state (RNG streams of dropout) is reseeded from the step key, so the step is
a pure function of its inputs.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # nnx.State of nnx.Param
  opt_state: Any
  ema: Any  # exponential moving average of params, what export and sampling use


def make_optimizer(learning_rate: float = 2e-4, *, weight_decay: float = 0.0,
                   warmup_steps: int = 0, total_steps: int | None = None,
                   clip_norm: float | None = 1.0, b1: float = 0.9,
                   b2: float = 0.999) -> optax.GradientTransformation:
  """AdamW with linear warm-up, cosine decay to zero over `total_steps` (if given), clipping."""
  if total_steps:
    lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(warmup_steps, 1),
                                            max(total_steps, warmup_steps + 1))
  elif warmup_steps:
    lr = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  else:
    lr = learning_rate
  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  parts.append(optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay))
  return optax.chain(*parts)


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation):
  """-> (graphdef, rest, TrainState). `rest` is the non-parameter state, held constant."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ema=jax.tree.map(jnp.copy, params))
  return graphdef, rest, state


def _reseed(rest, key):
  """Non-parameter state with every RNG stream key replaced by a distinct fold of `key`."""
  leaves, treedef = jax.tree.flatten(rest)
  leaves = [jax.random.fold_in(key, i) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
            for i, x in enumerate(leaves)]
  return jax.tree.unflatten(treedef, leaves)


def make_train_step(graphdef, rest, tx: optax.GradientTransformation,
                    loss_fn: Callable[..., Any], ema_decay: float = 0.999) -> Callable[..., Any]:
  """-> train_step(state, batch, key) -> (state, metrics); loss_fn(model, batch, key)."""

  def train_step(state: TrainState, batch, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    k_loss, k_drop = jax.random.split(key)

    model = nnx.merge(graphdef, state.params, _reseed(rest, k_drop))
    grad_fn = nnx.value_and_grad(lambda m: loss_fn(m, batch, k_loss), has_aux=True)
    (loss, metrics), grads = grad_fn(model)  # grads: State of the nnx.Params
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema, params)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

  return train_step
