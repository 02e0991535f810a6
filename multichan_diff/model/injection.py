"""Injection of contextual features E_l(c) into the diffusion features D_l(x_t), by name."""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from multichan_diff.model.attention import SqueezeExcite


class SEInjection(nnx.Module):
  """z_l = D_l(x_t) + SE(E_l(c)): the condition enters through a per-channel gate (eq. 4)."""

  def __init__(self, features: int, *, se_reduction: int = 4, rngs: nnx.Rngs):
    self.se = SqueezeExcite(features, reduction=se_reduction, rngs=rngs)

  def __call__(self, d: jax.Array, e: jax.Array) -> jax.Array:
    return d + self.se(e)


class AddInjection(nnx.Module):
  """z_l = D_l(x_t) + E_l(c): the paper's element-wise addition ablation."""

  def __call__(self, d: jax.Array, e: jax.Array) -> jax.Array:
    return d + e


def _se(features, *, se_reduction, rngs):
  return SEInjection(features, se_reduction=se_reduction, rngs=rngs)


def _add(features, *, se_reduction, rngs):
  return AddInjection()


# 'none' (unconditional) builds no contextual network at all; see ConditionalUNet.
INJECTIONS: dict[str, Callable[..., nnx.Module] | None] = {"se": _se, "add": _add, "none": None}


def make_injection(kind: str, features: int, *, se_reduction: int = 4,
                   rngs: nnx.Rngs) -> nnx.Module | None:
  if kind not in INJECTIONS:
    raise ValueError(f"unknown injection {kind!r}; choose from {sorted(INJECTIONS)}")
  factory = INJECTIONS[kind]
  return None if factory is None else factory(features, se_reduction=se_reduction, rngs=rngs)
