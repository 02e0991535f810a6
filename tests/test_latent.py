"""Latent-space diffusion: per-channel masks on k features, the latent store, and a latent
model that takes and returns pixels in `impute` and `evaluate`."""

import json
import os

import jax
import numpy as np
import pytest

from helpers import DATA, needs_data, perturb_params, tiny_model
from multichan_diff.cli import main
from multichan_diff.data import readers, store
from multichan_diff.data.pipeline import RandomChannelMask, StoreSource, make_dataset
from multichan_diff.data.prepare import bin_image
from multichan_diff.diffusion.schedules import get_schedule
from multichan_diff.impute.images import sample_image
from multichan_diff.impute.posterior import Posterior
from multichan_diff.model.autoencoder import AutoencoderConfig, build_autoencoder
from multichan_diff.model.latent import LatentCodec, LatentStats, expand

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")


def test_mask_is_drawn_per_channel_and_covers_its_k_features():
  present = expand(np.array([True, True, False, True, True]), 3, np)
  mask = RandomChannelMask(0.5, group=3)
  for seed in range(20):
    obs = mask.random_map({"present": present}, np.random.default_rng(seed))["observed"]
    per_channel = obs.reshape(5, 3)
    assert (per_channel == per_channel[:, :1]).all()  # a channel's features go together
    assert not per_channel[2].any()  # never observe an absent channel
    assert 0 < per_channel[:, 0].sum() < 4  # at least one observed, one missing


def _latent_posterior(c=3, k=2, point="denoiser"):
  ae = build_autoencoder(AutoencoderConfig(latent_channels=k, widths=(8,), norm_groups=4))
  perturb_params(ae, 0.1)
  f = c * k
  stats = LatentStats(np.zeros(f), np.ones(f), -3 * np.ones(f), 3 * np.ones(f))
  _, model = tiny_model(f)
  perturb_params(model)
  return Posterior(model, get_schedule("linear", 1000), steps=2, num_samples=2,
                   batch_size=2, codec=LatentCodec(ae, stats), point=point,
                   x0_range=(np.full(c, -1.0), np.full(c, 4.0)))


@pytest.mark.parametrize("point", ["denoiser", "samples"])
def test_latent_posterior_returns_pixels_with_observed_channels_kept(point):
  post = _latent_posterior(point=point)
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 8, 8, 3)), np.float32)
  observed = np.array([[True, False, True], [False, True, False]])
  samples, mean = post.images(jax.random.key(1), x, observed)
  assert samples.shape == (2, 2, 8, 8, 3) and mean.shape == (2, 8, 8, 3)
  for b in range(2):
    for c in np.flatnonzero(observed[b]):
      np.testing.assert_array_equal(mean[b, ..., c], x[b, ..., c])
      np.testing.assert_array_equal(samples[:, b, ..., c], np.broadcast_to(x[b, ..., c],
                                                                           (2, 8, 8)))
  missing = ~observed[:, None, None, :]
  assert (mean[np.broadcast_to(missing, mean.shape)] >= -1).all()  # clipped to the data range
  assert samples[:, 0, ..., 1].std(0).max() > 0  # the draws differ


def test_latent_sample_image_with_fov_context():
  post = _latent_posterior()
  image = np.random.default_rng(0).normal(size=(13, 20, 3)).astype(np.float32)
  observed = np.array([True, False, False])
  draws, point = sample_image(post, image, observed, tile=8, overlap=2,
                              key=jax.random.key(0), context_norm="fov")
  assert draws.shape == (2, 13, 20, 3) and point.shape == (13, 20, 3)
  np.testing.assert_array_equal(point[..., 0], image[..., 0])
  shift, scale = post.fov_context(image, image[None, :8, :8])
  assert shift.shape == scale.shape == (6,) and (scale >= 0.1).all()


def test_latent_tiles_are_encoded_once_per_batch_across_observed_sets():
  post = _latent_posterior()
  calls = []
  encode = post._encode_jit
  post._encode_jit = lambda state, x: calls.append(x.shape) or encode(state, x)
  image = np.random.default_rng(0).normal(size=(13, 20, 3)).astype(np.float32)
  kw = dict(tile=8, overlap=2, context_norm="fov")
  first = sample_image(post, image, np.array([True, False, False]), key=jax.random.key(0), **kw)
  batches = len(calls)  # 3 tile batches, each shared by fov_context and the sampler
  assert batches == 3
  again = sample_image(post, image, np.array([True, False, False]), key=jax.random.key(0), **kw)
  sample_image(post, image, np.array([False, True, True]), key=jax.random.key(1), **kw)
  assert len(calls) == batches  # another observed set: the same tiles, no new encoding
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  sample_image(post, image + 1, np.array([True, False, False]), key=jax.random.key(0), **kw)
  assert len(calls) == 2 * batches  # other pixels are encoded anew


