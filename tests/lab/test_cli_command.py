"""The lab starts the CLI as an operator does: the installed `failover` script when it is ours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from failover.lab import cluster


def test_the_installed_script_beside_the_interpreter_is_what_the_lab_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("")
    python.with_name("python3").symlink_to(python.name)  # as a venv has both names
    other = tmp_path / "other" / "python"
    other.parent.mkdir()
    other.symlink_to(python)  # the same file, another directory's name: another venv's interpreter
    monkeypatch.setattr(sys, "executable", str(python))
    assert cluster.cli_command() == [str(python), "-m", "failover"]  # no script there
    script = python.with_name("failover")
    for foreign in ("/usr/bin/python3", other, tmp_path / "bin" / "gone"):
        script.write_text(f"#!{foreign}\nfrom failover.cli import main\n")
        assert cluster.cli_command() == [str(python), "-m", "failover"]  # another interpreter's
    for ours in (python, python.with_name("python3")):  # pip run as either name
        script.write_text(f"#!{ours}\nfrom failover.cli import main\n")
        assert cluster.cli_command() == [str(script)]


def test_the_script_this_checkout_installed_starts_the_cli() -> None:
    argv = cluster.cli_command()
    if argv[0] == sys.executable:
        pytest.skip("no failover script beside this interpreter (not installed with pip)")
    done = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "swap" in done.stdout
