"""Whole-image imputation: bin like the training data, normalise, tile with overlap, sample
K posteriors per tile, blend the seams, and return to the data's units.

`sample_image` works in normalised units and is what `evaluate` scores; `impute_images`
is the file-to-file command around it.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from multichan_diff.data import panels, readers, store
from multichan_diff.data.prepare import bin_image
from multichan_diff.data.transforms import FOV_NORMS
from multichan_diff.impute import tiling, writers
from multichan_diff.impute.posterior import Posterior, load_posterior
from multichan_diff.train.metrics import Progress
from multichan_diff.train.model_dir import model_normalizer


def sample_image(posterior: Posterior, image: np.ndarray, observed: np.ndarray, *, tile: int,
                 overlap: int, key: jax.Array, context_norm: str | None = "global",
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """image [H, W, C] normalised (missing channels: any value), observed [C] bool ->
  (K blended samples [K, H, W, C], blended point estimate [H, W, C]), observed channels
  equal to the input.

  context_norm 'fov' or 'fov_targets': the condition is standardised with this image's own
  channel mean and std, as the model saw its training FOVs (the model.json says which).
  Data of whole counts (`posterior.zero_below`): a draw under half the smallest positive
  value the data can take is zero counts. The network's output is continuous and puts
  many measured zeros a little above zero, so that without this they fall below every draw
  far more often than a posterior's would. The point estimate, a mean, is left as it is.
  """
  h, w, c = image.shape
  padded = tiling.pad_to_tile(image, tile)
  starts = tiling.origins(padded.shape[0], padded.shape[1], tile, overlap)
  blend = tiling.Blender((posterior.num_samples + 1,) + padded.shape, tile)  # + the point
  bar = Progress(len(starts), unit="tiles") if progress else None
  obs = np.broadcast_to(observed.astype(bool), (posterior.batch_size, c))
  tiles_at = lambda chunk: np.stack([padded[y:y + tile, x:x + tile] for y, x in chunk])
  context = None
  if context_norm in FOV_NORMS:
    stats = posterior.fov_context(image, tiles_at(starts) if posterior.codec else None)
    context = tuple(np.broadcast_to(v, (posterior.batch_size, len(v))) for v in stats)
  for lo in range(0, len(starts), posterior.batch_size):
    chunk = starts[lo:lo + posterior.batch_size]
    tiles = tiles_at(chunk)
    n = len(chunk)
    samples, point = posterior.images(jax.random.fold_in(key, lo), tiles, obs[:n],
                                      context and (context[0][:n], context[1][:n]))
    for i, origin in enumerate(chunk):
      blend.add(np.concatenate([samples[:, i], point[i][None]]), origin)
    if bar:
      bar.update(lo + len(chunk))
  if bar:
    bar.close()
  out = blend.result()[:, :h, :w]
  if posterior.x0_range is not None:
    # The chains end inside the data's bounds; rounding in the per-FOV back-transform and
    # in the blending must not carry a value below the floor (fewer than no counts).
    np.clip(out, *posterior.x0_range, out=out)
  if posterior.zero_below is not None:
    draws = out[:-1]
    np.copyto(draws, posterior.x0_range[0], where=draws < posterior.zero_below)
  out[..., observed] = image[..., observed]  # exact, not blended
  return out[:-1], out[-1]


def observed_channels(model_panel: list[str], image_channels: list[str], *,
                      observed: list[str] | None, missing: list[str] | None,
                      name_map: panels.NameMap | None = None, where: str = "input") -> np.ndarray:
  """The [C_model] bool mask of observed channels from --observed or --missing."""
  panel = ", ".join(model_panel)
  if bool(observed) == bool(missing):
    raise ValueError("give exactly one of --observed or --missing (comma-separated names); "
                     f"the model's panel is: {panel}")
  available = np.zeros(len(model_panel), bool)  # a channel the model does not know is unused
  try:
    available[list(panels.known(image_channels, model_panel, name_map).values())] = True
  except ValueError as e:  # two of the image's channels match one of the model's
    raise ValueError(f"{where}: {e}") from e
  mask = np.zeros(len(model_panel), bool)
  if observed:
    mask[panels.match(observed, model_panel, name_map)] = True
    absent = [model_panel[i] for i in np.flatnonzero(mask & ~available)]
    if absent:
      raise ValueError(f"{where}: observed channel(s) {absent} are not in the image "
                       f"(its channels: {', '.join(image_channels)})")
  else:
    mask = available.copy()
    mask[panels.match(missing, model_panel, name_map)] = False
  if not mask.any():
    raise ValueError(f"{where}: no observed channel the model knows; the model's panel is: "
                     f"{panel}")
  if mask.all():
    raise ValueError(f"{where}: every channel of the model's panel is observed, nothing to "
                     f"impute; the panel is: {panel}")
  return mask


def _read_inputs(path: str, panel_csv: str | None) -> list[readers.FOV]:
  panel = readers.read_panel_csv(panel_csv) if panel_csv else None
  if os.path.isdir(path):
    return readers.read_image_folder(path, panel)
  if not os.path.exists(path):
    raise ValueError(f"{path}: no such file or folder")
  return [readers.read_multichannel_tiff(path, panel)]


def impute_images(model_dir: str, input_path: str, out: str, *, observed=None, missing=None,
                  samples: int = 8, sampler: str = "ddim", steps: int | None = None,
                  seed: int = 0, overlap: int | None = None, batch_size: int = 16,
                  panel_csv: str | None = None, name_map: str | None = None,
                  point: str = "denoiser", views: int | None = None,
                  continuous_draws: bool = False, overwrite: bool = False,
                  out_format: str = "ome-tiff") -> dict:
  """Writes OUT/<fov>.ome.tif (the full panel: observed channels as given, the rest the
  posterior mean, see `Posterior`) and OUT/<fov>_std.ome.tif (the standard deviation over
  the samples), both in the input's units at the model's pixel size (the input binned by
  the model's bin); out_format 'ome-zarr': <fov>.ome.zarr and <fov>_std.ome.zarr (`writers`).
  OUT appears whole or not at all."""
  write = writers.get_writer(out_format)
  store.check_writable(out, overwrite)
  posterior, meta = load_posterior(model_dir, sampler=sampler, steps=steps, samples=samples,
                                   batch_size=batch_size, point=point, views=views,
                                   continuous_draws=continuous_draws)
  if meta["kind"] != "images":
    raise ValueError(f"{model_dir}: a {meta['kind']} model; images need an images model")
  nmap = panels.NameMap.read_csv(name_map) if name_map else None
  fovs = _read_inputs(input_path, panel_csv)
  names, tile = meta["channels"], meta["tile"]
  norm = model_normalizer(meta)
  overlap = tile // 4 if overlap is None else overlap
  key = jax.random.key(seed)
  written = []
  with store.atomic_dir(out, overwrite) as tmp:
    for i, fov in enumerate(fovs):
      where = fov.sources[0]
      mask = observed_channels(names, fov.channels, observed=observed, missing=missing,
                               name_map=nmap, where=where)
      counts = bin_image(np.moveaxis(fov.image, 0, -1), meta.get("bin", 1),
                         meta.get("bin_how", "mean"))
      full = np.zeros(counts.shape[:2] + (len(names),), np.float32)
      pos = panels.known(fov.channels, names, nmap)
      full[..., list(pos.values())] = counts[..., list(pos)]
      draws, point = sample_image(posterior, norm.forward(full), mask, tile=tile,
                                  overlap=overlap, key=jax.random.fold_in(key, i),
                                  context_norm=meta.get("context_norm"), progress=True)
      mean, std = norm.inverse(point), norm.inverse(draws).std(0)
      mean[..., mask], std[..., mask] = full[..., mask], 0.0
      write(tmp, fov.name, mean, std, names, ~mask)
      written.append(fov.name)
  return {"out": os.path.abspath(out), "format": out_format, "fovs": written,
          "observed": [n for n, m in zip(names, mask) if m],
          "imputed": [n for n, m in zip(names, mask) if not m]}
