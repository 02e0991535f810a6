"""The jitted train step: it learns, compiles once, and shards without changing the math."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import tiny_model
from multichan_diff.diffusion.losses import get_loss_fn
from multichan_diff.diffusion.masking import sample_observed
from multichan_diff.diffusion.schedules import get_schedule
from multichan_diff.train.sharding import batch_sharding, jit_train_step, make_mesh
from multichan_diff.train.step import (cast_floats, init_train_state, make_optimizer,
                                       make_train_step)


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
  losses = []
  for i in range(300):
    state, m = step(state, batch, jax.random.key(0))
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


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
  # reduction-order noise stays far below that (up to 1 % of it, on a parameter whose
  # gradient is nearly zero, where Adam's normalisation amplifies it), a wrong sharding not.
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
  if fsdp > 1:
    sharded = [x for x in jax.tree.leaves(s8.params) if not x.sharding.is_fully_replicated]
    assert sharded, "FSDP should split at least the large parameters"


def test_mesh_rejects_impossible_shapes():
  with pytest.raises(ValueError, match="devices"):
    make_mesh(data=3, fsdp=2)


def _dot_dtypes(jaxpr, found=None):
  """(lhs, rhs) dtype names of every dot_general in a jaxpr, nested jaxprs included."""
  found = [] if found is None else found
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(sub, "eqns"):
          _dot_dtypes(sub, found)
  return found


@pytest.mark.parametrize("variant", ["image", "vector"])
def test_bfloat16_step_runs_every_matmul_in_bfloat16(variant):
  kw = {} if variant == "image" else dict(spatial=False, cond_channels=7)
  graphdef, rest, state, tx = _setup(**kw)
  batch = _batch() if variant == "image" else {
      "x0": jnp.ones((8, 1, 1, 5)), "cond": jnp.ones((8, 1, 1, 7)),
      "present": jnp.ones((8, 5), bool)}
  loss_fn = get_loss_fn(get_schedule("linear"))
  dots = {}
  for dtype in ("float32", "bfloat16"):
    step = make_train_step(graphdef, rest, tx, loss_fn, compute_dtype=dtype)
    dots[dtype] = _dot_dtypes(jax.make_jaxpr(step)(state, batch, jax.random.key(0)).jaxpr)
  # Forward and backward: the convolutions (im2col matmuls), attention, timestep MLP, SE.
  assert len(dots["bfloat16"]) == len(dots["float32"]) > 50
  assert set(dots["float32"]) == {("float32", "float32")}
  assert set(dots["bfloat16"]) == {("bfloat16", "bfloat16")}


def test_bfloat16_loss_is_close_to_float32_loss():
  _, model = tiny_model(5)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # Fresh blocks are identities (eps_hat = 0 in any dtype): perturb every parameter.
  noise = lambda p, k: p + 0.2 * jax.random.normal(k, p.shape)
  leaves, tdef = jax.tree.flatten(params)
  keys = list(jax.random.split(jax.random.key(1), len(leaves)))
  params = jax.tree.unflatten(tdef, jax.jit(lambda ls, ks: list(map(noise, ls, ks)))(leaves, keys))
  objective = get_loss_fn(get_schedule("linear"))

  @jax.jit
  def loss(p, batch):  # the same t and noise for both
    return objective(nnx.merge(graphdef, p, rest), batch, jax.random.key(7))[0]

  batch = _batch(b=16)
  full = float(loss(params, batch))
  half = float(loss(cast_floats(params, jnp.bfloat16), batch))
  assert abs(half - full) < 0.03 * full, (full, half)


def test_bfloat16_steps_learn_and_keep_float32_params_optimiser_state_and_ema():
  graphdef, rest, state, tx = _setup(lr=3e-3)
  loss_fn = get_loss_fn(get_schedule("linear"))
  with pytest.raises(ValueError, match="compute_dtype"):
    make_train_step(graphdef, rest, tx, loss_fn, compute_dtype="float16")
  fixed = lambda model, batch, key: loss_fn(model, batch, jax.random.key(42))
  step = jax.jit(make_train_step(graphdef, rest, tx, fixed, compute_dtype="bfloat16"))
  batch = _batch()
  losses = []
  for _ in range(40):
    state, m = step(state, batch, jax.random.key(0))
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
  # Only the forward and backward passes were bfloat16: the master copies are float32.
  for part in (state.params, state.opt_state, state.ema):
    floats = {x.dtype for x in jax.tree.leaves(part) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert floats == {jnp.dtype("float32")}
  assert m["loss"].dtype == jnp.float32 and np.isfinite(float(m["grad_norm"]))


def test_ema_warms_up_then_follows_the_decay():
  from multichan_diff.train.step import ema_warmup
  assert float(ema_warmup(0.999, jnp.asarray(0))) == pytest.approx(0.1)
  assert float(ema_warmup(0.999, jnp.asarray(90))) == pytest.approx(91 / 100)
  assert float(ema_warmup(0.999, jnp.asarray(100_000))) == pytest.approx(0.999)
