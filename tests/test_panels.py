"""Channel-name matching and union panels, on the two real MIBI panels."""


import pytest

from helpers import DATA, needs_data
from multichan_diff.data.panels import (NameMap, check_names, drop, known, match, normalize,
                                        union)
from multichan_diff.data.readers import read_panel_csv


MAP = NameMap.from_pairs([("E-cadherin", "ECAD"), ("Keratin-pan", "PanKRT"),
                          ("Vimentin", "VIM"), ("Collagen-1", "COLI")])


def test_normalize_ignores_case_and_punctuation():
  assert normalize("HLA-DR") == normalize("hla_dr") == normalize("HLA DR") == "hladr"
  assert normalize("PD-1") == normalize("PD1")
  assert normalize("CD3") != normalize("CD4")


def test_match_uses_spelling_and_map_and_lists_the_panel_on_error():
  panel = ["dsDNA", "E-cadherin", "PD-1", "Keratin-pan"]
  assert match(["pd1", "ECAD", "PanKRT"], panel, MAP) == [2, 1, 3]
  with pytest.raises(ValueError, match=r"unknown channel\(s\) \['CD99'\].*dsDNA, E-cadherin"):
    match(["CD99"], panel, MAP)
  with pytest.raises(ValueError, match="unknown"):
    match(["ECAD"], panel)  # no map, no synonym


def test_one_file_keeps_two_spellings_a_join_refuses_them():
  check_names(["PD-1", "CD3", "PD1"], "x.csv")  # two clones of one marker: both kept
  with pytest.raises(ValueError, match="x.csv: two channels are named 'CD3'"):
    check_names(["CD3", "CD4", "CD3"], "x.csv")
  with pytest.raises(ValueError, match="x.csv: channel name '--' has no letters or digits"):
    check_names(["CD3", "--"], "x.csv")
  with pytest.raises(ValueError, match="a.zarr: channels 'PD-1' and 'PD1' match one marker; "
                                       "keep one of them \\(prepare with --drop-channels"):
    union([["CD3"], ["PD-1", "CD3", "PD1"]], labels=["b.zarr", "a.zarr"])
  with pytest.raises(ValueError, match="panel 0: channels 'ECAD' and 'E-cadherin' match one"):
    union([["ECAD", "E-cadherin"], ["CD3"]], MAP)


def test_matching_a_panel_with_two_spellings():
  panel = ["PD-1", "CD3", "PD1"]
  assert match(["PD1", "PD-1", "cd3"], panel) == [2, 0, 1]  # exact names pick
  with pytest.raises(ValueError, match="'pd1' matches channels 'PD-1' and 'PD1' of the panel"):
    match(["pd1"], panel)
  # Two of a store's channels onto one of a model's: refused, naming both.
  with pytest.raises(ValueError, match="channels 'PD1' and 'PD-1' both match 'PD1'; keep one "
                                       "of them \\(prepare with --drop-channels 'PD-1'"):
    known(panel[::-1], ["CD3", "PD1"])
  assert known(["CD3", "PD-1"], ["PD1", "CD3"]) == {0: 1, 1: 0}


def test_drop_names_exact_channels_and_lists_the_panel():
  assert drop(["CD3", "PD-1", "PD1"], ["PD1"], "f.h5ad") == [0, 1]
  assert drop(["CD3", "PD-1", "PD1"], ["CD3"], "f.h5ad", keep=[0, 2]) == [2]
  with pytest.raises(ValueError, match=r"f.h5ad: --drop-channels \['pd1'\] not in the panel; "
                                       "the panel is: CD3, PD-1, PD1"):
    drop(["CD3", "PD-1", "PD1"], ["pd1"], "f.h5ad")
  with pytest.raises(ValueError, match="f.h5ad: --drop-channels leaves no channel"):
    drop(["CD3"], ["CD3"], "f.h5ad")


def test_name_map_file(tmp_path):
  path = tmp_path / "map.csv"
  path.write_text("name,alias\nE-cadherin,ECAD\nKeratin-pan,PanKRT\n")
  m = NameMap.read_csv(path)
  assert m.key("ecad") == m.key("E-Cadherin") and m.display("ECAD") == "E-cadherin"
  bad = tmp_path / "bad.csv"
  bad.write_text("from,to\nA,B\n")
  with pytest.raises(ValueError, match=r"bad.csv: a name map needs a header 'name,alias'"):
    NameMap.read_csv(bad)
  with pytest.raises(ValueError, match="missing.csv: cannot read"):
    NameMap.read_csv(tmp_path / "missing.csv")


def test_union_present_masks_and_order():
  u = union([["CD3", "ECAD", "Ki67"], ["E-cadherin", "CD20", "ki-67"]], MAP)
  assert u.names == ["CD3", "E-cadherin", "Ki67", "CD20"]
  assert u.indices == [[0, 1, 2], [1, 3, 2]]
  assert u.present == [[True, True, True, False], [False, True, True, True]]
  assert u.shared == ["E-cadherin", "Ki67"]


@needs_data
def test_union_of_the_two_real_mibi_panels():
  gran = read_panel_csv(DATA / "mibi_granuloma" / "panel.csv")
  dcis = read_panel_csv(DATA / "mibi_dcis" / "panel.csv")
  assert len(gran.names) == 45 and len(gran.kept) == 39
  assert len(dcis.names) == 41 and len(dcis.kept) == 40
  u = union([gran.kept, dcis.kept], MAP)
  shared = set(u.shared)
  for marker in ["CD3", "CD4", "CD8", "CD20", "CD45", "CD68", "Ki67", "SMA", "E-cadherin",
                 "Keratin-pan", "PD-1", "PD-L1", "Vimentin", "CD31", "MPO"]:
    assert marker in shared, marker
  # Without the map the synonyms stay apart.
  plain = union([gran.kept, dcis.kept])
  assert len(plain.names) > len(u.names) and "ECAD" in plain.names
  assert len(u.names) == len(gran.kept) + len(dcis.kept) - len(shared)


def test_panel_csv_errors(tmp_path):
  p = tmp_path / "panel.csv"
  p.write_text("channel,name,keep\n0,CD3,1\n2,CD4,1\n")
  with pytest.raises(ValueError, match="panel.csv: line 3 is channel '2', expected 1"):
    read_panel_csv(p)
  p.write_text("channel,name,keep,ilastik\nIr191,DNA1,1,1\nPt195,CD3,0,\n")  # steinbock
  assert read_panel_csv(p).kept == ["DNA1"]
  p.write_text("channel,name,keep\n0,CD3,yes\n")
  with pytest.raises(ValueError, match="keep must be 0 or 1"):
    read_panel_csv(p)
  p.write_text("")
  with pytest.raises(ValueError, match="panel.csv: the panel is empty"):
    read_panel_csv(p)
