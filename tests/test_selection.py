"""Checkpoint choice on validation: the score, the best checkpoint, export's default, early
stopping and the final fit's step count."""

import json
import pathlib

import numpy as np
import pytest

from helpers import needs_data
from multichan_diff.cli import main
from multichan_diff.train.selection import channel_r

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def test_channel_r_is_the_mean_pearson_over_scored_entries():
  rng = np.random.default_rng(0)
  truth = rng.normal(size=(6, 4, 4, 3))
  pred = truth + rng.normal(size=truth.shape) * np.array([0.3, 1.0, 3.0])
  scored = rng.random((6, 3)) < 0.6
  scored[:, 2] = False  # a channel never scored is skipped
  expected = [np.corrcoef(pred[scored[:, c], ..., c].ravel(),
                          truth[scored[:, c], ..., c].ravel())[0, 1] for c in (0, 1)]
  # split into two batches: the sums carry over
  r = channel_r([pred[:3], pred[3:]], [truth[:3], truth[3:]], [scored[:3], scored[3:]])
  assert r == pytest.approx(np.mean(expected), rel=1e-9)
  assert expected[0] > expected[1]


def _train(workdir, store, *extra):
  return main(["train", "--config", f"{CONFIGS}/citeseq_teaseq.py:smoke", "--workdir",
               str(workdir), f"--config.data.store={store}", "--config.train.batch_size=16",
               "--config.data.threads=2", "--config.train.eval_every=2",
               "--config.train.log_every=2", *extra])


@needs_data
def test_best_checkpoint_export_default_patience_and_steps_from(tmp_path, cells_model):
  _, store, _ = cells_model
  run = tmp_path / "run"
  # a learning rate this high makes validation r fall after its first peak: patience stops
  assert _train(run, store, "--config.train.steps=40", "--config.train.patience=2",
                "--config.optim.learning_rate=0.05", "--config.optim.warmup_steps=1") == 0
  logs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  scores = {m["step"]: m["val_r"] for m in logs if "val_r" in m}
  best = max(scores, key=scores.get)
  last = max(scores)
  assert last < 40 and last - best == 4, scores  # stopped two evaluations after the best
  assert sorted(int(p.name) for p in (run / "best").iterdir()) == [best]
  assert main(["export", "--workdir", str(run), "--out", str(tmp_path / "m")]) == 0
  meta = json.loads((tmp_path / "m" / "model.json").read_text())
  assert meta["step"] == best and meta["selection"] == {"step": best, "val_r": scores[best]}
  assert main(["export", "--workdir", str(run), "--out", str(tmp_path / "m2"),
               "--step", str(last)]) == 0
  assert json.loads((tmp_path / "m2" / "model.json").read_text())["step"] == last
  # the final fit on train + val trains the chosen number of steps
  final = tmp_path / "final"
  assert _train(final, store, f"--config.train.steps_from={tmp_path / 'm'}",
                "--config.data.train_splits=('train','val')") == 0
  assert sorted(int(p.name) for p in (final / "checkpoints").iterdir()
                if p.name.isdigit())[-1] == best
  assert not (final / "best").exists()  # no validation split left to choose on
  assert _train(tmp_path / "f2", store, f"--config.train.steps_from={final}") == 2
