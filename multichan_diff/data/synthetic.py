"""A built-in *synthetic* tissue: multiplexed images and CITE-seq-like cells from a simple
cell model, deterministic in a seed. For tests and the demo; it is not real data.

Tissue model: cells at random, non-overlapping positions; each cell's type is drawn from
probabilities that vary smoothly over the image (tissue regions); each type has a marker
program (mean count per channel); each channel is nuclear (inner disk), membrane (ring) or
cytoplasmic (whole cell); pixel counts are Poisson around the program plus background.
Cells: the same programs drive RNA (a type-specific gene signature, negative binomial
counts) and proteins (Poisson around the type's program, with a gene-linked component).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

LOCALISATIONS = ("nuclear", "membrane", "cytoplasm")


@dataclasses.dataclass(frozen=True)
class TissueModel:
  num_channels: int = 12
  num_types: int = 5
  size: int = 256
  cell_radius: float = 5.0
  density: float = 0.7  # fraction of the area covered by cells (roughly)
  background: float = 0.05
  brightness: float = 6.0


def channel_names(num_channels: int) -> list[str]:
  """'DNA' first (nuclear, every cell), then 'SYN1', 'SYN2', ..."""
  return ["DNA"] + [f"SYN{i}" for i in range(1, num_channels)]


def _programs(rng, m: TissueModel) -> tuple[np.ndarray, list[str]]:
  prog = rng.gamma(0.6, 0.4, (m.num_types, m.num_channels))
  for t in range(m.num_types):  # two to three strong markers per type
    prog[t, rng.choice(np.arange(1, m.num_channels), size=min(3, m.num_channels - 1),
                       replace=False)] += rng.uniform(1.0, 2.0, min(3, m.num_channels - 1))
  prog[:, 0] = 1.5  # DNA in every nucleus
  loc = ["nuclear"] + [LOCALISATIONS[i] for i in rng.integers(0, 3, m.num_channels - 1)]
  return prog, loc


def _smooth_field(rng, size: int, k: int, scale: float) -> np.ndarray:
  """k smooth random fields [k, size, size] from a few random Fourier modes."""
  yy, xx = np.mgrid[:size, :size] / size
  out = np.zeros((k, size, size))
  for i in range(k):
    for _ in range(4):
      f = rng.normal(0, scale, 2)
      out[i] += rng.normal() * np.cos(2 * np.pi * (f[0] * yy + f[1] * xx) + rng.uniform(0, 6.3))
  return out


def synthetic_fov(seed: int, model: TissueModel = TissueModel(), programs=None) -> np.ndarray:
  """One FOV of counts [C, H, W] (uint16)."""
  rng = np.random.default_rng(seed)
  m = model
  prog, loc = programs if programs is not None else _programs(np.random.default_rng(0), m)
  n_cells = int(m.density * m.size ** 2 / (np.pi * m.cell_radius ** 2))
  centers = rng.uniform(0, m.size, (n_cells * 3, 2))
  keep = []  # greedy rejection: no two centres closer than 1.6 radii
  grid: dict[tuple[int, int], list[int]] = {}
  cell = 2 * m.cell_radius
  for i, c in enumerate(centers):
    gy, gx = int(c[0] // cell), int(c[1] // cell)
    near = [j for dy in (-1, 0, 1) for dx in (-1, 0, 1) for j in grid.get((gy + dy, gx + dx), [])]
    if all(np.hypot(*(centers[j] - c)) > 1.6 * m.cell_radius for j in near):
      keep.append(i)
      grid.setdefault((gy, gx), []).append(i)
    if len(keep) == n_cells:
      break
  centers = centers[keep]
  fields = _smooth_field(rng, m.size, m.num_types, 2.0)
  iy = np.clip(centers[:, 0].astype(int), 0, m.size - 1)
  ix = np.clip(centers[:, 1].astype(int), 0, m.size - 1)
  logits = 2.0 * fields[:, iy, ix].T  # [cells, types]
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  types = np.array([rng.choice(m.num_types, p=pi) for pi in p])
  expr = prog[types] * rng.lognormal(0, 0.3, (len(types), m.num_channels))  # cell variation

  rate = np.full((m.num_channels, m.size, m.size), m.background)
  r = int(np.ceil(m.cell_radius))
  dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
  dist = np.hypot(dy, dx) / m.cell_radius
  masks = {"nuclear": dist <= 0.55, "membrane": (dist > 0.7) & (dist <= 1.0),
           "cytoplasm": dist <= 1.0}
  for (cy, cx), e in zip(centers.astype(int), expr):
    y0, y1, x0, x1 = cy - r, cy + r + 1, cx - r, cx + r + 1
    sy0, sx0 = max(0, -y0), max(0, -x0)
    sy1 = (2 * r + 1) - max(0, y1 - m.size)
    sx1 = (2 * r + 1) - max(0, x1 - m.size)
    for ch in range(m.num_channels):
      patch = masks[loc[ch]][sy0:sy1, sx0:sx1] * (m.brightness * e[ch])
      rate[ch, max(y0, 0):min(y1, m.size), max(x0, 0):min(x1, m.size)] += patch
  return rng.poisson(rate).astype(np.uint16)


def write_synthetic_tissue(out_dir: str, *, num_fovs: int = 4, seed: int = 0,
                           model: TissueModel = TissueModel()) -> list[str]:
  """Writes `num_fovs` OME-TIFFs (FOV0, FOV1, ...) and a panel.csv; returns the FOV names."""
  import tifffile
  os.makedirs(out_dir, exist_ok=True)
  names = channel_names(model.num_channels)
  programs = _programs(np.random.default_rng(seed), model)
  fovs = []
  for i in range(num_fovs):
    image = synthetic_fov(seed * 1000 + i + 1, model, programs)
    tifffile.imwrite(os.path.join(out_dir, f"FOV{i}.ome.tiff"), image,
                     metadata={"axes": "CYX", "Channel": {"Name": names},
                               "Description": "multichan_diff synthetic tissue"})
    fovs.append(f"FOV{i}")
  with open(os.path.join(out_dir, "panel.csv"), "w") as f:
    f.write("channel,name,keep\n" + "".join(f"{i},{n},1\n" for i, n in enumerate(names)))
  return fovs


def synthetic_cells(seed: int = 0, *, num_cells: int = 600, num_genes: int = 300,
                    num_proteins: int = 12, num_types: int = 5):
  """CITE-seq-like AnnData (RNA counts in X, obsm['protein_counts']), synthetic."""
  import anndata
  import pandas as pd
  rng = np.random.default_rng(seed)
  types = rng.integers(0, num_types, num_cells)
  gene_prog = rng.gamma(0.3, 1.0, (num_types, num_genes))
  loadings = rng.normal(0, 1, (num_genes, num_proteins)) * (rng.random((num_genes, 1)) < 0.2)
  size = rng.lognormal(np.log(2000), 0.3, num_cells)
  mu = gene_prog[types] * rng.lognormal(0, 0.4, (num_cells, num_genes))
  mu = mu / mu.sum(1, keepdims=True) * size[:, None]
  rna = rng.negative_binomial(5, 5 / (5 + mu))
  expr = np.log1p(rna / rna.sum(1, keepdims=True) * 1e4) @ loadings / np.sqrt(num_genes * 0.2)
  prot_rate = np.exp(1.5 + 0.8 * np.tanh(expr) + rng.normal(0, 0.2, (num_cells, num_proteins)))
  protein = rng.poisson(prot_rate * rng.lognormal(0, 0.2, (num_cells, 1)))
  cells = [f"cell{i}" for i in range(num_cells)]
  a = anndata.AnnData(rna.astype(np.float32),
                      obs=pd.DataFrame({"cell_type": [f"type{t}" for t in types]}, index=cells),
                      var=pd.DataFrame(index=[f"GENE{i}" for i in range(num_genes)]))
  a.obsm["protein_counts"] = pd.DataFrame(protein.astype(np.float32), index=cells,
                                          columns=[f"PROT{i}" for i in range(num_proteins)])
  a.uns["source"] = "multichan_diff synthetic cells (not real data)"
  return a
