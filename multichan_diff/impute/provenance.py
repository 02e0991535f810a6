"""What an imputed OME-TIFF records of itself: which of its channels were imputed.

`impute.writers` writes the record and `quantify` reads it; it lives alone here so that a
reader of the files needs no model code. It is an OME MapAnnotation in this package's
namespace, which OME tools keep.
"""

from __future__ import annotations

import json
from typing import Sequence

NAMESPACE = "multichan-diff/impute"


def ome_metadata(imputed: Sequence[str]) -> dict:
  """tifffile `metadata` entries that record the imputed channels."""
  return {"MapAnnotation": {"Namespace": NAMESPACE, "imputed": json.dumps(list(imputed))}}


def read_imputed(xml: str | None, path: str) -> list[str] | None:
  """The imputed channels an OME-XML records, or None when it records none (a file from
  another tool, or from before the record was written)."""
  import xml.etree.ElementTree as ET
  if not xml:
    return None
  try:
    root = ET.fromstring(xml)
  except ET.ParseError as e:
    raise ValueError(f"{path}: unreadable OME metadata ({e})") from e
  for el in root.iter():
    if el.tag.endswith("}MapAnnotation") and el.get("Namespace") == NAMESPACE:
      for m in el.iter():
        if m.tag.endswith("}M") and m.get("K") == "imputed":
          try:
            names = json.loads(m.text or "")
          except json.JSONDecodeError as e:
            raise ValueError(f"{path}: unreadable record of the imputed channels ({e})") from e
          if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: the record of the imputed channels is not a list of "
                             "names")
          return names
  return None
