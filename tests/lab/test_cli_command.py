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
    monkeypatch.setattr(sys, "executable", str(python))
    assert cluster.cli_command() == [str(python), "-m", "failover"]  # no script there
    script = python.with_name("failover")
    script.write_text("#!/usr/bin/python3\nfrom failover.cli import main\n")
    assert cluster.cli_command() == [str(python), "-m", "failover"]  # another interpreter's
    script.write_text(f"#!{python}\nfrom failover.cli import main\n")
    assert cluster.cli_command() == [str(script)]


def test_the_script_this_checkout_installed_starts_the_cli() -> None:
    argv = cluster.cli_command()
    if argv[0] == sys.executable:
        pytest.skip("no failover script beside this interpreter (not installed with pip)")
    done = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "swap" in done.stdout
