"""Evaluation results as files: report.json, report.md (model vs every baseline, per
channel and overall; its first line says whether the model is below the best baseline),
the plots (per-channel bars against the best baseline; truth / prediction / uncertainty
crops for images; predicted vs measured for cells; the draws' calibration) and report.html
(report.md's text and tables with the plots, in one file)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from multichan_diff.evaluate import metrics, report_html
from multichan_diff.evaluate.report_html import Image, Para, Section, Table

BASELINE_EXCLUDE = ("model", "model_1_sample", "model_samples_mean")
HEADLINE_WORDS = {"pearson": "mean Pearson r", "r_p": "r_p"}
POINT_WORDS = {"denoiser": "the {net} x0 estimate from pure noise averaged over {k} draws",
               "samples": "the mean of {k} samples"}


def _num(v) -> float | None:
  v = float(v)
  return v if np.isfinite(v) else None


def _per_channel(per: dict[str, np.ndarray], channels: list[str]) -> dict:
  return {ch: {k: _num(per[k][i]) for k in per} for i, ch in enumerate(channels)}


def _pooled(rows: dict[str, np.ndarray], channels: list[str]) -> dict:
  """{metric: [S, C] with NaN where observed or undefined} -> the mean over every scored
  (set, channel) pair, and per channel the mean over the sets that scored it."""
  mean = {k: _num(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in rows.items()}
  with warnings.catch_warnings():  # a channel never scored has an empty mean: NaN
    warnings.simplefilter("ignore", RuntimeWarning)
    per = {k: np.nanmean(v, 0) for k, v in rows.items()}
  return {"mean": mean, "per_channel": _per_channel(per, channels)}


def summarise(result: dict, kind: str) -> dict:
  """Per method: the headline means and per-channel figures, as plain JSON values; and,
  when the result has it, the calibration of the model's draws."""
  methods = {}
  for name, sc in result["scores"].items():
    if kind == "cells":
      methods[name] = {"mean": {"r_p": _num(sc["r_p"]), "r_c": _num(sc["r_c"])},
                       "per_channel": _per_channel(
                           {k: sc[k] for k in ("pearson", "spearman", "rmse")},
                           result["channels"])}
    else:
      methods[name] = _pooled(sc, result["channels"])
  key = "r_p" if kind == "cells" else "pearson"
  baselines = [m for m in methods if m not in BASELINE_EXCLUDE]
  best = max(baselines, key=lambda m: methods[m]["mean"][key] or -np.inf) if baselines else None
  summary = {"methods": methods, "headline": key, "best_baseline": best,
             "below_best_baseline": _below(methods, best, key)}
  if "uncertainty" in result:
    unc = dict(result["uncertainty"])
    k = unc.pop("draws")
    pit = unc.pop("pit", None)
    summary["uncertainty"] = {"draws": k, "calibrated_tail": metrics.calibrated_tail(k),
                              **_pooled(unc, result["channels"])}
    summary["uncertainty"]["channels_spearman"] = _channels_spearman(summary)
    if pit is not None:
      summary["uncertainty"].update(_calibration(pit, summary["uncertainty"]["mean"], k))
  return summary


def _below(methods: dict, best: str | None, key: str) -> bool | None:
  """Whether the model's headline is below the best baseline's (None: nothing to compare)."""
  if best is None or "model" not in methods:
    return None
  model, base = methods["model"]["mean"][key], methods[best]["mean"][key]
  return None if model is None or base is None else bool(model < base)


