"""The per-channel tile autoencoder: shapes, channel independence, training on real tiles."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import needs_data
from multichan_diff.cli import main
from multichan_diff.model.autoencoder import (AutoencoderConfig, build_autoencoder,
                                              reconstruction_loss)

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
SMALL = AutoencoderConfig(latent_channels=3, widths=(8, 16), norm_groups=4)


@pytest.mark.parametrize("c", [1, 3, 7])
def test_encode_decode_shapes_for_any_panel(c):
  model = build_autoencoder(SMALL)
  x = jax.random.normal(jax.random.key(0), (2, 32, 16, c))
  z = model.encode(x)
  assert z.shape == (2, 8, 4, 3 * c)
  assert model.decode(z).shape == x.shape
  with pytest.raises(ValueError, match="multiples of 4"):
    model.encode(jnp.zeros((1, 30, 32, c)))


def test_channels_are_encoded_independently():
  model = build_autoencoder(SMALL)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 5))
  y = x.at[..., 2].add(jax.random.normal(jax.random.key(1), (2, 16, 16)))
  zx, zy = np.asarray(model.encode(x)), np.asarray(model.encode(y))
  changed = np.abs(zx - zy).max(axis=(0, 1, 2)) > 0  # [C * k]
  assert changed[6:9].all() and not changed[:6].any() and not changed[9:].any()
  # Reordering channels reorders their latents: one set of weights for every channel.
  perm = np.array([4, 0, 3, 1, 2])
  zp = np.asarray(model.encode(x[..., perm])).reshape(2, 4, 4, 5, 3)
  np.testing.assert_allclose(zp, zx.reshape(2, 4, 4, 5, 3)[..., perm, :], atol=1e-5)


def test_loss_reconstructs_only_present_channels():
  model = build_autoencoder(SMALL)
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 6))
  present = jnp.array([[True] * 3 + [False] * 3] * 4)
  loss_fn = reconstruction_loss(beta=0.0, channels_per_tile=3)
  # Absent channels never enter: replacing their pixels leaves the loss as it was.
  a, _ = loss_fn(model, {"x0": x, "present": present}, jax.random.key(2))
  b, _ = loss_fn(model, {"x0": x.at[..., 3:].set(100.0), "present": present},
                 jax.random.key(2))
  assert np.isclose(float(a), float(b)) and float(a) > 0


@needs_data
def test_train_export_and_reconstruct_real_tiles(tmp_path, store_path, autoencoder_model,
                                                 capsys):
  wd, out = autoencoder_model
  meta = json.loads((out / "model.json").read_text())
  assert meta["network"] == "autoencoder" and meta["step"] == 300
  capsys.readouterr()
  assert main(["evaluate", "--model", str(out), "--store", store_path, "--split", "val",
               "--out", str(tmp_path / "rec")]) == 0
  report = json.loads((tmp_path / "rec" / "report.json").read_text())
  # On the held-out FOV, k = 3 latents per 4 x 4 block must beat keeping each block's mean
  # (one value per block; r 0.54 here), by a margin: 300 steps reach about 0.77.
  from multichan_diff.data.pipeline import StoreSource
  from multichan_diff.evaluate import metrics
  src = StoreSource(store_path, "val")
  x = np.stack([src[i]["x0"] for i in range(len(src))])
  b, h, w, c = x.shape
  pooled = x.reshape(b, h // 4, 4, w // 4, 4, c).mean((2, 4)).repeat(4, 1).repeat(4, 2)
  block_mean = np.nanmean(metrics.pearson(pooled.reshape(-1, c), x.reshape(-1, c)))
  assert report["mean_pearson"] > block_mean + 0.15, (report["mean_pearson"], block_mean)
  assert "| CD45 |" in (tmp_path / "rec" / "report.md").read_text()
  # A diffusion run's workdir is not an autoencoder's, and the reverse.
  assert main(["train", "--config", f"{CONFIGS}/default.py:smoke", "--workdir", str(wd),
               f"--config.data.store={store_path}"]) == 2
  assert "another network" in capsys.readouterr().err
