"""The operator's side for real: the `failover` CLI and the agent's control socket, in the lab.

The CLI runs as a subprocess in a lab host's namespace, exactly as an operator would run it there; the
control-socket tests speak the socket's line protocol directly, including what a well-behaved CLI never
sends.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from failover import control
from failover.lab.cluster import LabCluster, cluster_document
from failover.lab.netns import Lab

from .conftest import failover_cli, package_env

pytestmark = pytest.mark.root

NOBODY = 65534


# --- a bad cluster file -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("good", "bad", "field"),
    [
        ("interval_ms: 50", "interval_ms: fast", "heartbeat.interval_ms"),
        ("dead_after_ms: 250", "dead_afer_ms: 250", "heartbeat.dead_afer_ms"),
    ],
)
def test_bad_cluster_file_is_one_line_naming_file_line_and_field(
    tmp_path: Path, good: str, bad: str, field: str
) -> None:
    (tmp_path / "lab.key").write_text("k" * 64)
    # An unbuilt Lab only plans names and addresses; nothing is created and no traffic is sent.
    text = yaml.safe_dump(cluster_document(Lab(), tmp_path), sort_keys=False)
    assert text.count(good) == 1
    line = text[: text.index(good)].count("\n") + 1
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(good, bad))

    argv = [sys.executable, "-m", "failover", "status", "-c", str(path), "--node", "live"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, env=package_env())
    assert done.returncode == 2, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert re.fullmatch(rf"failover: {re.escape(str(path))}:{line}: {re.escape(field)}: .+", lines[0]), lines
    assert "Traceback" not in done.stderr


def test_a_swap_with_a_bad_cluster_file_changes_nothing(cluster: LabCluster) -> None:
    # The CLI reaches the agent without loading the whole file (to be fast); the agent loads it first.
    text = cluster.config_path.read_text()
    assert text.count("dead_after_ms: 250") == 1
    line = text[: text.index("dead_after_ms: 250")].count("\n") + 1
    bad = cluster.workdir / "bad.yaml"
    bad.write_text(text.replace("dead_after_ms: 250", "dead_after_ms: soon"))
    done = failover_cli(cluster, "live", "swap", "-c", str(bad), "--node", "live", timeout=30)
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        f"failover: {bad}:{line}: heartbeat.dead_after_ms: expected an integer, got string 'soon'"
    ], done.stderr
    assert cluster.holders() == ["live"]
    assert cluster.status("live")["epoch"] == cluster.status("backup")["epoch"] == 0


# --- status through the CLI -------------------------------------------------------------------------


def test_status_json_and_human_from_each_host(cluster: LabCluster) -> None:
    config = str(cluster.config_path)
    # No --node: each host finds its own node by the address it can bind.
    for host, holds in (("live", True), ("backup", False)):
        done = failover_cli(cluster, host, "status", "-c", config, "--json")
        assert done.returncode == 0, done.stderr
        st = json.loads(done.stdout)
        assert st["node"] == host
        assert st["holds_vip_netlink"] is holds
        assert st["peer"]["alive"] is True
        assert st["peer"]["holds_vip"] is (not holds)
        assert st["digests_equal"] is True
        assert st["vip"] == "203.0.113.10/24"

        human = failover_cli(cluster, host, "status", "-c", config)
        assert human.returncode == 0, human.stderr
        assert "VIP 203.0.113.10/24 held by live" in human.stdout.splitlines()[0]
        assert "cluster files: equal" in human.stdout

    # An agent that is not running is exit 3 with the reason, not a traceback.
    assert cluster.stop_agent("backup") == 0
    done = failover_cli(cluster, "backup", "status", "-c", config)
    assert done.returncode == 3, done
    assert "no agent socket" in done.stderr and "Traceback" not in done.stderr


# --- the control socket -----------------------------------------------------------------------------


def exchange(
    path: Path, data: bytes, *, close_write: bool = False, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Send raw bytes to the control socket, return every reply line up to the end marker or EOF."""
    replies: list[dict[str, Any]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        buf = b""
        for _ in range(1000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        for line in buf.splitlines():
            replies.append(json.loads(line))
    return replies


def test_agent_replaces_a_stale_socket_file(cluster: LabCluster) -> None:
    path = cluster.socket("live")
    assert cluster.stop_agent("live") == 0
    assert not path.exists()  # a clean stop removes its socket
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a SIGKILLed agent leaves
    assert stat.S_ISSOCK(path.lstat().st_mode)
    with pytest.raises(control.ControlError, match="stale agent socket"):
        list(control.request(path, {"cmd": "status"}, timeout=2.0))

    cluster.start_agent("live")
    cluster.wait_ready()  # raises if the agent exited instead of replacing the file
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert cluster.status("live")["holds_vip_netlink"] is True


def start_second_agent(cluster: LabCluster) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "failover", "agent", "-c", str(cluster.config_path), "--node", "live"]
    return cluster.lab.run("live", argv, check=False, timeout=30, env=package_env())


def test_second_agent_for_the_same_node_refuses_to_start(cluster: LabCluster) -> None:
    path = cluster.socket("live")
    done = start_second_agent(cluster)
    assert done.returncode == 2, done
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    # The first agent is untouched: its socket file still answers, it still holds the VIP.
    assert stat.S_ISSOCK(path.lstat().st_mode)
    assert cluster.status("live")["holds_vip_netlink"] is True
    assert cluster.holders() == ["live"]
    # The socket-level check itself tells a live agent from a stale file.
    with pytest.raises(control.ControlError, match="already running"):
        control.claim_socket_path(path)


def test_second_agent_says_another_agent_is_already_running(cluster: LabCluster) -> None:
    done = start_second_agent(cluster)
    assert done.returncode == 2, done
    assert "already running" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("data", "close_write", "error"),
    [
        (b"status\n", False, "not JSON"),
        (b"[1, 2]\n", False, "JSON object"),
        (b'{"cmd": 5}\n', False, "string 'cmd'"),
        (b'{"cmd": "reboot"}\n', False, "unknown command"),
        (b'{"cmd": "status"}', True, "not terminated by a newline"),
        (b'{"cmd": "' + b"x" * 8192 + b'"}\n', False, ""),
    ],
    ids=["not-json", "not-object", "cmd-not-string", "unknown-cmd", "no-newline", "too-long"],
)
def test_malformed_request_gets_an_error_reply(
    cluster: LabCluster, data: bytes, close_write: bool, error: str
) -> None:
    replies = exchange(cluster.socket("live"), data, close_write=close_write)
    assert replies, "no reply at all"
    assert replies[-1]["type"] == "error", replies
    assert error in replies[-1]["error"]
    assert all(r["type"] == "progress" for r in replies[:-1])
    # The agent carries on.
    assert cluster.status("live")["holds_vip"] is True
    assert cluster.holders() == ["live"]


