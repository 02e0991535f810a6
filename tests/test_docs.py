"""The docs cannot rot: every command in them parses, every config loads, every link resolves.

Commands are read from the ```bash blocks of README.md and docs/**/*.md. A small interpreter
expands what those blocks use of the shell: `\\` line continuations, comments, `;`,
`NAME=value`, `for NAME in ...; do ... done` (the body once per value), `set -- $var`, and
`$name`, `${name}`, `${!name}`, `$1`. Nothing is run: `multichan-diff` commands go through the
real argument parser, and for `train`, `train-autoencoder` and `distill` the rest through
`multichan_diff.cli.load_config`, so the config file must exist and load and every
`--config.a.b=` override must name a real key.
"""

from __future__ import annotations

import pathlib
import re
import shlex

import ml_collections
import pytest

from multichan_diff import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CONFIG_VERBS = ("train", "train-autoencoder", "distill")


def _rel(path: pathlib.Path) -> str:
  return str(path.relative_to(ROOT))


def bash_blocks(text: str) -> list[tuple[int, str]]:
  """(first line number, body) of every ```bash block."""
  blocks = []
  for m in re.finditer(r"^```bash[ \t]*\n(.*?)^```", text, re.M | re.S):
    blocks.append((text.count("\n", 0, m.start(1)) + 1, m.group(1)))
  return blocks


def split_words(line: str) -> list[list[str]]:
  """Simple commands of one logical line, split on `;` and `&&`; words keep their quotes."""
  commands, words, word, quote = [], [], "", None
  line = re.sub(r"\s&&\s", " ; ", line)
  for ch in line:
    if quote:
      word += ch
      if ch == quote:
        quote = None
    elif ch in "'\"":
      word, quote = word + ch, ch
    elif ch == "#" and not word:  # a comment starts a word
      break
    elif ch.isspace() or ch == ";":
      if word:
        words.append(word)
        word = ""
      if ch == ";":
        commands.append(words)
        words = []
    else:
      word += ch
  if quote:
    raise ValueError(f"unclosed quote in {line!r}")
  if word:
    words.append(word)
  commands.append(words)
  return [c for c in commands if c]


def parse_block(body: str, first_line: int) -> list:
  """Nodes ('cmd', line, words) and ('for', line, name, words, body)."""
  statements, pending, start = [], None, 0
  for n, line in enumerate(body.split("\n")):
    if pending is None:
      pending, start = "", first_line + n
    if line.endswith("\\"):  # a continuation: joined as the shell joins it
      pending += line[:-1]
      continue
    line, pending = pending + line, None
    for words in split_words(line):
      while words and words[0] == "do":
        words = words[1:]
      if words:
        statements.append((start, words))

  def nodes(i: int, inside_loop: bool):
    out = []
    while i < len(statements):
      line_no, words = statements[i]
      if words == ["done"]:
        if not inside_loop:
          raise ValueError(f"line {line_no}: `done` outside a loop")
        return out, i + 1
      if words[0] == "for":
        if len(words) < 3 or words[2] != "in":
          raise ValueError(f"line {line_no}: unsupported loop {' '.join(words)}")
        body_nodes, i = nodes(i + 1, True)
        out.append(("for", line_no, words[1], words[3:], body_nodes))
        continue
      out.append(("cmd", line_no, words))
      i += 1
    if inside_loop:
      raise ValueError("a loop without `done`")
    return out, i

  return nodes(0, False)[0]


_VAR = re.compile(r"\$\{!(\w+)\}|\$\{(\w+)\}|\$([0-9]|[A-Za-z_]\w*)")


def expand(word: str, env: dict[str, str], line_no: int) -> list[str]:
  """Substitutes variables, then removes quotes and word-splits as the shell would."""

  def sub(m: re.Match) -> str:
    if m.group(1):
      name = env.get(m.group(1))
      if name is None or name not in env:
        raise ValueError(f"line {line_no}: unknown variable in ${{!{m.group(1)}}}")
      return env[name]
    name = m.group(2) or m.group(3)
    if name not in env:
      raise ValueError(f"line {line_no}: unknown variable ${name}")
    return env[name]

  return shlex.split(_VAR.sub(sub, word))


def run_nodes(nodes: list, env: dict[str, str], out: list) -> None:
  for node in nodes:
    if node[0] == "for":
      _, line_no, name, words, body = node
      values = [v for w in words for v in expand(w, env, line_no)]
      for value in values:
        run_nodes(body, {**env, name: value}, out)
      continue
    _, line_no, words = node
    if re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]) and len(words) == 1:
      name, value = words[0].split("=", 1)
      env[name] = " ".join(expand(value, env, line_no)) if value else ""
      continue
    argv = [a for w in words for a in expand(w, env, line_no)]
    if argv[:2] == ["set", "--"]:
      for k in [k for k in env if k.isdigit()]:
        del env[k]
      env.update({str(i + 1): v for i, v in enumerate(argv[2:])})
      continue
    out.append((line_no, argv))


