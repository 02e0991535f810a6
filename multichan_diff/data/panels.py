"""Channel names: matching across panels, synonyms, and unions of panels.

Names match case- and punctuation-insensitively (`HLA-DR` = `HLADR`, `PD-1` = `PD1`), and
an explicit name map adds synonyms that no spelling rule can find (`E-cadherin` = `ECAD`,
`Keratin-pan` = `PanKRT`). A name map is a CSV file with a header `name,alias`; each row
says that `alias` is another name of `name`, and `name` is the spelling a union keeps.

Within one file two spellings of one marker (two antibody clones, `PD-1 (CD279)` and
`PD1 (CD279)`) stay two channels under their own names; where panels are joined they
would meet as one, so that is refused, naming both, until `--drop-channels` keeps one.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Iterable, Sequence


def normalize(name: str) -> str:
  """The matching key of a channel name: lower case, letters and digits only."""
  return re.sub(r"[^0-9a-z]", "", name.lower())


@dataclasses.dataclass(frozen=True)
class NameMap:
  """Synonyms: normalised alias -> canonical name."""

  canonical: dict[str, str] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> "NameMap":
    canonical: dict[str, str] = {}
    for name, alias in pairs:
      for key in (normalize(name), normalize(alias)):
        if key in canonical and canonical[key] != name:
          raise ValueError(f"name map gives {key!r} two names: {canonical[key]!r} and {name!r}")
        canonical[key] = name
    return cls(canonical)

  @classmethod
  def read_csv(cls, path: str | os.PathLike) -> "NameMap":
    try:
      with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    except OSError as e:
      raise ValueError(f"{path}: cannot read the name map ({e.strerror})") from e
    if not rows or not {"name", "alias"} <= set(rows[0]):
      raise ValueError(f"{path}: a name map needs a header 'name,alias' and at least one row")
    bad = [i + 2 for i, r in enumerate(rows) if not r["name"].strip() or not r["alias"].strip()]
    if bad:
      raise ValueError(f"{path}: empty name or alias on line(s) {bad}")
    return cls.from_pairs((r["name"].strip(), r["alias"].strip()) for r in rows)

  def key(self, name: str) -> str:
    """The key under which `name` and all its synonyms and spellings meet."""
    k = normalize(name)
    return normalize(self.canonical.get(k, name))

  def display(self, name: str) -> str:
    """The canonical spelling of `name` (itself when the map does not know it)."""
    return self.canonical.get(normalize(name), name)


def check_names(names: Sequence[str], where: str) -> None:
  """Rejects a file's panel with an unusable or repeated name. Two spellings of one marker
  (two antibody clones, `PD-1` and `PD1`) are kept: they only clash when panels are joined."""
  seen: set[str] = set()
  for n in names:
    if not normalize(n):
      raise ValueError(f"{where}: channel name {n!r} has no letters or digits")
    if n in seen:
      raise ValueError(f"{where}: two channels are named {n!r}; give them distinct names")
    seen.add(n)


def drop(names: Sequence[str], dropped: Sequence[str], where: str,
         keep: Sequence[int] | None = None) -> list[int]:
  """Indices of `names` (of those in `keep`, when given) left after removing `dropped`:
  exact names, as they choose between spellings of one marker and remove isotype
  controls and empty channels."""
  unknown = [d for d in dropped if d not in names]
  if unknown:
    raise ValueError(f"{where}: --drop-channels {unknown} not in the panel; the panel is: "
                     f"{', '.join(names)}")
  gone = set(dropped)
  left = [i for i in (range(len(names)) if keep is None else keep) if names[i] not in gone]
  if not left:
    raise ValueError(f"{where}: --drop-channels leaves no channel")
  return left


def _clash(a: str, b: str, where: str) -> ValueError:
  return ValueError(f"{where}: channels {a!r} and {b!r} match one marker; keep one of them "
                    f"(prepare with --drop-channels {b!r}, or the other)")


def check_unique(names: Sequence[str], where: str, name_map: NameMap | None = None) -> None:
  """Rejects a panel to be joined with another in which two channels share a matching key."""
  name_map = name_map or NameMap()
  check_names(names, where)
  seen: dict[str, str] = {}
  for n in names:
    k = name_map.key(n)
    if k in seen:
      raise _clash(seen[k], n, where)
    seen[k] = n


def known(names: Sequence[str], panel: Sequence[str],
          name_map: NameMap | None = None) -> dict[int, int]:
  """{i: index into `panel`} for each of `names` that the panel has.

  An exact name wins; otherwise the name's key must pick one channel of the panel (a panel
  may hold two spellings of one marker, `PD-1` and `PD1`, and then only exact names pick).
  Two names that land on one channel are refused.
  """
  name_map = name_map or NameMap()
  exact = {n: i for i, n in enumerate(panel)}
  by_key: dict[str, list[int]] = {}
  for i, n in enumerate(panel):
    by_key.setdefault(name_map.key(n), []).append(i)
  pos: dict[int, int] = {}
  taken: dict[int, str] = {}  # panel index -> the name that took it
  for i, n in enumerate(names):
    if n in exact:
      j = exact[n]
    else:
      hits = by_key.get(name_map.key(n), [])
      if not hits:
        continue
      if len(hits) > 1:
        raise ValueError(f"{n!r} matches channels {panel[hits[0]]!r} and {panel[hits[1]]!r} "
                         "of the panel; name one exactly")
      j = hits[0]
    if j in taken:
      raise ValueError(f"channels {taken[j]!r} and {n!r} both match {panel[j]!r}; keep one "
                       f"of them (prepare with --drop-channels {n!r}, or the other)")
    pos[i], taken[j] = j, n
  return pos


def match(requested: Sequence[str], panel: Sequence[str],
          name_map: NameMap | None = None) -> list[int]:
  """Indices into `panel` of the `requested` names; unknown names list the panel."""
  pos = known(requested, panel, name_map)
  unknown = [r for i, r in enumerate(requested) if i not in pos]
  if unknown:
    raise ValueError(f"unknown channel(s) {unknown}; the panel is: {', '.join(panel)}")
  return [pos[i] for i in range(len(requested))]


@dataclasses.dataclass(frozen=True)
class Union:
  """The union of several panels.

  names: the union's channel names (first spelling seen, or the map's canonical one).
  indices: per panel, the union index of each of its channels.
  present: per panel, a [len(names)] bool list of the channels that panel measured.
  """

  names: list[str]
  indices: list[list[int]]
  present: list[list[bool]]

  @property
  def shared(self) -> list[str]:
    """Channels every panel measured (the intersection)."""
    return [n for i, n in enumerate(self.names) if all(p[i] for p in self.present)]


def union(panels: Sequence[Sequence[str]], name_map: NameMap | None = None,
          labels: Sequence[str] | None = None) -> Union:
  """Union of panels in order of first appearance; within each panel (named by `labels` in
  errors) no two channels may match one marker."""
  name_map = name_map or NameMap()
  labels = labels or [f"panel {i}" for i in range(len(panels))]
  names: list[str] = []
  where: dict[str, int] = {}
  indices = []
  for i, panel in enumerate(panels):
    check_unique(panel, labels[i], name_map)
    idx = []
    for n in panel:
      k = name_map.key(n)
      if k not in where:
        where[k] = len(names)
        names.append(name_map.display(n))
      idx.append(where[k])
    indices.append(idx)
  present = [[j in set(idx) for j in range(len(names))] for idx in indices]
  return Union(names, indices, present)
