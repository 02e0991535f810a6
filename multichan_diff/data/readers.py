"""Readers of users' files: arrays and channel names, checked, with the file named in errors."""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any, Sequence

from multichan_diff.data import panels


@dataclasses.dataclass(frozen=True)
class Panel:
  """A steinbock-style panel: the channel names of an acquisition and which to keep."""

  names: list[str]
  keep: list[bool]

  @property
  def kept(self) -> list[str]:
    return [n for n, k in zip(self.names, self.keep) if k]


def read_panel_csv(path: str | os.PathLike) -> Panel:
  """Reads `channel,name,keep` (keep optional, 1 by default; other columns ignored).

  Rows are the image planes in order; `channel` is either the plane index or a label
  such as steinbock's metal tag.
  """
  try:
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
  except OSError as e:
    raise ValueError(f"{path}: cannot read the panel ({e.strerror})") from e
  if not rows:
    raise ValueError(f"{path}: the panel is empty")
  if "name" not in rows[0]:
    raise ValueError(f"{path}: a panel needs a 'name' column (found {list(rows[0])})")
  names, keep = [], []
  for line, row in enumerate(rows, start=2):
    name = (row.get("name") or "").strip()
    if not name:
      raise ValueError(f"{path}: line {line} has no channel name")
    ch = (row.get("channel") or "").strip()
    # A numeric `channel` is the image plane and must run in order; steinbock writes the
    # metal tag there (e.g. 'Ir191'), which only labels the row.
    if ch.isdigit() and int(ch) != line - 2:
      raise ValueError(f"{path}: line {line} is channel {ch!r}, expected {line - 2} "
                       "(rows must list channels in order from 0)")
    k = (row.get("keep") or "1").strip()
    if k not in ("0", "1"):
      raise ValueError(f"{path}: line {line}: keep must be 0 or 1, got {k!r}")
    names.append(name)
    keep.append(k == "1")
  return Panel(names, keep)


# --- images ------------------------------------------------------------------------------

TIFF_SUFFIXES = (".tif", ".tiff")


@dataclasses.dataclass
class FOV:
  """One field of view: counts [C, H, W] float32, its channel names and source files."""

  name: str
  image: "np.ndarray"
  channels: list[str]
  sources: list[str]


def _is_tiff(path: str) -> bool:
  return path.lower().endswith(TIFF_SUFFIXES)


def fov_name(path: str) -> str:
  base = os.path.basename(os.path.normpath(path))
  for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
    if base.lower().endswith(suffix):
      return base[: -len(suffix)]
  return base


def _read_tiff(path: str):
  import tifffile
  try:
    with tifffile.TiffFile(path) as tf:
      series = tf.series[0]
      return series.asarray(), series.axes, tf.ome_metadata if tf.is_ome else None
  except Exception as e:  # tifffile raises several types for broken files
    raise ValueError(f"{path}: cannot read as TIFF ({type(e).__name__}: {e})") from e


def _ome_channel_names(xml: str, path: str) -> list[str]:
  import xml.etree.ElementTree as ET
  try:
    root = ET.fromstring(xml)
  except ET.ParseError as e:
    raise ValueError(f"{path}: unreadable OME metadata ({e})") from e
  names = [el.get("Name") or "" for el in root.iter() if el.tag.endswith("}Channel")]
  if not names or not all(n.strip() for n in names):
    raise ValueError(f"{path}: the OME metadata does not name every channel")
  return [n.strip() for n in names]


