"""The masked regressor against residual diffusion on its mean, end to end on TEA-seq cells.

    python benchmarks/residual_comparison.py --work runs/rescomp            # seeds 0, 1, 2
    python benchmarks/residual_comparison.py --work /tmp/rc --seeds 0 --smoke  # minutes

Per split seed: prepare (2000 HVGs, 20 % of cells held out), train the regressor
(`configs/citeseq_teaseq_regressor.py`) and the residual diffusion model on its mean
(`configs/citeseq_teaseq_residual.py`), both choosing their checkpoint on the validation
cells, export, fit the draws' spread scale on the validation cells (`calibrate`), train
both again on train + val for the steps validation chose (the final fit, as the baselines
are fit), and score the test cells: the regressor's output, the residual model's point
estimate, the mean of its 8 DDIM-50 draws and one draw, the baselines, and the calibration
of the raw and the calibrated draws (the share of measured values below / above all 8 draws, 1/9 = 0.111 each
for a calibrated posterior). A step whose output exists is not run again, so an
interrupted run resumes. Prints one table, mean +- sd over the seeds.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _run(argv: list[str], done: pathlib.Path) -> float | None:
  """Runs one CLI command unless `done` exists; its wall time in seconds, or None."""
  from multichan_diff.cli import main
  if done.exists():
    return None
  start = time.perf_counter()
  if main(argv) != 0:
    raise SystemExit(f"failed: multichan-diff {' '.join(argv)}")
  return time.perf_counter() - start


def one_seed(work: pathlib.Path, seed: int, smoke: bool) -> dict:
  st, runs, models, reports = (work / d for d in ("stores", "runs", "models", "reports"))
  store = st / f"tea{seed}.zarr"
  reg, res, cal = models / f"treg{seed}", models / f"tres{seed}", models / f"tres{seed}_cal"
  arg = ":smoke" if smoke else ""
  times = {}
  _run(["prepare", "citeseq", "--input", str(DATA / "citeseq_teaseq_pbmc.h5ad"), "--out",
        str(store), "--genes", "hvg:2000", "--gene-scale", "gene", "--test-fraction", "0.2",
        "--seed", str(seed)],
       store)
  common = [f"--config.data.store={store}"]
  times["regressor"] = _run(["train", "--config",
                             f"{ROOT}/configs/citeseq_teaseq_regressor.py{arg}",
                             "--workdir", str(runs / f"treg{seed}"), *common], reg)
  _run(["export", "--workdir", str(runs / f"treg{seed}"), "--out", str(reg)], reg)
  times["residual"] = _run(["train", "--config", f"{ROOT}/configs/citeseq_teaseq_residual.py{arg}",
                            "--workdir", str(runs / f"tres{seed}"), *common,
                            f"--config.diffusion.residual_of={reg}"], res)
  _run(["export", "--workdir", str(runs / f"tres{seed}"), "--out", str(res)], res)
  _run(["calibrate", "--model", str(res), "--store", str(store), "--out", str(cal)], cal)
  # the final fit: train + val, each for the steps validation chose
  final = ["--config.data.train_splits=('train','val')"]
  reg_f, res_f = models / f"treg{seed}_final", models / f"tres{seed}_final"
  times["regressor_final"] = _run(
      ["train", "--config", f"{ROOT}/configs/citeseq_teaseq_regressor.py{arg}", "--workdir",
       str(runs / f"treg{seed}_final"), *common, *final, f"--config.train.steps_from={reg}"],
      reg_f)
  _run(["export", "--workdir", str(runs / f"treg{seed}_final"), "--out", str(reg_f)], reg_f)
  times["residual_final"] = _run(
      ["train", "--config", f"{ROOT}/configs/citeseq_teaseq_residual.py{arg}", "--workdir",
       str(runs / f"tres{seed}_final"), *common, *final, f"--config.train.steps_from={res}",
       f"--config.diffusion.residual_of={reg_f}"], res_f)
  _run(["export", "--workdir", str(runs / f"tres{seed}_final"), "--out", str(res_f)], res_f)
  out = {}
  for name, model, samples in (("regressor", reg, 1), ("residual", res, 8),
                               ("calibrated", cal, 8), ("regressor_final", reg_f, 1),
                               ("residual_final", res_f, 8)):
    rep = reports / f"{name}{seed}"
    _run(["evaluate", "--model", str(model), "--store", str(store), "--samples", str(samples),
          "--out", str(rep)], rep)
    out[name] = json.loads((rep / "report.json").read_text())
  steps = {k: json.loads((m / "model.json").read_text())["step"]
           for k, m in (("regressor", reg), ("residual", res), ("regressor_final", reg_f),
                        ("residual_final", res_f))}
  return {"reports": out, "times": times, "steps": steps}


def table(results: list[dict]) -> str:
  def cell(values, fmt=".3f"):
    v = np.asarray([x for x in values if x is not None], np.float64)
    if not len(v):
      return "-"
    return f"{v.mean():{fmt}} +- {v.std():{fmt}}" if len(v) > 1 else f"{v[0]:{fmt}}"

  rp = lambda r, name, method: r["reports"][name]["methods"][method]["mean"]["r_p"]
  tails = lambda r, name, k: r["reports"][name]["uncertainty"]["mean"][k]
  col = lambda name, method: cell([rp(r, name, method) for r in results])
  lines = ["| test cells, r_p (mean +- sd over seeds) | trained on train | final fit, train + val |",
           "|---|---|---|",
           f"| ridge on SVD (fit on train + val) | | {col('residual', 'ridge_svd')} |",
           f"| KRR (fit on train + val) | | {col('residual', 'krr')} |",
           f"| masked regressor | {col('regressor', 'model')} | "
           f"{col('regressor_final', 'model')} |"]
  for method, what in (("model", "point estimate"), ("model_samples_mean", "mean of 8 draws"),
                       ("model_1_sample", "one draw")):
    lines.append(f"| residual diffusion, {what} | {col('residual', method)} | "
                 f"{col('residual_final', method)} |")
  lines += ["", "| draws (K = 8; calibrated: 0.111 each) | below all | above all |", "|---|---|---|"]
  for name in ("residual", "calibrated", "residual_final"):
    lines.append(f"| {name} | {cell([tails(r, name, 'below') for r in results])} | "
                 f"{cell([tails(r, name, 'above') for r in results])} |")
  lines += ["", "| training | chosen step | wall s |", "|---|---|---|"]
  for k in ("regressor", "residual", "regressor_final", "residual_final"):
    lines.append(f"| {k} | {cell([r['steps'][k] for r in results], '.0f')} | "
                 f"{cell([r['times'][k] for r in results], '.0f')} |")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--work", required=True, help="folder for stores, runs, models, reports")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--smoke", action="store_true", help="the configs' :smoke versions")
  args = p.parse_args()
  work = pathlib.Path(args.work)
  results = [one_seed(work, s, args.smoke) for s in args.seeds]
  print(table(results))


if __name__ == "__main__":
  main()
