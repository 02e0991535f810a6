"""The pure train step: (state, batch, key) -> (state, metrics), for jit on a mesh.

The model is split once into (graphdef, params, rest); the step merges them, takes the
gradient of the loss with respect to the parameters only, and applies AdamW. Non-
parameter state (RNG streams of dropout) is reseeded from the step key, so the step is
a pure function of its inputs.

Mixed precision: with compute_dtype bfloat16 the step differentiates through a cast of
the float32 parameters, so the forward and backward passes run in bfloat16 (the model
follows its parameters' dtype) while the gradients, AdamW and the EMA stay float32.
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
                   b2: float = 0.999, fixed: str | None = None) -> optax.GradientTransformation:
  """AdamW with linear warm-up, cosine decay to zero over `total_steps` (if given), clipping.
  fixed: a module name whose parameters are set in closed form and get no gradient (a
  linear head), kept out of weight decay (decay alone would shrink them)."""
  if total_steps:
    lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(warmup_steps, 1),
                                            max(total_steps, warmup_steps + 1))
  elif warmup_steps:
    lr = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  else:
    lr = learning_rate
  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  mask = None if fixed is None else lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: f"[{fixed!r}]" not in jax.tree_util.keystr(path), params)
  parts.append(optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay, mask=mask))
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


COMPUTE_DTYPES = ("float32", "bfloat16")


def cast_floats(tree, dtype):
  """`tree` with its floating-point leaves cast to `dtype` (a no-op where they already are)."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def ema_warmup(decay: float, step: jax.Array) -> jax.Array:
  """min(decay, (1 + step) / (10 + step)): a short run's EMA is not mostly its random
  initialisation (with 0.999 alone, 0.999^1000 = 37 % of it is still there at step 1000)."""
  s = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + s) / (10.0 + s))


def make_train_step(graphdef, rest, tx: optax.GradientTransformation,
                    loss_fn: Callable[..., Any], ema_decay: float = 0.999,
                    compute_dtype: str = "float32") -> Callable[..., Any]:
  """-> train_step(state, batch, key) -> (state, metrics); loss_fn(model, batch, key).

  compute_dtype: 'float32', or 'bfloat16' for the forward and backward passes only.
  """
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"unknown compute_dtype {compute_dtype!r}; choose from {COMPUTE_DTYPES}")
  dtype = jnp.dtype(compute_dtype)

  def train_step(state: TrainState, batch, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    k_loss, k_drop = jax.random.split(key)
    rest_k = _reseed(rest, k_drop)

    def loss_of(params):  # the cast is inside, so its gradient returns float32
      # copy: fresh Variables at this trace level, which dropout's RNG count may advance.
      model = nnx.merge(graphdef, cast_floats(params, dtype), rest_k, copy=True)
      return loss_fn(model, batch, k_loss)

    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    decay = ema_warmup(ema_decay, state.step)
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, params)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

  return train_step