def _check_pixels(image, path: str, zero_nonfinite: bool = False) -> "np.ndarray":
  import numpy as np
  if image.ndim != 3:
    raise ValueError(f"{path}: expected one 2-D image per channel (C, Y, X), got shape "
                     f"{image.shape}")
  if image.size == 0:
    raise ValueError(f"{path}: the image is empty (shape {image.shape})")
  image = image.astype(np.float32, copy=False)
  bad = ~np.isfinite(image)
  if bad.any():
    c, y, x = (int(v[0]) for v in np.nonzero(bad))
    if not zero_nonfinite:
      raise ValueError(f"{path}: {int(bad.sum())} NaN or Inf pixel(s), the first at channel "
                       f"{c}, y {y}, x {x} (--zero-nonfinite sets them to 0)")
    image = np.where(bad, 0.0, image).astype(np.float32)
  if (image < 0).any():
    raise ValueError(f"{path}: {int((image < 0).sum())} negative pixel(s); counts cannot be "
                     "negative")
  return image


def read_multichannel_tiff(path: str, panel: Panel | None = None,
                           zero_nonfinite: bool = False, drop: Sequence[str] = ()) -> FOV:
  """An OME-TIFF (names from its metadata) or a multi-page TIFF named by `panel`.

  With a panel, `keep = 0` channels are dropped; for an OME-TIFF the panel's names must
  agree with the metadata. `drop` names more channels to leave out.
  """
  image, axes, ome = _read_tiff(path)
  if image.ndim == 2:
    image = image[None]
  elif axes.upper() not in ("CYX", "IYX", "QYX", "SYX"):
    raise ValueError(f"{path}: expected axes CYX (one 2-D image per channel), got {axes} "
                     f"with shape {image.shape}")
  names = _ome_channel_names(ome, path) if ome else None
  if panel is not None:
    if len(panel.names) != image.shape[0]:
      raise ValueError(f"{path}: the panel lists {len(panel.names)} channels but the image has "
                       f"{image.shape[0]}")
    if names is not None and [n.lower() for n in names] != [n.lower() for n in panel.names]:
      diff = [(i, a, b) for i, (a, b) in enumerate(zip(names, panel.names)) if a.lower() != b.lower()]
      raise ValueError(f"{path}: the OME channel names differ from the panel at "
                       f"(index, image, panel) {diff[:5]}")
    names = panel.names
    keep = [i for i, k in enumerate(panel.keep) if k]
  elif names is None:
    raise ValueError(f"{path}: a plain TIFF has no channel names; pass a panel.csv")
  else:
    keep = list(range(len(names)))
  if len(names) != image.shape[0]:
    raise ValueError(f"{path}: the metadata names {len(names)} channels but the image has "
                     f"{image.shape[0]}")
  if drop:
    keep = panels.drop(names, drop, path, keep)
  panels.check_names([names[i] for i in keep], path)
  image = _check_pixels(image[keep], path, zero_nonfinite)
  return FOV(fov_name(path), image, [names[i] for i in keep], [path])


def read_channel_folder(folder: str, panel: Panel | None = None,
                        zero_nonfinite: bool = False, drop: Sequence[str] = ()) -> FOV:
  """A folder of single-channel TIFFs named by channel (MIBI / ark style), less `drop`."""
  import numpy as np
  files = sorted(f for f in os.listdir(folder) if _is_tiff(f))
  if not files:
    raise ValueError(f"{folder}: no TIFF files in this FOV folder")
  by_name = {fov_name(f): os.path.join(folder, f) for f in files}
  every = panel.names if panel is not None else list(by_name)
  keep = [i for i, k in enumerate(panel.keep) if k] if panel is not None else None
  wanted = [every[i] for i in (panels.drop(every, drop, folder, keep) if drop
                               else keep if keep is not None else range(len(every)))]
  missing = [n for n in wanted if n not in by_name]  # a dropped channel needs no TIFF
  if missing:
    raise ValueError(f"{folder}: no TIFF for panel channel(s) {missing}")
  panels.check_names(wanted, folder)
  planes = []
  for n in wanted:
    arr, _, _ = _read_tiff(by_name[n])
    arr = np.squeeze(arr)
    if arr.ndim != 2:
      raise ValueError(f"{by_name[n]}: expected a single 2-D channel, got shape {arr.shape}")
    planes.append(arr)
  shapes = {p.shape for p in planes}
  if len(shapes) > 1:
    raise ValueError(f"{folder}: channel images differ in size: {sorted(shapes)}")
  image = _check_pixels(np.stack(planes), folder, zero_nonfinite)
  return FOV(fov_name(folder), image, wanted, [by_name[n] for n in wanted])


