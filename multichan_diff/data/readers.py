"""Readers of users' files: arrays and channel names, checked, with the file named in errors."""

from __future__ import annotations

import csv
import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Panel:
  """A steinbock-style panel: the channel names of an acquisition and which to keep."""

  names: list[str]
  keep: list[bool]

  @property
  def kept(self) -> list[str]:
    return [n for n, k in zip(self.names, self.keep) if k]


def read_panel_csv(path: str | os.PathLike) -> Panel:
  """Reads `channel,name,keep` (keep optional, 1 by default); rows in channel order."""
  try:
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
  except OSError as e:
    raise ValueError(f"{path}: cannot read the panel ({e.strerror})") from e
  if not rows:
    raise ValueError(f"{path}: the panel is empty")
  if "name" not in rows[0]:
    raise ValueError(f"{path}: a panel needs a 'name' column (found {list(rows[0])})")
  names, keep = [], []
  for line, row in enumerate(rows, start=2):
    name = (row.get("name") or "").strip()
    if not name:
      raise ValueError(f"{path}: line {line} has no channel name")
    if "channel" in row and row["channel"] not in (None, "") and row["channel"].strip() != str(
        line - 2):
      raise ValueError(f"{path}: line {line} is channel {row['channel']!r}, expected {line - 2} "
                       "(rows must list channels in order from 0)")
    k = (row.get("keep") or "1").strip()
    if k not in ("0", "1"):
      raise ValueError(f"{path}: line {line}: keep must be 0 or 1, got {k!r}")
    names.append(name)
    keep.append(k == "1")
  return Panel(names, keep)
