"""The jitted train step: it learns, compiles once, and shards without changing the math."""

import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_model
from multichan_diff.diffusion.losses import get_loss_fn
from multichan_diff.diffusion.masking import sample_observed
from multichan_diff.diffusion.schedules import get_schedule
from multichan_diff.train.sharding import batch_sharding, jit_train_step, make_mesh
from multichan_diff.train.step import init_train_state, make_optimizer, make_train_step


def _batch(b=8, size=8, c=5, seed=0):
  x0 = jax.random.normal(jax.random.key(seed), (b, size, size, c))
  present = jnp.ones((b, c), bool).at[0, 4].set(False)
  return {"x0": x0, "present": present,
          "observed": sample_observed(jax.random.key(seed + 1), present, (0.2, 0.8))}


def _setup(lr=3e-3, **model_kw):
  _, model = tiny_model(5, **model_kw)
  tx = make_optimizer(lr)
  graphdef, rest, state = init_train_state(model, tx)
  return graphdef, rest, state, tx


def test_tiny_model_overfits_one_fixed_batch():
  graphdef, rest, state, tx = _setup(lr=3e-3)
  loss_fn = get_loss_fn(get_schedule("linear"))
  # One fixed batch: same data, same t and same noise at every step.
  fixed = lambda model, batch, key: loss_fn(model, batch, jax.random.key(42))
  step = jax.jit(make_train_step(graphdef, rest, tx, fixed))
  batch = _batch()
  start = time.perf_counter()
  losses = []
  for i in range(300):
    state, m = step(state, batch, jax.random.key(0))
    losses.append(float(m["loss"]))
  elapsed = time.perf_counter() - start
  assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
  assert elapsed < 60, elapsed


def test_train_step_traces_once():
  graphdef, rest, state, tx = _setup()
  loss_fn = get_loss_fn(get_schedule("linear"))
  step_fn = make_train_step(graphdef, rest, tx, loss_fn)
  traced = chex.assert_max_traces(step_fn, n=1)
  step = jax.jit(traced)
  for i in range(4):
    state, _ = step(state, _batch(seed=i), jax.random.key(i))
  assert int(state.step) == 4


@pytest.mark.parametrize("fsdp", [1, 2])
def test_sharded_step_equals_single_device_step(fsdp):
  assert jax.device_count() == 8, "conftest forces 8 CPU devices"
  graphdef, rest, state, tx = _setup()
  loss_fn = get_loss_fn(get_schedule("linear"))
  train_step = make_train_step(graphdef, rest, tx, loss_fn)
  batch = _batch(b=16)
  key = jax.random.key(3)

  single = jax.jit(train_step)
  s1, m1 = single(state, batch, key)
  s1, m1b = single(s1, batch, key)

  mesh = make_mesh(data=-1, fsdp=fsdp)
  step, state_sh = jit_train_step(train_step, mesh, state, fsdp=fsdp > 1, fsdp_min_size=64)
  s8 = jax.device_put(state, state_sh)
  b8 = jax.device_put(batch, batch_sharding(mesh))
  assert len(b8["x0"].sharding.device_set) == 8
  s8, m8 = step(s8, b8, key)
  s8, m8b = step(s8, b8, key)

  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(m8b["loss"], m1b["loss"], rtol=1e-4)
  # Adam moves each parameter by about lr = 3e-3 per step, whatever its gradient's size;
  # reduction-order noise stays far below that, a wrong sharding would not.
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)
  if fsdp > 1:
    sharded = [x for x in jax.tree.leaves(s8.params) if not x.sharding.is_fully_replicated]
    assert sharded, "FSDP should split at least the large parameters"


def test_mesh_rejects_impossible_shapes():
  with pytest.raises(ValueError, match="devices"):
    make_mesh(data=3, fsdp=2)
