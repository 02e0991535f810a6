"""Test setup: 8 fake CPU devices, forced before JAX initialises, so sharding tests run anywhere."""

import atexit
import os
import shutil
import tempfile

# Optimisation level 0: the tests' programs are tiny and compiled once each, so XLA's
# LLVM passes cost far more than they save (a smoke train step compiled 2.4x faster and
# ran 1.3x slower); results differ only by float rounding.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8"
                           + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One compilation cache for the session (and the CLI processes it starts): many tests
# compile the same smoke-sized steps, and a cache hit skips XLA's compile.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402  (must come after the flags)

jax.config.update("jax_platforms", "cpu")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def store_path(tmp_path_factory):
  """mibi_dcis binned by 8 in 16x16 tiles (test Point2206, val Point2204), read-only."""
  from helpers import DATA
  from multichan_diff.data.prepare import prepare_images
  if not DATA.is_dir():
    pytest.skip(f"shared data not found at {DATA}")
  out = tmp_path_factory.mktemp("s") / "dcis.zarr"
  prepare_images(str(DATA / "mibi_dcis"), str(out), tile=16, bin_size=8,
                 test_fovs=["Point2206"], val_fovs=["Point2204"])
  return str(out)


@pytest.fixture(scope="session")
def image_model(store_path, tmp_path_factory):
  """A model smoke-trained on `store_path` and exported (4 steps: for plumbing, not skill),
  with the condition standardised per FOV (the demo covers the global default)."""
  from multichan_diff.cli import main
  root = tmp_path_factory.mktemp("m")
  configs = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
  assert main(["train", "--config", f"{configs}/default.py:smoke", "--workdir",
               str(root / "run"), f"--config.data.store={store_path}",
               "--config.train.steps=4", "--config.data.threads=2",
               "--config.data.context_norm=fov"]) == 0
  assert main(["export", "--workdir", str(root / "run"), "--out", str(root / "model")]) == 0
  return str(root / "model")


@pytest.fixture(scope="session")
def autoencoder_model(store_path, tmp_path_factory):
  """(workdir, model dir): the smoke autoencoder trained 300 steps on `store_path` (16x16
  tiles -> 4x4 latents, k = 4) and exported; enough to reconstruct, for latent tests."""
  from multichan_diff.cli import main
  root = tmp_path_factory.mktemp("ae")
  configs = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
  assert main(["train-autoencoder", "--config", f"{configs}/default.py:smoke", "--workdir",
               str(root / "run"), f"--config.data.store={store_path}", "--config.data.threads=2",
               "--config.autoencoder.train.steps=300", "--config.autoencoder.train.batch_size=16",
               "--config.autoencoder.train.checkpoint_every=300",
               "--config.autoencoder.optim.learning_rate=3e-3"]) == 0
  assert main(["export", "--workdir", str(root / "run"), "--out", str(root / "model")]) == 0
  return root / "run", root / "model"


@pytest.fixture(scope="session")
def cells_model(tmp_path_factory):
  """(source h5ad, store, model dir): pbmc5k (200 cells, 30 % test) smoke-trained, exported."""
  from helpers import DATA
  from multichan_diff.cli import main
  from multichan_diff.data.prepare_cells import prepare_citeseq
  if not DATA.is_dir():
    pytest.skip(f"shared data not found at {DATA}")
  root = tmp_path_factory.mktemp("c")
  src = DATA / "citeseq_pbmc5k_200cells.h5ad"
  prepare_citeseq(str(src), str(root / "c.zarr"), genes="hvg:100", test_fraction=0.3)
  configs = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
  assert main(["train", "--config", f"{configs}/citeseq_teaseq.py:smoke", "--workdir",
               str(root / "run"), f"--config.data.store={root / 'c.zarr'}",
               "--config.train.steps=3", "--config.train.batch_size=16",
               "--config.data.threads=2"]) == 0
  assert main(["export", "--workdir", str(root / "run"), "--out", str(root / "m")]) == 0
  return src, root / "c.zarr", root / "m"