@needs_data
def test_latent_store_train_evaluate_and_impute(tmp_path, store_path, autoencoder_model,
                                                capsys):
  _, ae_dir = autoencoder_model
  latent = tmp_path / "latent.zarr"
  assert main(["prepare", "latent", "--autoencoder", str(ae_dir), "--store", store_path,
               "--out", str(latent)]) == 0
  capsys.readouterr()
  attrs, pixel = store.read_attributes(str(latent)), store.read_attributes(store_path)
  c, k = len(pixel["channels"]), attrs["latent"]["k"]
  assert attrs["space"] == "latent" and attrs["channels"] == pixel["channels"]
  assert attrs["tile"] == 16 and attrs["latent"]["tile"] == 4
  z = store.open_array(str(latent), "x0").read().result()
  assert z.shape == (len(pixel["sample_split"]), 4, 4, c * k)
  train = z[np.asarray(attrs["sample_split"]) == 0]
  np.testing.assert_allclose(train.mean((0, 1, 2)), 0, atol=1e-3)
  np.testing.assert_allclose(train.std((0, 1, 2)), 1, atol=1e-2)
  assert np.array(attrs["fov_mean"]).shape == (len(pixel["fovs"]), c * k)
  # Undoing the standardisation and decoding gives the autoencoder's own reconstruction.
  from multichan_diff.train.model_dir import load_model
  ae, _ = load_model(str(ae_dir))
  codec = LatentCodec(ae, LatentStats.from_dict(attrs["latent"]))
  src = StoreSource(store_path, None)
  x = np.stack([src[i]["x0"] for i in range(4)])
  np.testing.assert_allclose(np.asarray(codec.decode(z[:4])), np.asarray(ae(x)[0]),
                             atol=2e-4)
  # The pipeline draws masks per channel on the latent store.
  batch = next(iter(make_dataset(str(latent), global_batch_size=4, context_norm="fov")))
  assert batch["x0"].shape == (4, 4, 4, c * k) and batch["cond_shift"].shape == (4, c * k)
  obs = batch["observed"].reshape(4, c, k)
  assert (obs == obs[..., :1]).all()

  run, model = tmp_path / "run", tmp_path / "model"
  base = ["train", "--config", f"{CONFIGS}/default.py:smoke", "--workdir", str(run),
          f"--config.data.store={latent}", "--config.data.threads=2",
          "--config.train.steps=3", "--config.data.context_norm=fov"]
  assert main(base + ["--config.space=latent"]) == 2  # augmentation does not commute
  assert "data.augment=False" in capsys.readouterr().err
  assert main(base) == 2  # a pixel-space config on a latent store
  assert "space = 'pixel'" in capsys.readouterr().err
  assert main(base + ["--config.space=latent", "--config.data.augment=False"]) == 0
  assert main(["export", "--workdir", str(run), "--out", str(model)]) == 0
  meta = json.loads((model / "model.json").read_text())
  assert meta["space"] == "latent" and meta["model"]["num_channels"] == c * k
  assert (model / "autoencoder" / "model.json").exists()
  capsys.readouterr()

  # evaluate and impute: pixels in, pixels out.
  out = tmp_path / "report"
  assert main(["evaluate", "--model", str(model), "--store", str(latent), "--mode", "panel",
               "--panel", "CD45,PanKRT", "--out", str(out)]) == 2
  assert store_path in capsys.readouterr().err and not out.exists()
  assert main(["evaluate", "--model", str(model), "--store", store_path, "--mode", "panel",
               "--panel", "CD45,PanKRT,HH3,VIM,SMA", "--out", str(out), "--samples", "2",
               "--steps", "2"]) == 0
  report = json.loads((out / "report.json").read_text())
  cd3 = report["methods"]["model"]["per_channel"]["CD3"]["pearson"]
  assert cd3 is not None and np.isfinite(cd3)
  src = DATA / "mibi_dcis" / "Point2206.ome.tiff"
  assert main(["impute", "--model", str(model), "--input", str(src), "--missing", "CD3,CD8",
               "--out", str(tmp_path / "imp"), "--samples", "2", "--steps", "2"]) == 0
  mean = readers.read_multichannel_tiff(str(tmp_path / "imp" / "Point2206.ome.tif"))
  fov = readers.read_multichannel_tiff(str(src))
  binned = bin_image(np.moveaxis(fov.image, 0, -1), meta["bin"])
  assert mean.image.shape == (c, *binned.shape[:2])
  i = fov.channels.index("CD45")
  np.testing.assert_array_equal(mean.image[mean.channels.index("CD45")], binned[..., i])
  assert (mean.image[mean.channels.index("CD3")] >= 0).all()
