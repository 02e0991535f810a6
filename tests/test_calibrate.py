"""The spread scale fitted on validation: the fit, the calibrated model and its draws."""

import json

import jax
import numpy as np
import pytest

from helpers import needs_data
from multichan_diff.cli import main
from multichan_diff.evaluate.calibrate import SpreadFit
from multichan_diff.impute.posterior import load_posterior


def test_spread_fit_recovers_the_scale_of_too_narrow_draws():
  """Draws of sd 0.3 and 1.5 around a truth of sd 1: a calibrated scale is about 1 / sd
  (K + 1 exchangeable draws), so about 3.3 and 0.67."""
  rng = np.random.default_rng(0)
  k, n = 8, 40_000
  truth = rng.normal(size=(n, 3))
  sd = np.array([0.3, 1.5, 1.0])
  draws = rng.normal(size=(k, n, 3)) * sd
  fit = SpreadFit(3)
  scored = np.array([True, True, False])
  fit.add(draws[:, : n // 2], np.zeros((n // 2, 3)), truth[: n // 2], scored)
  fit.add(draws[:, n // 2:], np.zeros((n // 2, 3)), truth[n // 2:], scored)
  scale = fit.result(k)
  assert scale[0] == pytest.approx(1 / 0.3, rel=0.08)
  assert scale[1] == pytest.approx(1 / 1.5, rel=0.08)
  assert scale[2] == 1.0  # never scored


@needs_data
def test_calibrate_writes_a_model_whose_draws_are_widened(tmp_path, cells_model, capsys):
  _, store, model = cells_model
  out = tmp_path / "calibrated"
  assert main(["calibrate", "--model", str(model), "--store", str(store), "--out", str(out),
               "--samples", "4", "--steps", "2"]) == 0
  meta = json.loads((out / "model.json").read_text())
  scale = np.asarray(meta["spread_scale"])
  assert scale.shape == (len(meta["channels"]),) and meta["spread_fit"]["split"] == "val"
  genes = np.asarray(jax.random.normal(jax.random.key(0), (5, len(meta["genes"]))), np.float32)
  plain, _ = load_posterior(str(model), samples=4, steps=2)
  wide, _ = load_posterior(str(out), samples=4, steps=2)
  d0, p0 = plain.cells(jax.random.key(1), genes, len(meta["channels"]))
  d1, p1 = wide.cells(jax.random.key(1), genes, len(meta["channels"]))
  np.testing.assert_allclose(p1, p0, atol=1e-6)
  np.testing.assert_allclose(d1, p0 + scale * (d0 - p0), rtol=1e-4, atol=1e-5)
  # calibrating twice is refused and writes nothing
  assert main(["calibrate", "--model", str(out), "--store", str(store), "--out",
               str(tmp_path / "twice")]) == 2
  assert "already calibrated" in capsys.readouterr().err
  assert not (tmp_path / "twice").exists()
