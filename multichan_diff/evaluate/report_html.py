"""report.html: one self-contained page (inline CSS, plots as data: URIs, no scripts, fonts
or links) that opens from disk and can be sent as a single file. `page` builds any report
from sections of paragraphs, tables and PNGs, escaping every text; what goes in is the
caller's (evaluate's is evaluate.report.html)."""

from __future__ import annotations

import base64
import html
import os
from typing import NamedTuple, Union

NAME = "report.html"
STYLE = ("body{font-family:sans-serif;max-width:64em;margin:2em auto;padding:0 1em;"
         "line-height:1.45;color:#222}"
         "table{border-collapse:collapse;margin:.6em 0 1.2em}"
         "th,td{border:1px solid #ccc;padding:.2em .6em}th{background:#f2f2f2}"
         "td{text-align:right;font-variant-numeric:tabular-nums}"
         "td:first-child{text-align:left}code{background:#f4f4f4;padding:0 .2em}"
         "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:.9em;color:#555}"
         ".lead{font-weight:bold}")


class Para(NamedTuple):
  """A paragraph of plain text; `backquoted` spans are set as code."""
  text: str
  lead: bool = False


class Table(NamedTuple):
  """A header row and body rows of text cells (numbers already formatted)."""
  head: list[str]
  rows: list[list[str]]


class Image(NamedTuple):
  """A PNG, inlined as a data: URI; its caption is also its alt text."""
  png: bytes
  caption: str

  @classmethod
  def read(cls, path: str, caption: str) -> Image:
    with open(path, "rb") as f:
      return cls(f.read(), caption)


Block = Union[Para, Table, Image]


class Section(NamedTuple):
  """A heading (None: none) over its blocks."""
  heading: str | None
  blocks: list[Block]


def _inline(text: str) -> str:
  parts = text.split("`")
  if len(parts) % 2 == 0:  # an unpaired backquote: plain text
    return html.escape(text)
  return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p)
                 for i, p in enumerate(parts))


def _cells(tag: str, values: list[str]) -> str:
  return "".join(f"<{tag}>{html.escape(v)}</{tag}>" for v in values)


def _block(b: Block) -> str:
  if isinstance(b, Para):
    return ('<p class="lead">' if b.lead else "<p>") + _inline(b.text) + "</p>"
  if isinstance(b, Table):
    body = "".join(f"<tr>{_cells('td', r)}</tr>" for r in b.rows)
    return f"<table><thead><tr>{_cells('th', b.head)}</tr></thead><tbody>{body}</tbody></table>"
  uri = "data:image/png;base64," + base64.b64encode(b.png).decode("ascii")
  alt = html.escape(b.caption)
  return f'<figure><img src="{uri}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def page(title: str, sections: list[Section]) -> str:
  """The whole HTML document: `title` as its title and first heading, then each section (its
  heading, when it has one, and its blocks). All text is escaped here."""
  body = []
  for s in sections:
    if s.heading:
      body.append(f"<h2>{_inline(s.heading)}</h2>")
    body += map(_block, s.blocks)
  plain = html.escape(title.replace("`", ""))
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>{plain}</title><style>{STYLE}</style></head>\n<body>\n"
          f"<h1>{_inline(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")


def write(out_dir: str, text: str) -> None:
  """report.html into `out_dir`, as report.md is written (the folder is made atomically)."""
  with open(os.path.join(out_dir, NAME), "w", encoding="utf-8") as f:
    f.write(text)