def _calibration(pit: np.ndarray, mean: dict, k: int) -> dict:
  """pit [S, K + 1, C] (NaN where observed) -> the PIT histogram over every scored (set,
  channel) pair, as the other figures are pooled; and the central intervals' coverage
  beside what k draws of a calibrated posterior would give."""
  levels = [p for p in metrics.COVERAGE_LEVELS if metrics.coverage_key(p) in mean]
  with warnings.catch_warnings():  # nothing scored: NaN
    warnings.simplefilter("ignore", RuntimeWarning)
    hist = np.nanmean(np.moveaxis(pit, 1, -1).reshape(-1, k + 1), 0)
  return {"pit": [_num(v) for v in hist],
          "coverage": {"levels": levels,
                       "empirical": [mean[metrics.coverage_key(p)] for p in levels],
                       "calibrated": metrics.calibrated_coverage(k, levels).tolist()}}


def _channels_spearman(summary: dict) -> float | None:
  """Spearman rho, across the scored channels, of the draws' relative spread against the
  model's Pearson r: below 0 when the spread says which channels to trust less."""
  per_u = summary["uncertainty"]["per_channel"]
  per_r = summary["methods"]["model"]["per_channel"]
  pairs = [(per_u[c]["relative_std"], per_r[c]["pearson"]) for c in per_u]
  pairs = np.array([p for p in pairs if None not in p], np.float64).reshape(-1, 2)
  if len(pairs) < 3:
    return None
  return _num(metrics.spearman(pairs[:, :1], pairs[:, 1:])[0])


def _pair(a: float, b: float) -> tuple[str, str]:
  """Two figures to 3 decimals, or as many more (up to 6) as tell them apart."""
  for d in range(3, 7):
    fa, fb = f"{a:.{d}f}", f"{b:.{d}f}"
    if fa != fb:
      break
  return fa, fb


def floor_sentence(summary: dict) -> str | None:
  """The line under the title: the model against the best baseline, plainly (None: nothing
  to compare)."""
  below, best = summary["below_best_baseline"], summary["best_baseline"]
  if below is None:
    return None
  key = summary["headline"]
  model, base = _pair(summary["methods"]["model"]["mean"][key],
                      summary["methods"][best]["mean"][key])
  where = "below" if below else "at or above"
  return (f"The model is {where} the best baseline ({best}, {HEADLINE_WORDS[key]} "
          f"{model} against {base}) on this split.")


def _list(values) -> str:
  return " / ".join("n/a" if v is None else f"{v:.3f}" for v in values)


def _coverage_line(unc: dict) -> str:
  """The sentence on the central intervals and the PIT."""
  cov, k = unc["coverage"], unc["draws"]
  return (f" The central {' / '.join(f'{100 * p:g}' for p in cov['levels'])} % intervals of "
          f"the {k} draws (their empirical quantiles, so narrower than nominal with few "
          f"draws: a calibrated posterior's {k} draws would hold about "
          f"{_list(cov['calibrated'])}) held {_list(cov['empirical'])} of the measured "
          "values. The measured value's rank among the draws (PIT) and the coverage against "
          f"the nominal level are in calibration.png (each rank {unc['calibrated_tail']:.3f} "
          "of the entries when calibrated).")


def uncertainty_paragraph(unc: dict) -> str | None:
  """The calibration paragraph of the report (None: no entry was scored)."""
  m = unc["mean"]
  if m["below"] is None:
    return None
  rho = m["std_error_spearman"]
  return (f"Uncertainty, from the model's {unc['draws']} draws per entry: the measured "
          f"value fell below every draw in {m['below']:.3f} of the scored entries and above "
          f"every draw in {m['above']:.3f}; a calibrated posterior puts "
          f"{unc['calibrated_tail']:.3f} in each (wider tails: the draws are too narrow or "
          "biased). Spearman rho of the draws' std against the absolute error of `model`: "
          + ("undefined (the draws do not vary)" if rho is None else f"{rho:.3f}")
          + " (above 0: the std points at the errors)."
          + ("" if unc["channels_spearman"] is None else
             " Across channels, Spearman rho of the draws' mean std (over the measured "
             f"values' std, {m['relative_std']:.3f} on average) against the channel's "
             f"Pearson r: {unc['channels_spearman']:.3f} (below 0: wider draws where the "
             "channel is imputed worse).")
          + (_coverage_line(unc) if "coverage" in unc else ""))


