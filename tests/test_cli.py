"""The console entry point."""

import subprocess
import sys

import pytest

from multichan_diff import __version__
from multichan_diff.cli import main


def test_version(capsys):
  with pytest.raises(SystemExit) as exc:
    main(["--version"])
  assert exc.value.code == 0
  assert __version__ in capsys.readouterr().out


def test_module_runs_as_a_program():
  out = subprocess.run([sys.executable, "-m", "multichan_diff.cli", "--help"],
                       capture_output=True, text=True, check=True)
  assert "multichan-diff" in out.stdout
