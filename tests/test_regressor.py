"""The masked regressor and residual diffusion on its mean (CorrDiff): losses, training,
export, loading and the posterior they make."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import DATA, needs_data, perturb_params, tiny_model
from multichan_diff.cli import main
from multichan_diff.diffusion.losses import get_loss_fn, get_regression_loss_fn, regress
from multichan_diff.diffusion.schedules import get_schedule
from multichan_diff.impute.posterior import Posterior, load_posterior
from multichan_diff.train.model_dir import read_meta

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


class _Recorder:
  """A stand-in network that records its inputs and returns x_in + 1."""

  def __init__(self, cond_channels=None):
    self.cfg = type("Cfg", (), {"cond_channels": cond_channels})()

  def __call__(self, x, t, cond, mask):
    self.seen = (x, t, cond, mask)
    return x + 1.0


def test_regress_reads_the_condition_where_it_is_the_target_panel():
  cond = jnp.arange(2 * 3 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 3, 4)
  images = _Recorder()
  np.testing.assert_array_equal(regress(images, cond, jnp.ones((2, 4), bool), cond.shape),
                                cond + 1.0)
  assert float(jnp.abs(images.seen[1]).max()) == 0.0  # t = 0
  cells = _Recorder(cond_channels=4)
  out = regress(cells, cond, jnp.ones((2, 4), bool), (2, 3, 3, 5))
  np.testing.assert_array_equal(out, jnp.ones((2, 3, 3, 5)))  # genes are not the target


def test_regression_loss_is_the_mse_on_missing_present_channels():
  x0 = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  observed = jnp.array([[1, 0, 0], [0, 1, 0]], bool)
  present = jnp.array([[1, 1, 1], [1, 1, 0]], bool)
  batch = {"x0": x0, "observed": observed, "present": present}
  loss, _ = get_regression_loss_fn()(_Recorder(), batch, jax.random.key(1))
  pred = jnp.where(observed[:, None, None, :], x0, 0.0) + 1.0
  se = np.mean(np.square(pred - x0), axis=(1, 2))
  weight = np.array([[0, 1, 1], [1, 0, 0]], np.float32)
  assert float(loss) == pytest.approx(float((se * weight).sum() / weight.sum()), rel=1e-6)


def test_residual_loss_is_the_plain_loss_on_x0_minus_the_mean():
  """With mean_fn the target is x0 - mu; the condition still comes from x0 itself."""
  schedule = get_schedule("linear", 100)
  x0 = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  observed = jnp.array([[1, 0, 0], [0, 1, 1]], bool)
  mu = jax.random.normal(jax.random.key(2), x0.shape)
  seen = {}

  def net(x_t, t, cond, mask):
    seen["cond"] = cond
    return jnp.zeros_like(x_t)

  key = jax.random.key(3)
  residual = get_loss_fn(schedule, "all", "v", mean_fn=lambda c, m, s: mu)(
      net, {"x0": x0, "observed": observed}, key)[0]
  cond = seen["cond"]
  plain = get_loss_fn(schedule, "all", "v")(net, {"x0": x0 - mu, "observed": observed}, key)[0]
  np.testing.assert_allclose(cond, jnp.where(observed[:, None, None, :], x0, 0.0))
  assert float(residual) == pytest.approx(float(plain), rel=1e-6)


def test_residual_posterior_is_the_regressor_mean_plus_the_chains():
  """Cells have no clamped channel and no bounds, so with the same key a residual model's
  samples are its plain chains plus the regressor's output, and its point estimate too."""
  cfg, net = tiny_model(5, spatial=False, cond_channels=6, patch_size=1)
  _, reg = tiny_model(5, seed=3, spatial=False, cond_channels=6, patch_size=1)
  perturb_params(net)
  perturb_params(reg, seed=4)
  schedule = get_schedule("linear", 100)
  genes = np.asarray(jax.random.normal(jax.random.key(0), (3, 6)), np.float32)
  kw = dict(sampler="ddim", steps=4, num_samples=2, batch_size=4, prediction="v")
  key = jax.random.key(5)
  plain = Posterior(net, schedule, **kw).cells(key, genes, 5)
  residual = Posterior(net, schedule, regressor=reg, **kw).cells(key, genes, 5)
  alone = Posterior(None, None, regressor=reg, **kw).cells(key, genes, 5)
  mu = np.asarray(regress(reg, jnp.asarray(genes)[:, None, None, :], jnp.ones((3, 6), bool),
                          (3, 1, 1, 5)))[:, 0, 0]
  np.testing.assert_allclose(alone[1], mu, atol=1e-4)
  np.testing.assert_allclose(alone[0], np.broadcast_to(mu, (2,) + mu.shape), atol=1e-4)
  np.testing.assert_allclose(residual[0], plain[0] + mu, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(residual[1], plain[1] + mu, rtol=1e-4, atol=1e-5)
  assert np.abs(plain[0][0] - plain[0][1]).max() > 1e-3  # the chains vary


def test_residual_image_posterior_keeps_observed_channels_and_bounds():
  cfg, net = tiny_model(4)
  _, reg = tiny_model(4, seed=3)
  perturb_params(net)
  perturb_params(reg, seed=4)
  x = np.asarray(jax.random.uniform(jax.random.key(0), (2, 8, 8, 4)), np.float32)
  observed = np.array([[1, 0, 1, 0], [0, 1, 0, 0]], bool)
  lo, hi = np.zeros(4, np.float32), np.ones(4, np.float32)
  post = Posterior(net, get_schedule("linear", 100), sampler="ddim", steps=3, num_samples=2,
                   batch_size=2, x0_range=(lo, hi), prediction="v", regressor=reg)
  draws, point = post.images(jax.random.key(1), x, observed)
  keep = np.broadcast_to(observed[:, None, None, :], x.shape)
  np.testing.assert_array_equal(point[keep], x[keep])
  np.testing.assert_array_equal(draws[0][keep], x[keep])
  assert draws.min() >= -1e-5 and draws.max() <= 1 + 1e-5  # mu + residual within the data
  assert np.abs(draws[0] - draws[1])[~keep].max() > 1e-4


def _train(args):
  assert main(["train", "--config", f"{CONFIGS}/default.py:smoke", "--config.train.steps=2",
               "--config.data.threads=2", "--config.data.context_norm=fov", *args]) == 0


@needs_data
def test_regressor_and_residual_model_train_export_and_impute(tmp_path, store_path):
  _train(["--workdir", str(tmp_path / "r"), f"--config.data.store={store_path}",
          "--config.network=regressor"])
  assert main(["export", "--workdir", str(tmp_path / "r"), "--out", str(tmp_path / "R")]) == 0
  meta = read_meta(str(tmp_path / "R"))
  assert meta["network"] == "regressor" and meta["context_norm"] == "fov"
  assert "schedule" not in meta
  post, _ = load_posterior(str(tmp_path / "R"), samples=2)
  assert post.steps == 0 and post.views == 2
  # the residual model carries its regressor
  _train(["--workdir", str(tmp_path / "d"), f"--config.data.store={store_path}",
          f"--config.diffusion.residual_of={tmp_path / 'R'}"])
  assert main(["export", "--workdir", str(tmp_path / "d"), "--out", str(tmp_path / "D")]) == 0
  meta = read_meta(str(tmp_path / "D"))
  assert meta["residual"] is True and meta["network"] == "diffusion"
  assert read_meta(str(tmp_path / "D" / "regressor"))["network"] == "regressor"
  out = tmp_path / "imputed"
  assert main(["impute", "--model", str(tmp_path / "D"), "--input",
               str(DATA / "mibi_dcis" / "Point2206.ome.tiff"), "--out", str(out),
               "--missing", "CD3", "--samples", "2", "--steps", "2"]) == 0
  assert (out / "Point2206.ome.tif").exists()


@needs_data
def test_residual_of_must_be_a_matching_regressor(tmp_path, store_path, image_model, capsys):
  """A diffusion model, or a regressor of other settings, is refused before training."""
  assert main(["train", "--config", f"{CONFIGS}/default.py:smoke", "--workdir",
               str(tmp_path / "d"), f"--config.data.store={store_path}",
               f"--config.diffusion.residual_of={image_model}"]) == 2
  assert "takes an exported regressor" in capsys.readouterr().err
  _train(["--workdir", str(tmp_path / "r"), f"--config.data.store={store_path}",
          "--config.network=regressor"])
  assert main(["export", "--workdir", str(tmp_path / "r"), "--out", str(tmp_path / "R")]) == 0
  assert main(["train", "--config", f"{CONFIGS}/default.py:smoke", "--workdir",
               str(tmp_path / "d2"), f"--config.data.store={store_path}",
               "--config.data.context_norm=global",
               f"--config.diffusion.residual_of={tmp_path / 'R'}"]) == 2
  assert "context_norm" in capsys.readouterr().err
  assert not (tmp_path / "d").exists() and not (tmp_path / "d2" / "checkpoints").exists()
  # a residual run resumed with another regressor is refused
  _train(["--workdir", str(tmp_path / "d3"), f"--config.data.store={store_path}",
          f"--config.diffusion.residual_of={tmp_path / 'R'}"])
  assert main(["train", "--config", f"{CONFIGS}/default.py:smoke", "--workdir",
               str(tmp_path / "d3"), f"--config.data.store={store_path}",
               "--config.train.steps=3", "--config.data.context_norm=fov"]) == 2
  assert "regressor" in capsys.readouterr().err
