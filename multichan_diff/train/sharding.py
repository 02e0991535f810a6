"""Device mesh and shardings: the batch over every device, parameters replicated or FSDP.

Axes: `data` (pure data parallel) and `fsdp` (data parallel whose parameters are also
split). The batch's leading axis is split over both; with `fsdp` > 1 each parameter's
largest axis divisible by the fsdp size is split over `fsdp`, the rest replicated. XLA
inserts the gathers and reduce-scatters; there is no hand-written collective.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """A (data, fsdp) mesh over `devices` (all by default); data = -1 takes what is left."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  if data == -1:
    if devices.size % fsdp:
      raise ValueError(f"{devices.size} devices cannot be split into fsdp={fsdp} groups")
    data = devices.size // fsdp
  if data * fsdp != devices.size:
    raise ValueError(f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices, "
                     f"found {devices.size}")
  return Mesh(devices.reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def _fsdp_spec(shape: tuple[int, ...], n: int, min_size: int) -> P:
  if n == 1 or int(np.prod(shape)) < min_size:
    return P()
  divisible = [i for i, s in enumerate(shape) if s % n == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda i: shape[i])
  spec = [None] * len(shape)
  spec[axis] = "fsdp"
  return P(*spec)


def state_shardings(mesh: Mesh, tree, *, fsdp: bool = False, min_size: int = 2 ** 14):
  """NamedShardings for a pytree of arrays (params, optimiser state): replicated or FSDP."""
  n = mesh.shape["fsdp"] if fsdp else 1

  def spec(x):
    shape = tuple(getattr(x, "shape", ()))
    return NamedSharding(mesh, _fsdp_spec(shape, n, min_size))

  return jax.tree.map(spec, tree)


def jit_train_step(train_step, mesh: Mesh, state, *, fsdp: bool = False,
                   fsdp_min_size: int = 2 ** 14, donate: bool = True):
  """jit `train_step(state, batch, key)` with state / batch shardings on the mesh.

  Returns (jitted_step, state_sharding); place the state with `jax.device_put(state,
  state_sharding)` and batches with `batch_sharding(mesh)`.
  """
  state_sh = state_shardings(mesh, state, fsdp=fsdp, min_size=fsdp_min_size)
  replicated = NamedSharding(mesh, P())
  step = jax.jit(train_step,
                 in_shardings=(state_sh, batch_sharding(mesh), replicated),
                 out_shardings=(state_sh, replicated),
                 donate_argnums=(0,) if donate else ())
  return step, state_sh
