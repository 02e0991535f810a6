"""SiD distillation: the one-step generator, its losses and step, and `distill` end to end."""

import json
import os
import re
import shutil

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import needs_data, perturb_params, tiny_model
from multichan_diff.cli import main
from multichan_diff.diffusion.losses import get_loss_fn
from multichan_diff.diffusion.masking import sample_observed
from multichan_diff.diffusion.samplers import sample_posterior
from multichan_diff.diffusion.schedules import get_schedule
from multichan_diff.distill.sid import (SiDConfig, generate, generator_loss_fn,
                                        init_sid_state, make_sid_step)
from multichan_diff.train.step import init_train_state, make_optimizer, make_train_step
from flax import nnx

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
SCHEDULE = get_schedule("linear", 1000)
CFG = SiDConfig(prediction="v")


def _image_batch(b=8, c=4, size=8, seed=0):
  x0 = jax.random.normal(jax.random.key(seed), (b, size, size, c))
  present = jnp.ones((b, c), bool)
  return {"x0": x0, "present": present,
          "observed": sample_observed(jax.random.key(seed + 1), present, 0.5)}


def test_generator_output_has_the_target_shape_and_keeps_observed_channels():
  _, model = tiny_model(4)
  perturb_params(model)
  batch = _image_batch()
  x_g = generate(model, SCHEDULE, jax.random.key(0), batch, CFG)
  assert x_g.shape == batch["x0"].shape
  obs = np.asarray(batch["observed"])[:, None, None, :]
  np.testing.assert_array_equal(np.where(obs, x_g, 0), np.where(obs, batch["x0"], 0))
  other = generate(model, SCHEDULE, jax.random.key(1), batch, CFG)
  assert np.abs(np.where(obs, 0, x_g - other)).max() > 0  # missing channels come from z


def _sid_setup(model, lr=1e-3):
  tx = make_optimizer(lr, b1=0.0)
  graphdef, rest, state = init_sid_state(model, tx, tx)
  step = jax.jit(make_sid_step(graphdef, rest, tx, tx, SCHEDULE, CFG))
  net = lambda p: nnx.merge(graphdef, p, rest)
  return state, step, net