def find_fovs(input_dir: str) -> tuple[str, list[str]]:
  """-> (layout, paths): 'tiff' (one multi-channel TIFF per FOV) or 'folders'."""
  if not os.path.isdir(input_dir):
    raise ValueError(f"{input_dir}: not a directory")
  entries = sorted(os.listdir(input_dir))
  tiffs = [os.path.join(input_dir, e) for e in entries if _is_tiff(e)]
  folders = [os.path.join(input_dir, e) for e in entries
             if os.path.isdir(os.path.join(input_dir, e))
             and any(_is_tiff(f) for f in os.listdir(os.path.join(input_dir, e)))]
  if tiffs and folders:
    raise ValueError(f"{input_dir}: holds both TIFF files and folders of TIFFs; use one layout")
  if tiffs:
    return "tiff", tiffs
  if folders:
    return "folders", folders
  raise ValueError(f"{input_dir}: no TIFF files or FOV folders found")


def read_image_folder(input_dir: str, panel: Panel | None = None,
                      zero_nonfinite: bool = False, drop: Sequence[str] = ()) -> list[FOV]:
  """All FOVs of a folder in any supported layout, checked to share one panel, less the
  channels named in `drop`."""
  layout, paths = find_fovs(input_dir)
  if panel is None and os.path.exists(os.path.join(input_dir, "panel.csv")):
    panel = read_panel_csv(os.path.join(input_dir, "panel.csv"))
  read = read_multichannel_tiff if layout == "tiff" else read_channel_folder
  fovs = [read(p, panel, zero_nonfinite, drop) for p in paths]
  first = fovs[0]
  for f in fovs[1:]:
    if [c.lower() for c in f.channels] != [c.lower() for c in first.channels]:
      raise ValueError(f"{f.sources[0]}: its channels differ from {first.sources[0]}'s "
                       f"(all FOVs in one folder must share one panel)")
  names = [f.name for f in fovs]
  if len(set(names)) != len(names):
    raise ValueError(f"{input_dir}: two FOVs share a name")
  return fovs


# --- cells -------------------------------------------------------------------------------

@dataclasses.dataclass
class Cells:
  """Paired counts of one CITE-seq experiment: rna [N, G] (sparse or dense), protein [N, P]."""

  rna: Any
  genes: list[str]
  protein: "np.ndarray"
  proteins: list[str]
  obs: Any  # pandas DataFrame of per-cell annotations
  cell_ids: list[str]
  source: str


def _protein_from_obsm(adata, key: str, path: str):
  import numpy as np
  if key not in adata.obsm:
    raise ValueError(f"{path}: no obsm[{key!r}] with protein counts; obsm has "
                     f"{sorted(adata.obsm.keys())} (choose one with --protein-key)")
  prot = adata.obsm[key]
  if hasattr(prot, "columns"):
    return np.asarray(prot.to_numpy(), np.float32), [str(c) for c in prot.columns]
  for names_key in (f"{key}_names", "protein_names"):
    if names_key in adata.uns:
      names = [str(n) for n in adata.uns[names_key]]
      return np.asarray(prot, np.float32), names
  raise ValueError(f"{path}: obsm[{key!r}] is an array without names; put them in "
                   f"uns['{key}_names']")


