"""The package's modules import one another without a circle, lazy imports included: an idea
lives in one module that both sides import."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "multichan_diff"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  """module -> the package modules it imports anywhere in its file (functions too), less a
  module's import of its own package's __init__ (a re-export, not a circle of ideas)."""
  files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  inits = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
  graph = {}
  for name, path in files.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      targets = []
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      deps |= {t for t in targets if t in files and t != name
               and not (t in inits and name.startswith(t + "."))}
    graph[name] = deps
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import circle [a, b, ..., a] of `graph`, or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for dep in sorted(graph[node]):
      if state.get(dep) == 1:
        return path[path.index(dep):] + [dep]
      if dep not in state and (found := visit(dep)):
        return found
    state[node] = 2
    path.pop()
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def test_find_cycle_sees_a_circle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles():
  graph = import_graph()
  assert "multichan_diff.train.trainer" in graph["multichan_diff.train.export"]  # it reads
  assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"