def test_one_step_decreases_the_generator_loss_on_a_fixed_batch():
  _, teacher = tiny_model(4)
  perturb_params(teacher)
  batch = _image_batch(b=32)
  state, step, net = _sid_setup(teacher, lr=3e-4)
  loss = generator_loss_fn(SCHEDULE, CFG)
  # The generator, the fake network and the EMA start as copies of the teacher.
  teacher_leaves = [np.asarray(x) for x in jax.tree.leaves(state.teacher)]
  for part in (state.params["generator"], state.params["fake"], state.ema):
    for x, y in zip(jax.tree.leaves(part), teacher_leaves, strict=True):
      np.testing.assert_array_equal(np.asarray(x), y)
  # Where the fake network is the teacher (y_fake = y_real) the generator's loss vanishes;
  # each step first moves the fake network off the teacher, then the generator.
  assert float(loss(net(state.params["generator"]), net(state.teacher),
                    net(state.params["fake"]), batch, jax.random.key(9))[0]) == 0.0
  state, _ = step(state, batch, jax.random.key(0))
  state, _ = step(state, batch, jax.random.key(1))
  keys = jax.random.split(jax.random.key(2), 16)  # the expectation: common noise draws

  def mean_loss(gen_params, fake_params):
    return np.mean([float(loss(net(gen_params), net(state.teacher), net(fake_params), batch,
                               k)[0]) for k in keys])

  fake = state.params["fake"]
  before = mean_loss(state.params["generator"], fake)
  after_state, _ = step(state, batch, jax.random.key(3))
  after = mean_loss(after_state.params["generator"], fake)
  assert after < before, (before, after)
  # The teacher never moves.
  for x, y in zip(jax.tree.leaves(after_state.teacher), jax.tree.leaves(nnx.state(teacher,
                                                                                  nnx.Param))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_alpha_weighs_the_fake_networks_term_and_the_config_is_adam_with_beta1_zero():
  """The loss is linear in alpha, and a larger alpha lowers it by the weighted mean of
  (y_real - y_fake)^2 / w; `distill`'s run takes config.distill's optimiser (b1 = 0)."""
  from multichan_diff.default_config import get_config
  from multichan_diff.train.trainer import distill_config
  _, teacher = tiny_model(4)
  perturb_params(teacher)
  _, fake = tiny_model(4, seed=3)
  perturb_params(fake, seed=4)
  batch, key = _image_batch(), jax.random.key(5)
  losses = [float(generator_loss_fn(SCHEDULE, SiDConfig(prediction="v", alpha=a))(
      teacher, teacher, fake, batch, key)[0]) for a in (0.0, 0.5, 1.0)]
  assert losses[2] < losses[0]
  assert losses[1] == pytest.approx((losses[0] + losses[2]) / 2, rel=1e-4, abs=1e-6)
  run = distill_config(get_config(), "teacher_dir")
  assert run.optim.b1 == 0.0 and run.optim.learning_rate == run.distill.optim.learning_rate
  assert run.train.steps == run.distill.train.steps and run.network == "generator"


def _synthetic_cells(n, seed):
  """genes [n, 1, 1, 4] -> proteins [n, 1, 1, 2]: a linear map plus bimodal noise."""
  rng = np.random.default_rng(seed)
  g = rng.normal(size=(n, 4)).astype(np.float32)
  a = np.array([[1.0, -0.5], [0.5, 0.5], [0.0, 1.0], [-0.5, 0.0]], np.float32)
  p = g @ a * 0.6 + 0.6 * rng.choice([-1.0, 1.0], size=(n, 2)) + 0.1 * rng.normal(size=(n, 2))
  return {"x0": jnp.asarray(p[:, None, None, :], jnp.float32),
          "cond": jnp.asarray(g[:, None, None, :])}


def test_tiny_distillation_gets_closer_to_the_teacher_than_its_start():
  cfg, teacher = tiny_model(2, spatial=False, patch_size=1, cond_channels=4,
                            widths=(32, 32), attention_levels=None, output_attention=False)
  tx = make_optimizer(3e-3, warmup_steps=20)
  graphdef, rest, tstate = init_train_state(teacher, tx)
  tstep = jax.jit(make_train_step(graphdef, rest, tx, get_loss_fn(SCHEDULE, prediction="v"),
                                  ema_decay=0.99))
  for i in range(400):
    tstate, _ = tstep(tstate, _synthetic_cells(256, i), jax.random.key(i))
  nnx.update(teacher, tstate.ema)

  test = _synthetic_cells(64, 10_000)
  k = 32

  def draws(model, sampler, key, **kw):
    out = sample_posterior(model, SCHEDULE, key, test["cond"], jnp.ones((64, 4), bool),
                           test["x0"].shape, sampler=sampler, num_samples=k, prediction="v",
                           **kw)
    return np.asarray(out["samples"])[..., 0, 0, :]  # [K, 64, 2]

  ref = draws(teacher, "ddim", jax.random.key(1), steps=50)

  def distance(samples):
    """How far a sampler's per-cell mean and spread are from the teacher's."""
    return (np.abs(samples.mean(0) - ref.mean(0)).mean()
            + np.abs(samples.std(0) - ref.std(0)).mean())

  # The teacher's own x0 estimate from pure noise at t_init is G at step 0. At a large t_init
  # it barely depends on z (draws collapse towards the mean); at the default it spreads
  # nearly as the teacher's samples do.
  spread_gap = lambda t: np.abs(draws(teacher, "onestep", jax.random.key(2), t_init=t).std(0)
                                - ref.std(0)).mean()
  assert spread_gap(CFG.t_init) < 0.5 * spread_gap(625)
  state, step, net = _sid_setup(teacher, lr=3e-4)
  start = distance(draws(net(state.ema), "onestep", jax.random.key(2), t_init=CFG.t_init))
  for i in range(300):
    state, _ = step(state, _synthetic_cells(128, 20_000 + i), jax.random.key(i))
  end = distance(draws(net(state.params["generator"]), "onestep", jax.random.key(2),
                       t_init=CFG.t_init))
  assert end < 0.8 * start, (start, end)


@needs_data
def test_distill_cli_resumes_exactly_exports_and_samples_in_one_step(tmp_path, cells_model,
                                                                     capsys):
  src, st, teacher = cells_model
  base = ["distill", "--model", str(teacher), "--config", f"{CONFIGS}/citeseq_teaseq.py:smoke",
          f"--config.data.store={st}", "--config.train.batch_size=16",
          "--config.data.threads=2"]
  assert main(base + ["--workdir", str(tmp_path / "a")]) == 0
  assert main(base + ["--workdir", str(tmp_path / "b"), "--config.distill.train.steps=3"]) == 0
  capsys.readouterr()
  assert main(base + ["--workdir", str(tmp_path / "b")]) == 0  # resumes at 3, runs to 6
  assert re.search(r"\r6/6 \[#{24}\] loss -?[\d.]+ [\d.]+ steps/s\n",
                   capsys.readouterr().err)  # the progress bar
  metrics = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
  assert metrics[-1]["step"] == 6
  assert all(np.isfinite(metrics[-1][k]) for k in ("val_loss", "loss", "fake_loss",
                                                   "teacher_gap", "grad_norm"))
  for run in ("a", "b"):
    assert main(["export", "--workdir", str(tmp_path / run), "--out",
                 str(tmp_path / f"g{run}")]) == 0
  capsys.readouterr()
  a = json.loads((tmp_path / "ga" / "model.json").read_text())
  assert a["network"] == "generator" and a["t_init"] == 250 and a["step"] == 6
  pa = [np.asarray(x) for x in jax.tree.leaves(_params(tmp_path / "ga"))]
  pb = [np.asarray(x) for x in jax.tree.leaves(_params(tmp_path / "gb"))]
  for x, y in zip(pa, pb):
    np.testing.assert_array_equal(x, y)

  gen = str(tmp_path / "ga")
  assert main(["evaluate", "--model", gen, "--store", str(st), "--sampler", "onestep",
               "--samples", "4", "--out", str(tmp_path / "rep")]) == 0
  report = json.loads((tmp_path / "rep" / "report.json").read_text())
  assert np.isfinite(report["methods"]["model"]["mean"]["r_p"])
  out = tmp_path / "imp.h5ad"
  assert main(["impute", "--model", gen, "--input", str(src), "--out", str(out),
               "--sampler", "onestep", "--samples", "3"]) == 0
  adata = anndata.read_h5ad(out)
  assert adata.obsm["protein_predicted"].shape == adata.obsm["protein_predicted_std"].shape
  assert (adata.obsm["protein_predicted_std"].to_numpy() > 0).any()
  # A generator samples in one step only, and a diffusion model not in one step.
  capsys.readouterr()
  assert main(["impute", "--model", gen, "--input", str(src), "--out", str(tmp_path / "x"),
               "--sampler", "ddim"]) == 2
  assert "--sampler onestep" in capsys.readouterr().err
  assert main(["impute", "--model", str(teacher), "--input", str(src), "--out",
               str(tmp_path / "x"), "--sampler", "onestep"]) == 2
  assert "distill" in capsys.readouterr().err and not (tmp_path / "x").exists()

  # The generator's point estimate is its teacher's (exported beside it): the teacher's own
  # estimate from the same noise, beside the generator's draws; or the mean of the draws.
  from multichan_diff.impute.posterior import load_posterior
  genes = np.random.default_rng(0).standard_normal((5, len(a["genes"])), np.float32)
  p, key = len(a["channels"]), jax.random.key(3)
  draws, point = load_posterior(gen, sampler="onestep", samples=4)[0].cells(key, genes, p)
  _, teacher_point = load_posterior(str(teacher), sampler="ddim", steps=1,
                                    samples=4)[0].cells(key, genes, p)
  np.testing.assert_allclose(point, teacher_point, atol=1e-5)
  assert np.abs(point - draws.mean(0)).max() > 1e-2
  same_draws, mean = load_posterior(gen, sampler="onestep", samples=4,
                                    point="samples")[0].cells(key, genes, p)
  np.testing.assert_array_equal(same_draws, draws)
  np.testing.assert_allclose(mean, draws.mean(0), atol=1e-6)
  # An export without its teacher says how to go on.
  shutil.rmtree(tmp_path / "gb" / "teacher_params")
  capsys.readouterr()
  args = ["impute", "--model", str(tmp_path / "gb"), "--input", str(src), "--out",
          str(tmp_path / "y"), "--sampler", "onestep", "--samples", "2"]
  assert main(args) == 2
  err = capsys.readouterr().err
  assert "gb" in err and "--point samples" in err and not (tmp_path / "y").exists()
  assert main(args + ["--point", "samples"]) == 0


def _params(model_dir):
  from multichan_diff.train.model_dir import load_model
  return nnx.state(load_model(str(model_dir))[0], nnx.Param)


def test_image_generator_evaluates_with_its_teachers_point_estimate(tmp_path, store_path,
                                                                  image_model, cells_model,
                                                                  capsys):
  """The image path of a generator (tiles, views, per-FOV condition statistics): two SiD
  steps, then `evaluate --sampler onestep`. Its point estimate is the teacher's own from
  the same noise; its draws are the generator's. A wrong teacher, store or run directory
  is refused before anything is written."""
  base = ["distill", "--config", f"{CONFIGS}/default.py:smoke", "--config.data.threads=2"]
  run = ["--workdir", str(tmp_path / "run"), f"--config.data.store={store_path}"]
  assert main(base + run + ["--model", image_model, "--config.distill.train.steps=2"]) == 0
  assert main(["export", "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "g")]) == 0

  other_teacher = str(tmp_path / "teacher_copy")
  shutil.copytree(image_model, other_teacher)
  refused = [  # (arguments, what the error names)
      (["--model", str(tmp_path / "g"), "--workdir", str(tmp_path / "w"),
        f"--config.data.store={store_path}"], (str(tmp_path / "g"), "'generator'")),
      (["--model", image_model, "--workdir", str(tmp_path / "w"),
        f"--config.data.store={cells_model[1]}"], (str(cells_model[1]), "channels differ")),
      (["--model", other_teacher] + run, (str(tmp_path / "run"), "another teacher")),
  ]
  steps = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
  capsys.readouterr()
  for args, names in refused:
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert all(n in err for n in names), (names, err)
  assert not (tmp_path / "w").exists()
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == steps

  common = ["--store", store_path, "--mode", "single", "--held-out", "CD3,VIM", "--samples",
            "2", "--views", "2"]
  assert main(["evaluate", "--model", str(tmp_path / "g"), "--sampler", "onestep",
               "--out", str(tmp_path / "gen")] + common) == 0
  assert main(["evaluate", "--model", image_model, "--sampler", "ddim", "--steps", "1",
               "--out", str(tmp_path / "teacher")] + common) == 0
  capsys.readouterr()
  gen, teacher = (json.loads((tmp_path / r / "report.json").read_text())["methods"]
                  for r in ("gen", "teacher"))
  for ch in ("CD3", "VIM"):
    assert gen["model"]["per_channel"][ch]["pearson"] == pytest.approx(
        teacher["model"]["per_channel"][ch]["pearson"], abs=1e-4)
    assert gen["model_1_sample"]["per_channel"][ch]["pearson"] != pytest.approx(
        teacher["model_1_sample"]["per_channel"][ch]["pearson"], abs=1e-4)
