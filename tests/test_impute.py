"""Imputation: tiling and blending, the tiled posterior sampler, and `impute` on real files."""

import json
import os
import re

import anndata
import jax
import numpy as np
import pytest

from helpers import DATA, needs_data, perturb_params, tiny_model
from multichan_diff.cli import main
from multichan_diff.data import readers
from multichan_diff.data.prepare import bin_image
from multichan_diff.data.transforms import dihedral
from multichan_diff.diffusion.schedules import get_schedule
from multichan_diff.impute import tiling
from multichan_diff.impute.ensemble import Ensemble, check_members
from multichan_diff.impute.images import observed_channels, sample_image
from multichan_diff.impute.posterior import Posterior, load_posterior
from multichan_diff.train.model_dir import read_meta


@pytest.mark.parametrize("size,tile,overlap", [(64, 16, 4), (70, 16, 4), (16, 16, 0), (50, 32, 8)])
def test_tiles_cover_the_image_and_blend_back_exactly(size, tile, overlap):
  starts = tiling.axis_origins(size, tile, overlap)
  assert starts[0] == 0 and starts[-1] == size - tile
  assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
  image = np.random.default_rng(0).normal(size=(size, size + 3, 2)).astype(np.float32)
  blend = tiling.Blender(image.shape, tile)
  for y, x in tiling.origins(size, size + 3, tile, overlap):
    blend.add(image[y:y + tile, x:x + tile], (y, x))
  np.testing.assert_allclose(blend.result(), image, rtol=1e-5, atol=1e-5)


def test_window_is_smooth_positive_and_peaks_in_the_centre():
  w = tiling.window(16)
  assert w.min() > 0 and w[8, 8] > 10 * w[0, 0]
  assert np.abs(np.diff(w, axis=0)).max() < 0.25  # no hard cut


def test_blending_weighs_each_tile_by_the_window():
  """Two overlapping tiles of different constants: a smooth ramp between them, no step."""
  blend = tiling.Blender((16, 24, 1), 16)
  blend.add(np.zeros((16, 16, 1), np.float32), (0, 0))
  blend.add(np.ones((16, 16, 1), np.float32), (0, 8))
  row = blend.result()[8, :, 0]
  assert row[0] == 0 and row[-1] == 1
  assert np.all(np.diff(row) >= -1e-6) and np.diff(row).max() < 0.5


@pytest.mark.parametrize("h, w", [(21, 37), (9, 13)])  # the second is under one tile
def test_sample_image_of_any_size_keeps_observed_channels(h, w):
  cfg, model = tiny_model(3)
  perturb_params(model)
  post = Posterior(model, get_schedule("linear", 100), steps=3, num_samples=2, batch_size=4)
  image = np.random.default_rng(0).normal(size=(h, w, 3)).astype(np.float32)
  observed = np.array([True, False, True])
  draws, point = sample_image(post, image, observed, tile=16, overlap=4,
                              key=jax.random.key(0))
  assert draws.shape == (2, h, w, 3) and np.isfinite(draws).all()
  assert point.shape == (h, w, 3) and np.isfinite(point).all()
  np.testing.assert_array_equal(draws[..., observed], np.broadcast_to(image[..., observed],
                                                                      (2, h, w, 2)))
  np.testing.assert_array_equal(point[..., observed], image[..., observed])
  assert not np.allclose(draws[0, ..., 1], draws[1, ..., 1])  # two samples differ


def test_point_estimates():
  cfg, model = tiny_model(3)
  perturb_params(model)
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  obs = np.array([[True, False, False], [False, True, True]])
  run = lambda **kw: Posterior(model, get_schedule("linear", 100), num_samples=3,
                               batch_size=2, **kw).images(jax.random.key(4), x, obs)
  samples, mean = run(steps=4, point="samples")
  np.testing.assert_allclose(mean[~obs[:, None, None, :].repeat(8, 1).repeat(8, 2)],
                             samples.mean(0)[~obs[:, None, None, :].repeat(8, 1).repeat(8, 2)],
                             rtol=1e-5, atol=1e-6)
  # The denoiser's estimate comes from pure noise in one network call per draw: it does
  # not depend on how long the chains that give the uncertainty are.
  s4, d4 = run(steps=4)
  s7, d7 = run(steps=7)
  np.testing.assert_allclose(d4, d7, rtol=1e-5, atol=1e-6)
  assert not np.allclose(s4, s7) and not np.allclose(d4, mean)
  np.testing.assert_array_equal(d4[..., 0][obs[:, None, 0].repeat(8, 1)],
                                x[..., 0][obs[:, None, 0].repeat(8, 1)])
  with pytest.raises(ValueError, match="point estimate"):
    Posterior(model, get_schedule("linear", 100), point="median")


