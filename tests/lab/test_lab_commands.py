"""`failover lab up / exec / down`: a lab that outlives the command, for manual practice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nginx") is None, reason="needs root and nginx"
)


def failover(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FAILOVER_LAB_STATE": str(state)}
    return subprocess.run([sys.executable, "-m", "failover", "lab", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [e["name"] for e in json.loads(out or "[]") if e["name"].startswith(f"{prefix}-")]


def test_lab_up_exec_down(tmp_path: Path) -> None:
    state = tmp_path / "current.json"
    up = failover(state, "up")
    prefix = json.loads(state.read_text())["prefix"] if state.exists() else ""
    try:
        assert up.returncode == 0, up.stderr
        expected = sorted(f"{prefix}-{h}" for h in ("br", "live", "backup", "client"))
        assert sorted(namespaces(prefix)) == expected
        served = failover(state, "exec", "client", "--", "curl", "-s", "--max-time", "2", "http://203.0.113.10/")
        assert served.stdout.strip() == "live", served
        assert failover(state, "up").returncode == 1  # one lab at a time
    finally:
        down = failover(state, "down")
    assert down.returncode == 0, down.stderr
    assert namespaces(prefix) == [] and not state.exists()
    assert failover(state, "exec", "client", "--", "true").returncode == 1  # nothing left to enter
