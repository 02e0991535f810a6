"""report.html on hand-made results: one self-contained file (the tables, the plots as data:
URIs, nothing fetched) whose text is escaped."""

import base64
import html
import re

import html5lib
import numpy as np

from multichan_diff.evaluate import report, report_html
from test_report import INFO, _cells, _images, _with_calibration

PNG = b"\x89PNG\r\n\x1a\n"
ODD = "CD<3>&b"  # a channel name that is markup unless escaped


def _parse(path):
  text = path.read_text(encoding="utf-8")
  return text, html5lib.parse(text, namespaceHTMLElements=False)


def _tables(doc) -> list[tuple[list[str], list[list[str]]]]:
  return [([th.text for th in t.iter("th")],
           [[td.text or "" for td in tr.iter("td")] for tr in t.find("tbody")])
          for t in doc.iter("table")]


def _self_contained(text: str, doc, folder) -> list[bytes]:
  """Nothing is fetched (no script, stylesheet or remote address); -> each image's PNG,
  checked to be the plot of that name in the folder."""
  assert not re.search(r"https?://", text)
  assert doc.find(".//script") is None and doc.find(".//link") is None
  for el in doc.iter():
    for attr in ("src", "href"):
      assert not el.get(attr, "data:").startswith(("http:", "https:", "//")), el.get(attr)
  pngs = []
  for img in doc.iter("img"):
    head, data = img.get("src").split(",", 1)
    assert head == "data:image/png;base64"
    pngs.append(base64.b64decode(data, validate=True))
    assert pngs[-1].startswith(PNG)
  on_disk = {p.read_bytes() for p in folder.glob("*.png")}
  assert set(pngs) == on_disk and len(pngs) == len(on_disk)
  return pngs


def test_images_report_html(tmp_path):
  result = _with_calibration(_images(0.44, 0.452))
  result["channels"] = [ODD, "b", "c"]
  rng = np.random.default_rng(0)
  result["examples"] = {ODD: {"truth": rng.random((8, 8)), "mean": rng.random((8, 8)),
                              "std": rng.random((8, 8)), "fov": "F1"}}
  summary = report.write(str(tmp_path), result, {**INFO, "held_out": [ODD]})
  text, doc = _parse(tmp_path / "report.html")
  assert doc.find(".//h1").findtext("code") == "test"  # `split` set as code, as in report.md
  first = doc.find(".//body/p")
  assert first.get("class") == "lead" and first.text == report.floor_sentence(summary)
  assert first.text.startswith("The model is below the best baseline (ridge, ")
  methods = list(summary["methods"])
  (score_head, score_rows), (chan_head, chan_rows), (cal_head, cal_rows) = _tables(doc)
  assert score_head == ["method", "pearson", "rmse"]
  assert [r[0] for r in score_rows] == methods and score_rows[0][1] == "0.440"
  assert chan_head == ["channel", *methods] and [r[0] for r in chan_rows] == [ODD, "b", "c"]
  assert len(cal_head) == 3 and [r[0] for r in cal_rows] == [
      "below every draw", "above every draw", *(f"inside the central {p} % interval"
                                                for p in (50, 80, 95))]
  assert [r[1] for r in cal_rows] == ["0.250", "0.250", "0.300", "0.500", "0.600"]
  # The odd name is text everywhere (title, tables, paragraphs), never markup.
  assert ODD not in text and html.escape(ODD) in text
  assert f"(held out: {ODD})" in "".join(doc.find(".//h1").itertext())
  assert {el.tag for el in doc.iter()} <= {"html", "head", "meta", "title", "style", "body",
                                           "h1", "h2", "p", "code", "table", "thead",
                                           "tbody", "tr", "th", "td", "figure", "img",
                                           "figcaption"}
  assert len(_self_contained(text, doc, tmp_path)) == 3  # bars, calibration, examples


def test_cells_report_html(tmp_path):
  result = _cells(0.55, 0.57)
  rng = np.random.default_rng(0)
  result["truth"], result["preds"] = rng.random((20, 2)), {"model": rng.random((20, 2))}
  report.write(str(tmp_path), result, {**INFO, "kind": "cells"})
  text, doc = _parse(tmp_path / "report.html")
  (score_head, score_rows), (chan_head, chan_rows) = _tables(doc)
  assert score_head == ["method", "r_p", "r_c"] and len(score_rows) == 3
  assert chan_head == ["channel", "model", "krr", "ridge_svd"] and len(chan_rows) == 2
  assert "Uncertainty" not in [h.text for h in doc.iter("h2")]
  assert len(_self_contained(text, doc, tmp_path)) == 2  # bars, cells


def test_page_escapes_and_reconstruction_page(tmp_path):
  from multichan_diff.evaluate.reconstruction import write_report
  text = report_html.page("a `<b>` c", [report_html.Section(None, [
      report_html.Para("x < y, one ` backquote"),
      report_html.Table(["h<"], [["&"]])])])
  doc = html5lib.parse(text, namespaceHTMLElements=False)
  assert doc.findtext(".//title") == "a <b> c" and doc.find(".//h1/code").text == "<b>"
  assert doc.find(".//p").text == "x < y, one ` backquote" and doc.find(".//code") is not None
  assert _tables(doc) == [(["h<"], [["&"]])]
  scores = {"channels": [ODD, "b"], "pearson": np.array([0.5, np.nan]),
            "rmse": np.array([0.1, np.nan]), "mean_pearson": 0.5, "tiles": 3}
  rec = write_report(str(tmp_path), scores, {"split": "test", "model": "/m", "store": "/s"})
  report_html.write(str(tmp_path), report.reconstruction_html(rec))
  text, doc = _parse(tmp_path / "report.html")
  assert _tables(doc) == [(["channel", "Pearson r", "RMSE"], [[ODD, "0.500", "0.100"]])]
  assert "mean Pearson r 0.500" in "".join(doc.find(".//p").itertext())