def _split_var(adata, key: str, path: str):
  """`var:COLUMN=VALUE`: proteins are the features whose var[COLUMN] is VALUE."""
  import numpy as np
  spec = key[len("var:"):]
  column, _, value = spec.partition("=")
  if not value or column not in adata.var.columns:
    raise ValueError(f"{path}: --protein-key {key!r} needs var:COLUMN=VALUE with an existing "
                     f"column; var has {list(adata.var.columns)}")
  is_prot = np.asarray(adata.var[column].astype(str) == value)
  if not is_prot.any():
    found = sorted(set(adata.var[column].astype(str)))
    raise ValueError(f"{path}: no feature has var[{column!r}] == {value!r}; values are {found}")
  prot = adata[:, is_prot]
  x = prot.X.toarray() if hasattr(prot.X, "toarray") else np.asarray(prot.X)
  return adata[:, ~is_prot], np.asarray(x, np.float32), [str(n) for n in prot.var_names]


def read_cells(path: str, protein_key: str = "protein_counts", layer: str | None = None,
               drop: Sequence[str] = ()) -> Cells:
  """An AnnData .h5ad or a MuData .h5mu (modalities 'rna' and 'prot').

  In an AnnData file the proteins are `obsm[protein_key]` (a DataFrame, or an array with
  names in `uns[protein_key + '_names']`), or, with `protein_key = 'var:COLUMN=VALUE'`,
  the features so marked in `var` (the NeurIPS 2021 layout: `var:feature_types=ADT`).
  `layer` reads counts from `layers[layer]` instead of X; the proteins named in `drop`
  are left out.
  """
  import anndata
  import numpy as np
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such file")
  try:
    if path.lower().endswith(".h5mu"):
      import h5py
      with h5py.File(path, "r") as f:
        mods = sorted(f["mod"].keys()) if "mod" in f else []
        if not {"rna", "prot"} <= set(mods):
          raise ValueError(f"{path}: a MuData file needs modalities 'rna' and 'prot'; it has "
                           f"{mods}")
        rna = anndata.io.read_elem(f["mod/rna"])
        prot = anndata.io.read_elem(f["mod/prot"])
      common = rna.obs_names.intersection(prot.obs_names)
      rna, prot = rna[common], prot[common]
      protein = prot.X.toarray() if hasattr(prot.X, "toarray") else np.asarray(prot.X)
      protein, proteins = np.asarray(protein, np.float32), [str(n) for n in prot.var_names]
      adata = rna
    else:
      adata = anndata.read_h5ad(path)
      if layer is not None:
        if layer not in adata.layers:
          raise ValueError(f"{path}: no layers[{layer!r}]; layers are {sorted(adata.layers)}")
        adata.X = adata.layers[layer]
      if protein_key.startswith("var:"):
        adata, protein, proteins = _split_var(adata, protein_key, path)
      else:
        protein, proteins = _protein_from_obsm(adata, protein_key, path)
  except ValueError:
    raise
  except Exception as e:
    raise ValueError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
  if adata.n_obs == 0:
    raise ValueError(f"{path}: the file has zero cells")
  if adata.n_vars == 0:
    raise ValueError(f"{path}: the file has zero genes")
  if protein.shape[1] == 0:
    raise ValueError(f"{path}: the file has zero proteins")
  panels.check_names(proteins, f"{path} (proteins)")
  if drop:
    keep = panels.drop(proteins, drop, f"{path} (proteins)")
    protein, proteins = protein[:, keep], [proteins[i] for i in keep]
  x = adata.X
  values = x.data if hasattr(x, "data") and not isinstance(x, np.ndarray) else np.asarray(x)
  for what, v in (("RNA", values), ("protein", protein)):
    if not np.all(np.isfinite(v)):
      raise ValueError(f"{path}: {int((~np.isfinite(v)).sum())} NaN or Inf {what} count(s)")
    if (v < 0).any():
      raise ValueError(f"{path}: {int((v < 0).sum())} negative {what} count(s)")
  return Cells(x, [str(g) for g in adata.var_names], protein, proteins, adata.obs,
               [str(c) for c in adata.obs_names], path)