def title(info: dict) -> str:
  return (f"Evaluation: {info['kind']}, split `{info['split']}`"
          + (f", mode `{info['mode']}`" if info["kind"] == "images" else "")
          + (f" (held out: {', '.join(info['held_out'])})" if info.get("held_out") else ""))


def description(summary: dict, info: dict) -> str:
  """What was scored: the model, the store, the sampler and what each model row is."""
  members = info.get("members", 1)
  net = "generator's teacher's" if info["sampler"] == "onestep" else "network's"
  return (f"Model `{info['model']}`"
          + (f" (an ensemble of {members}: each member's draws as below, `model` the mean "
             "of their estimates)" if members > 1 else "")
          + f" on store `{info['store']}`; {info['sampler']} with "
          f"{info['steps']} steps; `model` is the posterior mean as "
          f"{POINT_WORDS[info.get('point', 'samples')].format(k=info['samples'], net=net)}"
          + (f" (shared among {info['views']} orientations)" if info.get("views", 1) > 1
             else "") + ", "
          "`model_1_sample` one sample"
          + ("" if info.get("point", "samples") == "samples" else
             f", `model_samples_mean` the mean of the {info['samples']} samples")
          + (f"; `masked_regressor` the point estimate of the regressor `{info['regressor']}` "
             "on the same observed channels (a baseline)" if info.get("regressor") else "")
          + ". Best baseline: "
          f"`{summary['best_baseline']}`."
          + (" Draws under half a count are zero counts (the data are whole counts)."
             if info.get("draws_zeroed_below") else "")
          + (f" `cell_pearson`: Pearson r over {info['cells']['count']} cells "
             f"({info['cells']['source']}) of the per-cell means, imputed against measured."
             if info.get("cells") else ""))


CHANNEL_CAPTION = ("Per channel, Pearson r (mean over the evaluated sets in which the channel "
                   "was missing):")


def figure(v: float | None) -> str:
  return "" if v is None else f"{v:.3f}"


def method_table(summary: dict) -> tuple[list[str], list[list[str]]]:
  """(header, rows) of the headline figures, one row per method; report.md and report.html
  both show it."""
  methods = summary["methods"]
  heads = list(next(iter(methods.values()))["mean"])
  return (["method", *heads],
          [[m, *(figure(v["mean"][h]) for h in heads)] for m, v in methods.items()])