def doc_commands() -> list[tuple[str, list[str]]]:
  """(where, argv) of every command in the docs' bash blocks."""
  found = []
  for path in DOCS:
    for first_line, body in bash_blocks(path.read_text()):
      commands: list = []
      try:
        run_nodes(parse_block(body, first_line), {}, commands)
      except ValueError as e:
        raise AssertionError(f"{_rel(path)}, block at line {first_line}: {e}") from e
      found += [(f"{_rel(path)}:{line_no}", argv) for line_no, argv in commands]
  return found


COMMANDS = doc_commands()
CLI_COMMANDS = [(where, argv) for where, argv in COMMANDS if argv[0] == "multichan-diff"]


def test_the_docs_hold_commands():
  assert len(CLI_COMMANDS) >= 50, len(CLI_COMMANDS)
  verbs = {argv[1] for _, argv in CLI_COMMANDS if len(argv) > 1}
  assert {"prepare", "train", "export", "impute", "evaluate", "demo", "distill",
          "train-autoencoder"} <= verbs, verbs


def check_command(argv: list[str]) -> None:
  """Parses `multichan-diff ARGS` as `cli.main` does, without running it."""
  parser = cli.build_parser()
  try:
    args, rest = parser.parse_known_args(argv[1:])
  except SystemExit as e:
    raise AssertionError(f"does not parse (exit {e.code})") from None
  if args.command in CONFIG_VERBS:
    if not rest or not rest[0].startswith("--config"):
      raise AssertionError(f"{args.command} needs --config FILE, got {rest}")
    # load_config would ignore a stray word (a `[...]` placeholder, a typo without `--`)
    stray = [a for i, a in enumerate(rest)
             if not a.startswith("--config") and not (i == 1 and rest[0] == "--config")]
    assert not stray, f"not config flags: {stray}"
    check_config_args(rest)
  else:
    assert args.command is not None, "no verb"
    assert not rest, f"unrecognized arguments: {rest}"


def check_config_args(config_args: list[str]) -> ml_collections.ConfigDict:
  first = config_args[0]
  path = first.split("=", 1)[1] if first.startswith("--config=") else config_args[1]
  file = path.split(":", 1)[0]
  assert (ROOT / file).is_file(), f"no config file {file}"
  try:
    config = cli.load_config(config_args)
  except Exception as e:  # an unknown key raises AttributeError
    raise AssertionError(f"config {config_args}: {type(e).__name__}: {e}") from None
  # load_config defers a missing file's error: only a real ConfigDict counts
  assert isinstance(config, ml_collections.ConfigDict), f"{path} did not load"
  return config


@pytest.mark.parametrize("where, argv", CLI_COMMANDS, ids=[w for w, _ in CLI_COMMANDS])
def test_command_parses(where, argv, monkeypatch):
  monkeypatch.chdir(ROOT)
  check_command(argv)


def test_a_broken_command_fails(monkeypatch):
  monkeypatch.chdir(ROOT)
  good = ["multichan-diff", "train", "--config", "configs/default.py:smoke", "--workdir", "w",
          "--config.train.steps=3"]
  check_command(good)
  for bad in (["multichan-diff", "evaluate", "--model", "m", "--store", "s", "--out", "o",
               "--mode", "triple"],
              ["multichan-diff", "impute", "--model", "m", "--input", "i", "--out", "o",
               "--sampels", "8"],
              [*good[:-1], "--config.train.stepz=3"],
              ["multichan-diff", "train", "--config", "configs/nope.py", "--workdir", "w"],
              ["multichan-diff", "train", "--config", "configs/default.py:smok", "--workdir", "w"]):
    with pytest.raises(AssertionError):
      check_command(bad)


def test_the_interpreter_expands_loops_and_variables():
  body = ("ENS=models/a,models/b\n"
          "for kv in \"2 2\" \"8 8\"; do set -- $kv   # a comment\n"
          "  multichan-diff evaluate --model $ENS --samples $1 \\\n"
          "    --views $2 --out r/${1}x\n"
          "done\n")
  out: list = []
  run_nodes(parse_block(body, 1), {}, out)
  assert [argv for _, argv in out] == [
      ["multichan-diff", "evaluate", "--model", "models/a,models/b", "--samples", "2",
       "--views", "2", "--out", "r/2x"],
      ["multichan-diff", "evaluate", "--model", "models/a,models/b", "--samples", "8",
       "--views", "8", "--out", "r/8x"]]


def test_scripts_named_in_commands_exist():
  for where, argv in COMMANDS:
    if argv[0] in ("python", "python3", "bash") and len(argv) > 1 and argv[1].endswith(
        (".py", ".sh", ".sbatch")):
      assert (ROOT / argv[1]).is_file(), f"{where}: no {argv[1]}"


CONFIG_NAME = re.compile(r"\bconfigs/[\w.-]+\.py(?::\w+)?")


def test_every_config_named_in_the_docs_loads(monkeypatch):
  monkeypatch.chdir(ROOT)
  named = {m.group(0) for path in DOCS for m in CONFIG_NAME.finditer(path.read_text())}
  assert named
  for name in sorted(named):
    check_config_args(["--config", name])


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_relative_links_resolve():
  missing = []
  for path in DOCS:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    for m in LINK.finditer(text):
      target = m.group(1)
      if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        continue
      file = target.split("#", 1)[0]
      if not (path.parent / file).exists():
        missing.append(f"{_rel(path)}: {target}")
  assert not missing, missing
