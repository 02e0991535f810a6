"""Training runs end to end on a real store: checkpoints, metrics, resume, export, errors."""

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from helpers import DATA, needs_data
from multichan_diff.cli import main
from multichan_diff.train.checkpoint import Checkpoints
from multichan_diff.train.model_dir import load_model
from multichan_diff.train.trainer import NonFiniteLoss, setup, train_and_evaluate

pytestmark = needs_data
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _config(store, **train):
  spec = importlib.util.spec_from_file_location("default", CONFIGS / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  config.data.store = store
  config.data.threads = 2
  config.train.update(**train)
  return config


def _params(workdir, config):
  ckpts = Checkpoints(workdir)
  state = ckpts.restore(ckpts.latest_step(), setup(config).state)
  ckpts.close()
  return state


def test_smoke_run_writes_checkpoints_metrics_and_export(tmp_path, store_path, capsys):
  wd, out = tmp_path / "run", tmp_path / "model"
  assert main(["train", "--config", f"{CONFIGS}/default.py:smoke", "--workdir", str(wd),
               f"--config.data.store={store_path}", "--config.train.steps=10",
               "--config.train.checkpoint_every=5", "--config.data.threads=2",
               "--config.model.dropout=0.5"]) == 0
  lines = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [5, 10] and "val_loss" in lines[-1]
  assert all(np.isfinite(l["loss"]) for l in lines)
  assert any(p.name.startswith("events.out.tfevents") for p in (wd / "tensorboard").iterdir())
  assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [5, 10]
  capsys.readouterr()
  assert main(["export", "--workdir", str(wd), "--out", str(out)]) == 0
  model, meta = load_model(str(out))
  assert meta["step"] == 10 and len(meta["channels"]) == 40 and "normalizer" in meta
  # The exported parameters are the run's EMA.
  from flax import nnx
  config = _config(store_path)
  ema = _params(str(wd), config).ema
  for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(nnx.state(model, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  x = np.random.default_rng(0).normal(size=(1, 16, 16, 40)).astype(np.float32)
  out = model(x, np.full((1,), 500.0), x, np.ones((1, 40), bool))
  assert out.shape == x.shape
  # Dropout (0.5 here) is off in an exported model: the same input, the same output.
  np.testing.assert_array_equal(out, model(x, np.full((1,), 500.0), x, np.ones((1, 40), bool)))
  # An earlier checkpoint (one chosen on validation) exports on request; a missing one
  # is a clear error.
  assert main(["export", "--workdir", str(wd), "--out", str(tmp_path / "m5"), "--step", "5"]) == 0
  m5, meta5 = load_model(str(tmp_path / "m5"))
  assert meta5["step"] == 5
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(nnx.state(m5, nnx.Param)), jax.tree.leaves(nnx.state(model, nnx.Param))))
  capsys.readouterr()
  assert main(["export", "--workdir", str(wd), "--out", str(tmp_path / "m7"), "--step", "7"]) == 2
  assert "no checkpoint at step 7" in capsys.readouterr().err


def test_resume_is_exact(tmp_path, store_path):
  straight = _config(store_path, steps=6, checkpoint_every=100, eval_every=100)
  train_and_evaluate(straight, str(tmp_path / "a"))
  half = _config(store_path, steps=3, checkpoint_every=100, eval_every=100)
  train_and_evaluate(half, str(tmp_path / "b"))
  train_and_evaluate(straight, str(tmp_path / "b"))  # resumes at 3, runs to 6
  a, b = _params(str(tmp_path / "a"), straight), _params(str(tmp_path / "b"), straight)
  assert int(a.step) == int(b.step) == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _complete_steps(workdir):
  """Steps with a checkpoint directory. orbax writes `N.orbax-checkpoint-tmp*` and renames
  it to `N` once complete (an old step killed while being deleted lingers, half gone)."""
  d = workdir / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def test_resume_after_sigkill_is_exact(tmp_path, store_path):
  steps, half = 10, 5
  # Every run is the CLI in its own process, with this process's environment (8 fake CPU
  # devices) and the session's compilation cache (conftest), so only the first run compiles.
  env = dict(os.environ)
  assert env.get("JAX_COMPILATION_CACHE_DIR")

  def train(workdir):
    with open(tmp_path / f"{workdir.name}.log", "ab") as log:
      return subprocess.Popen(
          [sys.executable, "-m", "multichan_diff.cli", "train",
           "--config", f"{CONFIGS}/default.py:smoke", "--workdir", str(workdir),
           f"--config.data.store={store_path}", f"--config.train.steps={steps}",
           "--config.train.checkpoint_every=1", "--config.train.log_every=1",
           "--config.train.eval_batches=0", "--config.data.threads=2"],
          cwd=CONFIGS.parent, env=env, stdout=log, stderr=subprocess.STDOUT)

  def tail(workdir):
    return (tmp_path / f"{workdir.name}.log").read_text()[-2000:]

  straight, wd = tmp_path / "straight", tmp_path / "killed"
  assert train(straight).wait(timeout=600) == 0, tail(straight)
  # A checkpoint every step keeps the run busy for seconds after step `half`, so it is
  # still running when killed.
  proc = train(wd)
  try:
    deadline = time.monotonic() + 300
    while (max(_complete_steps(wd), default=0) < half and proc.poll() is None
           and time.monotonic() < deadline):
      time.sleep(0.01)
    running = proc.poll() is None
    proc.kill()  # SIGKILL: no handler runs, nothing more is saved
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  resumed_from = max(_complete_steps(wd), default=0)
  assert running and half <= resumed_from < steps, tail(wd)
  assert proc.returncode == -signal.SIGKILL

  assert train(wd).wait(timeout=600) == 0, tail(wd)
  # It went on from `resumed_from` (replaying steps run past it and lost), not from 0.
  logged = [json.loads(l)["step"] for l in (wd / "metrics.jsonl").read_text().splitlines()]
  before_kill = len(logged) - (steps - resumed_from)
  assert before_kill >= resumed_from
  assert logged == list(range(1, before_kill + 1)) + list(range(resumed_from + 1, steps + 1))
  config = _config(store_path, steps=steps)
  a, b = _params(str(straight), config), _params(str(wd), config)
  assert int(a.step) == int(b.step) == steps
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_from_another_config_is_refused(tmp_path, store_path):
  train_and_evaluate(_config(store_path, steps=2), str(tmp_path / "w"))
  other = _config(store_path, steps=4)
  other.model.widths = (16, 16)
  with pytest.raises(ValueError, match="another model config"):
    train_and_evaluate(other, str(tmp_path / "w"))
  other = _config(store_path, steps=4)
  other.data.train_splits = ("train", "val")
  with pytest.raises(ValueError, match="another set of training splits"):
    train_and_evaluate(other, str(tmp_path / "w"))


def test_final_fit_on_train_and_val_has_no_validation_loss(tmp_path, store_path):
  config = _config(store_path, steps=2, eval_every=1, log_every=1)
  config.data.train_splits = ("train", "val")
  train_and_evaluate(config, str(tmp_path / "w"))
  lines = [json.loads(l) for l in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [1, 2] and not any("val_loss" in l for l in lines)
  ckpts = Checkpoints(str(tmp_path / "w"))
  assert ckpts.run_info(2)["train_splits"] == ["train", "val"]
  ckpts.close()
  # Same seed, other data: the batches (so the parameters) differ from a train-only run.
  alone = _config(store_path, steps=2, eval_every=1, log_every=1)
  train_and_evaluate(alone, str(tmp_path / "a"))
  a, b = _params(str(tmp_path / "a"), alone), _params(str(tmp_path / "w"), config)
  assert any(not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, store_path):
  config = _config(store_path, steps=2, checkpoint_every=1)
  train_and_evaluate(config, str(tmp_path / "w"))
  config = _config(store_path, steps=40, checkpoint_every=1)
  config.optim.update(learning_rate=1e30)
  with pytest.raises(NonFiniteLoss, match="stopped without saving"):
    train_and_evaluate(config, str(tmp_path / "w"))
  ckpts = Checkpoints(str(tmp_path / "w"))
  state = ckpts.restore(ckpts.latest_step(), setup(config).state)
  ckpts.close()
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_checkpoint_with_another_optimiser_is_refused(tmp_path, store_path):
  train_and_evaluate(_config(store_path, steps=2), str(tmp_path / "w"))
  other = _config(store_path, steps=4)
  other.optim.clip_norm = None
  with pytest.raises(ValueError, match="optimiser state does not match"):
    train_and_evaluate(other, str(tmp_path / "w"))


def test_sigterm_saves_and_stops(tmp_path, store_path):
  wd = tmp_path / "w"
  config = _config(store_path, steps=10_000, log_every=1, checkpoint_every=10_000)

  def kill_after_first_metrics():
    path = wd / "metrics.jsonl"
    while not (path.exists() and path.read_text().strip()):
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=kill_after_first_metrics, daemon=True).start()
  result = train_and_evaluate(config, str(wd))
  assert 1 <= result["step"] < 10_000
  ckpts = Checkpoints(str(wd))
  assert ckpts.latest_step() == result["step"]
  ckpts.close()


def test_citeseq_smoke_run_on_teaseq(tmp_path):
  from multichan_diff.data.prepare_cells import prepare_citeseq
  store = tmp_path / "tea.zarr"
  prepare_citeseq(str(DATA / "citeseq_teaseq_pbmc.h5ad"), str(store), genes="hvg:200")
  wd = tmp_path / "run"
  # A batch larger than the validation split (101 cells): validation still runs.
  assert main(["train", "--config", f"{CONFIGS}/citeseq_teaseq.py:smoke", "--workdir", str(wd),
               f"--config.data.store={store}", "--config.train.steps=6",
               "--config.train.batch_size=128", "--config.data.threads=2"]) == 0
  lines = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert lines[-1]["step"] == 6 and np.isfinite(lines[-1]["val_loss"])
  assert main(["export", "--workdir", str(wd), "--out", str(tmp_path / "m")]) == 0
  model, meta = load_model(str(tmp_path / "m"))
  assert meta["kind"] == "cells" and len(meta["genes"]) == 200 and len(meta["channels"]) == 46


def test_an_interrupted_save_does_not_block_resume(tmp_path, store_path):
  wd = tmp_path / "w"
  config = _config(store_path, steps=2, checkpoint_every=2)
  train_and_evaluate(config, str(wd))
  # What a run killed in the middle of writing step 3 leaves behind.
  (wd / "checkpoints" / "3.orbax-checkpoint-tmp" / "state.orbax-checkpoint-tmp").mkdir(
      parents=True)
  result = train_and_evaluate(_config(store_path, steps=4, checkpoint_every=2), str(wd))
  assert result["step"] == 4
  assert not (wd / "checkpoints" / "3.orbax-checkpoint-tmp").exists()