def channel_table(summary: dict) -> tuple[list[str], list[list[str]]]:
  """(header, rows) of Pearson r per channel (rows) and method (columns), leaving out the
  channels no method scored."""
  methods = summary["methods"]
  names = list(methods)
  rows = []
  for ch in methods[names[0]]["per_channel"]:
    vals = [methods[m]["per_channel"][ch]["pearson"] for m in names]
    if any(v is not None for v in vals):
      rows.append([ch, *map(figure, vals)])
  return ["channel", *names], rows


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
  """A Markdown table's lines."""
  return ["| " + " | ".join(head) + " |", "|---" * len(head) + "|",
          *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(summary: dict, info: dict) -> str:
  floor = floor_sentence(summary)
  lines = [f"# {title(info)}", *(["", floor] if floor else []), "",
           description(summary, info)]
  para = uncertainty_paragraph(summary["uncertainty"]) if "uncertainty" in summary else None
  if para:
    lines += ["", para]
  lines += ["", *md_table(*method_table(summary)), "", CHANNEL_CAPTION, "",
            *md_table(*channel_table(summary))]
  return "\n".join(lines) + "\n"


# The plots `write` may leave, in the order report.html shows them.
PLOTS = (("per_channel.png", "Per channel, Pearson r: the model against the best baseline."),
         ("calibration.png", "The measured value's rank among the draws (PIT), and the "
          "coverage of the draws' central intervals against the nominal level."),
         ("examples.png", "Measured, imputed (posterior mean) and uncertainty (posterior "
          "std) crops of the best-imputed channels."),
         ("cells.png", "Imputed against measured (CLR), the best-imputed proteins."))


def calibration_table(unc: dict) -> Table:
  """The draws' tail shares and interval coverage beside a calibrated posterior's."""
  m, k, tail = unc["mean"], unc["draws"], figure(unc["calibrated_tail"])
  rows = [["below every draw", figure(m["below"]), tail],
          ["above every draw", figure(m["above"]), tail]]
  if "coverage" in unc:
    cov = unc["coverage"]
    rows += [[f"inside the central {100 * p:g} % interval", figure(e), figure(c)]
             for p, e, c in zip(cov["levels"], cov["empirical"], cov["calibrated"])]
  return Table(["share of measured values", f"the model's {k} draws",
                f"a calibrated posterior's {k} draws"], rows)


def html(summary: dict, info: dict, out_dir: str) -> str:
  """report.html: report.md's text and tables, the calibration figures as a table, and the
  plots found in `out_dir`."""
  floor = floor_sentence(summary)
  sections = [Section(None, [*([Para(floor, lead=True)] if floor else []),
                             Para(description(summary, info))]),
              Section("Scores", [Table(*method_table(summary))]),
              Section("Per channel", [Para(CHANNEL_CAPTION), Table(*channel_table(summary))])]
  unc = summary.get("uncertainty")
  para = uncertainty_paragraph(unc) if unc else None
  if para:
    sections.append(Section("Uncertainty", [Para(para), calibration_table(unc)]))
  plots = [Image.read(os.path.join(out_dir, name), caption) for name, caption in PLOTS
           if os.path.exists(os.path.join(out_dir, name))]
  if plots:
    sections.append(Section("Plots", plots))
  return report_html.page(title(info), sections)


def reconstruction_html(rec: dict) -> str:
  """The autoencoder's report.html, from the report.json evaluate.reconstruction writes."""
  rows = [[ch, figure(v["pearson"]), figure(v["rmse"])]
          for ch, v in rec["per_channel"].items() if v["pearson"] is not None]
  return report_html.page(f"Autoencoder reconstruction, split `{rec['split']}`", [
      Section(None, [Para(f"Model `{rec['model']}` on `{rec['store']}`, {rec['tiles']} tiles: "
                          f"mean Pearson r {rec['mean_pearson']:.3f}.")]),
      Section("Per channel", [Table(["channel", "Pearson r", "RMSE"], rows)])])


def plot_bars(summary: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  methods, best = summary["methods"], summary["best_baseline"]
  chans = [c for c, v in methods["model"]["per_channel"].items() if v["pearson"] is not None]
  chans.sort(key=lambda c: -methods["model"]["per_channel"][c]["pearson"])
  x = np.arange(len(chans))
  fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(chans) + 2), 4))
  for off, m in ((-0.2, "model"), (0.2, best)):
    if m is None:
      continue
    vals = [methods[m]["per_channel"][c]["pearson"] or 0.0 for c in chans]
    ax.bar(x + off, vals, 0.4, label=f"{m} (mean {methods[m]['mean'][summary['headline']]:.3f})")
  ax.set_xticks(x, chans, rotation=90, fontsize=7)
  ax.set_ylabel("Pearson r")
  ax.axhline(0, color="k", lw=0.5)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_calibration(unc: dict, path: str) -> None:
  """The PIT histogram (the measured value's rank among the K draws, flat at 1 / (K + 1)
  when calibrated) and the central intervals' coverage against the nominal level."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker
  k, cov = unc["draws"], unc["coverage"]
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.6))
  ax.bar(np.arange(k + 1), [v or 0.0 for v in unc["pit"]], 0.9, color="C0")
  ax.axhline(unc["calibrated_tail"], color="k", ls="--", lw=1,
             label=f"calibrated, 1/(K+1) = {unc['calibrated_tail']:.3f}")
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel(f"rank of the measured value among the {k} draws")
  ax.set_ylabel("share of scored entries")
  ax.set_title("PIT histogram", fontsize=9)
  ax.legend(fontsize=7)
  levels = np.asarray(cov["levels"])
  bx.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="nominal")
  bx.plot(levels, cov["calibrated"], "s:", color="grey", label=f"calibrated, {k} draws")
  bx.plot(levels, [np.nan if v is None else v for v in cov["empirical"]], "o-", color="C1",
          label="the model's draws")
  bx.set_xlim(0, 1)
  bx.set_ylim(0, 1)
  bx.set_xlabel("central interval, nominal level")
  bx.set_ylabel("share of measured values inside")
  bx.set_title("coverage of the draws' empirical intervals", fontsize=9)
  bx.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_examples(examples: dict, summary: dict, path: str, n: int = 4) -> None:
  """Truth / posterior mean / posterior std crops for the n best-imputed channels."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  per = summary["methods"]["model"]["per_channel"]
  chans = sorted((c for c in examples if per.get(c, {}).get("pearson") is not None),
                 key=lambda c: -per[c]["pearson"])[:n]
  if not chans:
    return
  fig, axes = plt.subplots(len(chans), 3, figsize=(7.5, 2.5 * len(chans)), squeeze=False)
  for row, c in zip(axes, chans):
    ex = examples[c]
    lo, hi = np.percentile(ex["truth"], [1, 99.5])
    for ax, key, title in zip(row, ("truth", "mean", "std"), ("measured", "imputed (mean)",
                                                              "uncertainty (std)")):
      kw = {} if key == "std" else {"vmin": lo, "vmax": max(hi, lo + 1e-6)}
      ax.imshow(ex[key], cmap="magma", **kw)
      ax.set_title(f"{c}: {title}", fontsize=8)
      ax.axis("off")
  fig.suptitle(f"FOV {examples[chans[0]]['fov']} (central crop)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_cells(truth: np.ndarray, pred: np.ndarray, channels: list[str], summary: dict,
               path: str, n: int = 6) -> None:
  """Predicted vs measured (CLR) for the n proteins the model imputes best."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  per = summary["methods"]["model"]["per_channel"]
  order = sorted(range(len(channels)), key=lambda i: -(per[channels[i]]["pearson"] or -1))[:n]
  fig, axes = plt.subplots(1, len(order), figsize=(2.6 * len(order), 2.8), squeeze=False)
  for ax, i in zip(axes[0], order):
    ax.scatter(truth[:, i], pred[:, i], s=3, alpha=0.5)
    ax.set_title(f"{channels[i]} r={per[channels[i]]['pearson']:.2f}", fontsize=8)
    ax.set_xlabel("measured (CLR)", fontsize=7)
  axes[0][0].set_ylabel("imputed (CLR)", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(out_dir: str, result: dict, info: dict) -> dict:
  """Writes report.json, report.md, the PNGs and report.html into `out_dir`; returns the
  summary."""
  summary = summarise(result, info["kind"])
  report = {**info, **summary, "channels": result["channels"]}
  if "sets" in result:
    report["sets"] = [[c for c, o in zip(result["channels"], s) if o] for s in result["sets"]]
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(markdown(summary, info))
  plot_bars(summary, os.path.join(out_dir, "per_channel.png"))
  if "coverage" in summary.get("uncertainty", {}):
    plot_calibration(summary["uncertainty"], os.path.join(out_dir, "calibration.png"))
  if info["kind"] == "images":
    plot_examples(result["examples"], summary, os.path.join(out_dir, "examples.png"))
  else:
    plot_cells(result["truth"], result["preds"]["model"], result["channels"], summary,
               os.path.join(out_dir, "cells.png"))
  report_html.write(out_dir, html(summary, info, out_dir))
  return summary
