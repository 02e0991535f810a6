"""The `multichan-diff` command: each verb is a thin shell over one library function."""

from __future__ import annotations

import argparse
import json
import sys

from multichan_diff import __version__


def _names(text: str | None) -> list[str]:
  return [n.strip() for n in text.split(",") if n.strip()] if text else []


def _prepare_images(args) -> dict:
  from multichan_diff.data.prepare import prepare_images
  return prepare_images(
      args.input, args.out, panel_csv=args.panel, tile=args.tile, stride=args.stride,
      bin_size=args.bin, bin_how=args.bin_how, transform=args.transform, cofactor=args.cofactor,
      clip_percentile=args.clip_percentile, test_fovs=_names(args.test_fovs),
      val_fovs=_names(args.val_fovs), min_signal=args.min_signal, dtype=args.dtype,
      zero_nonfinite=args.zero_nonfinite, drop_channels=_names(args.drop_channels),
      overwrite=args.overwrite)


def _prepare_citeseq(args) -> dict:
  from multichan_diff.data.prepare_cells import prepare_citeseq
  return prepare_citeseq(
      args.input, args.out, protein_key=args.protein_key, layer=args.layer, genes=args.genes,
      rna_norm=args.rna_norm, protein_norm=args.protein_norm, gene_scale=args.gene_scale,
      test_fraction=args.test_fraction,
      val_fraction=args.val_fraction, split_by=args.split_by, seed=args.seed,
      drop_channels=_names(args.drop_channels), overwrite=args.overwrite)


def _prepare_union(args) -> dict:
  from multichan_diff.data.prepare import prepare_union
  return prepare_union(args.stores, args.out, name_map=args.name_map,
                       intersection=args.intersection, overwrite=args.overwrite)


def _prepare_latent(args) -> dict:
  from multichan_diff.data.encode import encode_store
  return encode_store(args.autoencoder, args.store, args.out, batch_size=args.batch_size,
                      overwrite=args.overwrite)


def load_config(argv: list[str]):
  """`--config FILE[:ARG]` plus `--config.a.b=value` overrides, via ml_collections."""
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  full = ["multichan-diff", *argv]
  saved, sys.argv = sys.argv, full  # config_flags finds the override flags in sys.argv
  try:
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv,
                                    lock_config=False)
    fv(full)
  except (flags.Error, ValueError, OSError) as e:
    raise ValueError(f"config: {e}") from e
  finally:
    sys.argv = saved
  if fv.config is None:
    raise ValueError("config: --config FILE is required")
  return fv.config


def _train(args) -> dict:
  from multichan_diff.train.trainer import train_and_evaluate
  return train_and_evaluate(load_config(args.config_args), args.workdir)


def _train_autoencoder(args) -> dict:
  from multichan_diff.train.trainer import train_autoencoder
  return train_autoencoder(load_config(args.config_args), args.workdir)


def _distill(args) -> dict:
  from multichan_diff.train.trainer import distill
  return distill(load_config(args.config_args), args.model, args.workdir)


def _export(args) -> dict:
  from multichan_diff.train.export import export_model
  return export_model(args.workdir, args.out, overwrite=args.overwrite, step=args.step)


def _impute(args) -> dict:
  from multichan_diff.impute.posterior import model_dirs
  from multichan_diff.train.model_dir import read_meta
  common = dict(samples=args.samples, sampler=args.sampler, steps=args.steps, seed=args.seed,
                point=args.point, views=args.views, overwrite=args.overwrite)
  if read_meta(model_dirs(args.model)[0])["kind"] == "cells":
    if args.observed or args.missing:
      raise ValueError("a cells model predicts every protein from the RNA; --observed and "
                       "--missing apply to images")
    if args.format != "ome-tiff":
      raise ValueError(f"--format {args.format} applies to images; a cells model writes an h5ad")
    from multichan_diff.impute.cells import impute_cells
    return impute_cells(args.model, args.input, args.out, layer=args.layer,
                        batch_size=args.batch_size or 256, **common)
  from multichan_diff.impute.images import impute_images
  return impute_images(args.model, args.input, args.out, observed=_names(args.observed),
                       missing=_names(args.missing), overlap=args.overlap,
                       batch_size=args.batch_size or 16, panel_csv=args.panel,
                       name_map=args.name_map, continuous_draws=args.continuous_draws,
                       out_format=args.format, **common)


