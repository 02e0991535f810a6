"""Several exported models trained alike (other seeds, other data orders) as one posterior.

Networks trained from different initialisations err differently; the mean of their point
estimates removes part of that noise (a deep ensemble), at M times one model's cost. Each
member draws its own K samples, so the uncertainty is the spread of all M * K draws: the
posterior's spread and the members' disagreement together.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

# model.json keys that may differ between members: how each network was built and trained.
# Everything else (panel, genes, transforms, tile, per-FOV units) is how data goes in and
# comes out, and must agree.
MEMBER_KEYS = frozenset({"step", "model", "schedule", "t_init", "teacher", "teacher_step"})


def check_members(metas: Sequence[dict], dirs: Sequence[str]) -> None:
  """Refuses members that do not read and write data alike, naming the key and folders."""
  for meta, d in zip(metas[1:], dirs[1:]):
    for key in sorted((set(meta) | set(metas[0])) - MEMBER_KEYS):
      if meta.get(key) != metas[0].get(key):
        raise ValueError(f"{d} and {dirs[0]} cannot form an ensemble: their {key!r} "
                         "differs (members must share the panel, genes, transforms and tile)")
    if meta.get("space") == "latent":
      raise ValueError(f"{d}: latent-space models cannot form an ensemble (each has its own "
                       "autoencoder)")


class Ensemble:
  """The `Posterior` interface over M members: K draws from each, the point estimate the
  mean of the members' point estimates. Member 0 keeps the key, so an ensemble of one is
  that model."""

  def __init__(self, members: Sequence):
    if not members:
      raise ValueError("an ensemble needs at least one model")
    self.members = list(members)
    first = self.members[0]
    self.num_samples = sum(m.num_samples for m in self.members)
    self.batch_size, self.steps = first.batch_size, first.steps
    self.point, self.views, self.codec = first.point, first.views, None
    self.x0_range, self.zero_below = first.x0_range, first.zero_below  # shared transforms

  def _each(self, method: str, key: jax.Array, *args) -> tuple[np.ndarray, np.ndarray]:
    outs = [getattr(m, method)(jax.random.fold_in(key, i) if i else key, *args)
            for i, m in enumerate(self.members)]
    return np.concatenate([s for s, _ in outs]), np.mean([p for _, p in outs], 0)

  def images(self, key: jax.Array, x: np.ndarray, observed: np.ndarray, context=None):
    """As `Posterior.images`: (samples [M*K, B, H, W, C], point [B, H, W, C])."""
    return self._each("images", key, x, observed, context)

  def cells(self, key: jax.Array, genes: np.ndarray, num_proteins: int):
    """As `Posterior.cells`: (samples [M*K, B, P], point [B, P])."""
    return self._each("cells", key, genes, num_proteins)

  def fov_context(self, image: np.ndarray, tiles) -> tuple[np.ndarray, np.ndarray]:
    return self.members[0].fov_context(image, tiles)  # pixel space: the image's own stats