def test_silent_client_does_not_block_others_and_is_dropped(cluster: LabCluster) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(str(cluster.socket("live")))
        connected = time.monotonic()
        assert cluster.status("live")["holds_vip"] is True
        assert time.monotonic() - connected < 1.0
        # The silent one is told off and disconnected after the request timeout, not left open forever.
        silent.settimeout(control.REQUEST_TIMEOUT + 3.0)
        buf = b""
        for _ in range(100):
            chunk = silent.recv(65536)
            if not chunk:
                break
            buf += chunk
        waited = time.monotonic() - connected
    reply = json.loads(buf.splitlines()[-1])
    assert reply["type"] == "error" and "no complete request line" in reply["error"], reply
    assert control.REQUEST_TIMEOUT - 0.5 <= waited <= control.REQUEST_TIMEOUT + 2.0


# Connects and only reads: the agent answers a refused peer at once, before any request.
NOBODY_CLIENT = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(5)
try:
    sock.connect(sys.argv[1])
except OSError as err:
    print(json.dumps({"connect": type(err).__name__}))
    raise SystemExit(0)
data = b""
for _ in range(100):
    chunk = sock.recv(65536)
    if not chunk:
        break
    data += chunk
print(json.dumps({"connect": "ok", "replies": [json.loads(x) for x in data.splitlines()]}))
"""


def as_nobody(cluster: LabCluster, argv: list[str]) -> subprocess.CompletedProcess[str]:
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return cluster.lab.run("live", [*setpriv, *argv], check=False, timeout=20, cwd="/", env=package_env())


def nobody_connects(cluster: LabCluster, path: Path) -> dict[str, Any]:
    done = as_nobody(cluster, ["/usr/bin/python3", "-I", "-c", NOBODY_CLIENT, str(path)])
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def open_to_nobody(cluster: LabCluster, socket_mode: int) -> Path:
    """Let uid 65534 reach live's socket file: traverse the directories, and the socket's own mode."""
    path = cluster.socket("live")
    for directory in (cluster.workdir, path.parent):
        os.chmod(directory, 0o711)
    os.chmod(path, socket_mode)
    return path


def test_non_root_client_is_refused(cluster: LabCluster) -> None:
    path = cluster.socket("live")
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert path.lstat().st_uid == 0
    # The directories opened for traversal, the socket's own 0600 is what refuses.
    open_to_nobody(cluster, 0o600)
    assert nobody_connects(cluster, path) == {"connect": "PermissionError"}

    # Even with the file mode loosened, the agent checks the peer's uid (SO_PEERCRED) and refuses.
    open_to_nobody(cluster, 0o666)
    result = nobody_connects(cluster, path)
    assert result["connect"] == "ok"
    replies = result["replies"]
    assert len(replies) == 1 and replies[0]["type"] == "error", replies
    assert f"uid {NOBODY} may not control the agent" in replies[0]["error"]
    assert cluster.status("live")["holds_vip_netlink"] is True


def test_non_root_cli_gets_the_refusal_not_a_traceback(cluster: LabCluster) -> None:
    open_to_nobody(cluster, 0o666)
    argv = [sys.executable, "-m", "failover", "status", "-c", str(cluster.config_path), "--node", "live"]
    # The failure is a race between the agent's close and the CLI's send; several tries pin it down.
    for _ in range(8):
        done = as_nobody(cluster, argv)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode == 3, done
        assert f"uid {NOBODY} may not control the agent" in done.stderr