def _evaluate(args) -> dict:
  from multichan_diff.evaluate.run import evaluate
  return evaluate(args.model, args.store, args.out, split=args.split, mode=args.mode,
                  panel=_names(args.panel), channels=_names(args.channels),
                  held_out=_names(args.held_out), samples=args.samples, sampler=args.sampler,
                  steps=args.steps, seed=args.seed, overlap=args.overlap,
                  batch_size=args.batch_size, name_map=args.name_map, point=args.point,
                  views=args.views, continuous_draws=args.continuous_draws,
                  regressor=args.regressor, masks=args.masks, segment=args.segment,
                  nuclear_diameter=args.nuclear_diameter, overwrite=args.overwrite)


def _calibrate(args) -> dict:
  from multichan_diff.evaluate.calibrate import calibrate
  return calibrate(args.model, args.store, args.out, split=args.split, samples=args.samples,
                   sampler=args.sampler, steps=args.steps, point=args.point, seed=args.seed,
                   overwrite=args.overwrite)


def _design_panel(args) -> dict:
  from multichan_diff.evaluate.panel_design import design_panel
  return design_panel(args.model, args.store, args.out, k=args.k, start=_names(args.start),
                      split=args.split, tiles=args.tiles, cells=args.cells,
                      samples=args.samples, views=args.views, batch_size=args.batch_size,
                      seed=args.seed, name_map=args.name_map, overwrite=args.overwrite)


def _demo(args) -> dict:
  from multichan_diff.demo import run_demo
  return run_demo(args.out, data=args.data, panel=args.panel, steps=args.steps,
                  tile=args.tile, bin_size=args.bin, overwrite=args.overwrite)


def _quantify(args) -> dict:
  from multichan_diff.quantify.table import quantify
  return quantify(args.input, args.out, mask=args.mask, std=args.std, segment=args.segment,
                  nuclear_diameter=args.nuclear_diameter, expand=args.expand,
                  observed=_names(args.observed), missing=_names(args.missing),
                  overwrite=args.overwrite)


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
  """The options `impute` and `evaluate` share: how to sample, and how to match names."""
  p.add_argument("--samples", type=int, default=8, help="posterior samples per tile / cell")
  p.add_argument("--sampler", choices=("ddim", "ddpm", "onestep"), default="ddim",
                 help="onestep: a distilled generator's (`multichan-diff distill`)")
  p.add_argument("--steps", type=int, help="default: 50 for ddim, 500 for ddpm, 1 for onestep")
  p.add_argument("--point", choices=("denoiser", "samples"), default="denoiser",
                 help="the point estimate (posterior mean): the network's x0 estimate from "
                      "pure noise, averaged over K draws (a generator's: its teacher's), or "
                      "the mean of the K samples")
  p.add_argument("--views", type=int, choices=(1, 2, 4, 8),
                 help="images: orientations (flips / right-angle rotations) the samples are "
                      "shared among, the point estimate averaged over them (default: the "
                      "most that divide --samples; 1 for latent and cells models)")
  p.add_argument("--continuous-draws", action="store_true",
                 help="images of whole counts: keep draws under half a count as sampled "
                      "(by default they are zero counts)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--overlap", type=int, help="tile overlap in pixels (default: tile / 4)")
  p.add_argument("--batch-size", type=int, help="tiles (16) or cells (256) per call")
  p.add_argument("--name-map", help="CSV 'name,alias' of channel synonyms")
  p.add_argument("--overwrite", action="store_true")


