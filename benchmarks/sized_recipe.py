"""The sized cells recipe (`configs/citeseq.py`) on CITE-seq sets of different sizes, end to
end, against ridge on SVD components and KRR.

    python benchmarks/sized_recipe.py --work runs/sized                 # 4 sets x seeds 0, 1, 2
    python benchmarks/sized_recipe.py --work /tmp/sz --sets pbmc5k --seeds 0   # minutes

Sets: TEA-seq subsampled to 300 and 600 cells (a fixed subsample per size, written under
--work), and the two 200-cell PBMC files; `--sets teaseq` is all 1262 TEA-seq cells. Per
set and split seed, the documented command sequence with no per-set flag: prepare (all genes, 20 % of cells held out), train choosing
the checkpoint on the validation cells, train again on train + val for the steps validation
chose (the final fit, as the baselines are fit), export both, and score the test cells. A
step whose output exists is not run again. Prints one table, mean +- sd over the seeds.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETS = {"teaseq300": ("citeseq_teaseq_pbmc.h5ad", 300), "teaseq600": ("citeseq_teaseq_pbmc.h5ad", 600),
        "pbmc5k": ("citeseq_pbmc5k_200cells.h5ad", None), "pbmc10k": ("citeseq_pbmc10k_200cells.h5ad", None),
        "teaseq": ("citeseq_teaseq_pbmc.h5ad", None)}
DEFAULT_SETS = ("teaseq300", "teaseq600", "pbmc5k", "pbmc10k")


def _run(argv: list[str], done: pathlib.Path) -> float | None:
  """Runs one CLI command unless `done` exists; its wall time in seconds, or None."""
  from multichan_diff.cli import main
  if done.exists():
    return None
  start = time.perf_counter()
  if main(argv) != 0:
    raise SystemExit(f"failed: multichan-diff {' '.join(argv)}")
  return time.perf_counter() - start


def source(work: pathlib.Path, name: str) -> pathlib.Path:
  """The set's h5ad: a shared file, or a fixed subsample of one written under `work`."""
  import anndata
  file, n = SETS[name]
  if n is None:
    return DATA / file
  out = work / "sources" / f"{name}.h5ad"
  if not out.exists():
    full = anndata.read_h5ad(DATA / file)
    keep = np.sort(np.random.default_rng(n).choice(full.n_obs, n, replace=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    full[keep].copy().write_h5ad(out)
  return out


def one(work: pathlib.Path, name: str, seed: int) -> dict:
  tag = f"{name}_{seed}"
  store, run, final = work / "stores" / f"{tag}.zarr", work / "runs" / tag, work / "runs" / f"{tag}_final"
  model, model_f = work / "models" / tag, work / "models" / f"{tag}_final"
  _run(["prepare", "citeseq", "--input", str(source(work, name)), "--out", str(store),
        "--genes", "all", "--test-fraction", "0.2", "--seed", str(seed)], store)
  cfg = ["--config", f"{ROOT}/configs/citeseq.py", f"--config.data.store={store}"]
  times = {"train": _run(["train", *cfg, "--workdir", str(run)], model)}
  _run(["export", "--workdir", str(run), "--out", str(model)], model)
  times["final"] = _run(["train", *cfg, "--workdir", str(final),
                         "--config.data.train_splits=('train','val')",
                         f"--config.train.steps_from={model}"], model_f)
  _run(["export", "--workdir", str(final), "--out", str(model_f)], model_f)
  out = {"times": times, "step": json.loads((model / "model.json").read_text())["step"]}
  for key, m in (("train", model), ("final", model_f)):
    rep = work / "reports" / f"{tag}_{key}"
    _run(["evaluate", "--model", str(m), "--store", str(store), "--samples", "1", "--out",
          str(rep)], rep)
    out[key] = {k: v["mean"]["r_p"] for k, v in
                json.loads((rep / "report.json").read_text())["methods"].items()}
  attrs = json.loads((store / "zarr.json").read_text())["attributes"]
  out["cells"], out["proteins"] = attrs["splits"], len(attrs["channels"])
  return out


def _cell(values, fmt=".3f") -> str:
  v = np.asarray(values, np.float64)
  return f"{v.mean():{fmt}} +- {v.std():{fmt}}" if len(v) > 1 else f"{v[0]:{fmt}}"


def table(results: dict[str, list[dict]]) -> str:
  lines = ["| set | train / val / test cells | proteins | ridge on SVD | KRR | model, trained on "
           "train | model, final fit | final fit - ridge, per seed |", "|---|---|---|---|---|---|---|---|"]
  for name, rs in results.items():
    c = rs[0]["cells"]
    gap = ", ".join(f"{r['final']['model'] - r['final']['ridge_svd']:+.3f}" for r in rs)
    lines.append(f"| {name} | {c['train']} / {c['val']} / {c['test']} | {rs[0]['proteins']} | "
                 f"{_cell([r['final']['ridge_svd'] for r in rs])} | "
                 f"{_cell([r['final']['krr'] for r in rs])} | "
                 f"{_cell([r['train']['model'] for r in rs])} | "
                 f"{_cell([r['final']['model'] for r in rs])} | {gap} |")
  lines += ["", "| set | chosen step | train s | final fit s |", "|---|---|---|---|"]
  for name, rs in results.items():
    t = lambda k: _cell([r["times"][k] for r in rs if r["times"][k] is not None] or [np.nan],
                        ".0f")
    lines.append(f"| {name} | {_cell([r['step'] for r in rs], '.0f')} | {t('train')} | "
                 f"{t('final')} |")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--work", required=True, help="folder for sources, stores, runs, models, reports")
  p.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), choices=list(SETS),
                 help="teaseq: all 1262 TEA-seq cells")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  args = p.parse_args()
  work = pathlib.Path(args.work)
  results = {name: [one(work, name, s) for s in args.seeds] for name in args.sets}
  print(table(results))


if __name__ == "__main__":
  main()
