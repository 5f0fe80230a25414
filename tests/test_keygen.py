"""Tests for `failover keygen PATH` (failover.keygen): a key the loader accepts, 0600 from creation, never
an overwrite, through the real command line too."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from failover import cli, config, keygen
from failover.config import keys_for, load_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def umask() -> Iterator[None]:
    # A permissive umask, so any mode wider than 0600 at creation would show.
    old = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_key_is_new_random_hex_and_mode_0600(tmp_path: Path, umask: None) -> None:
    first, second = tmp_path / "a.key", tmp_path / "b.key"
    assert keygen.write_key(first) == 2 * keygen.KEY_BYTES + 1
    keygen.write_key(second)
    for path in (first, second):
        assert _mode(path) == 0o600
        assert re.fullmatch(rb"[0-9a-f]{64}\n", path.read_bytes())
    assert first.read_bytes() != second.read_bytes()


def test_the_file_is_0600_from_the_moment_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: None
) -> None:
    modes_at_creation: list[int] = []
    real_open = os.open

    def watching_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        fd = real_open(path, flags, mode, **kw)
        modes_at_creation.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd

    monkeypatch.setattr(os, "open", watching_open)
    keygen.write_key(tmp_path / "web.key")
    assert modes_at_creation == [0o600]


def test_the_loader_accepts_the_generated_key(tmp_path: Path) -> None:
    assert 2 * keygen.KEY_BYTES >= config.KEY_MIN_BYTES
    key_file = tmp_path / "web.key"
    keygen.write_key(key_file)
    doc = {
        "cluster": "web",
        "vip": {"address": "203.0.113.10/24", "interface": "eth0"},
        "auth": {"key_file": str(key_file)},
        "nodes": {
            "live": {"address": "203.0.113.11", "home": True, "health_url": "http://203.0.113.11/",
                     "access_log": "/var/log/nginx/access.log"},
            "backup": {"address": "203.0.113.12", "health_url": "http://203.0.113.12/",
                       "access_log": "/var/log/nginx/access.log"},
        },
    }
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(doc))
    (key,) = keys_for(load_config(cluster_file).auth)
    assert key == key_file.read_bytes().rstrip(b"\n") and len(key) == 64


def test_an_existing_file_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "web.key"
    key_file.write_bytes(b"the key the peer already has\n")
    key_file.chmod(0o640)
    assert cli.main(["keygen", str(key_file)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(key_file) in err and "already exists" in err
    assert key_file.read_bytes() == b"the key the peer already has\n" and _mode(key_file) == 0o640


def test_a_symlink_is_refused_and_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "web.key"
    link.symlink_to(target)  # dangling: following it would create `elsewhere`
    with pytest.raises(keygen.KeygenError, match="already exists"):
        keygen.write_key(link)
    assert not target.exists()


def test_a_missing_directory_is_one_line_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "web.key"
    with pytest.raises(keygen.KeygenError) as err:
        keygen.write_key(path)
    assert str(err.value) == f"{path}: cannot create: No such file or directory"


def test_the_command_line_writes_a_key_the_loader_takes(tmp_path: Path) -> None:
    key_file = tmp_path / "web.key"
    done = subprocess.run([sys.executable, "-m", "failover", "keygen", str(key_file)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert str(key_file) in done.stdout and "copy" in done.stdout
    assert len(config.load_key(key_file)) == 64
    again = subprocess.run([sys.executable, "-m", "failover", "keygen", str(key_file)],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert again.returncode == 2 and str(key_file) in again.stderr


def test_no_path_is_bad_usage() -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["keygen"])
    assert exit_.value.code == 2


def test_the_example_cluster_file_says_to_use_keygen() -> None:
    text = (REPO / "configs" / "cluster.example.yaml").read_text()
    assert "failover keygen /etc/failover/web.key" in text and "/dev/urandom" not in text