def build_parser() -> argparse.ArgumentParser:
  from multichan_diff.impute.writers import WRITERS
  parser = argparse.ArgumentParser(
      prog="multichan-diff",
      description="Controllable diffusion for multi-channel biological data.")
  parser.add_argument("--version", action="version", version=f"multichan-diff {__version__}")
  verbs = parser.add_subparsers(dest="command", metavar="COMMAND")

  prep = verbs.add_parser("prepare", help="turn users' files into a training store")
  kinds = prep.add_subparsers(dest="kind", metavar="KIND", required=True)
  im = kinds.add_parser("images", help="OME-TIFFs, TIFF + panel.csv, or per-FOV TIFF folders")
  im.add_argument("--input", required=True, help="folder of FOVs")
  im.add_argument("--out", required=True, help="store to write (a zarr v3 directory)")
  im.add_argument("--panel", help="steinbock-style panel.csv (channel,name,keep)")
  im.add_argument("--tile", type=int, default=64)
  im.add_argument("--stride", type=int, default=None, help="default: the tile size")
  im.add_argument("--bin", type=int, default=1, help="integer binning before tiling")
  im.add_argument("--bin-how", choices=("mean", "sum"), default="mean")
  im.add_argument("--transform", choices=("arcsinh", "log1p", "none"), default="arcsinh")
  im.add_argument("--cofactor", type=float, default=5.0)
  im.add_argument("--clip-percentile", type=float, default=99.9)
  im.add_argument("--test-fovs", help="comma-separated FOV names")
  im.add_argument("--val-fovs", help="comma-separated FOV names")
  im.add_argument("--min-signal", type=float, default=0.0,
                  help="keep tiles whose fraction of pixels with any count is at least this")
  im.add_argument("--dtype", choices=("float32", "bfloat16", "uint16"), default="float32",
                  help="uint16 stores keep raw counts, normalised when read")
  im.add_argument("--zero-nonfinite", action="store_true", help="set NaN / Inf pixels to 0")
  im.add_argument("--drop-channels", metavar="NAME,...",
                  help="channels to leave out of the panel (exact names): an empty channel, "
                       "or one of two that match one marker")
  im.add_argument("--overwrite", action="store_true")
  im.set_defaults(func=_prepare_images)

  cs = kinds.add_parser("citeseq", help="AnnData .h5ad or MuData .h5mu: genes -> proteins")
  cs.add_argument("--input", required=True)
  cs.add_argument("--out", required=True)
  cs.add_argument("--protein-key", default="protein_counts",
                  help="obsm key of the proteins, or var:COLUMN=VALUE (e.g. var:feature_types=ADT)")
  cs.add_argument("--layer", help="read counts from this layer instead of X")
  cs.add_argument("--genes", default="hvg:2000", help="hvg:N, all, or a file of gene names")
  cs.add_argument("--rna-norm", default="log1p_cp10k", choices=("log1p_cp10k",))
  cs.add_argument("--protein-norm", default="clr", choices=("clr",))
  cs.add_argument("--gene-scale", default="global", choices=("global", "gene"),
                  help="genes centred, then one scale for all (global) or a z-score each "
                       "(gene: blows up rarely seen genes on small data sets)")
  cs.add_argument("--test-fraction", type=float, default=0.2)
  cs.add_argument("--val-fraction", type=float, default=0.1)
  cs.add_argument("--split-by", help="obs column whose groups go whole to the test split")
  cs.add_argument("--seed", type=int, default=0)
  cs.add_argument("--drop-channels", metavar="NAME,...",
                  help="proteins to leave out (exact names): an isotype control, or one of "
                       "two clones of one marker")
  cs.add_argument("--overwrite", action="store_true")
  cs.set_defaults(func=_prepare_citeseq)

  un = kinds.add_parser("union", help="join image stores over the union of their panels")
  un.add_argument("stores", nargs="+")
  un.add_argument("--out", required=True)
  un.add_argument("--name-map", help="CSV 'name,alias' of synonyms across panels")
  un.add_argument("--intersection", action="store_true",
                  help="keep only the channels every panel measured")
  un.add_argument("--overwrite", action="store_true")
  un.set_defaults(func=_prepare_union)

  la = kinds.add_parser("latent", help="encode an image store's tiles with a trained tile "
                        "autoencoder, for latent-space diffusion (`space = latent`)")
  la.add_argument("--autoencoder", required=True, help="an exported autoencoder (MODEL_DIR)")
  la.add_argument("--store", required=True, help="the pixel image store it was trained on")
  la.add_argument("--out", required=True)
  la.add_argument("--batch-size", type=int, default=16, help="tiles encoded at once")
  la.add_argument("--overwrite", action="store_true")
  la.set_defaults(func=_prepare_latent)

  tr = verbs.add_parser("train", help="train from a config; resumes from --workdir",
                        description="multichan-diff train --config configs/NAME.py[:smoke] "
                        "--workdir DIR [--config.train.steps=2000 ...]")
  tr.add_argument("--workdir", required=True)
  tr.set_defaults(func=_train)
  ta = verbs.add_parser("train-autoencoder",
                        help="train the per-channel tile autoencoder of latent diffusion",
                        description="multichan-diff train-autoencoder --config "
                        "configs/NAME.py[:smoke] --workdir DIR [--config.autoencoder.train."
                        "steps=2000 ...]; `export` and `evaluate` take its run as they take "
                        "a diffusion run's")
  ta.add_argument("--workdir", required=True)
  ta.set_defaults(func=_train_autoencoder)

  di = verbs.add_parser("distill", help="distil an exported model into a one-step generator "
                        "(SiD); resumes from --workdir",
                        description="multichan-diff distill --model TEACHER_DIR --config "
                        "configs/NAME.py[:smoke] --workdir DIR [--config.distill.alpha=1.0 "
                        "...]; the store is the teacher's; `export` it as a training run, "
                        "then impute / evaluate with --sampler onestep")
  di.add_argument("--model", required=True, help="the exported teacher (MODEL_DIR)")
  di.add_argument("--workdir", required=True)
  di.set_defaults(func=_distill)

  ex = verbs.add_parser("export", help="write a self-contained model from a run's workdir")
  ex.add_argument("--workdir", required=True)
  ex.add_argument("--out", required=True)
  ex.add_argument("--step", type=int, help="the checkpoint to export (default: the latest)")
  ex.add_argument("--overwrite", action="store_true")
  ex.set_defaults(func=_export)

  im = verbs.add_parser(
      "impute", help="impute missing channels (images) or proteins (cells) with uncertainty",
      description="Images: OUT is a folder with <fov>.ome.tif (full panel) and "
      "<fov>_std.ome.tif (--format ome-zarr: <fov>.ome.zarr and <fov>_std.ome.zarr). Cells: "
      "OUT is the input h5ad with obsm['protein_predicted'] and obsm['protein_predicted_std'].")
  im.add_argument("--model", required=True, help="a folder written by `multichan-diff export`"
                  ", or several, comma-separated: an ensemble (K samples from each, the "
                  "point estimate their mean)")
  im.add_argument("--input", required=True, help="an OME-TIFF, a folder of FOVs, or an h5ad")
  im.add_argument("--out", required=True)
  im.add_argument("--observed", help="comma-separated channels to condition on")
  im.add_argument("--missing", help="comma-separated channels to impute (all others observed)")
  _add_sampling_args(im)
  im.add_argument("--panel", help="panel.csv for plain TIFFs")
  im.add_argument("--layer", help="cells: read RNA counts from this layer instead of X")
  im.add_argument("--format", choices=sorted(WRITERS), default="ome-tiff",
                  help="images: the files written per FOV (ome-zarr: NGFF 0.5 with a pyramid)")
  im.set_defaults(func=_impute)

  ev = verbs.add_parser(
      "evaluate", help="score a model and the baselines on a store's held-out split",
      description="Writes OUT/report.json, report.md and plots. Images: Pearson, Spearman, "
      "RMSE per channel (modes: single = each channel held out in turn; multi = 10 fixed "
      "random halves; panel = --panel observed). Cells: r_p, r_c in CLR units.")
  ev.add_argument("--model", required=True,
                  help="a folder written by `multichan-diff export`, or several, comma-"
                  "separated: an ensemble")
  ev.add_argument("--store", required=True, help="a store written by `multichan-diff prepare`")
  ev.add_argument("--split", choices=("test", "val", "train"), default="test")
  ev.add_argument("--mode", choices=("single", "multi", "panel"), default="single")
  ev.add_argument("--panel", help="with --mode panel: the observed channels")
  ev.add_argument("--channels", help="images: use only these of the store's channels, "
                  "observed or scored (e.g. the channels two models' panels share)")
  ev.add_argument("--held-out", help="images, with --mode single: hold out only these "
                  "channels, each in turn (the same draws as in a run over every channel)")
  ev.add_argument("--out", required=True, help="report folder")
  ev.add_argument("--regressor", help="an exported masked regressor (--config.network="
                  "regressor) of the model's panel: its point estimate is scored as the "
                  "baseline row masked_regressor, on the same observed channels")
  cells = ev.add_mutually_exclusive_group()
  cells.add_argument("--masks", help="images: a folder of cell masks (label TIFFs named by "
                     "FOV, as for quantify; at the store's pixel size or the source's) to add "
                     "cell_pearson, Pearson r over cells of the per-cell means")
  cells.add_argument("--segment", metavar="nuclear:CHANNEL",
                     help="images, no masks at hand: cell_pearson over a ROUGH nuclear "
                     "segmentation of the store's CHANNEL")
  ev.add_argument("--nuclear-diameter", type=float,
                  help="--segment: nuclei's diameter in the store's pixels (default 10 "
                  "source pixels, binned)")
  _add_sampling_args(ev)
  ev.set_defaults(func=_evaluate)

  ca = verbs.add_parser(
      "calibrate", help="fit a per-channel scale of the draws' spread on a validation split",
      description="Writes a copy of MODEL to OUT whose draws are widened per channel about "
      "the point estimate so that the share of the split's measured values outside every "
      "draw is 2 / (K + 1), as for a calibrated posterior (images: the 10 `multi` sets).")
  ca.add_argument("--model", required=True, help="an exported diffusion model or generator")
  ca.add_argument("--store", required=True, help="the store it was trained on")
  ca.add_argument("--split", choices=("val", "train"), default="val")
  ca.add_argument("--out", required=True, help="the calibrated model's folder")
  ca.add_argument("--samples", type=int, default=8, help="draws per entry (K)")
  ca.add_argument("--sampler", choices=("ddim", "ddpm", "onestep"), default="ddim")
  ca.add_argument("--steps", type=int, help="default: 50 for ddim, 500 for ddpm, 1 for onestep")
  ca.add_argument("--point", choices=("denoiser", "samples"), default="denoiser")
  ca.add_argument("--seed", type=int, default=0)
  ca.add_argument("--overwrite", action="store_true")
  ca.set_defaults(func=_calibrate)

  dp = verbs.add_parser(
      "design-panel", help="choose the k markers to measure so that the rest are imputed best",
      description="Greedy forward selection on a split: each step adds the marker whose "
      "measurement gives the highest mean Pearson r of the channels still imputed (the "
      "model's point estimate on a fixed sample of tiles or cells), beside a ridge baseline "
      "refit per panel. Writes OUT/panel.json, panel.png, panel.md and panel.html.")
  dp.add_argument("--model", required=True, help="an exported model (or several, comma-"
                  "separated: an ensemble)")
  dp.add_argument("--store", required=True, help="a store of the model's panel")
  dp.add_argument("--out", required=True, help="output folder")
  dp.add_argument("--k", type=int, required=True, help="markers to add")
  dp.add_argument("--start", metavar="NAME,...", help="markers measured anyway (cells: "
                  "proteins; the genes are always observed)")
  dp.add_argument("--split", choices=("val", "test", "train"), default="val")
  dp.add_argument("--tiles", type=int, default=32, help="images: tiles scored (seeded)")
  dp.add_argument("--cells", type=int, help="cells: cells scored (seeded; default: all)")
  dp.add_argument("--samples", type=int, default=1,
                  help="noise draws averaged into the point estimate")
  dp.add_argument("--views", type=int, choices=(1, 2, 4, 8),
                  help="images: orientations the draws are shared among")
  dp.add_argument("--batch-size", type=int, help="images: tiles per call (default 16)")
  dp.add_argument("--seed", type=int, default=0)
  dp.add_argument("--name-map", help="CSV 'name,alias' of channel synonyms")
  dp.add_argument("--overwrite", action="store_true")
  dp.set_defaults(func=_design_panel)

  de = verbs.add_parser(
      "demo", help="prepare, train, impute and evaluate on built-in synthetic tissue",
      description="The whole path in a few CPU minutes on the built-in synthetic tissue, or "
      "with --data on a folder of your own images (at least 3 FOVs: the last is the test FOV, "
      "the one before it validation). Writes OUT/report/report.md and its plots.")
  de.add_argument("--out", default="demo_out")
  de.add_argument("--data", help="a folder of FOVs (any layout `prepare images` reads)")
  de.add_argument("--panel", help="panel.csv (default: DATA/panel.csv when present)")
  de.add_argument("--steps", type=int, default=400, help="training steps")
  de.add_argument("--tile", type=int, default=32)
  de.add_argument("--bin", type=int, default=1)
  de.add_argument("--overwrite", action="store_true")
  de.set_defaults(func=_demo)

  qu = verbs.add_parser(
      "quantify", help="per-cell table (AnnData .h5ad) of imputed images over a cell mask",
      description="OUT.h5ad: X = each cell's mean of every channel, var['imputed'], "
      "layers['std'] = the cell's mean of the imputed channels' std image (NaN on observed "
      "channels), obs fov, label, area, centroid_y, centroid_x, obsm['spatial'] = (x, y).")
  qu.add_argument("--input", required=True, help="an imputed <fov>.ome.tif (as `impute` "
                  "writes it) or a folder of them: one table, obs['fov'] names the FOV")
  qu.add_argument("--mask", help="a label TIFF (integers, 0 = background: steinbock, Mesmer, "
                  "Cellpose) at the image's size, or a folder of them named <fov>.tif[f] "
                  "(or <fov>_mask, _masks, _labels, _cp_masks, _whole_cell)")
  qu.add_argument("--segment", metavar="nuclear:CHANNEL",
                  help="no mask at hand: a ROUGH fallback that segments nuclei from CHANNEL "
                  "(smooth, Otsu threshold, distance-transform watershed); use a real "
                  "segmentation tool for analysis")
  qu.add_argument("--nuclear-diameter", type=float, default=10.0, metavar="PIXELS",
                  help="--segment: a typical nucleus's diameter in the image's pixels")
  qu.add_argument("--expand", type=int, default=0, metavar="PIXELS",
                  help="--segment: grow each nucleus by this many pixels")
  qu.add_argument("--std", help="the std image(s) (default: <fov>_std.ome.tif beside each "
                  "image, when there)")
  qu.add_argument("--observed", help="images that do not record which channels were "
                  "imputed: the observed channels (comma-separated)")
  qu.add_argument("--missing", help="the same: the imputed channels")
  qu.add_argument("--out", required=True, help="the .h5ad to write")
  qu.add_argument("--overwrite", action="store_true")
  qu.set_defaults(func=_quantify)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  if getattr(args, "func", None) in (_train, _train_autoencoder, _distill):
    args.config_args = rest
  elif rest:
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  if args.command is None:
    parser.print_help()
    return 0
  try:
    result = args.func(args)
  except (ValueError, FileExistsError, RuntimeError) as e:
    print(f"multichan-diff {args.command}: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