def test_per_fov_standardised_targets_come_back_in_the_datas_units():
  # A model trained with context_norm 'fov_targets' runs in units of each FOV's own
  # channel statistics: observed channels are standardised with theirs, missing ones
  # come back with the training FOVs' average, never with the input's values there.
  cfg, model = tiny_model(3)
  perturb_params(model)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  obs = np.array([[True, False, True], [False, True, True]])
  shift, scale = rng.normal(size=(2, 3)).astype(np.float32), np.full((2, 3), 2.0, np.float32)
  typical = (np.array([0.5, -1.0, 0.0], np.float32), np.array([3.0, 0.5, 1.0], np.float32))
  make = lambda **kw: Posterior(model, get_schedule("linear", 100), steps=3, num_samples=2,
                                batch_size=2, **kw)
  key = jax.random.key(4)
  samples, point = make(target_stats=typical).images(key, x, obs, (shift, scale))
  keep = obs[:, None, None, :]
  for out in (*samples, point):
    np.testing.assert_array_equal(np.where(keep, out, 0), np.where(keep, x, 0))
  # The same chains in standardised units, by hand: condition and clamp (x - shift) / scale.
  sh = np.where(obs, shift, typical[0])[:, None, None, :]
  sc = np.where(obs, scale, typical[1])[:, None, None, :]
  s_std, p_std = make().images(key, (x - sh) / sc, obs)
  np.testing.assert_allclose(np.where(keep, 0, point), np.where(keep, 0, p_std * sc + sh),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.where(keep, 0, samples), np.where(keep, 0, s_std * sc + sh),
                             rtol=1e-4, atol=1e-4)
  # Missing channels' values and statistics in the input change nothing.
  x2, shift2 = np.where(keep, x, 9.0).astype(np.float32), np.where(obs, shift, 5.0)
  for a, b in zip(make(target_stats=typical).images(key, x2, obs, (shift2, scale)),
                  (samples, point)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_dihedral_views_are_the_eight_symmetries_and_invert():
  a = np.arange(2 * 3 * 3 * 2, dtype=np.float32).reshape(2, 3, 3, 2)
  seen = {dihedral(a, v).tobytes() for v in range(8)}
  assert len(seen) == 8  # all distinct
  for v in range(8):
    np.testing.assert_array_equal(dihedral(dihedral(a, v), v, inverse=True), a)
    np.testing.assert_array_equal(dihedral(a[None], v)[0], dihedral(a, v))  # leading axes
  np.testing.assert_array_equal(dihedral(a, 1), np.rot90(a, 1, axes=(1, 2)))
  np.testing.assert_array_equal(dihedral(a, 4), a[:, :, ::-1])


def test_views_share_the_draws_among_orientations():
  # views=4: the tiles turned 0..3 quarter turns, K/4 draws each (view v keyed by
  # fold_in(key, v), view 0 by key), each turned back; the point is the views' mean.
  cfg, model = tiny_model(3)
  perturb_params(model)
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  obs = np.array([[True, False, False], [False, True, True]])
  make = lambda k, **kw: Posterior(model, get_schedule("linear", 100), steps=2, num_samples=k,
                                   batch_size=2, **kw)
  key = jax.random.key(3)
  samples, point = make(8, views=4).images(key, x, obs)
  assert samples.shape == (8, 2, 8, 8, 3)
  one = make(2)
  by_hand = [one.images(jax.random.fold_in(key, v) if v else key, np.rot90(x, v, (1, 2)), obs)
             for v in range(4)]
  np.testing.assert_allclose(
      samples, np.concatenate([np.rot90(s, -v, (2, 3)) for v, (s, _) in enumerate(by_hand)]),
      rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      point, np.mean([np.rot90(p, -v, (1, 2)) for v, (_, p) in enumerate(by_hand)], 0),
      rtol=1e-5, atol=1e-5)
  keep = obs[:, None, None, :]
  np.testing.assert_array_equal(np.where(keep, point, 0), np.where(keep, x, 0))
  # The orientations disagree, so the average is not any one of them.
  assert not np.allclose(point, np.rot90(by_hand[1][1], -1, (1, 2)), atol=1e-4)
  with pytest.raises(ValueError, match="views"):
    make(6, views=4)
  with pytest.raises(ValueError, match="views"):
    make(3, views=3)
  with pytest.raises(ValueError, match="a cell has none"):
    make(2, views=2).cells(key, np.zeros((2, 5), np.float32), 3)


def test_ensemble_pools_the_draws_and_averages_the_point_estimates():
  # Two networks trained alike but initialised differently: each draws its own K samples
  # (member 0 with the ensemble's key), the point estimate is the mean of theirs.
  members = []
  for seed in (1, 2):
    _, model = tiny_model(3)
    members.append(Posterior(perturb_params(model, seed=seed), get_schedule("linear", 100),
                             steps=3, num_samples=2, batch_size=2))
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  obs = np.array([[True, False, True], [False, True, False]])
  key = jax.random.key(3)
  samples, point = Ensemble(members).images(key, x, obs)
  (s0, p0), (s1, p1) = members[0].images(key, x, obs), members[1].images(
      jax.random.fold_in(key, 1), x, obs)
  assert samples.shape == (4, 2, 8, 8, 3) and Ensemble(members).num_samples == 4
  np.testing.assert_array_equal(samples, np.concatenate([s0, s1]))
  np.testing.assert_allclose(point, (p0 + p1) / 2, rtol=1e-6, atol=1e-6)
  assert not np.allclose(p0, p1, atol=1e-3)  # the members disagree: the mean is neither
  keep = obs[:, None, None, :]
  np.testing.assert_array_equal(np.where(keep, point, 0), np.where(keep, x, 0))
  one = Ensemble(members[:1]).images(key, x, obs)  # an ensemble of one is that model
  np.testing.assert_array_equal(one[1], p0)
  # Members must read and write data alike; what differs is named.
  meta = {"kind": "images", "channels": ["a", "b"], "tile": 16, "step": 10}
  check_members([meta, {**meta, "step": 20, "model": {"widths": [8]}}], ["m1", "m2"])
  with pytest.raises(ValueError, match="m2 and m1 .*'channels' differs"):
    check_members([meta, {**meta, "channels": ["a", "c"]}], ["m1", "m2"])
  with pytest.raises(ValueError, match="'tile' differs"):
    check_members([meta, {**meta, "tile": 32}], ["m1", "m2"])
  with pytest.raises(ValueError, match="latent"):
    check_members([{**meta, "space": "latent"}] * 2, ["m1", "m2"])


@needs_data
def test_default_views_share_the_samples_evenly(image_model, cells_model):
  # Pixel-space images: the most orientations that divide K; cells have none.
  for k, v in ((8, 8), (6, 2), (12, 4), (3, 1)):
    assert load_posterior(image_model, samples=k, steps=1)[0].views == v
  assert load_posterior(image_model, samples=8, steps=1, views=2)[0].views == 2
  assert load_posterior(str(cells_model[2]), samples=8, steps=1)[0].views == 1


def test_samples_stay_in_the_data_range():
  cfg, model = tiny_model(2)
  perturb_params(model, scale=1.0)
  lo, hi = np.array([-1.0, -0.5], np.float32), np.array([2.0, 1.0], np.float32)
  post = Posterior(model, get_schedule("linear", 100), steps=5, num_samples=2, batch_size=2,
                   x0_range=(lo, hi))
  x = np.zeros((2, 16, 16, 2), np.float32)
  for out in post.images(jax.random.key(1), x, np.array([[False, False]] * 2)):
    assert out.min() >= lo.min() - 1e-5 and (out[..., 1] <= hi[1] + 1e-5).all()


def test_blended_images_stay_exactly_in_the_data_range():
  # Per-FOV units and overlapping tiles: the back-transform and the blending round, and
  # must not carry a value clipped to the floor below it.
  cfg, model = tiny_model(2)
  perturb_params(model, scale=1.0)
  lo, hi = np.array([-0.3, -0.7], np.float32), np.array([0.4, 1.3], np.float32)
  post = Posterior(model, get_schedule("linear", 100), steps=3, num_samples=2, batch_size=4,
                   x0_range=(lo, hi), target_stats=(np.array([0.1, 0.2], np.float32),
                                                     np.array([0.3, 0.7], np.float32)))
  image = np.random.default_rng(1).uniform(-0.3, 0.4, size=(21, 30, 2)).astype(np.float32)
  observed = np.array([True, False])
  draws, point = sample_image(post, image, observed, tile=16, overlap=6, key=jax.random.key(2),
                              context_norm="fov_targets")
  for out in (draws, point):
    assert out[..., 1].min() >= lo[1] and out[..., 1].max() <= hi[1]
  assert (draws[..., 1] == lo[1]).any() or (draws[..., 1] == hi[1]).any()
  np.testing.assert_array_equal(draws[..., 0], np.broadcast_to(image[..., 0], (2, 21, 30)))


def test_draws_of_counts_under_half_a_count_are_zero(image_model):
  # Data of whole counts: no blended draw lies between zero counts and half a count; the
  # rest of the draws, and the point estimate, are as sampled.
  from multichan_diff.train.model_dir import zero_below
  meta = read_meta(image_model)
  below = zero_below(meta)
  post = load_posterior(image_model, samples=2, steps=2)[0]
  np.testing.assert_allclose(post.zero_below, below)
  lo, hi = post.x0_range
  c = len(lo)
  image = np.random.default_rng(3).uniform(lo, np.minimum(hi, lo + 1), (20, 24, c))
  observed = np.arange(c) % 2 == 0
  kw = dict(tile=16, overlap=4, key=jax.random.key(4), context_norm=meta["context_norm"])
  draws, point = sample_image(post, image.astype(np.float32), observed, **kw)
  post = load_posterior(image_model, samples=2, steps=2, continuous_draws=True)[0]
  assert post.zero_below is None
  raw, raw_point = sample_image(post, image.astype(np.float32), observed, **kw)
  missing = ~observed
  zeroed = raw[..., missing] < below[missing]
  between = zeroed & (raw[..., missing] > lo[missing])
  assert between.any() and (~zeroed).any(), (between.mean(), zeroed.mean())
  np.testing.assert_array_equal(draws[..., missing][zeroed],
                                np.broadcast_to(lo[missing], zeroed.shape)[zeroed])
  np.testing.assert_array_equal(draws[..., missing][~zeroed], raw[..., missing][~zeroed])
  np.testing.assert_array_equal(point, raw_point)
  np.testing.assert_array_equal(draws[..., observed], raw[..., observed])


def test_observed_channel_rules_and_errors():
  panel = ["DNA", "CD3", "CD8", "E-cadherin"]
  image = ["DNA", "cd3", "E_cadherin", "Au"]  # spelling differs, Au is not in the panel
  m = observed_channels(panel, image, observed=None, missing=["CD3"])
  assert m.tolist() == [True, False, False, True]
  m = observed_channels(panel, image, observed=["dna", "ECadherin"], missing=None)
  assert m.tolist() == [True, False, False, True]
  with pytest.raises(ValueError, match="not in the image"):
    observed_channels(panel, image, observed=["CD8"], missing=None)
  with pytest.raises(ValueError, match="unknown channel.*the panel is: DNA, CD3"):
    observed_channels(panel, image, observed=["CD99"], missing=None)
  listed = "panel is: DNA, CD3, CD8, E-cadherin"
  for observed, missing in ((["DNA"], ["CD3"]), ([], None)):  # both, or an empty --observed
    with pytest.raises(ValueError, match=f"exactly one.*{listed}"):
      observed_channels(panel, image, observed=observed, missing=missing)
  with pytest.raises(ValueError, match=f"no observed channel.*{listed}"):
    observed_channels(panel, image, observed=None, missing=["DNA", "CD3", "E-cadherin"])
  with pytest.raises(ValueError, match=f"nothing to impute.*{listed}"):
    observed_channels(panel, panel, observed=panel, missing=None)
  # two of the file's channels that match one of the model's: the file and both named
  with pytest.raises(ValueError, match="f.tif: channels 'CD-3' and 'cd3' both match 'CD3'"):
    observed_channels(["CD3", "CD8"], ["CD-3", "cd3", "CD8"], observed=["CD8"], missing=None,
                      where="f.tif")


@needs_data
def test_impute_cli_on_a_real_ome_tiff(tmp_path, image_model, capsys):
  src = DATA / "mibi_dcis" / "Point2206.ome.tiff"
  out = tmp_path / "imputed"
  assert main(["impute", "--model", image_model, "--input", str(src), "--missing", "CD3,CD8",
               "--out", str(out), "--samples", "2", "--steps", "2"]) == 0
  captured = capsys.readouterr()
  summary = json.loads(captured.out)
  assert summary["imputed"] == ["CD3", "CD8"]
  assert re.search(r"(\d+)/\1 \[#{24}\] [\d.]+ tiles/s", captured.err)  # the progress bar
  meta = json.loads(open(os.path.join(image_model, "model.json")).read())
  assert meta["context_norm"] == "fov"
  mean = readers.read_multichannel_tiff(str(out / "Point2206.ome.tif"))
  std = readers.read_multichannel_tiff(str(out / "Point2206_std.ome.tif"))
  assert mean.channels == meta["channels"] == std.channels
  fov = readers.read_multichannel_tiff(str(src))
  binned = bin_image(np.moveaxis(fov.image, 0, -1), meta["bin"])
  assert mean.image.shape == (40, *binned.shape[:2])
  for name in ("CD45", "PanKRT"):  # observed channels pass through unchanged
    np.testing.assert_array_equal(mean.image[mean.channels.index(name)],
                                  binned[..., fov.channels.index(name)])
    assert (std.image[std.channels.index(name)] == 0).all()
  cd3 = mean.channels.index("CD3")
  assert (mean.image[cd3] >= 0).all() and (std.image[cd3] > 0).any()
  # An existing output is refused and left alone; bad names list the panel.
  assert main(["impute", "--model", image_model, "--input", str(src), "--missing", "CD3",
               "--out", str(out)]) == 2
  assert "already exists" in capsys.readouterr().err
  assert main(["impute", "--model", image_model, "--input", str(src), "--observed", "CD999",
               "--out", str(tmp_path / "x")]) == 2
  err = capsys.readouterr().err
  assert "CD999" in err and "the panel is: " in err and not (tmp_path / "x").exists()


@needs_data
def test_impute_cells_writes_predictions_with_uncertainty(tmp_path, cells_model, capsys):
  src, _, model = cells_model
  capsys.readouterr()
  out = tmp_path / "pred.h5ad"
  assert main(["impute", "--model", str(model), "--input", str(src), "--out", str(out),
               "--samples", "3", "--steps", "2", "--batch-size", "64"]) == 0
  assert re.search(r"200/200 \[#{24}\] [\d.]+ cells/s", capsys.readouterr().err)
  a, b = anndata.read_h5ad(out), anndata.read_h5ad(src)
  pred, std = a.obsm["protein_predicted"], a.obsm["protein_predicted_std"]
  assert list(pred.columns) == list(b.obsm["protein_counts"].columns) == list(std.columns)
  assert list(pred.index) == list(b.obs_names) and pred.shape == (200, 29)
  assert np.isfinite(pred.to_numpy()).all() and (std.to_numpy() > 0).all()
  assert main(["impute", "--model", str(model), "--input", str(src), "--out",
               str(tmp_path / "p2.h5ad"), "--missing", "CD3"]) == 2
  assert "apply to images" in capsys.readouterr().err
